"""The fused native CPU kernel (``csrc/recurrence.cpp``), built on first use and cached.

It runs one layer and direction over the whole sequence; the equations are those of
:mod:`rnnkit.cells` and :func:`rnnkit.kernels.reference.run_direction` is its oracle (tests
hold forward, final states and every gradient equal). The build uses
``torch.utils.cpp_extension`` (a C++ compiler and ninja) and lands in torch's extension cache
(``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``), compiled for this CPU.
If it cannot be built, :func:`available` is False and the driver uses the reference.
"""

from __future__ import annotations

import hashlib
import os
import platform
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from rnnkit.cells.base import Recurrence, State, Weights
from rnnkit.cells.gru import GRURecurrence
from rnnkit.cells.lstm import LSTMRecurrence, LSTMState
from rnnkit.cells.rnn import RNNRecurrence
from rnnkit.kernels import reference

SOURCE = Path(__file__).parent / "csrc" / "recurrence.cpp"
RNN_TANH, RNN_RELU, LSTM, GRU_BEFORE, GRU_AFTER = range(5)
_EMPTY = torch.empty(0)


def kind_of(recurrence: Recurrence) -> int | None:
    """The kernel's code for a recurrence, or None if it has no native kernel."""
    if type(recurrence) is LSTMRecurrence:
        return LSTM
    if type(recurrence) is GRURecurrence:
        return GRU_AFTER if recurrence.reset_after else GRU_BEFORE
    if type(recurrence) is RNNRecurrence:
        return RNN_TANH if recurrence.nonlinearity == "tanh" else RNN_RELU
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def compile_flags() -> list[str]:
    """The kernel's compiler flags (also used by ``benchmarks/kernel_ab.py``)."""
    # -fno-trapping-math lets the gate loops vectorise (no result changes: nothing relies on FP traps)
    # -fopenmp compiles ATen's inline parallel_for; it is not linked, so its symbols resolve to
    # the OpenMP runtime torch itself loaded (one thread pool, not two).
    return [
        "-O3",
        "-std=c++20",
        "-fopenmp",
        "-fno-trapping-math",
        "-fno-math-errno",
        "-march=native" if platform.machine() in ("x86_64", "AMD64") else "-mcpu=native",
    ]


@cache
def extension() -> Any | None:
    """The compiled extension, or None (with one warning) when it cannot be built."""
    if os.environ.get("RNNKIT_NATIVE", "1") == "0":
        return None
    flags = compile_flags()
    key = hashlib.sha256(f"{SOURCE.read_text()}{flags}{torch.__version__}{_cpu_model()}".encode()).hexdigest()[:16]
    try:
        from torch.utils.cpp_extension import load

        _put_ninja_on_path()
        return load(name=f"rnnkit_recurrence_{key}", sources=[str(SOURCE)], extra_cflags=flags, verbose=False)
    except Exception as error:  # no compiler, no ninja, no headers: the reference still works
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        warnings.warn(
            f"rnnkit: the native kernel could not be built ({reason}); using the slower reference implementation",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def _put_ninja_on_path() -> None:
    """torch looks for ``ninja`` on PATH; the pip package's binary may not be there (a venv's
    python run without activating the venv)."""
    try:
        import ninja
    except ImportError:
        return
    if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def available() -> bool:
    return extension() is not None


class _Recurrence(torch.autograd.Function):
    """Autograd wrapper: inputs ``x, h0, c0, w_ih, b_ih, w_hh, b_hh``; outputs ``y, h_n, c_n``.

    ``x (T, N, I)`` is the layer's input and the kernel does the input projection too; with
    ``w_ih`` empty (bf16 mode) ``x`` is the projection ``gx (T, N, G*H)`` made by the caller."""

    @staticmethod
    def forward(ctx, kind, reverse, bf16, valid, x, h0, c0, w_ih, b_ih, w_hh, b_hh):  # noqa: ANN001
        save = any(ctx.needs_input_grad)  # grad mode is off inside forward; this says if backward will run
        y, h_n, c_n, *saved = extension().forward(kind, x, h0, c0, w_ih, b_ih, w_hh, b_hh, valid, reverse, save, bf16)
        projected = w_ih.numel() > 0
        if save:
            ctx.save_for_backward(x if projected else _EMPTY, w_ih, w_hh, valid, *saved)
        ctx.kind, ctx.reverse, ctx.bf16, ctx.lstm, ctx.projected = kind, reverse, bf16, kind == LSTM, projected
        ctx.has_bias, ctx.has_ih_bias = b_hh.numel() > 0, b_ih.numel() > 0
        return y, h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n, dc_n):  # noqa: ANN001
        x, w_ih, w_hh, valid, acts, hprev, third = ctx.saved_tensors
        dy = _EMPTY if dy is None else dy
        dh_n = torch.zeros_like(hprev[0]) if dh_n is None else dh_n
        dc_n = (torch.zeros_like(hprev[0]) if dc_n is None else dc_n) if ctx.lstm else _EMPTY
        need_dx = ctx.needs_input_grad[4]
        d_in, dh0, dc0, dw_hh, db_hh, *ih = extension().backward(
            ctx.kind, dy, dh_n, dc_n, acts, hprev, third, w_hh, valid, ctx.reverse, ctx.has_bias, ctx.bf16,
            x, w_ih, need_dx, ctx.has_ih_bias,
        )  # fmt: skip
        dw_ih, db_ih = ih if ctx.projected else (None, None)
        return (
            None, None, None, None,
            d_in if need_dx else None, dh0, dc0 if ctx.lstm else None,
            dw_ih, db_ih if ctx.has_ih_bias else None, dw_hh, db_hh if ctx.has_bias else None,
        )  # fmt: skip


