"""The fused native kernel against the reference: forward, final states and every gradient
(fp64 to 1e-10), for every cell, variant and direction, with and without lengths, bias and
initial state; gradcheck; the single-step inference path; and the fallback when no compiler is
available."""

import contextlib
import itertools
import os
import platform
import subprocess
import sys
import sysconfig
import textwrap

import pytest
import torch

import rnnkit
from rnnkit import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from rnnkit.cells import GRURecurrence, LSTMRecurrence, LSTMState, RNNRecurrence, Weights
from rnnkit.kernels import STEP_MAX_BATCH, native, reference, use_backend

T, B, I, H = 7, 5, 3, 4


def make_recurrence(name, hidden):
    return {
        "rnn-tanh": lambda: RNNRecurrence(hidden, "tanh"),
        "rnn-relu": lambda: RNNRecurrence(hidden, "relu"),
        "lstm": lambda: LSTMRecurrence(hidden),
        "gru-reset-before": lambda: GRURecurrence(hidden, reset_after=False),
        "gru-reset-after": lambda: GRURecurrence(hidden, reset_after=True),
    }[name]()


RECURRENCES = {name: make_recurrence(name, H) for name in ("rnn-tanh", "rnn-relu", "lstm", "gru-reset-before", "gru-reset-after")}


def test_the_kernel_builds_here():
    """CI has a compiler: the native kernel must build (a silent fallback would hide a defect)."""
    assert native.available()


