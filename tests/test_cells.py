"""Cells: hand-computed steps, parity with torch.nn cells, gradcheck, init, interop."""

import math

import pytest
import torch
from torch import nn

from conftest import assert_close
from rnnkit import GRUCell, LSTMCell, LSTMState, RNNCell


def sigmoid(a):
    return 1 / (1 + math.exp(-a))


def set_weights(cell, w_ih, w_hh, b_ih, b_hh):
    with torch.no_grad():
        for p, v in zip((cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh), (w_ih, w_hh, b_ih, b_hh)):
            p.copy_(torch.tensor(v, dtype=p.dtype))


# -- one step computed by hand from the equations, with plain Python floats ---------------------
# input size 1, hidden size 1: W·[h, x] + b = w_h*h + w_x*x + b for each gate.


@pytest.mark.parametrize("nonlinearity,f", [("tanh", math.tanh), ("relu", lambda a: max(a, 0.0))])
def test_rnn_step_by_hand(nonlinearity, f):
    cell = RNNCell(1, 1, nonlinearity=nonlinearity, dtype=torch.float64)
    set_weights(cell, [[0.5]], [[-0.8]], [0.1], [0.2])
    x, h = 0.7, 0.3
    expected = f(-0.8 * h + 0.5 * x + 0.1 + 0.2)
    h_t, state = cell(torch.tensor([[x]], dtype=torch.float64), torch.tensor([[h]], dtype=torch.float64))
    assert h_t.item() == pytest.approx(expected, abs=1e-14)
    assert state is h_t


def test_lstm_step_by_hand():
    cell = LSTMCell(1, 1, dtype=torch.float64)
    # rows i, f, g, o
    w_x, w_h, b = [0.3, -0.4, 0.9, 0.2], [0.6, 0.1, -0.5, 0.7], [0.05, 1.0, -0.1, 0.2]
    set_weights(cell, [[v] for v in w_x], [[v] for v in w_h], b, [0, 0, 0, 0])
    x, h, c = 0.8, -0.2, 0.4
    a = [w_h[k] * h + w_x[k] * x + b[k] for k in range(4)]
    i, f, c_tilde, o = sigmoid(a[0]), sigmoid(a[1]), math.tanh(a[2]), sigmoid(a[3])
    c_t = f * c + i * c_tilde
    h_t = o * math.tanh(c_t)
    t = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731
    out, state = cell(t(x), LSTMState(t(h), t(c)))
    assert isinstance(state, LSTMState)
    assert state.c.item() == pytest.approx(c_t, abs=1e-14)
    assert state.h.item() == pytest.approx(h_t, abs=1e-14)
    assert out.item() == pytest.approx(h_t, abs=1e-14)


@pytest.mark.parametrize("reset_after", [False, True])
def test_gru_step_by_hand(reset_after):
    cell = GRUCell(1, 1, reset_after=reset_after, dtype=torch.float64)
    # rows r, z, n
    w_x, w_h, b_x, b_h = [0.4, -0.3, 0.8], [0.5, 0.9, -0.6], [0.1, 0.2, -0.3], [0.05, -0.1, 0.25]
    set_weights(cell, [[v] for v in w_x], [[v] for v in w_h], b_x, b_h)
    x, h = 0.6, -0.7
    r = sigmoid(w_x[0] * x + b_x[0] + w_h[0] * h + b_h[0])
    z = sigmoid(w_x[1] * x + b_x[1] + w_h[1] * h + b_h[1])
    if reset_after:
        h_tilde = math.tanh(w_x[2] * x + b_x[2] + r * (w_h[2] * h + b_h[2]))
    else:
        h_tilde = math.tanh(w_x[2] * x + b_x[2] + w_h[2] * (r * h) + b_h[2])
    expected = (1 - z) * h + z * h_tilde
    out, _ = cell(torch.tensor([[x]], dtype=torch.float64), torch.tensor([[h]], dtype=torch.float64))
    assert out.item() == pytest.approx(expected, abs=1e-14)


