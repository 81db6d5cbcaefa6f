"""The ``cudnn`` backend (torch's fused recurrent ops: cuDNN on CUDA) against the reference.

This machine has no GPU; forced with ``use_backend("cudnn")`` the same code calls the same
``torch._VF`` ops on the CPU, so its conversions (the GRU's update gate, the reverse direction,
packing for lengths, the state's layout) are held equal to the reference here: outputs, final
states and every gradient in float64, through the driver (layers, directions, lengths, an
initial state, batch_first). Auto dispatch picks it for CUDA tensors only."""

import types

import pytest
import torch

import rnnkit
from rnnkit.cells import GRURecurrence, LSTMRecurrence, RNNRecurrence
from rnnkit.kernels import last_backend, select, use_backend

COVERED = {
    "rnn-tanh": lambda: rnnkit.RNN(3, 5, num_layers=2, bidirectional=True, batch_first=True),
    "rnn-relu": lambda: rnnkit.RNN(3, 5, num_layers=2, bidirectional=True, batch_first=True, nonlinearity="relu"),
    "lstm": lambda: rnnkit.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True),
    "gru-reset-after": lambda: rnnkit.GRU(3, 5, num_layers=2, bidirectional=True, batch_first=True, reset_after=True),
}


def run(layer, backend, x, hx, lengths):
    """Outputs, final state and the gradients of a loss that reads both, under ``backend``."""
    with use_backend(backend):
        out, h_n = layer(x, hx, lengths=lengths)
        assert last_backend() == backend
    finals = h_n if isinstance(h_n, tuple) else (h_n,)
    loss = (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).pow(2).sum() + sum(h.pow(3).sum() for h in finals)
    grads = torch.autograd.grad(
        loss, [x, *[h for h in (hx if isinstance(hx, tuple) else (hx,)) if h is not None], *layer.parameters()]
    )
    return (out, *finals, *grads)


@pytest.mark.parametrize("name", COVERED)
@pytest.mark.parametrize("lengths", [None, [6, 2, 4, 1]], ids=["full", "lengths"])
@pytest.mark.parametrize("given_state", [False, True], ids=["zero-state", "given-state"])
def test_cudnn_backend_equals_reference(name, lengths, given_state):
    torch.manual_seed(0)
    layer = COVERED[name]().double()
    x = torch.randn(4, 6, 3, dtype=torch.float64, requires_grad=True)
    hx = None
    if given_state:
        h0 = torch.randn(4, 4, 5, dtype=torch.float64, requires_grad=True)  # layers * directions, N, H
        hx = (h0, torch.randn(4, 4, 5, dtype=torch.float64, requires_grad=True)) if name == "lstm" else h0
    ours = run(layer, "cudnn", x, hx, lengths)
    oracle = run(layer, "reference", x, hx, lengths)
    assert len(ours) == len(oracle)
    for k, (a, b) in enumerate(zip(ours, oracle)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"result {k}")
    if lengths is not None:  # zero past each length, as the driver promises
        assert ours[0][3, 1:].abs().max() == 0


def test_cudnn_backend_refuses_the_textbook_gru():
    layer = rnnkit.GRU(3, 5)  # reset before the recurrent product: no cuDNN op computes it
    with use_backend("cudnn"), pytest.raises(ValueError, match="reset_after=True"):
        layer(torch.randn(4, 2, 3))


def test_auto_dispatch_gives_cuda_tensors_to_cudnn_where_it_covers_the_recurrence():
    cuda_input = types.SimpleNamespace(
        is_cuda=True, is_cpu=False, dtype=torch.float32, shape=(4, 2, 3)
    )  # no GPU here: the decision only
    for recurrence in (RNNRecurrence(5, "tanh"), RNNRecurrence(5, "relu"), LSTMRecurrence(5), GRURecurrence(5, reset_after=True)):
        assert select(recurrence, cuda_input)[0] == "cudnn"
    assert select(GRURecurrence(5, reset_after=False), cuda_input)[0] == "reference"
    with use_backend("reference"):
        assert select(LSTMRecurrence(5), cuda_input)[0] == "reference"
    assert select(LSTMRecurrence(5), torch.randn(4, 2, 3))[0] in ("native", "reference")  # never cudnn on CPU