@pytest.mark.slow  # a compile of the kernel each, about a minute
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 vector widths only")
@pytest.mark.parametrize("march", ["x86-64-v3", "x86-64-v4"], ids=["avx2", "avx512"])
def test_the_kernel_compiles_for_each_x86_vector_width(march, tmp_path):
    """The register tiles take their shapes from the vector width (AVX-512 or AVX2), so the
    source must compile for both, whatever this CPU has: an AVX-512-only register constraint
    once left AVX2 hosts without the kernel. Compiled only, not loaded (this CPU may lack the
    instructions); each host's default suite checks its own build against the reference."""
    from torch.utils.cpp_extension import include_paths

    flags = [f"-march={march}" if flag == "-march=native" else flag for flag in native.compile_flags()]
    includes = [f"-I{path}" for path in [*include_paths(), sysconfig.get_paths()["include"]]]
    command = [os.environ.get("CXX", "c++"), *flags, *includes, "-DTORCH_EXTENSION_NAME=rnnkit_check", "-fPIC", "-c"]
    done = subprocess.run([*command, str(native.SOURCE), "-o", str(tmp_path / "recurrence.o")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


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


def output_gradients(steps, batch, hidden, dtype):
    """Output gradients as autograd hands them to the kernel: contiguous, sliced (a bidirectional
    layer's half), expanded (``out.sum()``'s: all strides 0; or over the batch only), and with
    features that are not contiguous."""
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, dtype=dtype, generator=g)  # noqa: E731
    return {
        "contiguous": rand(steps, batch, hidden),
        "sliced": rand(steps, batch, 2 * hidden)[..., hidden:],
        "expanded-scalar": torch.tensor(0.7, dtype=dtype).expand(steps, batch, hidden),
        "expanded-over-batch": rand(steps, 1, hidden).expand(steps, batch, hidden),
        "strided-features": rand(steps, batch, 2 * hidden)[..., ::2],
    }


@pytest.mark.parametrize("layout", ["contiguous", "sliced", "expanded-scalar", "expanded-over-batch", "strided-features"])
@pytest.mark.parametrize("name", RECURRENCES)
def test_native_reads_output_gradients_of_any_layout(name, layout):
    recurrence = RECURRENCES[name]
    rows = recurrence.gate_count * H
    make = lambda *shape: torch.randn(*shape, dtype=torch.float64, requires_grad=True)  # noqa: E731
    weights = Weights(make(rows, I), make(rows, H) * 0.5, make(rows), make(rows))
    x, h0 = make(T, B, I), make(B, H)
    state = LSTMState(h0, make(B, H)) if name == "lstm" else h0
    dy = output_gradients(T, B, H, torch.float64)[layout]
    leaves = [x, h0, *weights]
    grads = []
    for fn in (reference.run_direction, native.run_direction):
        y, _ = fn(recurrence, weights, x, state, None, False)
        grads.append(torch.autograd.grad(y, leaves, dy))
    for k, (ours, oracle) in enumerate(zip(grads[1], grads[0])):
        torch.testing.assert_close(ours, oracle, rtol=1e-10, atol=1e-10, msg=f"{layout}: gradient {k}")


@contextlib.contextmanager
def intra_op_threads(count):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def native_against_reference(recurrence, batch, steps, dtype, w_hh_scale=0.5, inputs=I):
    """Forward, final state and every gradient of both backends (lengths, bias, initial state,
    reverse time), as two lists in the same order."""
    rows, hidden = recurrence.gate_count * recurrence.hidden_size, recurrence.hidden_size
    make = lambda *shape, scale=1.0: (torch.randn(*shape, dtype=dtype) * scale).requires_grad_()  # noqa: E731
    weights = Weights(make(rows, inputs, scale=inputs**-0.5), make(rows, hidden, scale=w_hh_scale), make(rows), make(rows))
    x, h0 = make(steps, batch, inputs), make(batch, hidden)
    state = LSTMState(h0, make(batch, hidden)) if isinstance(recurrence, LSTMRecurrence) else h0
    mask = (torch.arange(steps)[:, None] < torch.randint(1, steps + 1, (batch,))).unsqueeze(-1)
    leaves = [x, h0, *weights] + ([state.c] if isinstance(recurrence, LSTMRecurrence) else [])
    results = []
    for fn in (reference.run_direction, native.run_direction):
        outputs = run(fn, recurrence, weights, x, state, mask, True)
        probes = [torch.randn(o.shape, dtype=dtype, generator=torch.Generator().manual_seed(i)) for i, o in enumerate(outputs)]
        grads = torch.autograd.grad(sum((p * o).sum() for p, o in zip(probes, outputs)), leaves)
        results.append(outputs + list(grads))
    return results[1], results[0]


@pytest.mark.parametrize("batch", [23, 25])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("name", RECURRENCES)
def test_native_equals_reference_through_every_tile_of_the_small_product(name, dtype, batch):
    """Small per-step products and the input projection run on the kernel's register tiles
    (``tile_product``), whose shapes follow the vector width. In one thread, tiles of 8 rows
    (AVX-512) or 6 (AVX2), then of 4, then a pair of rows, then a single row: 23 sequences take
    every kind with AVX-512 (8, 8, 4, 2, 1), 25 with AVX2 (6, 6, 6, 4, 2, 1). H=40 gives full
    column tiles and a remainder in both float32 (AVX-512: 32 columns a tile, 64 for leftover
    rows; AVX2: 16 for both) and float64 (half those)."""
    recurrence = make_recurrence(name, 40)
    with intra_op_threads(1):
        ours, oracle = native_against_reference(recurrence, batch=batch, steps=5, dtype=dtype, w_hh_scale=0.15)
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-5}
    for k, (a, b) in enumerate(zip(ours, oracle)):
        torch.testing.assert_close(a, b, **tol, msg=f"result {k}")


@pytest.mark.parametrize("inputs", [5, 12, 20, 36])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("name", ["lstm", "gru-reset-before", "rnn-tanh"])
def test_native_equals_reference_where_a_tile_has_columns_left_over(name, dtype, inputs):
    """The input gradient dx = dG W_ih has I columns: fewer than a tile's, or whole tiles and a
    remainder. A remainder up to half a tile's width runs on a tile of half as many vectors, and
    one that is not whole vectors on the tile applied to a copy of b's rows padded with zeros
    (``product_tile_last_columns``). 5, 12, 20 and 36 inputs take each of these on both vector
    widths and dtypes (AVX2, float32, 16 columns a tile: 5 on a padded one-vector tile, 12 on a
    padded two-vector tile, 20 and 36 with 4 columns left over); 23 sequences, one thread.
    fp64 to 1e-10."""
    with intra_op_threads(1):
        ours, oracle = native_against_reference(
            make_recurrence(name, 24), batch=23, steps=4, dtype=dtype, w_hh_scale=0.2, inputs=inputs
        )
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-5}
    for k, (a, b) in enumerate(zip(ours, oracle)):
        torch.testing.assert_close(a, b, **tol, msg=f"result {k}")