def test_reset_before_and_after_differ():
    """The two GRU forms are different functions (same weights, different outputs)."""
    before = GRUCell(3, 4, reset_after=False, init="torch")
    after = GRUCell(3, 4, reset_after=True)
    after.load_state_dict(before.state_dict())
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    assert not torch.allclose(before(x, h)[0], after(x, h)[0])


# -- parity with torch.nn cells ------------------------------------------------------------------

CELLS = [
    (RNNCell, nn.RNNCell, {"nonlinearity": "tanh"}),
    (RNNCell, nn.RNNCell, {"nonlinearity": "relu"}),
    (LSTMCell, nn.LSTMCell, {}),
    (GRUCell, nn.GRUCell, {}),
]


def torch_state(ours, state):
    return tuple(state) if isinstance(state, LSTMState) else state


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("ours_cls,torch_cls,kwargs", CELLS)
def test_cell_matches_torch(ours_cls, torch_cls, kwargs, bias, dtype):
    reference = torch_cls(5, 7, bias=bias, dtype=dtype, **kwargs)
    cell = ours_cls.from_torch(reference)
    x = torch.randn(3, 5, dtype=dtype, requires_grad=True)
    if ours_cls is LSTMCell:
        state = LSTMState(torch.randn(3, 7, dtype=dtype), torch.randn(3, 7, dtype=dtype))
    else:
        state = torch.randn(3, 7, dtype=dtype)
    ours, ours_state = cell(x, state)
    theirs = reference(x, torch_state(cell, state))
    theirs_h = theirs[0] if isinstance(theirs, tuple) else theirs
    assert_close(ours, theirs_h, dtype)
    if isinstance(theirs, tuple):
        assert_close(ours_state.c, theirs[1], dtype)
    grad = torch.randn_like(ours)
    names = [name for name, _ in cell.named_parameters()]
    ours_grads = torch.autograd.grad(ours, [x, *cell.parameters()], grad)
    theirs_grads = torch.autograd.grad(theirs_h, [x, *(reference.get_parameter(n) for n in names)], grad)
    assert_close(ours_grads[0], theirs_grads[0], dtype, msg="input gradient")
    for name, g_ours, g_theirs in zip(names, ours_grads[1:], theirs_grads[1:]):
        assert_close(g_ours, cell.recurrence.convert_torch_param(g_theirs), dtype, msg=name)


@pytest.mark.parametrize("ours_cls,torch_cls,kwargs", CELLS)
def test_cell_to_torch_round_trip(ours_cls, torch_cls, kwargs):
    extra = {"reset_after": True} if ours_cls is GRUCell else {}
    cell = ours_cls(4, 6, **kwargs, **extra)
    back = cell.to_torch()
    assert type(back) is torch_cls
    x = torch.randn(2, 4)
    out = back(x)
    assert_close(cell(x)[0], out[0] if isinstance(out, tuple) else out)


def test_cell_unbatched_and_default_state():
    cell = LSTMCell(3, 4)
    x = torch.randn(3)
    h, state = cell(x)
    assert h.shape == (4,) and state.c.shape == (4,)
    h_batched, _ = cell(x.unsqueeze(0), LSTMState(torch.zeros(1, 4), torch.zeros(1, 4)))
    assert_close(h, h_batched.squeeze(0))


@pytest.mark.parametrize(
    "make",
    [
        lambda: RNNCell(3, 4, nonlinearity="tanh", dtype=torch.float64),
        lambda: RNNCell(3, 4, nonlinearity="relu", dtype=torch.float64),
        lambda: LSTMCell(3, 4, dtype=torch.float64),
        lambda: GRUCell(3, 4, reset_after=False, dtype=torch.float64),
        lambda: GRUCell(3, 4, reset_after=True, dtype=torch.float64),
    ],
    ids=["rnn-tanh", "rnn-relu", "lstm", "gru-reset-before", "gru-reset-after"],
)
def test_cell_gradcheck(make):
    cell = make()
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    params = tuple(cell.parameters())

    def fn(x, h, *weights):
        state = LSTMState(h, torch.tanh(h)) if isinstance(cell, LSTMCell) else h
        named = dict(zip((n for n, _ in cell.named_parameters()), weights))
        out, new_state = torch.func.functional_call(cell, named, (x, state))
        return (out, new_state.c) if isinstance(new_state, LSTMState) else out

    assert torch.autograd.gradcheck(fn, (x, h, *params))


