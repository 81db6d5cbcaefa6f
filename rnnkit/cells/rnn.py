"""The vanilla (Elman) RNN cell."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rnnkit.cells.base import Cell, Recurrence

NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


class RNNRecurrence(Recurrence):
    """``h_t = f(W_hh h_{t-1} + W_xh x_t + b_h)``, f = tanh or ReLU.

    ``W_xh`` is ``weight_ih (H, I)``, ``W_hh`` is ``weight_hh (H, H)`` and ``b_h`` is
    ``bias_ih + bias_hh`` (two biases, as in torch, so its weights load unchanged).
    """

    gate_count = 1
    torch_cell = nn.RNNCell
    torch_layer = nn.RNN

    def __init__(self, hidden_size: int, nonlinearity: str = "tanh") -> None:
        super().__init__(hidden_size)
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self.f = NONLINEARITIES[nonlinearity]

    def step(self, gx: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Tensor | None) -> tuple[Tensor, Tensor]:
        h = self.f(gx + F.linear(h, weight_hh, bias_hh))
        return h, h

    @classmethod
    def config_from_torch(cls, module: nn.Module) -> dict[str, Any]:
        return {"nonlinearity": module.nonlinearity}

    def torch_kwargs(self) -> dict[str, Any]:
        return {"nonlinearity": self.nonlinearity}

    def extra_repr(self) -> str:
        return f"nonlinearity={self.nonlinearity!r}"


class RNNCell(Cell):
    """Vanilla RNN cell: ``h_t = f(W_hh h_{t-1} + W_xh x_t + b_h)`` with f tanh (default) or ReLU.

    Arguments: ``input_size``, ``hidden_size``, ``bias=True``, ``nonlinearity="tanh"|"relu"``,
    ``init="rnnkit"|"torch"|"identity"`` (see :func:`rnnkit.cells.base.init_weights_`).
    State: a tensor ``(N, H)``; ``cell(x_t, h) -> (h_t, h_t)``.
    """

    recurrence_type = RNNRecurrence

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        *,
        init: str = "rnnkit",
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(RNNRecurrence(hidden_size, nonlinearity), input_size, bias, init, device, dtype)
