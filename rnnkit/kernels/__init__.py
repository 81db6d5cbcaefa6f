"""Execution backends for one layer and direction of a recurrent sequence.

- ``"native"``: the fused C++ kernel (:mod:`rnnkit.kernels.native`), used on CPU for float32
  and float64 when it builds (it is compiled on first use and cached);
- ``"reference"``: autograd over the cell equations (:mod:`rnnkit.kernels.reference`), the
  oracle every backend is tested against, and the fallback everywhere else (CUDA included).

The driver calls :func:`select` once per forward; :func:`last_backend` says which one ran.
``RNNKIT_BACKEND=reference|native`` or :func:`use_backend` forces a choice.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from rnnkit.cells.base import Recurrence
from rnnkit.kernels import native, reference

BACKENDS = ("auto", "native", "reference")
_forced = os.environ.get("RNNKIT_BACKEND", "auto")
_last_backend = "none"


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force ``"native"`` or ``"reference"`` (or ``"auto"``) inside a ``with`` block."""
    global _forced
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def select(recurrence: Recurrence, x: Tensor) -> tuple[str, Callable[..., Any]]:
    """Choose the backend for a call: ``(name, run_direction)``."""
    global _last_backend
    if _forced not in BACKENDS:
        raise ValueError(f"RNNKIT_BACKEND must be one of {', '.join(BACKENDS)}, got {_forced!r}")
    fits_native = x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and native.kind_of(recurrence) is not None
    if _forced == "native" and not (fits_native and native.available()):
        raise ValueError("the native backend was requested but cannot run here (CPU float32/float64 and a built kernel needed)")
    use_native = _forced != "reference" and fits_native and native.available()
    _last_backend = "native" if use_native else "reference"
    return _last_backend, native.run_direction if use_native else reference.run_direction


def last_backend() -> str:
    """Name of the backend that ran the most recent sequence forward (``"none"`` before any)."""
    return _last_backend


__all__ = ["last_backend", "native", "reference", "select", "use_backend"]