# -- initialisation --------------------------------------------------------------------------------


def test_default_init():
    cell = LSTMCell(8, 16)
    H = 16
    for block in cell.weight_hh.detach().split(H):
        assert_close(block @ block.T, torch.eye(H), msg="recurrent blocks are orthogonal")
    bound = math.sqrt(6 / (8 + H))  # Xavier-uniform per gate block
    assert cell.weight_ih.abs().max() <= bound
    total_bias = (cell.bias_ih + cell.bias_hh).detach()
    assert torch.equal(total_bias[H : 2 * H], torch.ones(H)), "forget-gate bias 1"
    assert torch.equal(total_bias[:H], torch.zeros(H))


def test_torch_and_identity_init():
    cell = GRUCell(8, 16, init="torch")
    assert all(p.abs().max() <= 1 / 4 for p in cell.parameters())
    assert cell.bias_ih.abs().max() > 0
    irnn = RNNCell(8, 16, nonlinearity="relu", init="identity")
    assert torch.equal(irnn.weight_hh.detach(), torch.eye(16))
    with pytest.raises(ValueError, match="RNN cells only"):
        LSTMCell(8, 16, init="identity")
    with pytest.raises(ValueError, match="init must be one of"):
        LSTMCell(8, 16, init="xavier")


# -- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "no-grad"])
def test_cell_bad_input(grad):
    """With gradients off and a state given, a call first goes to the native single step,
    which declines arguments that do not fit; the errors are the same as with autograd."""
    cell, state = LSTMCell(3, 4), (torch.zeros(2, 4), torch.zeros(2, 4))
    with torch.set_grad_enabled(grad):
        with pytest.raises(TypeError, match="x must be a torch.Tensor"):
            cell([1.0, 2.0, 3.0], state)
        with pytest.raises(ValueError, match=r"x must be 1-D .* got shape \(2, 5, 3\)"):
            cell(torch.randn(2, 5, 3), state)
        with pytest.raises(ValueError, match=r"x must have 3 features .* got shape \(2, 5\)"):
            cell(torch.randn(2, 5), state)
        with pytest.raises(TypeError, match="x has dtype torch.float64"):
            cell(torch.randn(2, 3, dtype=torch.float64), state)
        with pytest.raises(ValueError, match=r"state\[1\] must have shape \(2, 4\), got \(2, 5\)"):
            cell(torch.randn(2, 3), (torch.zeros(2, 4), torch.zeros(2, 5)))
        with pytest.raises(ValueError, match=r"state\[0\] must have shape \(2, 4\), got \(3, 4\)"):
            cell(torch.randn(2, 3), (torch.zeros(3, 4), torch.zeros(2, 4)))
        with pytest.raises(TypeError, match=r"state\[1\] must be a torch.Tensor, got list"):
            cell(torch.randn(2, 3), (torch.zeros(2, 4), [0.0] * 4))
        with pytest.raises(TypeError, match="LSTM state must be a pair"):
            cell(torch.randn(2, 3), torch.zeros(2, 4))
        with pytest.raises(TypeError, match=r"state has dtype torch.float64"):
            GRUCell(3, 4)(torch.randn(2, 3), torch.zeros(2, 4, dtype=torch.float64))
        with pytest.raises(ValueError, match=r"state must have shape \(2, 4\), got \(2, 3\)"):
            RNNCell(3, 4)(torch.randn(2, 3), torch.zeros(2, 3))


def test_cell_construction_bad_input():
    with pytest.raises(ValueError, match="hidden_size must be a positive integer, got 0"):
        GRUCell(3, 0)
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"):
        RNNCell(3, 4, nonlinearity="sigmoid")
    with pytest.raises(TypeError, match="LSTMCell.from_torch expects LSTMCell, got GRUCell"):
        LSTMCell.from_torch(nn.GRUCell(3, 4))
    with pytest.raises(ValueError, match="reset_after=True"):
        GRUCell(3, 4).to_torch()
