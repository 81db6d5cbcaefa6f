"""Parallel text for translation: generated offline, read from the Bible, or from a TSV file.

- **Numbers** (``num2words``): ``num2words(397, lang="en")`` -> ``num2words(397, lang="fr")``,
  for 0 <= n < 1,000,000. A fixed hash of ``n`` holds out 5% of all numbers: training never
  sees them (0 excepted: "zero" is a word of its own). Training also never sees a source
  longer than :data:`LONGEST_TRAIN_SOURCE` pieces; the held-out numbers that are longer form
  a separate test of length generalisation.
- **Dates** (``babel``): ``format_date(d, "long", locale=src)`` -> the same in ``locale=tgt``,
  for 1700-01-01 ... 2199-12-31, 5% of the days held out by the same kind of hash.
- **Bible** (Debian ``sword-text-kjv`` + ``sword-text-sparv``, read with ``pysword``): the
  English (KJV) / Spanish (Reina-Valera 1909) verse pairs, cached once to a TSV file.
- **Any TSV file** of ``source<TAB>target`` lines.

Text is cut into lossless *pieces* (:func:`pieces`): a word or one punctuation character, with
the space before it attached (``" hundred"``; the text gets a leading space, as in
SentencePiece, so a first word looks like any other), so joining pieces gives the text back.
"""

from __future__ import annotations

import datetime
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIALS = (PAD, UNK, BOS, EOS)
UNITS = ("word", "char")
TASKS = ("numbers", "dates", "bible")
NUMBER_LIMIT = 1_000_000
LONGEST_TRAIN_SOURCE = 12  # pieces; longer held-out numbers test length generalisation
HELD_OUT_EVERY = 20  # 1 in 20 numbers (or days) is never seen in training
FIRST_DAY, LAST_DAY = datetime.date(1700, 1, 1).toordinal(), datetime.date(2199, 12, 31).toordinal()
SWORD_DIR = "/usr/share/sword"
BIBLE_MODULES = ("engKJV2006eb", "spaRV1909eb")

_PIECE = re.compile(r" ?[^\W_]+| ?[^\w\s]| ?_")
_SPACES = re.compile(r"\s+")

Pair = tuple[str, str]


def normalise(text: str) -> str:
    """Runs of whitespace become one space; no leading or trailing space."""
    return _SPACES.sub(" ", text).strip()


def pieces(text: str, units: str = "word") -> list[str]:
    """Lossless pieces of normalised text: ``"".join(pieces(t)).strip() == normalise(t)``.

    ``word``: a word or one punctuation character, carrying the space before it (a leading
    space is added first); ``char``: characters.
    """
    text = normalise(text)
    return list(text) if units == "char" else _PIECE.findall(" " + text)


class Vocab:
    """Pieces to indices: ``<pad>=0, <unk>=1, <s>=2, </s>=3``, then pieces by frequency."""

    def __init__(self, items: Sequence[str], units: str = "word") -> None:
        if units not in UNITS:
            raise ValueError(f"units must be one of {', '.join(UNITS)}, got {units!r}")
        self.units = units
        self.items = list(SPECIALS) + [p for p in items if p not in SPECIALS]
        self.index = {p: i for i, p in enumerate(self.items)}

    @classmethod
    def build(cls, texts: Iterable[str], units: str = "word", max_size: int | None = None) -> Vocab:
        counts = Counter(p for text in texts for p in pieces(text, units))
        ranked = sorted(counts, key=lambda p: (-counts[p], p))
        return cls(ranked[: max_size - len(SPECIALS)] if max_size else ranked, units)

    def __len__(self) -> int:
        return len(self.items)

    def unknown_in(self, text: str) -> list[str]:
        return sorted({p for p in pieces(text, self.units) if p not in self.index})

    def encode(self, text: str, eos: bool = True) -> list[int]:
        ids = [self.index.get(p, 1) for p in pieces(text, self.units)]
        return ids + [3] if eos else ids

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            if i == 3:
                break
            if i > 3:
                out.append(self.items[i])
            elif i == 1:
                out.append(UNK)
        return "".join(out).strip()


