"""Input checks shared by cells and the driver. Each error names the argument, the expected
and the actual value, in one line."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def check_tensor(name: str, value: Any) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def check_features(name: str, x: Tensor, expected: int, param: Tensor) -> None:
    if x.shape[-1] != expected:
        raise ValueError(f"{name} must have {expected} features in its last dimension, got shape {tuple(x.shape)}")
    if x.dtype != param.dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the parameters have {param.dtype}; convert one of them")
    if x.device != param.device:
        raise ValueError(f"{name} is on {x.device} but the parameters are on {param.device}")


def check_state_tensors(name: str, state: Any, expected_shape: tuple[int, ...], like: Tensor) -> None:
    """Check every tensor of a state (a tensor, or a tuple such as ``(h, c)``)."""
    is_tuple = isinstance(state, tuple)
    dtype, device = like.dtype, like.device
    for i, part in enumerate(state if is_tuple else (state,)):
        # the checks run on every cell call (the generation loop): labels are built only for errors
        if not isinstance(part, Tensor):
            raise TypeError(f"{_label(name, i, is_tuple)} must be a torch.Tensor, got {type(part).__name__}")
        if part.shape != expected_shape:
            raise ValueError(f"{_label(name, i, is_tuple)} must have shape {tuple(expected_shape)}, got {tuple(part.shape)}")
        if part.dtype != dtype:
            raise TypeError(f"{_label(name, i, is_tuple)} has dtype {part.dtype} but the input has {dtype}")
        if part.device != device:
            raise ValueError(f"{_label(name, i, is_tuple)} is on {part.device} but the input is on {device}")


def _label(name: str, index: int, is_tuple: bool) -> str:
    return f"{name}[{index}]" if is_tuple else name


def check_cell_input(cell: Any, x: Any, state: Any, weight_ih: Tensor) -> tuple[bool, Any]:
    """Validate a cell call: ``(unbatched, state)``, whether ``x`` is ``(I,)`` and the state
    as the cell's recurrence types it (None stays None)."""
    x = check_tensor("x", x)
    shape = x.shape
    if len(shape) not in (1, 2):
        raise ValueError(f"x must be 1-D (input_size,) or 2-D (batch, input_size), got shape {tuple(shape)}")
    check_features("x", x, cell.input_size, weight_ih)
    if state is not None:
        state = cell.recurrence.as_state(state)
        expected = (shape[0], cell.hidden_size) if len(shape) == 2 else (cell.hidden_size,)
        check_state_tensors("state", state, expected, x)
    return len(shape) == 1, state


def check_lengths(lengths: Any, batch: int, steps: int) -> Tensor:
    """Validate per-sequence lengths: integers in ``[1, steps]``, one per sequence."""
    if isinstance(lengths, Tensor):
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must hold integers, got dtype {lengths.dtype}")
    else:
        try:
            lengths = torch.as_tensor(lengths)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"lengths must be a tensor or a sequence of integers, got {type(lengths).__name__}") from error
        if lengths.is_floating_point() or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must hold integers, got {lengths.dtype}")
    lengths = lengths.reshape(-1) if lengths.dim() == 0 else lengths
    if lengths.dim() != 1 or lengths.numel() != batch:
        raise ValueError(f"lengths must have one entry per sequence ({batch}), got shape {tuple(lengths.shape)}")
    shortest, longest = int(lengths.min()), int(lengths.max())
    if shortest < 1:
        raise ValueError(f"lengths must all be >= 1, got {shortest}")
    if longest > steps:
        raise ValueError(f"lengths must all be <= the sequence length {steps}, got {longest}")
    return lengths.to(torch.int64)
