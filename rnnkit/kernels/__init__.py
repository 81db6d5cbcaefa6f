"""Execution backends for one layer and direction of a recurrent sequence.

- ``"native"``: the fused C++ kernel (:mod:`rnnkit.kernels.native`), used on CPU for float32
  and float64 when it builds (it is compiled on first use and cached); under
  ``torch.autocast("cpu", dtype=torch.bfloat16)`` its recurrent GEMMs take bf16 operands
  (:func:`rnnkit.kernels.native.bf16_mode`);
- ``"native-step"``: the same kernel's single step (``step`` in ``csrc/recurrence.cpp``),
  for inference: with gradients off, a cell call or a one-step sequence of at most
  :data:`STEP_MAX_BATCH` sequences runs both products and the gate pass in one call (text
  generation, streaming forecasts);
- ``"cudnn"``: torch's fused recurrent ops (:mod:`rnnkit.kernels.cudnn`), cuDNN on a CUDA
  device, for the recurrences cuDNN computes (RNN, LSTM, GRU with ``reset_after=True``);
  forced with ``use_backend("cudnn")`` it runs torch's own kernels on the CPU;
- ``"reference"``: autograd over the cell equations (:mod:`rnnkit.kernels.reference`), the
  oracle every backend is tested against, and the fallback everywhere else (the textbook GRU
  on CUDA, other devices and dtypes).

The driver calls :func:`select` once per forward and a cell calls :func:`step`;
:func:`last_backend` says which one ran. ``RNNKIT_BACKEND=reference|native|cudnn`` or
:func:`use_backend` forces a choice (``native`` covers the single-step path too).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from rnnkit.cells.base import Recurrence, State, Weights
from rnnkit.kernels import cudnn, native, reference

BACKENDS = ("auto", "native", "cudnn", "reference")
#: The single-step path serves up to this many sequences; larger batches amortise a GEMM's
#: dispatch, and the native sequence kernel (or the reference) serves them better.
STEP_MAX_BATCH = 8
_NATIVE_DTYPES = (torch.float32, torch.float64)
_forced = os.environ.get("RNNKIT_BACKEND", "auto")
_last_backend = "none"


def cpu_has_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX). bf16 mode
    (``TrainConfig.bf16``) is then faster than float32; without them autocast's bf16 GEMMs are
    emulated and slower, so ``bf16="auto"`` means this."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's, private
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force ``"native"``, ``"cudnn"`` or ``"reference"`` (or ``"auto"``) inside a ``with`` block."""
    global _forced
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def _use_native(recurrence: Recurrence, x: Tensor) -> bool:
    if _forced not in BACKENDS:
        raise ValueError(f"RNNKIT_BACKEND must be one of {', '.join(BACKENDS)}, got {_forced!r}")
    fits_native = x.is_cpu and x.dtype in _NATIVE_DTYPES and native.kind_of(recurrence) is not None
    if _forced == "native" and not (fits_native and native.available()):
        raise ValueError("the native backend was requested but cannot run here (CPU float32/float64 and a built kernel needed)")
    return _forced in ("auto", "native") and fits_native and native.available()


def _use_cudnn(recurrence: Recurrence, x: Tensor) -> bool:
    """On CUDA (or when forced), for the recurrences torch's fused ops compute."""
    if _forced == "cudnn" and not cudnn.covers(recurrence):
        raise ValueError(
            "the cudnn backend was requested, but cuDNN has no textbook GRU: use reset_after=True or another backend"
        )
    return _forced == "cudnn" or (_forced == "auto" and x.is_cuda and cudnn.covers(recurrence))


def _single_step(x: Tensor) -> bool:
    """A step without autograd, over few sequences: the latency-bound inference case."""
    return not torch.is_grad_enabled() and x.shape[-2] <= STEP_MAX_BATCH


def select(recurrence: Recurrence, x: Tensor) -> tuple[str, Callable[..., Any]]:
    """Choose the backend for a sequence ``x (T, N, I)``: ``(name, run_direction)``."""
    global _last_backend
    if _use_cudnn(recurrence, x):
        _last_backend = "cudnn"
        return _last_backend, cudnn.run_direction
    if not _use_native(recurrence, x):
        _last_backend = "reference"
        return _last_backend, reference.run_direction
    if x.shape[0] == 1 and _single_step(x):
        _last_backend = "native-step"
        return _last_backend, native.run_step_direction
    _last_backend = "native"
    return _last_backend, native.run_direction


def fast_step(recurrence: Recurrence, weights: Weights, x: Any, state: Any) -> tuple[Tensor, State] | None:
    """A cell call by the native single step, before any Python validation, or None.

    With gradients off, a batched ``x (N, I)`` of at most :data:`STEP_MAX_BATCH` sequences and
    a given state (the generation loop's call), the kernel checks the arguments itself and runs
    them; anything else (autograd, an unbatched or large input, no state, a forced reference
    backend, arguments that do not fit) gives None and the cell takes :func:`step`'s path,
    which validates and reports. Both paths compute the same step."""
    global _last_backend
    if torch.is_grad_enabled() or state is None or _forced not in ("auto", "native") or not native.available():
        return None
    out = native.run_step(recurrence, weights, x, state, STEP_MAX_BATCH)
    if out is not None:
        _last_backend = "native-step"
    return out


def step(recurrence: Recurrence, weights: Weights, x: Tensor, state: State) -> tuple[Tensor, State]:
    """One step of a cell, ``x (N, I)`` -> ``(h_t (N, H), new_state)``, validated: by the native
    single step when it applies (see :data:`STEP_MAX_BATCH`), else by the reference equations."""
    global _last_backend
    if _single_step(x) and _use_native(recurrence, x):
        out = native.run_step(recurrence, weights, x, state, STEP_MAX_BATCH)
        if out is not None:  # a validated step fits the kernel
            _last_backend = "native-step"
            return out
    _last_backend = "reference"
    return reference.step(recurrence, weights, x, state)


def last_backend() -> str:
    """The backend of the most recent sequence forward or cell step: ``"native"``,
    ``"native-step"``, ``"cudnn"`` or ``"reference"`` (``"none"`` before any)."""
    return _last_backend


__all__ = ["STEP_MAX_BATCH", "cudnn", "fast_step", "last_backend", "native", "reference", "select", "step", "use_backend"]
