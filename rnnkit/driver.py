"""The one sequence driver: runs any recurrence over time, layers and directions.

It owns everything that is not the cell's maths:

- **layout**: time-major ``(T, N, I)``, ``batch_first`` ``(N, T, I)``, unbatched ``(T, I)`` and
  ``PackedSequence`` inputs are all brought to time-major once, and outputs restored;
- **lengths**: per-sequence lengths become a ``(T, N, 1)`` mask; states are held and outputs
  zeroed past each length, so ``h_n`` is each sequence's state at its true last step;
- **direction and layers**: the reverse direction runs t = T-1 ... 0; bidirectional outputs are
  concatenated ``[forward, reverse]`` along features; dropout sits between layers in training
  (:func:`rnnkit.dropout.dropout`: torch's semantics, a counter-based mask), and
  ``weight_dropout`` drops elements of each ``weight_hh`` once per pass (DropConnect);
- **truncation**: :func:`detach_state` cuts the graph at a TBPTT chunk boundary;
- **dispatch**: :func:`rnnkit.kernels.select` picks the backend per call.

States are ordered as in ``torch.nn``: index ``layer * num_directions + direction``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit import kernels
from rnnkit.cells.base import Recurrence, State, Weights, map_state
from rnnkit.dropout import dropout
from rnnkit.validation import check_features, check_lengths, check_state_tensors, check_tensor


class SequenceLayer(Protocol):
    """What the driver reads from a layer (see :class:`rnnkit.layers.RecurrentLayer`)."""

    recurrence: Recurrence
    input_size: int
    hidden_size: int
    num_layers: int
    num_directions: int
    batch_first: bool
    dropout: float
    weight_dropout: float
    training: bool

    def layer_weights(self) -> Sequence[Sequence[Weights]]: ...


def detach_state(state: State) -> State:
    """Cut the autograd graph at a state (a tensor, an ``LSTMState``, or ``None``): TBPTT's boundary."""
    return None if state is None else map_state(Tensor.detach, state)


def run(layer: SequenceLayer, input: Tensor | PackedSequence, hx: Any = None, lengths: Any = None) -> tuple[Any, State]:
    """Run ``layer`` over ``input``; returns ``(output, h_n)`` shaped as ``torch.nn`` does."""
    layer_weights = layer.layer_weights()
    if layer.weight_dropout > 0 and layer.training:  # one DropConnect mask per pass, shared by all time steps
        p = layer.weight_dropout
        layer_weights = [[w._replace(weight_hh=F.dropout(w.weight_hh, p)) for w in directions] for directions in layer_weights]
    x, lengths, restore = _to_time_major(layer, input, lengths, layer_weights[0][0].weight_ih)
    steps, batch = x.shape[:2]
    states = _initial_states(layer, hx, batch, x, unbatched=restore.unbatched)
    mask = None
    if lengths is not None and int(lengths.min()) < steps:
        mask = (torch.arange(steps, device=x.device)[:, None] < lengths.to(x.device)[None, :]).unsqueeze(-1)

    _, run_direction = kernels.select(layer.recurrence, x)
    finals: list[State] = []
    for index, directions in enumerate(layer_weights):
        outputs = []
        for direction, weights in enumerate(directions):
            state = states[index * layer.num_directions + direction]
            out, final = run_direction(layer.recurrence, weights, x, state, mask, reverse=direction == 1)
            outputs.append(out)
            finals.append(final)
        x = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
        if layer.dropout > 0 and layer.training and index < layer.num_layers - 1:
            x = dropout(x, layer.dropout)

    h_n = map_state(lambda *parts: torch.stack(parts), *finals)
    return restore.output(x, lengths), restore.state(h_n)


class _Restore:
    """Undo the layout change on the way out."""

    def __init__(self, batch_first: bool, unbatched: bool, packed: PackedSequence | None) -> None:
        self.batch_first, self.unbatched, self.packed = batch_first, unbatched, packed

    def output(self, y: Tensor, lengths: Tensor | None) -> Tensor | PackedSequence:
        if self.packed is not None:
            order = self.packed.sorted_indices
            if order is not None:
                y, lengths = y.index_select(1, order), lengths[order.to(lengths.device)]
            data = pack_padded_sequence(y, lengths.cpu(), enforce_sorted=True).data
            return PackedSequence(data, self.packed.batch_sizes, self.packed.sorted_indices, self.packed.unsorted_indices)
        if self.unbatched:
            return y.squeeze(1)
        return y.transpose(0, 1) if self.batch_first else y

    def state(self, h_n: State) -> State:
        return map_state(lambda t: t.squeeze(1), h_n) if self.unbatched else h_n


def _to_time_major(layer: SequenceLayer, input: Any, lengths: Any, param: Tensor) -> tuple[Tensor, Tensor | None, _Restore]:
    """Time-major input and validated lengths; ``param`` (a first-layer weight) fixes dtype and device."""
    if isinstance(input, PackedSequence):
        if lengths is not None:
            raise ValueError("lengths must not be given with a PackedSequence input: it carries its own")
        x, lengths = pad_packed_sequence(input)
        check_features("input", x, layer.input_size, param)
        return x, lengths, _Restore(False, False, input)
    x = check_tensor("input", input)
    if x.dim() not in (2, 3):
        raise ValueError(
            f"input must be 3-D ({'batch, seq' if layer.batch_first else 'seq, batch'}, input_size) "
            f"or 2-D unbatched (seq, input_size), got shape {tuple(x.shape)}"
        )
    check_features("input", x, layer.input_size, param)
    if x.shape[1 if x.dim() == 3 and layer.batch_first else 0] == 0:  # as torch.nn: a sequence has a step
        raise ValueError(f"input must have at least one time step, got shape {tuple(x.shape)}")
    unbatched = x.dim() == 2
    if unbatched:
        x = x.unsqueeze(1)
    elif layer.batch_first:
        x = x.transpose(0, 1)
    if lengths is not None:
        lengths = check_lengths(lengths, batch=x.shape[1], steps=x.shape[0])
    return x, lengths, _Restore(layer.batch_first, unbatched, None)


def _initial_states(layer: SequenceLayer, hx: Any, batch: int, x: Tensor, unbatched: bool) -> list[State]:
    """One initial state per (layer, direction), from ``hx`` or zeros."""
    recurrence = layer.recurrence
    count = layer.num_layers * layer.num_directions
    if hx is None:
        zero = recurrence.zero_state(batch, dtype=x.dtype, device=x.device)
        return [zero] * count
    hx = recurrence.as_state(hx)
    expected = (count, layer.hidden_size) if unbatched else (count, batch, layer.hidden_size)
    check_state_tensors("hx", hx, expected, x)
    if unbatched:
        hx = map_state(lambda t: t.unsqueeze(1), hx)
    return [map_state(lambda t, i=i: t[i], hx) for i in range(count)]
