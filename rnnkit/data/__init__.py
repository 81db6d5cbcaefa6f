"""Data: corpora and vocabularies (no network: everything comes from installed packages or
the user's files)."""
