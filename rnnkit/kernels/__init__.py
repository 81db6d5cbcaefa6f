"""Execution backends for one layer and direction of a recurrent sequence.

Every backend computes exactly what :func:`rnnkit.kernels.reference.run_direction` computes;
the driver (:mod:`rnnkit.driver`) chooses one per call and records it in :func:`last_backend`.
Today the only backend is ``"reference"``; the fused native kernels are tracked in issue 4.
"""

from __future__ import annotations

from rnnkit.kernels import reference

_last_backend = "none"


def select(recurrence, x) -> tuple[str, object]:
    """Choose the backend for a call: ``(name, run_direction)``."""
    global _last_backend
    _last_backend = "reference"
    return _last_backend, reference.run_direction


def last_backend() -> str:
    """Name of the backend that ran the most recent sequence forward (``"none"`` before any)."""
    return _last_backend


__all__ = ["last_backend", "reference", "select"]
