"""Dropout with a counter-based mask: what the driver applies between layers, and the char-LM
before its output layer.

In training, each element is zeroed with probability ``p`` and the others are scaled by
``1 / (1 - p)``, as :func:`torch.nn.functional.dropout` does. Only the random numbers differ.
One 64-bit ``key`` is drawn from torch's generator per call, so ``torch.manual_seed`` (and
``--seed``, and a checkpoint's saved RNG state) still fix every mask. Element ``i`` of the
input, in contiguous order, is kept iff ::

    u_i = SplitMix64(key, i) >> 32          # the i-th output of SplitMix64 seeded with key
    keep_i = u_i >= round(p * 2**32)        # so P(keep) = 1 - p, to 2**-32

    z = key + (i + 1) * 0x9E3779B97F4A7C15  (mod 2**64)
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    SplitMix64(key, i) = z ^ (z >> 31)

The mask is a function of ``(key, i)``: nothing is stored for backward, which applies the same
mask to the gradient. On CPU the native kernel (``counter_dropout`` in
``kernels/csrc/recurrence.cpp``) computes it threaded and vectorised; :func:`reference` is the
same function in torch integer ops, tested equal to it, and runs wherever the kernel does not
(no compiler, other devices). Why: torch's CPU ``bernoulli_`` draws from one serial Mersenne
Twister, about 10 ns an element here, 12% of a default char-LM training step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnkit.kernels import native

_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    """A 64-bit pattern as the int64 that holds it."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(z: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 tensors holding uint64 bits (torch's ``>>`` is arithmetic)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(key: int, count: int, device: torch.device | str = "cpu") -> Tensor:
    """SplitMix64's outputs 0..count-1 from ``key``, as int64 tensors holding the uint64 bits
    (torch's int64 multiply wraps modulo 2**64, as uint64 arithmetic does)."""
    i = torch.arange(1, count + 1, dtype=torch.int64, device=device)
    z = i * _signed(_GOLDEN) + _signed(key & _MASK64)
    z = (z ^ _shift_right(z, 30)) * _signed(_MIX1)
    z = (z ^ _shift_right(z, 27)) * _signed(_MIX2)
    return z ^ _shift_right(z, 31)


def threshold(p: float) -> int:
    """``u_i >= threshold(p)`` keeps element i: ``round(p * 2**32)``."""
    return min(round(p * 2**32), 2**32)


def reference(x: Tensor, key: int, p: float) -> Tensor:
    """The plain implementation: the mask from :func:`splitmix64`, then ``x * scale`` where kept."""
    x = x.contiguous()
    keep = _shift_right(splitmix64(key, x.numel(), x.device), 32) >= threshold(p)
    scale = torch.tensor(1.0 / (1.0 - p), dtype=x.dtype, device=x.device)
    return torch.where(keep.view(x.shape), x * scale, torch.zeros((), dtype=x.dtype, device=x.device))


def apply_mask(x: Tensor, key: int, p: float) -> Tensor:
    """``key``'s mask applied to ``x`` (no autograd): the native kernel on CPU, else :func:`reference`."""
    extension = native.extension() if x.device.type == "cpu" else None
    if extension is None:
        return reference(x, key, p)
    return extension.counter_dropout(x, _signed(key & _MASK64), threshold(p), 1.0 / (1.0 - p))


class _CounterDropout(torch.autograd.Function):
    """``y = mask ⊙ x / (1 - p)``; ``dL/dx = mask ⊙ dL/dy / (1 - p)``, the same call."""

    @staticmethod
    def forward(ctx, x: Tensor, key: int, p: float) -> Tensor:  # noqa: ANN001
        ctx.key, ctx.p = key, p
        return apply_mask(x, key, p)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # noqa: ANN001
        return _CounterDropout.apply(grad, ctx.key, ctx.p), None, None


def dropout(x: Tensor, p: float = 0.5, training: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Dropout as :func:`torch.nn.functional.dropout` (not in place), with the counter-based mask
    of this module; the key is drawn from ``generator`` (default: torch's global one)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    key = int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64, generator=generator))
    return _CounterDropout.apply(x, key, p)


class Dropout(nn.Dropout):
    """:class:`torch.nn.Dropout` (same arguments and state) with the counter-based mask of
    :func:`dropout`; ``inplace`` is not supported."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        if inplace:
            raise ValueError("inplace must be False: rnnkit.Dropout returns a new tensor")
        super().__init__(p, inplace=False)

    def forward(self, input: Tensor) -> Tensor:
        return dropout(input, self.p, self.training)
