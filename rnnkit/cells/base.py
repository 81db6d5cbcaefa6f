"""What every cell shares: the weights, the recurrence contract and the cell module.

A recurrent cell is an input projection followed by a recurrence::

    gx_t            = W_ih x_t + b_ih                      (one GEMM; the driver does all t at once)
    h_t, new_state  = recurrence.step(gx_t, state, W_hh, b_hh)

``Recurrence`` subclasses hold the equations and their configuration but no parameters, so the
same maths runs a stand-alone cell (:class:`Cell`) and every layer and direction of a sequence
layer (see :mod:`rnnkit.driver`). Gate blocks are stacked along the rows of ``W_ih``/``W_hh``
in torch's order (LSTM ``i, f, g, o``; GRU ``r, z, n``), which makes ``torch.nn`` weights load
as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from rnnkit.validation import check_cell_input

#: A cell's recurrent state: a tensor ``(N, H)`` (RNN, GRU) or an ``LSTMState(h, c)``.
State = Any


class Weights(NamedTuple):
    """The four parameters of one cell, or of one layer and direction of a sequence layer.

    Shapes, with ``G`` the number of gate blocks (RNN 1, GRU 3, LSTM 4):
    ``weight_ih (G*H, I)``, ``weight_hh (G*H, H)``, ``bias_ih (G*H,)``, ``bias_hh (G*H,)``;
    the biases are ``None`` when built with ``bias=False``.
    """

    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None
    bias_hh: Tensor | None


def map_state(fn: Callable[..., Tensor], *states: State) -> State:
    """Apply ``fn`` to each tensor of one or more states of the same kind (tensor or named tuple)."""
    if isinstance(states[0], tuple):  # LSTMState, or a plain (h, c) tuple as torch.nn.LSTM returns
        kind = type(states[0])
        mapped = map(fn, *states)
        return kind(*mapped) if hasattr(kind, "_fields") else kind(mapped)
    return fn(*states)


class Recurrence:
    """The equations of one recurrent step, free of parameters.

    Subclasses set ``gate_count`` and implement :meth:`step`; the weights come in as arguments.
    """

    gate_count: ClassVar[int]
    #: ``torch.nn`` module types this recurrence converts from and to (cell, layer).
    torch_cell: ClassVar[type[nn.Module]]
    torch_layer: ClassVar[type[nn.Module]]

    def __init__(self, hidden_size: int) -> None:
        self.hidden_size = check_size("hidden_size", hidden_size)

    def step(self, gx: Tensor, state: State, weight_hh: Tensor, bias_hh: Tensor | None) -> tuple[Tensor, State]:
        """One time step: ``gx = W_ih x_t + b_ih`` of shape ``(N, G*H)`` -> ``(h_t (N, H), new_state)``."""
        raise NotImplementedError

    def zero_state(self, batch: int, *, dtype: torch.dtype, device: torch.device) -> State:
        return torch.zeros(batch, self.hidden_size, dtype=dtype, device=device)

    def as_state(self, hx: Any) -> State:
        """Turn a user-given state into this recurrence's state type (identity but for LSTM)."""
        return hx

    def init_bias_(self, bias_ih: Tensor, bias_hh: Tensor) -> None:
        """rnnkit's bias initialisation: zeros, unless a subclass says otherwise."""
        nn.init.zeros_(bias_ih)
        nn.init.zeros_(bias_hh)

    def convert_torch_param(self, param: Tensor) -> Tensor:
        """Map a ``torch.nn`` parameter to ours (and back: every conversion is its own inverse)."""
        return param

    @classmethod
    def config_from_torch(cls, module: nn.Module) -> dict[str, Any]:
        """Constructor arguments of the rnnkit equivalent of a ``torch.nn`` cell or layer."""
        return {}

    def torch_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the ``torch.nn`` equivalent."""
        return {}

    def check_torch_equivalent(self) -> None:
        """Raise if this configuration has no ``torch.nn`` equivalent."""

    def extra_repr(self) -> str:
        return ""


def init_weights_(weights: Weights, recurrence: Recurrence, scheme: str) -> None:
    """Initialise one cell's weights in place.

    ``scheme="rnnkit"`` (default): each gate block of ``W_ih`` Xavier-uniform, each ``H x H``
    block of ``W_hh`` orthogonal, biases zero except where the recurrence says (LSTM forget-gate
    bias 1). ``scheme="torch"``: everything ``U(-1/sqrt(H), 1/sqrt(H))``, as ``torch.nn``.
    ``scheme="identity"``: ``W_hh = I``, ``W_ih ~ N(0, 0.001^2)``, biases zero (the IRNN of
    Le, Jaitly & Hinton 2015; for the single-gate RNN cell only).
    """
    hidden = recurrence.hidden_size
    with torch.no_grad():
        if scheme == "torch":
            bound = 1.0 / math.sqrt(hidden)
            for p in weights:
                if p is not None:
                    nn.init.uniform_(p, -bound, bound)
            return
        if scheme == "identity":
            nn.init.eye_(weights.weight_hh)
            nn.init.normal_(weights.weight_ih, std=0.001)
        else:
            for block in weights.weight_ih.split(hidden):
                nn.init.xavier_uniform_(block)
            for block in weights.weight_hh.split(hidden):
                # QR runs in float32: torch has no orthogonal_ for bfloat16 or float16
                block.copy_(nn.init.orthogonal_(torch.empty(block.shape, dtype=torch.float32, device=block.device)))
        if weights.bias_ih is not None:
            recurrence.init_bias_(weights.bias_ih, weights.bias_hh)


INIT_SCHEMES = ("rnnkit", "torch", "identity")


def check_size(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_init(init: str, recurrence: Recurrence) -> str:
    if init not in INIT_SCHEMES:
        raise ValueError(f"init must be one of {', '.join(map(repr, INIT_SCHEMES))}, got {init!r}")
    if init == "identity" and recurrence.gate_count != 1:
        raise ValueError("init='identity' (IRNN) applies to RNN cells only")
    return init


class Cell(nn.Module):
    """A recurrent cell: ``cell(x_t, state) -> (h_t, new_state)``.

    Parameters are named as in ``torch.nn.RNNCell/LSTMCell/GRUCell``: ``weight_ih (G*H, I)``,
    ``weight_hh (G*H, H)``, ``bias_ih (G*H,)``, ``bias_hh (G*H,)``.

    Inputs: ``x_t`` of shape ``(N, I)`` or ``(I,)``; ``state`` of the recurrence's kind with
    batch shape matching ``x_t``, or ``None`` for zeros. Returns ``h_t (N, H)`` (or ``(H,)``)
    and the new state.
    """

    #: The recurrence this cell class runs (set by each subclass).
    recurrence_type: ClassVar[type[Recurrence]]

    def __init__(
        self,
        recurrence: Recurrence,
        input_size: int,
        bias: bool = True,
        init: str = "rnnkit",
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.recurrence = recurrence
        self.input_size = check_size("input_size", input_size)
        self.hidden_size = recurrence.hidden_size
        self.bias = bias
        self.init = check_init(init, recurrence)
        rows = recurrence.gate_count * self.hidden_size
        factory = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(rows, self.hidden_size, **factory))
        self.bias_ih = nn.Parameter(torch.empty(rows, **factory)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(rows, **factory)) if bias else None
        self.reset_parameters()

    @property
    def weights(self) -> Weights:
        # from the parameter dict: four Module.__getattr__ lookups cost about 1.4 us of a 19 us
        # generation step (without bias, bias_ih and bias_hh are plain None attributes)
        params = self._parameters
        return Weights(params["weight_ih"], params["weight_hh"], params.get("bias_ih"), params.get("bias_hh"))

    def reset_parameters(self) -> None:
        init_weights_(self.weights, self.recurrence, self.init)

    def forward(self, x: Tensor, state: State = None) -> tuple[Tensor, State]:
        from rnnkit import kernels  # here: rnnkit.kernels imports this module

        weights = self.weights
        fast = kernels.fast_step(self.recurrence, weights, x, state)  # the generation loop's call
        if fast is not None:
            return fast
        unbatched, state = check_cell_input(self, x, state, weights.weight_ih)
        if unbatched:
            x = x.unsqueeze(0)
            state = None if state is None else map_state(lambda t: t.unsqueeze(0), state)
        if state is None:
            state = self.recurrence.zero_state(x.shape[0], dtype=x.dtype, device=x.device)
        h, state = kernels.step(self.recurrence, weights, x, state)
        if unbatched:
            h, state = h.squeeze(0), map_state(lambda t: t.squeeze(0), state)
        return h, state

    # -- interop with torch.nn -------------------------------------------------------------
    @classmethod
    def from_torch(cls, module: nn.Module) -> Cell:
        """Build the equivalent rnnkit cell from a ``torch.nn`` cell (same outputs and gradients)."""
        expected = cls.recurrence_type.torch_cell
        if type(module) is not expected:
            raise TypeError(f"{cls.__name__}.from_torch expects {expected.__name__}, got {type(module).__name__}")
        factory = {"device": module.weight_ih.device, "dtype": module.weight_ih.dtype}
        config = cls.recurrence_type.config_from_torch(module)
        cell = cls(module.input_size, module.hidden_size, bias=module.bias, **factory, **config)
        cell.load_state_dict(converted_params(module, cell.recurrence))
        return cell

    def to_torch(self) -> nn.Module:
        """The equivalent ``torch.nn`` cell (same outputs and gradients)."""
        self.recurrence.check_torch_equivalent()
        factory = {"device": self.weight_ih.device, "dtype": self.weight_ih.dtype}
        module = self.recurrence.torch_cell(
            self.input_size, self.hidden_size, self.bias, **self.recurrence.torch_kwargs(), **factory
        )
        module.load_state_dict(converted_params(self, self.recurrence))
        return module

    def extra_repr(self) -> str:
        extra = self.recurrence.extra_repr()
        return f"{self.input_size}, {self.hidden_size}" + (f", {extra}" if extra else "") + ("" if self.bias else ", bias=False")


def converted_params(source: nn.Module, recurrence: Recurrence) -> dict[str, Tensor]:
    """Every parameter of ``source`` by name, through the recurrence's torch conversion."""
    return {name: recurrence.convert_torch_param(p.detach()) for name, p in source.named_parameters()}
