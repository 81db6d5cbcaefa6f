"""Long-memory benchmark tasks, generated on the fly from a seeded generator.

- The **adding problem** (Hochreiter & Schmidhuber 1997, in the setup of Le, Jaitly & Hinton
  2015): inputs ``(N, T, 2)``; channel 0 holds values uniform in [0, 1], channel 1 a marker
  with exactly one 1 in each half of the sequence. The target is the sum of the two marked
  values. Always predicting 1 scores MSE 1/6 ≈ 0.167 (the variance of a sum of two U[0, 1]).
- The **copy-memory task** (Arjovsky, Shah & Bengio 2016): 10 symbols from {1..8}, then T - 1
  blanks (0), a delimiter (9), and 10 more blanks; the target is blank everywhere except the
  last 10 steps, which must repeat the 10 symbols. Length T + 20. Predicting blanks and then a
  uniform guess over the 8 symbols scores ``10 log 8 / (T + 20)`` nats per step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

COPY_SYMBOLS, COPY_LENGTH, COPY_BLANK, COPY_DELIMITER = 8, 10, 0, 9


def check_length(length: int) -> int:
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(f"length must be an integer >= 2, got {length!r}")
    return length


def adding_problem(batch: int, length: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``x (N, T, 2)`` and ``y (N,)``: one marker in each half, target the sum of the marked values."""
    check_length(length)
    values = torch.rand(batch, length, generator=generator)
    half = length // 2
    first = torch.randint(0, half, (batch,), generator=generator)
    second = torch.randint(half, length, (batch,), generator=generator)
    markers = torch.zeros(batch, length)
    rows = torch.arange(batch)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    return torch.stack([values, markers], dim=-1), values[rows, first] + values[rows, second]


def adding_baseline() -> float:
    """MSE of always predicting the mean, 1: the variance of U[0,1] + U[0,1] = 1/6."""
    return 1 / 6


def copy_task(batch: int, length: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``x (N, T+20)`` input symbols and ``y (N, T+20)`` target symbols (integers; see module doc)."""
    check_length(length)
    total = length + 2 * COPY_LENGTH
    symbols = torch.randint(1, COPY_SYMBOLS + 1, (batch, COPY_LENGTH), generator=generator)
    x = torch.full((batch, total), COPY_BLANK, dtype=torch.long)
    x[:, :COPY_LENGTH] = symbols
    x[:, COPY_LENGTH + length - 1] = COPY_DELIMITER
    y = torch.full((batch, total), COPY_BLANK, dtype=torch.long)
    y[:, -COPY_LENGTH:] = symbols
    return x, y


def copy_baseline(length: int) -> float:
    """Cross-entropy per step of the memoryless strategy: ``10 log 8 / (T + 20)``."""
    return COPY_LENGTH * math.log(COPY_SYMBOLS) / (length + 2 * COPY_LENGTH)
