"""The GRU cell (Cho et al. 2014), textbook "reset before" and cuDNN "reset after" forms."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rnnkit.cells.base import Cell, Recurrence


class GRURecurrence(Recurrence):
    """One GRU step. Rows of ``W_ih (3H, I)``, ``W_hh (3H, H)`` and the biases are the blocks
    ``r, z, n`` (torch's order)::

        r_t  = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)      reset gate
        z_t  = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)      update gate
        h~_t = tanh(W_in x_t + b_in + W_hn (r_t ⊙ h_{t-1}) + b_hn)      reset_after=False
        h~_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))      reset_after=True
        h_t  = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ h~_t

    ``reset_after=False`` is the textbook GRU (reset applied before the recurrent product);
    ``reset_after=True`` is the cuDNN / ``torch.nn.GRU`` candidate. In both, ``z_t`` weighs the
    *candidate*; torch's ``z`` weighs the old state, so converting negates the ``z`` rows and
    biases (``σ(-a) = 1 - σ(a)``), see :meth:`convert_torch_param`.
    """

    gate_count = 3
    torch_cell = nn.GRUCell
    torch_layer = nn.GRU

    def __init__(self, hidden_size: int, reset_after: bool = False) -> None:
        super().__init__(hidden_size)
        if not isinstance(reset_after, bool):
            raise TypeError(f"reset_after must be a bool, got {type(reset_after).__name__}")
        self.reset_after = reset_after

    def step(self, gx: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Tensor | None) -> tuple[Tensor, Tensor]:
        H = self.hidden_size
        gx_r, gx_z, gx_n = gx.chunk(3, dim=-1)
        if self.reset_after:
            gh_r, gh_z, gh_n = F.linear(h, weight_hh, bias_hh).chunk(3, dim=-1)
            r = torch.sigmoid(gx_r + gh_r)
            z = torch.sigmoid(gx_z + gh_z)
            h_tilde = torch.tanh(gx_n + r * gh_n)
        else:
            w_hrz, w_hn = weight_hh[: 2 * H], weight_hh[2 * H :]
            b_hrz, b_hn = (None, None) if bias_hh is None else (bias_hh[: 2 * H], bias_hh[2 * H :])
            gh_r, gh_z = F.linear(h, w_hrz, b_hrz).chunk(2, dim=-1)
            r = torch.sigmoid(gx_r + gh_r)
            z = torch.sigmoid(gx_z + gh_z)
            h_tilde = torch.tanh(gx_n + F.linear(r * h, w_hn, b_hn))
        h = (1 - z) * h + z * h_tilde
        return h, h

    def convert_torch_param(self, param: Tensor) -> Tensor:
        """Negate the update-gate block: torch's ``z`` is ``1 -`` ours. Its own inverse."""
        param = param.clone()
        param[self.hidden_size : 2 * self.hidden_size] *= -1
        return param

    @classmethod
    def config_from_torch(cls, module: nn.Module) -> dict[str, Any]:
        return {"reset_after": True}

    def check_torch_equivalent(self) -> None:
        if not self.reset_after:
            raise ValueError("only a GRU with reset_after=True has a torch.nn equivalent (torch applies the reset after W_hn h)")

    def extra_repr(self) -> str:
        return f"reset_after={self.reset_after}"


class GRUCell(Cell):
    """GRU cell; equations in :class:`GRURecurrence`.

    Arguments: ``input_size``, ``hidden_size``, ``bias=True``, ``reset_after=False`` (textbook;
    ``True`` is torch's / cuDNN's form), ``init="rnnkit"|"torch"``.
    State: a tensor ``(N, H)``; ``cell(x_t, h) -> (h_t, h_t)``.
    """

    recurrence_type = GRURecurrence

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        reset_after: bool = False,
        init: str = "rnnkit",
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(GRURecurrence(hidden_size, reset_after), input_size, bias, init, device, dtype)
