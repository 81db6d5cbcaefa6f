"""Sequence layers ``RNN``, ``LSTM``, ``GRU``: drop-in replacements for ``torch.nn``'s.

Shape legend: ``T`` sequence length, ``N`` batch, ``I`` input size, ``H`` hidden size,
``L`` number of layers, ``D`` 2 if bidirectional else 1.

- ``input``: ``(T, N, I)``, ``(N, T, I)`` with ``batch_first=True``, ``(T, I)`` unbatched, or a
  ``PackedSequence``.
- ``hx``: ``(L*D, N, H)`` (``(L*D, H)`` unbatched), for the LSTM a pair ``(h_0, c_0)``;
  ``None`` means zeros.
- ``lengths`` (rnnkit's addition): ``N`` integers in ``[1, T]``, in any order, on any device.
  Each sequence stops at its own length: outputs past it are zero and ``h_n`` holds the state
  at its true last step. The reverse direction starts at each sequence's own last element.
- returns ``output (T, N, D*H)`` (same layout as the input) and ``h_n (L*D, N, H)`` (for the
  LSTM an :class:`~rnnkit.cells.LSTMState` ``(h_n, c_n)``, which unpacks like torch's tuple).

Parameters, as in ``torch.nn`` (so its state_dicts load as they are, GRU aside, see
:meth:`RecurrentLayer.from_torch`): ``weight_ih_l{k}{suffix} (G*H, I_k)``,
``weight_hh_l{k}{suffix} (G*H, H)``, ``bias_ih_l{k}{suffix}``, ``bias_hh_l{k}{suffix}`` with
``suffix`` ``""`` or ``"_reverse"``, ``I_0 = I`` and ``I_k = D*H`` above. Gate blocks are
LSTM ``i, f, g, o``; GRU ``r, z, n``; RNN one block.

Inputs are assumed finite: a NaN or Inf in the input or state propagates to the outputs.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnkit import driver
from rnnkit.cells.base import Recurrence, State, Weights, check_init, check_size, converted_params, init_weights_
from rnnkit.cells.gru import GRURecurrence
from rnnkit.cells.lstm import LSTMRecurrence
from rnnkit.cells.rnn import RNNRecurrence


class RecurrentLayer(nn.Module):
    """A multi-layer, optionally bidirectional recurrent layer over any :class:`Recurrence`.

    The constructor arguments mirror ``torch.nn.RNNBase``; see the module docstring for shapes.
    ``init`` picks the initialisation (:func:`rnnkit.cells.base.init_weights_`): ``"rnnkit"``
    (Xavier input weights, orthogonal recurrent blocks, LSTM forget bias 1; the default),
    ``"torch"`` (torch's uniform), or ``"identity"`` (IRNN, RNN only).

    ``weight_dropout`` (rnnkit's addition, AWD-LSTM's DropConnect; Merity et al. 2018): in
    training, each forward pass runs with a dropped copy of every ``weight_hh``, each element
    zeroed with this probability and the rest scaled by ``1 / (1 - p)``. One mask serves all
    time steps of the pass, so the recurrence is regularised without touching its fast path.
    In eval mode the weights are used as they are (``to_torch`` does not carry it over).
    """

    def __init__(
        self,
        recurrence: Recurrence,
        input_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        init: str = "rnnkit",
        weight_dropout: float = 0.0,
        proj_size: int = 0,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.recurrence = recurrence
        self.input_size = check_size("input_size", input_size)
        self.hidden_size = recurrence.hidden_size
        self.num_layers = check_size("num_layers", num_layers)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        if isinstance(weight_dropout, bool) or not isinstance(weight_dropout, (int, float)) or not 0 <= weight_dropout < 1:
            raise ValueError(f"weight_dropout must be a number in [0, 1), got {weight_dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                f"dropout={dropout} has no effect with num_layers=1: it applies between layers", UserWarning, stacklevel=3
            )
        if proj_size != 0:
            raise ValueError(f"proj_size is not supported by rnnkit (must be 0), got {proj_size!r}")
        self.bias, self.batch_first, self.bidirectional = bool(bias), bool(batch_first), bool(bidirectional)
        self.dropout, self.weight_dropout = float(dropout), float(weight_dropout)
        self.num_directions = 2 if bidirectional else 1
        self.init = check_init(init, recurrence)

        rows = recurrence.gate_count * self.hidden_size
        factory = {"device": device, "dtype": dtype}
        self._weight_names: list[list[Weights]] = []
        for layer in range(self.num_layers):
            layer_input = input_size if layer == 0 else self.hidden_size * self.num_directions
            names_per_direction = []
            for direction in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                names = Weights(*(f"{kind}{suffix}" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
                shapes = ((rows, layer_input), (rows, self.hidden_size), (rows,), (rows,))
                for name, shape in zip(names, shapes):
                    if bias or name.startswith("weight"):
                        self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
                    else:
                        self.register_parameter(name, None)
                names_per_direction.append(names)
            self._weight_names.append(names_per_direction)
        self.reset_parameters()

    def layer_weights(self) -> list[list[Weights]]:
        """Parameters as ``[layer][direction] -> Weights``."""
        return [[Weights(*(getattr(self, n) for n in names)) for names in layer] for layer in self._weight_names]

    def reset_parameters(self) -> None:
        for layer in self.layer_weights():
            for weights in layer:
                init_weights_(weights, self.recurrence, self.init)

    def forward(self, input: Tensor | PackedSequence, hx: Any = None, lengths: Any = None) -> tuple[Any, State]:
        """``(output, h_n)``; see the module docstring for shapes and the meaning of ``lengths``."""
        return driver.run(self, input, hx, lengths)

    # -- interop with torch.nn -------------------------------------------------------------
    #: The recurrence this layer class runs (set by each subclass).
    recurrence_type: ClassVar[type[Recurrence]]

    @classmethod
    def from_torch(cls, module: nn.Module) -> RecurrentLayer:
        """The equivalent rnnkit layer of a ``torch.nn.RNN/LSTM/GRU`` (same outputs and gradients).

        Parameters are copied by name; for the GRU, ``reset_after=True`` and the update-gate
        rows are negated (torch's ``z`` weighs the old state, ours the candidate).
        """
        expected = cls.recurrence_type.torch_layer
        if type(module) is not expected:
            raise TypeError(f"{cls.__name__}.from_torch expects {expected.__name__}, got {type(module).__name__}")
        if getattr(module, "proj_size", 0):
            raise ValueError("an LSTM with proj_size > 0 has no rnnkit equivalent")
        options = {name: getattr(module, name) for name in ("num_layers", "bias", "batch_first", "dropout", "bidirectional")}
        factory = {"device": module.weight_ih_l0.device, "dtype": module.weight_ih_l0.dtype}
        config = cls.recurrence_type.config_from_torch(module)
        layer = cls(module.input_size, module.hidden_size, **options, **factory, **config)
        layer.load_state_dict(converted_params(module, layer.recurrence))
        return layer

    def to_torch(self) -> nn.Module:
        """The equivalent ``torch.nn`` module (same outputs and gradients)."""
        self.recurrence.check_torch_equivalent()
        options = {name: getattr(self, name) for name in ("num_layers", "bias", "batch_first", "dropout", "bidirectional")}
        factory = {"device": self.weight_ih_l0.device, "dtype": self.weight_ih_l0.dtype}
        module = self.recurrence.torch_layer(
            self.input_size, self.hidden_size, **options, **self.recurrence.torch_kwargs(), **factory
        )
        module.load_state_dict(converted_params(self, self.recurrence))
        return module

    def extra_repr(self) -> str:
        parts = [f"{self.input_size}, {self.hidden_size}"]
        if self.num_layers != 1:
            parts.append(f"num_layers={self.num_layers}")
        if extra := self.recurrence.extra_repr():
            parts.append(extra)
        defaults = (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False), ("weight_dropout", 0.0))
        for name, default in defaults:
            if getattr(self, name) != default:
                parts.append(f"{name}={getattr(self, name)}")
        return ", ".join(parts)


class RNN(RecurrentLayer):
    """Multi-layer Elman RNN, ``h_t = f(W_hh h_{t-1} + W_xh x_t + b_h)``, f tanh or ReLU.

    Same arguments as ``torch.nn.RNN``; equations in :class:`rnnkit.cells.rnn.RNNRecurrence`.

    >>> rnn = RNN(10, 20, num_layers=2)
    >>> output, h_n = rnn(torch.randn(5, 3, 10))
    >>> output.shape, h_n.shape
    (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]))
    """

    recurrence_type = RNNRecurrence

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        init: str = "rnnkit",
        weight_dropout: float = 0.0,
    ) -> None:
        super().__init__(
            RNNRecurrence(hidden_size, nonlinearity), input_size, num_layers, bias, batch_first, dropout, bidirectional,
            init=init, weight_dropout=weight_dropout, device=device, dtype=dtype,
        )  # fmt: skip


class LSTM(RecurrentLayer):
    """Multi-layer LSTM; equations in :class:`rnnkit.cells.lstm.LSTMRecurrence`.

    Same arguments as ``torch.nn.LSTM`` (``proj_size`` must be 0). ``hx`` is ``(h_0, c_0)``;
    returns ``(output, LSTMState(h_n, c_n))``.

    >>> lstm = LSTM(10, 20, batch_first=True)
    >>> output, (h_n, c_n) = lstm(torch.randn(3, 5, 10), lengths=[5, 2, 4])
    >>> output.shape, h_n.shape
    (torch.Size([3, 5, 20]), torch.Size([1, 3, 20]))
    """

    recurrence_type = LSTMRecurrence

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        init: str = "rnnkit",
        weight_dropout: float = 0.0,
    ) -> None:
        super().__init__(
            LSTMRecurrence(hidden_size), input_size, num_layers, bias, batch_first, dropout, bidirectional,
            init=init, weight_dropout=weight_dropout, proj_size=proj_size, device=device, dtype=dtype,
        )  # fmt: skip


class GRU(RecurrentLayer):
    """Multi-layer GRU; equations in :class:`rnnkit.cells.gru.GRURecurrence`.

    Same arguments as ``torch.nn.GRU`` plus ``reset_after``: ``False`` (default) is the
    textbook GRU, reset applied before the recurrent product; ``True`` is torch's / cuDNN's
    form. Our update gate weighs the candidate in both; :meth:`from_torch` and
    :meth:`to_torch` convert (``to_torch`` needs ``reset_after=True``).
    """

    recurrence_type = GRURecurrence

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        reset_after: bool = False,
        init: str = "rnnkit",
        weight_dropout: float = 0.0,
    ) -> None:
        super().__init__(
            GRURecurrence(hidden_size, reset_after), input_size, num_layers, bias, batch_first, dropout, bidirectional,
            init=init, weight_dropout=weight_dropout, device=device, dtype=dtype,
        )  # fmt: skip
