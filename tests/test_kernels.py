"""The fused native kernel against the reference: forward, final states and every gradient
(fp64 to 1e-10), for every cell, variant and direction, with and without lengths, bias and
initial state; gradcheck; and the fallback when no compiler is available."""

import itertools
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from rnnkit import GRU, LSTM, RNN
from rnnkit.cells import GRURecurrence, LSTMRecurrence, LSTMState, RNNRecurrence, Weights
from rnnkit.kernels import native, reference, use_backend

T, B, I, H = 7, 5, 3, 4
RECURRENCES = {
    "rnn-tanh": RNNRecurrence(H, "tanh"),
    "rnn-relu": RNNRecurrence(H, "relu"),
    "lstm": LSTMRecurrence(H),
    "gru-reset-before": GRURecurrence(H, reset_after=False),
    "gru-reset-after": GRURecurrence(H, reset_after=True),
}


def test_the_kernel_builds_here():
    """CI has a compiler: the native kernel must build (a silent fallback would hide a defect)."""
    assert native.available()


def run(fn, recurrence, weights, x, state, mask, reverse):
    y, final = fn(recurrence, weights, x, state, mask, reverse)
    return [y, *(final if isinstance(final, tuple) else (final,))]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("reverse,lengths,bias,given_state", list(itertools.product([False, True], repeat=4)))
@pytest.mark.parametrize("name", RECURRENCES)
def test_native_equals_reference(name, reverse, lengths, bias, given_state, dtype):
    recurrence = RECURRENCES[name]
    rows = recurrence.gate_count * H
    make = lambda *shape: torch.randn(*shape, dtype=dtype, requires_grad=True)  # noqa: E731
    weights = Weights(make(rows, I), make(rows, H) * 0.5, *((make(rows), make(rows)) if bias else (None, None)))
    x = make(T, B, I)
    h0, c0 = (make(B, H), make(B, H)) if given_state else (torch.zeros(B, H, dtype=dtype),) * 2
    state = LSTMState(h0, c0) if name == "lstm" else h0
    mask = (torch.arange(T)[:, None] < torch.tensor([7, 3, 1, 6, 4])).unsqueeze(-1) if lengths else None
    leaves = [t for t in (x, h0, c0, *weights) if t is not None and t.requires_grad]
    results = []
    for fn in (reference.run_direction, native.run_direction):
        outputs = run(fn, recurrence, weights, x, state, mask, reverse)
        probes = [torch.randn(o.shape, dtype=dtype, generator=torch.Generator().manual_seed(i)) for i, o in enumerate(outputs)]
        grads = torch.autograd.grad(sum((p * o).sum() for p, o in zip(probes, outputs)), leaves, allow_unused=True)
        results.append(outputs + [g if g is not None else torch.zeros(()) for g in grads])
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-5}
    for k, (ours, oracle) in enumerate(zip(results[1], results[0])):
        torch.testing.assert_close(ours, oracle, **tol, msg=f"result {k}")


@pytest.mark.parametrize("name", RECURRENCES)
def test_native_gradcheck(name):
    recurrence = RECURRENCES[name]
    rows = recurrence.gate_count * H
    x = torch.randn(4, 3, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, H, dtype=torch.float64, requires_grad=True)
    params = [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in ((rows, I), (rows, H), (rows,), (rows,))]
    mask = (torch.arange(4)[:, None] < torch.tensor([4, 2, 3])).unsqueeze(-1)

    def fn(x, h0, *p):
        state = LSTMState(h0, torch.tanh(h0)) if name == "lstm" else h0
        return run(native.run_direction, recurrence, Weights(*p), x, state, mask, True)

    assert torch.autograd.gradcheck(fn, (x, h0, *params))


def test_inference_saves_nothing_and_matches():
    layer = LSTM(I, H, num_layers=2)
    x = torch.randn(T, B, I)
    with torch.no_grad(), use_backend("native"):
        fast, _ = layer(x)
    with torch.no_grad(), use_backend("reference"):
        slow, _ = layer(x)
    torch.testing.assert_close(fast, slow)


def test_long_sequence_with_denormal_states_matches():
    """Long decaying sequences produce denormal floats; the kernel flushes them to zero, which
    changes results only below float's normal range."""
    layer = RNN(2, 16, nonlinearity="relu")
    with torch.no_grad():
        layer.weight_hh_l0.copy_(torch.eye(16) * 0.5)
    x = torch.zeros(300, 2, 2)
    x[0] = 1.0
    with use_backend("native"):
        fast, _ = layer(x)
    with use_backend("reference"):
        slow, _ = layer(x)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-37)


def test_without_a_compiler_the_reference_runs_with_one_warning(tmp_path):
    script = textwrap.dedent(
        """
        import warnings, torch, rnnkit
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            layer = rnnkit.GRU(3, 4)
            out1, _ = layer(torch.randn(5, 2, 3))
            out2, _ = layer(torch.randn(5, 2, 3))
        messages = [str(w.message) for w in caught if "native kernel" in str(w.message)]
        print(len(messages), rnnkit.last_backend(), tuple(out1.shape))
        """
    )
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "reference", "(5,", "2,", "4)"]


def test_layers_dispatch_to_native_on_cpu():
    import rnnkit

    for layer in (RNN(I, H), LSTM(I, H), GRU(I, H), GRU(I, H, reset_after=True)):
        layer(torch.randn(T, B, I))
        assert rnnkit.last_backend() == "native"
    with use_backend("reference"):
        LSTM(I, H)(torch.randn(T, B, I))
        assert rnnkit.last_backend() == "reference"
    LSTM(I, H, dtype=torch.bfloat16)(torch.randn(T, B, I, dtype=torch.bfloat16))
    assert rnnkit.last_backend() == "reference", "no native bf16 path: the reference runs"
    with pytest.raises(ValueError, match="backend must be one of"):
        with use_backend("cudnn"):
            pass