@dataclass
class ParallelData:
    """Training pairs (a list, or a generator ``sample(rng) -> pair``) and fixed test sets."""

    name: str
    train: list[Pair] | None
    sample: Callable[[random.Random], Pair] | None
    valid: list[Pair]
    test: dict[str, list[Pair]]  # test set name -> pairs ("held_out", "longer", ...)

    def training_texts(self, count: int = 20_000, seed: int = 0) -> list[Pair]:
        """The training pairs, or ``count`` generated ones: what vocabularies are built from."""
        if self.train is not None:
            return self.train
        rng = random.Random(seed)
        return [self.sample(rng) for _ in range(count)]


def _held_out(key: int) -> bool:
    """A fixed pseudo-random 1 in :data:`HELD_OUT_EVERY` (Knuth's multiplicative hash)."""
    return (((key * 2654435761) & 0xFFFFFFFF) >> 8) % HELD_OUT_EVERY == 0


def _languages(pair: str, check: Callable[[str], None]) -> tuple[str, str]:
    parts = pair.split("-")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"--pair must look like en-fr (source-target), got {pair!r}")
    for language in parts:
        check(language)
    return parts[0], parts[1]


def _check_num2words(language: str) -> None:
    from num2words import num2words

    try:
        num2words(1, lang=language)
    except NotImplementedError:
        raise ValueError(f"--pair: num2words has no language {language!r}") from None


