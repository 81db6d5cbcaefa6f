"""Speaker renaming: a data augmentation that makes a char-LM copy speaker names from context.

The held-out plays have their own speakers (*Antipholus*, *Dromio*, *Cleopatra*...), so on
them a name can only be predicted by copying it from earlier in the text. In training a model
need not copy: it learns the training plays' names by heart. Renaming every speaker differently
in each epoch takes that shortcut away: within an epoch each name is replaced, everywhere in
the training text, by another training name of the same length (a random permutation within
each length), so the model only knows which names a scene has from the scene itself.

Only speaker lines (``NAME:`` alone on a line, the layout of :func:`rnnkit.data.text.play_markdown_to_text`)
change; names keep their length, so the text's length and every other character stay in place
and the training streams keep their positions. The renaming of epoch ``e`` is a function of
``(seed, e)``: a resumed run reads the same text.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

#: A speaker line: an upper-case name alone on its line, then a colon.
SPEAKER_LINE = re.compile(r"(?m)^([A-Z][A-Z0-9 ,.'&-]*):$")


class SpeakerRenaming:
    """The training tokens of each epoch, with the speakers renamed.

    ``tokens`` encodes ``text`` (one token per character, as :class:`rnnkit.data.text.CharVocab`
    does). Call the object with an epoch number to get that epoch's tokens (a new tensor; epoch
    tokens are cached one at a time)."""

    def __init__(self, text: str, tokens: Tensor, seed: int = 0) -> None:
        if tokens.dim() != 1 or tokens.numel() != len(text):
            shape = tuple(tokens.shape)
            raise ValueError(f"tokens must be 1-D, one token per character of text ({len(text)}), got shape {shape}")
        names: dict[str, int] = {}
        starts, ids = [], []
        for match in SPEAKER_LINE.finditer(text):
            starts.append(match.start(1))
            ids.append(names.setdefault(match.group(1), len(names)))
        self.tokens, self.seed = tokens, seed
        self.names = list(names)  # in order of first appearance
        lengths = torch.tensor([len(name) for name in self.names], dtype=torch.long)
        width = int(lengths.max()) if self.names else 0
        # each name's tokens, padded: row i is name i (its tokens as they appear in the text)
        self.spelled = torch.zeros(len(self.names), width, dtype=tokens.dtype)
        first = {}
        for start, name in zip(starts, ids, strict=True):
            first.setdefault(name, start)
        for name, start in first.items():
            self.spelled[name, : lengths[name]] = tokens[start : start + lengths[name]]
        self.lengths = lengths
        # every character of every speaker name: its position, the name it belongs to, its offset in it
        occurrence = torch.tensor(ids, dtype=torch.long)
        counts = lengths[occurrence]
        self.name_of = occurrence.repeat_interleave(counts)
        self.offset = torch.arange(int(counts.sum())) - (counts.cumsum(0) - counts).repeat_interleave(counts)
        self.position = torch.tensor(starts, dtype=torch.long).repeat_interleave(counts) + self.offset
        self._cached: tuple[int, Tensor] | None = None

    def mapping(self, epoch: int) -> Tensor:
        """``mapping[i]``: the name that replaces name ``i`` in ``epoch``; a random permutation
        among the names of each length, drawn from ``(seed, epoch)``."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        mapping = torch.arange(len(self.names))
        for length in self.lengths.unique().tolist():
            group = (self.lengths == length).nonzero().flatten()
            mapping[group] = group[torch.randperm(group.numel(), generator=generator)]
        return mapping

    def __call__(self, epoch: int) -> Tensor:
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        tokens = self.tokens.clone()
        if self.names:
            tokens[self.position] = self.spelled[self.mapping(epoch)[self.name_of], self.offset]
        self._cached = (epoch, tokens)
        return tokens
