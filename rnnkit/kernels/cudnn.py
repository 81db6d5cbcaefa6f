"""torch's fused recurrent ops for one layer and direction: cuDNN on CUDA.

``torch._VF.rnn_tanh``, ``rnn_relu``, ``lstm`` and ``gru`` run a whole layer in one call, through
cuDNN on a CUDA device (and through torch's own kernels on the CPU, where the tests run them).
They compute rnnkit's equations for:

- the RNN, tanh or ReLU: ``h_t = f(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``;
- the LSTM, gate rows ``i, f, g, o``: the same equations as :class:`~rnnkit.cells.LSTMRecurrence`;
- the GRU with ``reset_after=True`` (cuDNN's candidate ``tanh(W_in x + b_in + r * (W_hn h +
  b_hn))``), after one conversion: torch's update gate weighs the old state, rnnkit's the
  candidate, so the ``z`` rows of both weights and both biases are negated
  (``1 - sigmoid(a) = sigmoid(-a)``: ``Recurrence.convert_torch_param``, the conversion of
  ``from_torch``), inside the graph, so gradients reach rnnkit's parameters.

The textbook GRU (``reset_after=False``, reset before the recurrent product) has no such op;
:func:`covers` is false for it and the driver runs the reference. Lengths: a mask's sequences
are packed (``pack_padded_sequence``), which has the driver's semantics: the state is held past
each length, outputs are zero there, and the reverse direction starts at each sequence's own
last step.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnkit.cells.base import Recurrence, State, Weights
from rnnkit.cells.gru import GRURecurrence
from rnnkit.cells.lstm import LSTMRecurrence, LSTMState
from rnnkit.cells.rnn import RNNRecurrence


def covers(recurrence: Recurrence) -> bool:
    """True for the recurrences torch's fused ops compute: RNN, LSTM, GRU with reset after."""
    if isinstance(recurrence, GRURecurrence):
        return recurrence.reset_after
    return isinstance(recurrence, (RNNRecurrence, LSTMRecurrence))


def _op_and_params(recurrence: Recurrence, weights: Weights) -> tuple[Callable[..., Any], list[Tensor]]:
    """The ``torch._VF`` op and its parameter list ``[w_ih, w_hh, (b_ih, b_hh)]`` in torch's form."""
    params = [weights.weight_ih, weights.weight_hh]
    if weights.bias_ih is not None:
        params += [weights.bias_ih, weights.bias_hh]
    params = [recurrence.convert_torch_param(p) for p in params]  # differentiable; the GRU's z rows
    if isinstance(recurrence, LSTMRecurrence):
        return torch._VF.lstm, params
    if isinstance(recurrence, GRURecurrence):
        return torch._VF.gru, params
    return (torch._VF.rnn_relu if recurrence.nonlinearity == "relu" else torch._VF.rnn_tanh), params


def run_direction(
    recurrence: Recurrence, weights: Weights, x: Tensor, state: State, mask: Tensor | None, reverse: bool
) -> tuple[Tensor, State]:
    """Same contract as :func:`rnnkit.kernels.reference.run_direction`, for a recurrence that
    :func:`covers`: one fused call (cuDNN on CUDA) instead of a loop of steps."""
    op, params = _op_and_params(recurrence, weights)
    lstm = isinstance(recurrence, LSTMRecurrence)
    hx = (state.h.unsqueeze(0), state.c.unsqueeze(0)) if lstm else state.unsqueeze(0)
    has_biases, train = weights.bias_ih is not None, torch.is_grad_enabled()
    lengths = None if mask is None else mask.squeeze(-1).sum(0)
    if reverse and lengths is None:
        x = x.flip(0)
    with warnings.catch_warnings():
        # cuDNN would like the weights in one flat buffer; ours are the layer's own tensors
        # (and, for the GRU, a converted copy), so it compacts them on each call
        warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous chunk")
        if lengths is None:
            out, *final = op(x, hx, params, has_biases, 1, 0.0, train, False, False)
        else:
            out, final = _run_packed(op, x, hx, params, has_biases, train, lengths, reverse)
    if reverse and lengths is None:
        out = out.flip(0)
    if lstm:
        return out, LSTMState(final[0][0], final[1][0])
    return out, final[0][0]


def _run_packed(
    op: Callable[..., Any], x: Tensor, hx: Tensor | tuple[Tensor, Tensor], params: list[Tensor],
    has_biases: bool, train: bool, lengths: Tensor, reverse: bool,
) -> tuple[Tensor, list[Tensor]]:  # fmt: skip
    """Sequences of different lengths, packed; the reverse direction reverses each sequence
    within its own length, so that it starts at its last step."""
    if reverse:
        x = _reverse_within_lengths(x, lengths)
    packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
    order, unorder = packed.sorted_indices, packed.unsorted_indices
    hx = tuple(h.index_select(1, order) for h in hx) if isinstance(hx, tuple) else hx.index_select(1, order)
    out, *final = op(packed.data, packed.batch_sizes, hx, params, has_biases, 1, 0.0, train, False)
    out, _ = pad_packed_sequence(packed._replace(data=out), total_length=x.shape[0])
    final = [h.index_select(1, unorder) for h in final]
    if reverse:
        out = _reverse_within_lengths(out, lengths)
    return out, final


def _reverse_within_lengths(x: Tensor, lengths: Tensor) -> Tensor:
    """``y[t, n] = x[lengths[n] - 1 - t, n]`` for ``t < lengths[n]``, else ``x[t, n]``."""
    steps = torch.arange(x.shape[0], device=x.device)[:, None]
    lengths = lengths.to(x.device)[None, :]
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)
    return x.gather(0, index.unsqueeze(-1).expand_as(x))
