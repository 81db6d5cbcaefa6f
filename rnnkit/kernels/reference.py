"""The reference recurrent loop: autograd over the explicit cell equations.

This is the oracle every fast path is tested against, and the fallback wherever none applies.
Cost per step is constant (outputs are collected in a list and stacked once), so time grows
linearly with T.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnkit.cells.base import Recurrence, State, Weights, map_state

#: Set by :mod:`rnnkit.diagnostics` while it records state gradients: a factory called once per
#: layer and direction, returning a hook ``(t, h, state) -> (h, state)`` run after every step
#: (it adds a zero tensor to ``h_t`` whose gradient is then dL/dh_t).
probe: Callable[[], Callable[[int, Tensor, State], tuple[Tensor, State]]] | None = None


def step(recurrence: Recurrence, weights: Weights, x: Tensor, state: State) -> tuple[Tensor, State]:
    """One step of a cell: ``gx = W_ih x_t + b_ih``, then the recurrence's equations.
    ``x (N, I)``, ``state`` of batch ``N`` -> ``(h_t (N, H), new_state)``."""
    gx = F.linear(x, weights.weight_ih, weights.bias_ih)
    return recurrence.step(gx, state, weights.weight_hh, weights.bias_hh)


def run_direction(
    recurrence: Recurrence,
    weights: Weights,
    x: Tensor,
    state: State,
    mask: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, State]:
    """Run one layer in one direction over a time-major sequence.

    Arguments: ``x (T, N, I)``; ``state`` the initial state (batch ``N``); ``mask (T, N, 1)``
    bool, true where step t lies within sequence n's length (``None``: all steps valid);
    ``reverse`` runs t = T-1 ... 0.

    Returns ``outputs (T, N, H)``, zero past each length, and the state after each sequence's
    last valid step. Where a step is masked the state is held, so in reverse each sequence
    starts from the initial state at its own last element, as with packed sequences in torch.
    """
    # unbind, not gx[t]: the backward of indexing writes a full (T, N, G*H) zero tensor per
    # step (O(T^2) work), while unbind's backward stacks the step gradients once.
    gx_steps = F.linear(x, weights.weight_ih, weights.bias_ih).unbind(0)  # all steps in one GEMM
    valid_steps = mask.unbind(0) if mask is not None else None
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    step_probe = probe() if probe is not None else None
    outputs: list[Tensor] = [x] * x.shape[0]  # placeholders, each overwritten below
    for t in steps:
        h, new_state = recurrence.step(gx_steps[t], state, weights.weight_hh, weights.bias_hh)
        if step_probe is not None:
            h, new_state = step_probe(t, h, new_state)
        if valid_steps is not None:
            valid = valid_steps[t]
            new_state = map_state(partial(torch.where, valid), new_state, state)  # hold state past length
            h = torch.where(valid, h, 0.0)  # zero output past the length (no per-step allocation)
        state = new_state
        outputs[t] = h
    return torch.stack(outputs), state
