"""The LSTM cell (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rnnkit.cells.base import Cell, Recurrence


class LSTMState(NamedTuple):
    """LSTM state: hidden ``h (N, H)`` and cell ``c (N, H)``. Unpacks like torch's ``(h, c)``."""

    h: Tensor
    c: Tensor


class LSTMRecurrence(Recurrence):
    """One LSTM step. With ``a = W·[h_{t-1}, x_t] + b`` split in gate order ``i, f, g, o``::

        i_t  = σ(a_i)                     input gate
        f_t  = σ(a_f)                     forget gate
        C~_t = tanh(a_g)                  candidate
        o_t  = σ(a_o)                     output gate
        C_t  = f_t ⊙ C_{t-1} + i_t ⊙ C~_t
        h_t  = o_t ⊙ tanh(C_t)

    ``W·[h, x]`` is ``W_hh h + W_ih x`` and ``b = b_ih + b_hh``; rows of ``W_ih (4H, I)`` and
    ``W_hh (4H, H)`` are the blocks ``i, f, g, o``, as in ``torch.nn.LSTM``.
    """

    gate_count = 4
    torch_cell = nn.LSTMCell
    torch_layer = nn.LSTM

    def step(self, gx: Tensor, state: LSTMState, weight_hh: Tensor, bias_hh: Tensor | None) -> tuple[Tensor, LSTMState]:
        h, c = state
        a_i, a_f, a_g, a_o = (gx + F.linear(h, weight_hh, bias_hh)).chunk(4, dim=-1)
        i, f, c_tilde, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
        c = f * c + i * c_tilde
        h = o * torch.tanh(c)
        return h, LSTMState(h, c)

    def zero_state(self, batch: int, *, dtype: torch.dtype, device: torch.device) -> LSTMState:
        zeros = torch.zeros(batch, self.hidden_size, dtype=dtype, device=device)
        return LSTMState(zeros, zeros)

    def as_state(self, hx: Any) -> LSTMState:
        if type(hx) is LSTMState:
            return hx
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise TypeError(f"LSTM state must be a pair (h, c) of tensors, got {type(hx).__name__}")
        return LSTMState(*hx)

    def init_bias_(self, bias_ih: Tensor, bias_hh: Tensor) -> None:
        """Zeros, but the forget gate's total bias is 1 (Gers et al. 2000; Jozefowicz et al. 2015)."""
        super().init_bias_(bias_ih, bias_hh)
        bias_ih[self.hidden_size : 2 * self.hidden_size] = 1.0


class LSTMCell(Cell):
    """LSTM cell; equations in :class:`LSTMRecurrence`.

    Arguments: ``input_size``, ``hidden_size``, ``bias=True``, ``init="rnnkit"|"torch"``.
    State: :class:`LSTMState` ``(h, c)``, each ``(N, H)``; ``cell(x_t, (h, c)) -> (h_t, LSTMState)``.
    """

    recurrence_type = LSTMRecurrence

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        init: str = "rnnkit",
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(LSTMRecurrence(hidden_size), input_size, bias, init, device, dtype)
