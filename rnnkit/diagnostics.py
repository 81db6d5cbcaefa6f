"""Make vanishing and exploding gradients visible.

:func:`state_gradient_norms` gives ``||dL/dh_t||`` for every time step and every layer (and
direction) of any model built from rnnkit layers. It runs the reference loop with a *probe*:
after each step a zero tensor ``ε_t`` is added to ``h_t``, so ``dL/dε_t`` is the total
derivative ``dL/dh_t``, through the output and through every later step.
:func:`jacobian_norms` gives ``||∂h_T / ∂h_{T-k}||_F``, the norm of the product of the
recurrent Jacobians over a lag ``k``, per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from rnnkit import kernels
from rnnkit.cells.lstm import LSTMState
from rnnkit.kernels import reference


@contextmanager
def _probes() -> Iterator[list[dict[int, Tensor]]]:
    """Record one ``{t: ε_t}`` per layer and direction run inside the block (driver order)."""
    calls: list[dict[int, Tensor]] = []

    def factory():
        eps: dict[int, Tensor] = {}
        calls.append(eps)

        def step(t: int, h: Tensor, state):
            eps[t] = torch.zeros_like(h, requires_grad=True)
            h = h + eps[t]
            return h, (LSTMState(h, state.c) if isinstance(state, LSTMState) else h)

        return step

    previous, reference.probe = reference.probe, factory
    try:
        with kernels.use_backend("reference"):
            yield calls
    finally:
        reference.probe = previous


def _ordered(eps: dict[int, Tensor]) -> list[Tensor]:
    return [eps[t] for t in sorted(eps)]


def state_gradient_norms(loss_fn: Callable[[], Tensor]) -> list[Tensor]:
    """``||dL/dh_t||`` (2-norm over hidden units, mean over the batch) for ``t = 0 .. T-1``.

    ``loss_fn()`` runs the model (any module built on rnnkit layers) and returns a scalar loss;
    the result holds one ``(T,)`` tensor per layer and direction, in the driver's order
    (``layer * num_directions + direction``).
    """
    with _probes() as calls:
        loss = loss_fn()
    flat = [e for eps in calls for e in _ordered(eps)]
    grads = torch.autograd.grad(loss, flat, allow_unused=True)
    norms, start = [], 0
    for eps in calls:
        part = grads[start : start + len(eps)]
        start += len(eps)
        norms.append(torch.stack([torch.zeros(()) if g is None else g.norm(dim=-1).mean() for g in part]).detach())
    return norms


def jacobian_norms(run: Callable[[], list[Tensor]], layer: int = -1) -> Tensor:
    """``||∂h_T / ∂h_t||_F`` for every ``t`` (index = t), mean over the batch, for one layer.

    ``run()`` runs the model and returns that layer's outputs ``(N, T, H)`` (batch-first) or a
    list of them per layer; the Jacobians are taken exactly, one backward pass per hidden unit
    (batched).
    """
    with _probes() as calls:
        outputs = run()
    out = outputs[layer] if isinstance(outputs, (list, tuple)) else outputs
    eps = _ordered(calls[layer if layer >= 0 else len(calls) + layer])
    h_last = out[:, -1]  # (N, H)
    hidden = h_last.shape[-1]
    basis = torch.eye(hidden, dtype=h_last.dtype).unsqueeze(1).expand(hidden, *h_last.shape)  # (H, N, H)
    grads = torch.autograd.grad(h_last, eps, grad_outputs=basis, is_grads_batched=True, allow_unused=True)
    # grads[t]: (H_out, N, H_in) -> Frobenius norm per sequence, then the batch mean
    return torch.stack([g.pow(2).sum(dim=(0, 2)).sqrt().mean() if g is not None else torch.zeros(()) for g in grads]).detach()
