"""Sequence layers against torch.nn (forward and every gradient), lengths, layouts, errors."""

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils._python_dispatch import TorchDispatchMode

import rnnkit
import rnnkit.kernels
from conftest import assert_close
from rnnkit import GRU, LSTM, RNN, GRUCell, LSTMState

KINDS = {
    "rnn-tanh": (RNN, nn.RNN, {"nonlinearity": "tanh"}),
    "rnn-relu": (RNN, nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (LSTM, nn.LSTM, {}),
    "gru": (GRU, nn.GRU, {}),
}
I, H, N, T = 3, 5, 4, 6


@pytest.fixture(autouse=True, params=["reference", "native"])
def backend(request):
    """Every test here runs on both backends: the reference loop and the fused native kernel."""
    with rnnkit.kernels.use_backend(request.param):
        yield request.param


def make_pair(kind, dtype=torch.float32, **config):
    ours_cls, torch_cls, kwargs = KINDS[kind]
    theirs = torch_cls(I, H, dtype=dtype, **kwargs, **config)
    return ours_cls.from_torch(theirs), theirs


def random_hx(kind, layer, batch_shape, dtype):
    shape = (layer.num_layers * layer.num_directions, *batch_shape, H)
    if kind == "lstm":
        return (torch.randn(shape, dtype=dtype, requires_grad=True), torch.randn(shape, dtype=dtype, requires_grad=True))
    return torch.randn(shape, dtype=dtype, requires_grad=True)


def leaves(x, hx):
    return [x, *(hx if isinstance(hx, tuple) else (hx,) if hx is not None else ())]


def assert_same_run(ours, theirs, out_ours, h_ours, out_theirs, h_theirs, inputs, dtype):
    """Outputs, final states, and gradients of a random projection of all of them, w.r.t. the
    inputs and every parameter, agree (GRU parameter gradients through the z-row conversion)."""
    h_ours = tuple(h_ours) if isinstance(h_ours, LSTMState) else (h_ours,)
    h_theirs = h_theirs if isinstance(h_theirs, tuple) else (h_theirs,)
    assert_close(out_ours, out_theirs, dtype, msg="output")
    for a, b in zip(h_ours, h_theirs):
        assert_close(a, b, dtype, msg="final state")
    weights = [torch.randn_like(t) for t in (out_ours, *h_ours)]
    loss_ours = sum((w * t).sum() for w, t in zip(weights, (out_ours, *h_ours)))
    loss_theirs = sum((w * t).sum() for w, t in zip(weights, (out_theirs, *h_theirs)))
    names = [name for name, _ in ours.named_parameters()]
    g_ours = torch.autograd.grad(loss_ours, [*inputs, *ours.parameters()], retain_graph=True)
    g_theirs = torch.autograd.grad(loss_theirs, [*inputs, *(theirs.get_parameter(n) for n in names)])
    for k, (a, b) in enumerate(zip(g_ours[: len(inputs)], g_theirs)):
        assert_close(a, b, dtype, msg=f"gradient of input {k}")
    for name, a, b in zip(names, g_ours[len(inputs) :], g_theirs[len(inputs) :]):
        assert_close(a, ours.recurrence.convert_torch_param(b), dtype, msg=f"gradient of {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["zero-state", "given-state"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_layer_matches_torch(kind, num_layers, bidirectional, batch_first, with_hx, dtype):
    ours, theirs = make_pair(kind, dtype, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    x = torch.randn((N, T, I) if batch_first else (T, N, I), dtype=dtype, requires_grad=True)
    hx = random_hx(kind, ours, (N,), dtype) if with_hx else None
    out_ours, h_ours = ours(x, hx)
    out_theirs, h_theirs = theirs(x, hx)
    assert out_ours.shape == (x.shape[0], x.shape[1], H * ours.num_directions)
    assert_same_run(ours, theirs, out_ours, h_ours, out_theirs, h_theirs, leaves(x, hx), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["zero-state", "given-state"])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (1, True), (3, True)])
@pytest.mark.parametrize("kind", KINDS)
def test_lengths_match_torch_packed(kind, layers, bidirectional, with_hx, dtype):
    """lengths (shuffled, unsorted) give what torch gives for the same sequences packed."""
    ours, theirs = make_pair(kind, dtype, num_layers=layers, bidirectional=bidirectional, batch_first=True)
    lengths = torch.tensor([3, 6, 1, 4])  # not sorted, max == T
    x = torch.randn(N, T, I, dtype=dtype, requires_grad=True)
    hx = random_hx(kind, ours, (N,), dtype) if with_hx else None
    out_ours, h_ours = ours(x, hx, lengths=lengths)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out_packed, h_theirs = theirs(packed, hx)
    out_theirs, _ = pad_packed_sequence(out_packed, batch_first=True, total_length=T)
    for n, length in enumerate(lengths):
        assert torch.all(out_ours[n, length:] == 0), "outputs past a length are zero"
    assert_same_run(ours, theirs, out_ours, h_ours, out_theirs, h_theirs, leaves(x, hx), dtype)


def test_lengths_shorter_than_input_and_any_container():
    """Every length below T, given as a list, a CPU tensor or any integer dtype: same result."""
    layer = LSTM(I, H, bidirectional=True)
    x = torch.randn(T, N, I)
    reference, _ = layer(x[:5], lengths=torch.tensor([5, 2, 5, 3]))
    for lengths in ([5, 2, 5, 3], torch.tensor([5, 2, 5, 3], dtype=torch.int32), (5, 2, 5, 3)):
        out, _ = layer(x, lengths=lengths)
        assert_close(out[:5], reference)
        assert torch.all(out[5:] == 0)


@pytest.mark.parametrize("kind", KINDS)
def test_packed_sequence_input(kind):
    ours, theirs = make_pair(kind, num_layers=2, bidirectional=True)
    x = torch.randn(T, N, I, requires_grad=True)
    packed = pack_padded_sequence(x, torch.tensor([2, 6, 5, 3]), enforce_sorted=False)
    hx = random_hx(kind, ours, (N,), torch.float32)
    out_ours, h_ours = ours(packed, hx)
    out_theirs, h_theirs = theirs(packed, hx)
    assert torch.equal(out_ours.batch_sizes, out_theirs.batch_sizes)
    assert torch.equal(out_ours.unsorted_indices, out_theirs.unsorted_indices)
    assert_same_run(ours, theirs, out_ours.data, h_ours, out_theirs.data, h_theirs, leaves(x, hx), torch.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_unbatched_input(kind):
    ours, theirs = make_pair(kind, num_layers=2, bidirectional=True)
    x = torch.randn(T, I, requires_grad=True)
    hx = random_hx(kind, ours, (), torch.float32)
    out_ours, h_ours = ours(x, hx)
    out_theirs, h_theirs = theirs(x, hx)
    assert out_ours.shape == (T, 2 * H)
    assert_same_run(ours, theirs, out_ours, h_ours, out_theirs, h_theirs, leaves(x, hx), torch.float32)


def test_torch_state_dict_loads_directly():
    for ours_cls, torch_cls in ((LSTM, nn.LSTM), (RNN, nn.RNN)):
        theirs = torch_cls(I, H, num_layers=2, bidirectional=True)
        ours = ours_cls(I, H, num_layers=2, bidirectional=True)
        assert list(ours.state_dict()) == list(theirs.state_dict())
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(T, N, I)
        assert_close(ours(x)[0], theirs(x)[0])


@pytest.mark.parametrize("kind", KINDS)
def test_to_torch_round_trip(kind):
    ours_cls, torch_cls, kwargs = KINDS[kind]
    extra = {"reset_after": True} if kind == "gru" else {}
    ours = ours_cls(I, H, num_layers=2, bidirectional=True, batch_first=True, **kwargs, **extra)
    theirs = ours.to_torch()
    assert type(theirs) is torch_cls and theirs.batch_first
    x = torch.randn(N, T, I, requires_grad=True)
    out_ours, h_ours = ours(x)
    out_theirs, h_theirs = theirs(x)
    assert_same_run(ours, theirs, out_ours, h_ours, out_theirs, h_theirs, [x], torch.float32)


def step_by_hand(cell, x, lengths, reverse):
    """Run a cell over each sequence separately, in the given direction: the textbook loop."""
    outputs, finals = torch.zeros(x.shape[0], x.shape[1], cell.hidden_size, dtype=x.dtype), []
    for n, length in enumerate(lengths):
        h = torch.zeros(1, cell.hidden_size, dtype=x.dtype)
        order = range(length - 1, -1, -1) if reverse else range(length)
        for t in order:
            h, _ = cell(x[t, n : n + 1], h)
            outputs[t, n] = h[0]
        finals.append(h[0])
    return outputs, torch.stack(finals)


def test_textbook_gru_layer_equals_stepping_the_cell():
    """No torch equivalent exists for reset_after=False: hold the driver to the cell, stepped by
    hand per sequence, both directions, with lengths."""
    layer = GRU(I, H, bidirectional=True, dtype=torch.float64)
    lengths = [6, 2, 4, 5]
    x = torch.randn(T, N, I, dtype=torch.float64)
    out, h_n = layer(x, lengths=lengths)
    for direction, suffix in enumerate(("_l0", "_l0_reverse")):
        cell = GRUCell(I, H, dtype=torch.float64)
        cell.load_state_dict({k.removesuffix(suffix): v for k, v in layer.state_dict().items() if k.endswith(suffix)})
        expected_out, expected_h = step_by_hand(cell, x, lengths, reverse=direction == 1)
        assert_close(out[..., direction * H : (direction + 1) * H], expected_out, torch.float64)
        assert_close(h_n[direction], expected_h, torch.float64)


@pytest.mark.parametrize(
    "cls,extra",
    [(RNN, {}), (RNN, {"nonlinearity": "relu"}), (LSTM, {}), (GRU, {"reset_after": False}), (GRU, {"reset_after": True})],
    ids=["rnn-tanh", "rnn-relu", "lstm", "gru-reset-before", "gru-reset-after"],
)
def test_layer_gradcheck(cls, extra):
    layer = cls(2, 3, num_layers=2, bidirectional=True, dtype=torch.float64, **extra)
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]

    def fn(x, *params):
        out, _ = torch.func.functional_call(layer, dict(zip(names, params)), (x,), {"lengths": [4, 2, 3]})
        return out

    assert torch.autograd.gradcheck(fn, (x, *layer.parameters()))


def regularised_and_plain(cls, regularisation: dict, **kwargs):
    """A layer with a regularisation (``dropout=...``), its plain twin with the same weights, and
    an input; checks on the way that the regularisation is off in eval mode."""
    layer = cls(I, H, **kwargs, **regularisation)
    plain = cls(I, H, **kwargs)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(T, N, I)
    layer.eval()
    assert torch.equal(layer(x)[0], plain(x)[0]), f"{regularisation} is off in eval"
    layer.train()
    return layer, plain, x


def test_dropout_between_layers_only_in_training():
    layer, plain, x = regularised_and_plain(LSTM, {"dropout": 0.5}, num_layers=3)
    torch.manual_seed(1)
    a = layer(x)[0]
    torch.manual_seed(1)
    b = layer(x)[0]
    assert torch.equal(a, b), "dropout is reproducible with a seed"
    assert not torch.allclose(a, plain(x)[0]), "dropout acts in training"


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn-tanh"])
def test_weight_dropout_is_one_dropconnect_mask_per_pass(kind):
    """In training, a pass equals the plain layer run with every ``weight_hh`` dropped once
    (F.dropout's mask and 1/(1-p) scale, drawn in layer and direction order); gradients reach
    the real weights through that mask. In eval mode the weights are used as they are."""
    cls, _, kwargs = KINDS[kind]
    p = 0.4
    layer, plain, x = regularised_and_plain(cls, {"weight_dropout": p}, num_layers=2, bidirectional=True, **kwargs)
    torch.manual_seed(3)
    out = layer(x)[0]
    out.square().sum().backward()
    torch.manual_seed(3)
    names = [names.weight_hh for directions in layer._weight_names for names in directions]
    dropped = {name: torch.nn.functional.dropout(getattr(plain, name).detach(), p).requires_grad_() for name in names}
    expected = torch.func.functional_call(plain, dropped, (x,))[0]
    expected.square().sum().backward()
    assert_close(out, expected, torch.float32)
    for name in names:
        kept = (dropped[name] != 0).float() / (1 - p)
        assert (dropped[name] == 0).any() and (dropped[name] != 0).any(), "the mask drops some weights, not all"
        assert_close(getattr(layer, name).grad, dropped[name].grad * kept, torch.float32)
    assert "weight_dropout=0.4" in repr(layer)


class _CountElements(TorchDispatchMode):
    """Counts the elements every op writes: proportional to the work of a forward pass."""

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.elements += t.numel()
        return out


def test_reference_work_is_linear_in_time():
    """No O(T^2) behaviour: the work of T=400 steps is 2x that of T=200 (within 2%)."""
    layer = LSTM(I, H)
    work = {}
    for steps in (200, 400):
        x = torch.randn(steps, 2, I, requires_grad=True)
        with _CountElements() as counter:
            out, _ = layer(x, lengths=[steps, steps - 1])
            out.sum().backward()
        work[steps] = counter.elements
    assert work[400] / work[200] == pytest.approx(2.0, rel=0.02)


def test_backend_is_reported(backend):
    LSTM(I, H)(torch.randn(T, N, I))
    assert rnnkit.last_backend() == backend


def test_detach_state_cuts_the_graph():
    layer = LSTM(I, H)
    _, state = layer(torch.randn(T, N, I, requires_grad=True))
    detached = rnnkit.detach_state(state)
    assert isinstance(detached, LSTMState)
    assert all(t.grad_fn is None and not t.requires_grad for t in detached)
    assert rnnkit.detach_state(None) is None
    _, torch_state = torch.nn.LSTM(I, H)(torch.randn(T, N, I))  # a plain tuple: the trainer carries it too
    detached = rnnkit.detach_state(torch_state)
    assert type(detached) is tuple and all(t.grad_fn is None for t in detached)


# -- bad input ----------------------------------------------------------------------------------------

BAD_FORWARD = [
    (
        lambda lstm: lstm(torch.randn(T, N, 1, I)),
        ValueError,
        r"input must be 3-D \(seq, batch, input_size\).*got shape \(6, 4, 1, 3\)",
    ),
    (lambda lstm: lstm(torch.randn(T, N, I + 1)), ValueError, r"input must have 3 features .* got shape \(6, 4, 4\)"),
    (lambda lstm: lstm(torch.randint(0, 3, (T, N, I))), TypeError, "input must be a floating-point tensor"),
    (lambda lstm: lstm(torch.randn(T, N, I, dtype=torch.float64)), TypeError, "input has dtype torch.float64 but the parameters"),
    (lambda lstm: lstm("abc"), TypeError, "input must be a torch.Tensor, got str"),
    (
        lambda lstm: lstm(torch.randn(T, N, I), (torch.zeros(1, N, H), torch.zeros(2, N, H))),
        ValueError,
        r"hx\[1\] must have shape \(1, 4, 5\), got \(2, 4, 5\)",
    ),
    (
        lambda lstm: lstm(torch.randn(T, N, I), (torch.zeros(1, N, H), torch.zeros(1, N, H, dtype=torch.float64))),
        TypeError,
        r"hx\[1\] has dtype torch.float64",
    ),
    (lambda lstm: lstm(torch.randn(T, N, I), torch.zeros(1, N, H)), TypeError, r"LSTM state must be a pair"),
    (
        lambda lstm: lstm(torch.randn(T, I), (torch.zeros(1, N, H), torch.zeros(1, N, H))),
        ValueError,
        r"hx\[0\] must have shape \(1, 5\)",
    ),
    (lambda lstm: lstm(torch.randn(0, N, I)), ValueError, r"input must have at least one time step, got shape \(0, 4, 3\)"),
    (lambda lstm: lstm(torch.randn(0, I)), ValueError, r"input must have at least one time step, got shape \(0, 3\)"),
    (lambda lstm: lstm(torch.randn(T, N, I), lengths=[6, 0, 3, 2]), ValueError, "lengths must all be >= 1, got 0"),
    (lambda lstm: lstm(torch.randn(T, N, I), lengths=[6, -1, 3, 2]), ValueError, "lengths must all be >= 1, got -1"),
    (
        lambda lstm: lstm(torch.randn(T, N, I), lengths=[7, 1, 3, 2]),
        ValueError,
        "lengths must all be <= the sequence length 6, got 7",
    ),
    (
        lambda lstm: lstm(torch.randn(T, N, I), lengths=[6, 1, 3]),
        ValueError,
        r"lengths must have one entry per sequence \(4\), got shape \(3,\)",
    ),
    (lambda lstm: lstm(torch.randn(T, N, I), lengths=torch.tensor([6.0, 1, 3, 2])), TypeError, "lengths must hold integers"),
    (
        lambda lstm: lstm(pack_padded_sequence(torch.randn(T, N, I), [6, 5, 4, 3]), lengths=[6, 5, 4, 3]),
        ValueError,
        "lengths must not be given with a PackedSequence",
    ),
]


@pytest.mark.parametrize("call,error,message", BAD_FORWARD)
def test_bad_forward_input(call, error, message):
    with pytest.raises(error, match=message):
        call(LSTM(I, H))


@pytest.mark.parametrize(
    "make,error,message",
    [
        (lambda: LSTM(0, H), ValueError, "input_size must be a positive integer, got 0"),
        (lambda: GRU(I, -2), ValueError, "hidden_size must be a positive integer, got -2"),
        (lambda: RNN(I, H, num_layers=0), ValueError, "num_layers must be a positive integer, got 0"),
        (lambda: LSTM(I, H, num_layers=2, dropout=1.5), ValueError, r"dropout must be a number in \[0, 1\], got 1.5"),
        (lambda: LSTM(I, H, weight_dropout=1.0), ValueError, r"weight_dropout must be a number in \[0, 1\), got 1.0"),
        (lambda: GRU(I, H, weight_dropout=True), ValueError, r"weight_dropout must be a number in \[0, 1\), got True"),
        (lambda: RNN(I, H, nonlinearity="gelu"), ValueError, "nonlinearity must be 'tanh' or 'relu', got 'gelu'"),
        (lambda: LSTM(I, H, proj_size=2), ValueError, "proj_size is not supported"),
        (lambda: GRU(I, H, reset_after="yes"), TypeError, "reset_after must be a bool"),
        (lambda: GRU(I, H).to_torch(), ValueError, "reset_after=True"),
        (lambda: LSTM.from_torch(nn.GRU(I, H)), TypeError, "LSTM.from_torch expects LSTM, got GRU"),
        (lambda: LSTM.from_torch(nn.LSTM(I, H, proj_size=2)), ValueError, "proj_size > 0"),
    ],
)
def test_bad_construction(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="no effect with num_layers=1"):
        LSTM(I, H, dropout=0.2)


def test_repr_and_layer_weights_cover_all_parameters():
    layer = GRU(I, H, num_layers=2, bidirectional=True, reset_after=True)
    assert repr(layer) == "GRU(3, 5, num_layers=2, reset_after=True, bidirectional=True)"
    flat = [p for layer_ in layer.layer_weights() for w in layer_ for p in w]
    assert {id(p) for p in flat} == {id(p) for p in layer.parameters()}
    assert len(list(itertools.chain(layer.parameters()))) == 16