def bf16_mode(weight: Tensor) -> bool:
    """True under ``torch.autocast("cpu", dtype=torch.bfloat16)`` for float32 weights: the
    recurrence's GEMMs then take bf16 operands."""
    return (
        weight.dtype == torch.float32 and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


def run_step(recurrence: Recurrence, weights: Weights, x: Tensor, state: Any, max_batch: int) -> tuple[Tensor, State] | None:
    """Same contract as :func:`rnnkit.kernels.reference.step`, without autograd: one kernel
    call does both products and the gate pass (the inference loop's latency path). ``x`` is
    ``(N, I)`` with ``N <= max_batch`` and ``state`` a tensor ``(N, H)`` or, for the LSTM, a pair
    ``(h, c)``. Returns None when the arguments do not fit that: the kernel checks them (cheaply,
    in C++) so that a valid call needs no Python validation; the caller validates the rest and
    reports what is wrong."""
    w_ih, w_hh, b_ih, b_hh = weights
    b_ih, b_hh = _EMPTY if b_ih is None else b_ih, _EMPTY if b_hh is None else b_hh
    if not isinstance(x, Tensor):
        return None
    if type(recurrence) is LSTMRecurrence:
        if not (isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], Tensor) and isinstance(state[1], Tensor)):
            return None
        out = extension().step(LSTM, x, state[0], state[1], w_ih, b_ih, w_hh, b_hh, max_batch)
        return (out[0], LSTMState(*out)) if out else None
    if not isinstance(state, Tensor):
        return None
    out = extension().step(kind_of(recurrence), x, state, _EMPTY, w_ih, b_ih, w_hh, b_hh, max_batch)
    return (out[0], out[0]) if out else None


def run_step_direction(
    recurrence: Recurrence, weights: Weights, x: Tensor, state: State, mask: Tensor | None, reverse: bool
) -> tuple[Tensor, State]:
    """:func:`run_direction` for a sequence of one step (``x (1, N, I)``, no mask) without
    autograd; the driver has validated it."""
    out = run_step(recurrence, weights, x[0], state, max_batch=x.shape[1])
    if out is None:  # the driver validated the step, so it fits; if not, the reference runs it
        return reference.run_direction(recurrence, weights, x, state, mask, reverse)
    h, state = out
    return h.unsqueeze(0), state


def run_direction(
    recurrence: Recurrence, weights: Weights, x: Tensor, state: State, mask: Tensor | None, reverse: bool
) -> tuple[Tensor, State]:
    """Same contract as :func:`rnnkit.kernels.reference.run_direction`, one fused kernel call,
    input projection included (its GEMM and gradients run on the kernel's pooled buffers)."""
    kind = kind_of(recurrence)
    h0, c0 = (state.h, state.c) if kind == LSTM else (state, _EMPTY)
    valid = _EMPTY if mask is None else mask.squeeze(-1).to(torch.uint8)
    b_hh = _EMPTY if weights.bias_hh is None else weights.bias_hh
    bf16 = bf16_mode(weights.weight_hh)
    if bf16:
        # Under torch.autocast("cpu", dtype=torch.bfloat16) the input projection is autocast's bf16
        # GEMM, and the recurrence's GEMMs take bf16 operands too (see csrc/recurrence.cpp);
        # state and gates stay float32.
        x = F.linear(x, weights.weight_ih, weights.bias_ih).to(weights.weight_hh.dtype)
        w_ih = b_ih = _EMPTY
    else:
        w_ih, b_ih = weights.weight_ih, _EMPTY if weights.bias_ih is None else weights.bias_ih
    y, h_n, c_n = _Recurrence.apply(kind, reverse, bf16, valid, x, h0, c0, w_ih, b_ih, weights.weight_hh, b_hh)
    return y, (LSTMState(h_n, c_n) if kind == LSTM else h_n)
