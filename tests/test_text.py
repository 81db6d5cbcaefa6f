"""Corpora: the Shakespeare conversion, reading user text, splits and the vocabulary."""

import pytest

from rnnkit.data.text import (
    SHAKESPEARE_VALIDATION,
    UNKNOWN,
    CharVocab,
    play_markdown_to_text,
    read_corpus,
    shakespeare,
    split_documents,
)

PLAY = """# A Play

## ACT I

### SCENE I. A room.

_Enter ROMEO and JULIET, with
attendants_

**ROMEO**$
If I profane with my unworthiest hand$
This holy shrine, _\\[Aside]_ the gentle sin is this.

*Kisses her.*

**JULIET**$
Good pilgrim, you do wrong your hand too much,\\--
[Within]_$
Which mannerly devotion shows in this.
""".replace("$", "  ")  # two trailing spaces: a Markdown line break


def test_play_markdown_to_text():
    assert play_markdown_to_text(PLAY) == (
        "ROMEO:\nIf I profane with my unworthiest hand\nThis holy shrine,  the gentle sin is this.\n\n"
        "JULIET:\nGood pilgrim, you do wrong your hand too much,--\nWhich mannerly devotion shows in this.\n"
    )


def test_shakespeare_corpus_is_clean_text_with_whole_plays_held_out():
    plays = shakespeare()
    assert len(plays) == 38
    assert 4_700_000 < sum(len(p.text) for p in plays) < 5_000_000
    train, valid = split_documents(plays, SHAKESPEARE_VALIDATION)
    assert plays[SHAKESPEARE_VALIDATION[-1]].name == "tragedies/macbeth"
    assert "MACBETH:" in valid and "MACBETH:" not in train
    assert 0.09 < len(valid) / (len(train) + len(valid)) < 0.11
    vocab = CharVocab.from_text(train)
    assert not set("_*[]#\\") & set(vocab.chars), "no Markdown left"
    assert train.count("\n\n") > 20_000 and "ROMEO:\n" in train


def test_read_corpus_and_bad_files(tmp_path):
    (tmp_path / "a.txt").write_text("hello world\n" * 10)
    (tmp_path / "b.txt").write_text("second file\n" * 10)
    assert [d.text[:5] for d in read_corpus(tmp_path)] == ["hello", "secon"]
    train, valid = split_documents(read_corpus(tmp_path / "a.txt"))
    assert train + valid == "hello world\n" * 10 and len(valid) == 12
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="the corpus is empty"):
        read_corpus(tmp_path / "empty.txt")
    (tmp_path / "bin").write_bytes(b"\x89PNG\x00\x00")
    with pytest.raises(ValueError, match="is a binary file, not text"):
        read_corpus(tmp_path / "bin")
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.txt is not UTF-8 text \(byte 3\)"):
        read_corpus(tmp_path / "latin.txt")
    with pytest.raises(ValueError, match="no such file or folder"):
        read_corpus(tmp_path / "missing")


def test_vocab_maps_unseen_characters_to_unknown():
    vocab = CharVocab.from_text("abca")
    assert vocab.chars == [UNKNOWN, "a", "b", "c"]
    assert vocab.encode("abz").tolist() == [1, 2, 0]
    assert vocab.unknown_in("abzé") == ["z", "é"]
    assert vocab.decode([1, 2, 0]) == "ab" + UNKNOWN