@pytest.mark.parametrize("inputs", [40, 3], ids=["wide-input", "narrow-input"])
@pytest.mark.parametrize("name", RECURRENCES)
def test_native_weight_gradients_sum_long_sequences_in_chunks(name, inputs):
    """The weight gradients sum over all T*B rows. On AVX-512 builds the tiles read the gate
    gradients by columns (``transposed_tile_products``), 512 rows at a time, each chunk added to
    the last, with the bias gradients (column sums) from the same pass: 25 steps of 24 sequences
    are 600 rows, two chunks. AVX2 builds give every weight gradient at least a tile wide to
    MKL's transposed GEMM (``kWeightGradientsOnMkl``) and the bias gradients to a sum. With 3
    inputs (fewer than a tile's columns) dW_ih takes the tiles on both, computed as its
    transpose. fp64 to 1e-10."""
    recurrence = make_recurrence(name, 20)
    ours, oracle = native_against_reference(recurrence, batch=24, steps=25, dtype=torch.float64, w_hh_scale=0.2, inputs=inputs)
    for k, (a, b) in enumerate(zip(ours, oracle)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"result {k}")


@pytest.mark.parametrize("name", RECURRENCES)
def test_native_equals_reference_where_the_step_loops_fetch_ahead(name):
    """With each thread running its own rows and gate buffers too large for the cache (here at
    least 4,200 steps x 8 sequences x 16 float64, over 4 MiB), the step loops ask for the next
    step's rows ahead of use (``fetch_ahead``); a hint that must not change a result. fp64 to
    1e-10, 2 threads."""
    with intra_op_threads(2):
        recurrence = make_recurrence(name, 16)
        ours, oracle = native_against_reference(recurrence, batch=8, steps=4200, dtype=torch.float64, w_hh_scale=0.2)
    for k, (a, b) in enumerate(zip(ours, oracle)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"result {k}")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", RECURRENCES)
def test_native_equals_reference_with_rows_split_across_threads_or_not(name, threads):
    """With small per-step products and more than one thread, each thread runs the whole
    sequence for its share of the batch's rows (13 rows: 7 and 6); with one thread, one loop
    runs them all. Both equal the reference (fp64 to 1e-10), whatever this machine's core count."""
    with intra_op_threads(threads):
        ours, oracle = native_against_reference(make_recurrence(name, 24), batch=13, steps=6, dtype=torch.float64)
    for k, (a, b) in enumerate(zip(ours, oracle)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"result {k}")


@pytest.mark.parametrize("name", RECURRENCES)
def test_native_equals_reference_where_large_products_go_through_onednn(name):
    """At a charLM's size (B=64, H=256, I=16) the float32 per-step products are past the
    kernel's oneDNN threshold (``kOneDnnMinMacs``) when it is built for AVX-512 (AVX2 builds
    keep every product on the tiles; see the next test). On AVX-512 builds the LSTM's dW_hh (4,608 x
    1,024 x 256, 1.2 G multiply-adds) is past ``kTileWeightMaxMacs`` too and goes through
    oneDNN, its operands transposed in chunks of 2^22 elements: 4,096 rows, so 72 steps of 64
    sequences are two chunks; the other weight gradients take the tiles that read the gate
    gradients by columns (dW_ih, with 16 inputs, as its transpose). AVX2 builds give them all to
    MKL. Lengths, bias, an initial state and reverse time."""
    recurrence = make_recurrence(name, 256)
    results = native_against_reference(recurrence, batch=64, steps=72, dtype=torch.float32, w_hh_scale=0.06, inputs=16)
    for k, (ours, oracle) in enumerate(zip(*results)):
        # a weight gradient sums 4,608 products in float32, in another order than the oracle:
        # its error scales with the largest entry (1e-6 of it measured), not with each entry
        scale = oracle.abs().max().item()
        torch.testing.assert_close(ours, oracle, rtol=1e-4, atol=1e-4 + 2e-5 * scale, msg=f"result {k}")