def _random_number(rng: random.Random) -> int:
    """Digits uniform in 1..6, then a uniform number with that many digits."""
    digits = rng.randint(1, 6)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def numbers(pair: str = "en-fr", valid_size: int = 1000, test_size: int = 2000, seed: int = 0) -> ParallelData:
    """Numbers written out in two languages (``num2words``); see the module docstring."""
    from num2words import num2words

    source, target = _languages(pair, _check_num2words)

    def text(n: int) -> Pair:
        return num2words(n, lang=source), num2words(n, lang=target)

    def held_out(n: int) -> bool:
        return n > 0 and _held_out(n)  # 0 is its own word ("zero"), so it is always trained on

    def trainable(n: int, src: str) -> bool:
        return not held_out(n) and len(pieces(src)) <= LONGEST_TRAIN_SOURCE

    def sample(rng: random.Random) -> Pair:
        while True:
            n = _random_number(rng)
            if not held_out(n):
                pair_ = text(n)
                if trainable(n, pair_[0]):
                    return pair_

    rng = random.Random(1_000_003 * seed + 97)
    chosen: dict[str, list[Pair]] = {"valid": [], "held_out": [], "longer": []}
    wanted = {"valid": valid_size, "held_out": test_size, "longer": test_size // 2}
    seen: set[int] = set()
    for _ in range(200 * (valid_size + test_size)):
        n = _random_number(rng)
        if n in seen or not held_out(n):
            continue
        seen.add(n)
        pair_ = text(n)
        longer = len(pieces(pair_[0])) > LONGEST_TRAIN_SOURCE
        name = "longer" if longer else ("valid" if len(chosen["valid"]) < valid_size else "held_out")
        if len(chosen[name]) < wanted[name]:
            chosen[name].append(pair_)
        if all(len(chosen[k]) >= wanted[k] for k in wanted):
            break
    return ParallelData(
        f"numbers {pair}", None, sample, chosen["valid"], {"held_out": chosen["held_out"], "longer": chosen["longer"]}
    )


def _check_locale(language: str) -> None:
    from babel import Locale, UnknownLocaleError

    try:
        Locale.parse(language)
    except (UnknownLocaleError, ValueError):
        raise ValueError(f"--pair: babel has no locale {language!r}") from None


def dates(pair: str = "en-fr", valid_size: int = 1000, test_size: int = 2000, seed: int = 0) -> ParallelData:
    """Dates written in two locales (``babel.dates.format_date(d, "long")``)."""
    from babel.dates import format_date

    source, target = _languages(pair, _check_locale)

    def text(day: int) -> Pair:
        d = datetime.date.fromordinal(day)
        return format_date(d, "long", locale=source), format_date(d, "long", locale=target)

    def sample(rng: random.Random) -> Pair:
        while True:
            day = rng.randint(FIRST_DAY, LAST_DAY)
            if not _held_out(day):
                return text(day)

    held_out = [day for day in range(FIRST_DAY, LAST_DAY + 1) if _held_out(day)]
    random.Random(1_000_003 * seed + 89).shuffle(held_out)
    valid = [text(d) for d in held_out[:valid_size]]
    test = [text(d) for d in held_out[valid_size : valid_size + test_size]]
    return ParallelData(f"dates {pair}", None, sample, valid, {"held_out": test})


def split_pairs(pairs: list[Pair], name: str, seed: int = 0) -> ParallelData:
    """A fixed seeded 90/5/5 split into train/validation/test."""
    if len(pairs) < 20:
        raise ValueError(f"{name} has {len(pairs)} usable pairs; at least 20 are needed")
    order = list(range(len(pairs)))
    random.Random(1_000_003 * seed + 71).shuffle(order)
    cut = max(1, len(pairs) // 20)
    test = [pairs[i] for i in order[:cut]]
    valid = [pairs[i] for i in order[cut : 2 * cut]]
    return ParallelData(name, [pairs[i] for i in order[2 * cut :]], None, valid, {"test": test})


def read_tsv(path: str | Path) -> list[Pair]:
    """``source<TAB>target`` lines (UTF-8); blank lines are skipped; anything else is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--data: no such file {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"--data: {path} is not UTF-8 text") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise ValueError(f"--data: {path} line {number} needs exactly one tab (source<TAB>target), found {len(parts) - 1}")
        source, target = normalise(parts[0]), normalise(parts[1])
        if not source or not target:
            raise ValueError(f"--data: {path} line {number} has an empty {'source' if not source else 'target'}")
        pairs.append((source, target))
    if not pairs:
        raise ValueError(f"--data: {path} holds no pairs")
    return pairs


def cache_dir() -> Path:
    return Path(os.environ.get("RNNKIT_CACHE", Path.home() / ".cache" / "rnnkit"))


def bible_pairs(sword_dir: str | Path = SWORD_DIR, cache: Path | None = None) -> list[Pair]:
    """English (KJV) / Spanish (Reina-Valera 1909) verse pairs, read once with ``pysword`` and
    cached as a TSV file (reading takes about a minute)."""
    cache = cache or cache_dir() / "bible-en-es.tsv"
    if cache.is_file():
        return read_tsv(cache)
    try:
        from pysword.modules import SwordModules
    except ImportError:
        raise ValueError("the Bible corpus needs pysword: pip install pysword==0.2.8") from None
    modules = SwordModules(str(sword_dir))
    try:
        found = modules.parse_modules()
    except (FileNotFoundError, OSError):
        found = {}
    if missing := [m for m in BIBLE_MODULES if m not in found]:
        raise ValueError(
            f"the Bible corpus needs the SWORD modules {', '.join(missing)} in {sword_dir}: "
            "apt-get install sword-text-kjv sword-text-sparv"
        )
    english, spanish = (modules.get_bible_from_module(m) for m in BIBLE_MODULES)
    pairs = []
    for testament in english.get_structure().get_books().values():
        for book in testament:
            for chapter, verses in enumerate(book.chapter_lengths, 1):
                for verse in range(1, verses + 1):
                    where = {"books": [book.osis_name], "chapters": [chapter], "verses": [verse]}
                    source = normalise(english.get(**where).replace("\u00b6", ""))
                    target = normalise(spanish.get(**where).replace("\u00b6", ""))
                    if source and target:
                        pairs.append((source, target))
    cache.parent.mkdir(parents=True, exist_ok=True)
    temporary = cache.with_suffix(".tmp")
    temporary.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    temporary.replace(cache)
    return pairs


def load_parallel(task: str | None, pair: str, data: str | None, seed: int = 0) -> ParallelData:
    """The dataset ``rnnkit train translate`` asks for: ``--data`` wins over ``--task``."""
    if data:
        return split_pairs(read_tsv(data), str(data), seed)
    if task == "numbers":
        return numbers(pair, seed=seed)
    if task == "dates":
        return dates(pair, seed=seed)
    if task == "bible":
        if pair != "en-es":
            raise ValueError(f"the Bible corpus is English-Spanish: use --pair en-es, not {pair}")
        return split_pairs(bible_pairs(), "bible en-es", seed)
    raise ValueError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")


def pad_batch(sequences: list[list[int]]) -> tuple[Tensor, Tensor]:
    """``(N, T)`` padded with 0 and the ``(N,)`` lengths."""
    lengths = torch.tensor([len(s) for s in sequences])
    out = torch.zeros(len(sequences), int(lengths.max()), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        out[row, : len(sequence)] = torch.tensor(sequence)
    return out, lengths