@pytest.mark.parametrize("name", RECURRENCES)
def test_native_equals_reference_with_large_per_step_products(name):
    """At B=128, H=512 a float32 per-step product (128 x 512 x 2,048 for the LSTM, 2^25
    multiply-adds for the RNN) is past the AVX-512 build's oneDNN threshold (2^21), and on an
    AVX2 build, which gives oneDNN no product, it runs on the tiles, 64 rows a thread. Three
    steps keep the weight gradients small (the tiles on AVX-512 builds, MKL on AVX2)."""
    recurrence = make_recurrence(name, 512)
    results = native_against_reference(recurrence, batch=128, steps=3, dtype=torch.float32, w_hh_scale=0.04, inputs=16)
    for k, (ours, oracle) in enumerate(zip(*results)):
        scale = oracle.abs().max().item()  # sums of 512 float32 products in another order
        torch.testing.assert_close(ours, oracle, rtol=1e-4, atol=1e-4 + 2e-5 * scale, msg=f"result {k}")


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
    for layer in (RNN(I, H), LSTM(I, H), GRU(I, H), GRU(I, H, reset_after=True)):
        layer(torch.randn(T, B, I))
        assert rnnkit.last_backend() == "native"
    with use_backend("reference"):
        LSTM(I, H)(torch.randn(T, B, I))
        assert rnnkit.last_backend() == "reference"
    LSTM(I, H, dtype=torch.bfloat16)(torch.randn(T, B, I, dtype=torch.bfloat16))
    assert rnnkit.last_backend() == "reference", "no native bf16 path: the reference runs"
    with pytest.raises(ValueError, match="backend must be one of"):
        with use_backend("mkl"):
            pass


CELLS = {
    "rnn-tanh": lambda **kw: RNNCell(I, H, **kw),
    "rnn-relu": lambda **kw: RNNCell(I, H, nonlinearity="relu", **kw),
    "lstm": lambda **kw: LSTMCell(I, H, **kw),
    "gru-reset-before": lambda **kw: GRUCell(I, H, **kw),
    "gru-reset-after": lambda **kw: GRUCell(I, H, reset_after=True, **kw),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("batch", [1, STEP_MAX_BATCH, None], ids=["b1", "bmax", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("name", CELLS)
def test_single_step_equals_reference(name, bias, batch, dtype):
    """With gradients off, a cell call over few sequences runs the native single step; it
    equals the reference equations, state included (fp64 to 1e-10)."""
    cell = CELLS[name](bias=bias, dtype=dtype)
    shape = (I,) if batch is None else (batch, I)
    x = torch.randn(shape, dtype=dtype)
    state_shape = (H,) if batch is None else (batch, H)
    state = torch.randn(state_shape, dtype=dtype)
    if name == "lstm":
        state = (state, torch.randn(state_shape, dtype=dtype))
    with torch.no_grad():
        h_fast, state_fast = cell(x, state)
        assert rnnkit.last_backend() == "native-step"
        with use_backend("reference"):
            h_slow, state_slow = cell(x, state)
        assert rnnkit.last_backend() == "reference"
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-5}
    torch.testing.assert_close(h_fast, h_slow, **tol)
    for fast, slow in zip(*(s if isinstance(s, tuple) else (s,) for s in (state_fast, state_slow))):
        torch.testing.assert_close(fast, slow, **tol)
    assert h_fast.shape == state_shape


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("name", CELLS)
def test_single_step_equals_reference_at_sizes_past_the_vector_width(name, dtype):
    """The single step's float32 products take as many weight rows at a time as a vector has
    lanes (16 with AVX-512, 8 with AVX2) and as many columns per vector, split across threads:
    at H=37, I=19 every block, the leftover rows and columns run (fp64 to 1e-10, fp32 to 2e-5)."""
    cell = {
        "rnn-tanh": RNNCell(19, 37), "rnn-relu": RNNCell(19, 37, nonlinearity="relu"), "lstm": LSTMCell(19, 37),
        "gru-reset-before": GRUCell(19, 37), "gru-reset-after": GRUCell(19, 37, reset_after=True),
    }[name].to(dtype)  # fmt: skip
    x, h = torch.randn(3, 19, dtype=dtype), torch.randn(3, 37, dtype=dtype)
    state = (h, torch.randn(3, 37, dtype=dtype)) if name == "lstm" else h
    with torch.no_grad():
        fast = cell(x, state)
        assert rnnkit.last_backend() == "native-step"
        with use_backend("reference"):
            slow = cell(x, state)
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-5}
    torch.testing.assert_close(fast, slow, **tol)


def test_single_step_only_without_autograd_and_for_few_sequences():
    cell = LSTMCell(I, H)
    x = torch.randn(2, I)
    h, _ = cell(x)
    assert rnnkit.last_backend() == "reference" and h.requires_grad, "training keeps autograd"
    with torch.no_grad():
        cell(torch.randn(STEP_MAX_BATCH + 1, I))
        assert rnnkit.last_backend() == "reference", "a large batch amortises a GEMM: no single step"
        cell(x)
        assert rnnkit.last_backend() == "native-step"
    with torch.inference_mode():
        cell(x)
        assert rnnkit.last_backend() == "native-step"


@pytest.mark.parametrize("name", ["lstm", "gru-reset-before", "rnn-relu"])
def test_one_step_sequences_take_the_single_step_in_inference(name):
    """The generation loop feeds one step at a time through multi-layer, bidirectional layers."""
    make = {"lstm": LSTM, "gru-reset-before": GRU, "rnn-relu": lambda *a, **k: RNN(*a, nonlinearity="relu", **k)}[name]
    layer = make(I, H, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64)
    x = torch.randn(3, 1, I, dtype=torch.float64)
    hx = layer(torch.randn(3, 4, I, dtype=torch.float64))[1]  # a state from a longer sequence
    with torch.no_grad():
        fast, fast_state = layer(x, hx)
        assert rnnkit.last_backend() == "native-step"
        with use_backend("reference"):
            slow, slow_state = layer(x, hx)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)
    for a, b in zip(*(s if isinstance(s, tuple) else (s,) for s in (fast_state, slow_state))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    layer(x, hx)
    assert rnnkit.last_backend() == "native", "with autograd, the sequence kernel"


def test_single_step_kernel_declines_arguments_that_do_not_fit():
    """The kernel's single step checks its arguments itself (the cell's fast path relies on it,
    and it must never read out of bounds): a valid call runs, and each misfit gives an empty
    result, never a wrong one."""
    step = native.extension().step
    x, h, c = torch.randn(2, 3), torch.randn(2, 4), torch.randn(2, 4)
    w_ih, w_hh, b = torch.randn(16, 3), torch.randn(16, 4), torch.randn(16)
    good = {"kind": native.LSTM, "x": x, "h": h, "c": c, "w_ih": w_ih, "b_ih": b, "w_hh": w_hh, "b_hh": b, "max_batch": 8}
    assert len(step(*good.values())) == 2
    misfits = {
        "batch over the limit": {"max_batch": 1},
        "x 1-D": {"x": x[0]},
        "x features": {"x": torch.randn(2, 5)},
        "x dtype": {"x": x.double()},
        "x integer": {"x": x.int()},
        "h batch": {"h": torch.randn(3, 4)},
        "h size": {"h": torch.randn(2, 5)},
        "c size": {"c": torch.randn(2, 5)},
        "c missing": {"c": torch.empty(0)},
        "c dtype": {"c": c.double()},
        "w_ih rows": {"w_ih": torch.randn(12, 3)},
        "w_hh rows": {"w_hh": torch.randn(12, 4)},
        "w_hh dtype": {"w_hh": w_hh.double()},
        "b_ih size": {"b_ih": torch.randn(15)},
        "b_hh 2-D": {"b_hh": torch.randn(16, 1)},
        "b_hh dtype": {"b_hh": b.double()},
        "kind": {"kind": 7},
    }
    for what, change in misfits.items():
        assert step(*{**good, **change}.values()) == [], what
    gru = {
        **good,
        "kind": native.GRU_AFTER,
        "c": torch.empty(0),
        "w_ih": w_ih[:12],
        "w_hh": w_hh[:12],
        "b_ih": b[:12],
        "b_hh": b[:12],
    }
    assert len(step(*gru.values())) == 2
    assert step(*{**gru, "w_hh": w_hh}.values()) == [], "a GRU has 3 gate blocks, not 4"


BF16_LAYERS = {
    "lstm": lambda: LSTM(16, 32, bias=False),
    "gru-reset-before": lambda: GRU(16, 32, bias=False),
    "gru-reset-after": lambda: GRU(16, 32, reset_after=True, bias=False),
    "rnn-tanh": lambda: RNN(16, 32, bias=False),
}


@pytest.mark.parametrize("name", BF16_LAYERS)
def test_autocast_bf16_mode_rounds_every_gemm_operand_to_bf16_and_keeps_the_rest_fp32(name):
    """bf16 mode: under CPU autocast every GEMM of the recurrence takes bf16 operands and its
    result is rounded to bf16; state, gates and outputs stay float32. Its oracle is the cell's
    own equations run step by step under autocast, with the input projection widened to fp32
    as the kernel does (F.linear then rounds h and W_hh). They agree to float32 rounding, but
    for a rare bf16 rounding tie that the two GEMMs' summation orders break differently."""
    layer = BF16_LAYERS[name]()
    x = torch.randn(20, 4, 16, requires_grad=True)
    weight = torch.randn(20, 4, 32)

    def gradients(y):
        layer.zero_grad()
        x.grad = None
        (y * weight).sum().backward()
        return x.grad.clone(), layer.weight_hh_l0.grad.clone()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast, h_n = layer(x)
        assert rnnkit.last_backend() == "native"
        gx = torch.nn.functional.linear(x, layer.weight_ih_l0).float()
        state, steps = layer.recurrence.zero_state(4, dtype=torch.float32, device=x.device), []
        for t in range(20):
            h, state = layer.recurrence.step(gx[t], state, layer.weight_hh_l0, None)
            steps.append(h)
    oracle = torch.stack(steps)
    exact, _ = layer(x)
    assert fast.dtype == torch.float32 and all(s.dtype == torch.float32 for s in (h_n if isinstance(h_n, tuple) else (h_n,)))
    error = (fast - oracle).abs()
    assert error.median() < 1e-6 and error.max() < 1e-3, "the oracle's roundings, step by step"
    assert (fast - exact).abs().max() > 1e-3, "bf16 rounding is visible: the recurrence did not run in float32"
    (dx, dw), (oracle_dx, _), (exact_dx, exact_dw) = gradients(fast), gradients(oracle), gradients(exact)
    dx_error = (dx - oracle_dx).abs() / oracle_dx.abs().max()
    assert dx_error.median() < 1e-6 and dx_error.max() < 2e-2, "the backward's roundings match the oracle's too"
    # dW_hh: one GEMM with fp32 accumulation over all steps, rounded once (the oracle's autograd
    # sums the steps' bf16 products in bf16), so it is checked against float32 at bf16's precision
    assert dw.dtype == torch.float32
    torch.testing.assert_close(dw, exact_dw, rtol=0, atol=2e-2 * exact_dw.abs().max().item())
    torch.testing.assert_close(dx, exact_dx, rtol=0, atol=2e-2 * exact_dx.abs().max().item())


def test_bf16_mode_is_off_for_float64_and_outside_autocast():
    weight = torch.zeros(2, 2)
    assert not native.bf16_mode(weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert native.bf16_mode(weight) and not native.bf16_mode(weight.double())
    with torch.autocast("cpu", dtype=torch.float16):
        assert not native.bf16_mode(weight)


def test_large_buffers_are_reused_only_once_nothing_refers_to_them():
    """The kernel keeps its large buffers (over 1 MiB) between calls to spare the page faults of
    fresh memory; a buffer someone still holds is never handed out again, and what it hands out
    is a plain tensor that can be modified in place."""
    layer = LSTM(64, 256)
    x = torch.randn(40, 32, 64)  # outputs of 1.3 MB
    first, _ = layer(x)
    kept = first.detach().clone()
    second, _ = layer(2 * x)
    assert rnnkit.last_backend() == "native"
    assert first.data_ptr() != second.data_ptr()
    torch.testing.assert_close(first, kept, rtol=0, atol=0)
    address = second.data_ptr()
    del second
    third, _ = layer(x)
    assert third.data_ptr() == address, "the freed output's memory serves the next call"
    torch.testing.assert_close(third, first, rtol=0, atol=0)
    third.mul_(2)  # not a view of the pool's memory: in-place ops are allowed
    third.sum().backward()
    assert torch.isfinite(layer.weight_hh_l0.grad).all()
