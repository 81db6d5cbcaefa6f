"""Gradient diagnostics, the long-memory generators, the memory app and its commands."""

import json
import math

import pytest
import torch

from rnnkit import LSTM, RNN, GRUCell, LSTMCell, LSTMState, RNNCell
from rnnkit.apps.memory import MemoryConfig, MemoryModel, MemoryTask, make_batch
from rnnkit.cli import main
from rnnkit.data.synthetic import COPY_DELIMITER, adding_problem, copy_baseline, copy_task
from rnnkit.diagnostics import jacobian_norms, state_gradient_norms
from rnnkit.train import TrainConfig, Trainer
from rnnkit.train.data import GeneratedBatches


def unrolled(cell, x, state=None):
    """Step a cell by hand, keeping every h_t (retain_grad gives the total dL/dh_t)."""
    hs = []
    for t in range(x.shape[1]):
        h, state = cell(x[:, t], state)
        h.retain_grad()
        hs.append(h)
        state = LSTMState(h, state.c) if isinstance(state, LSTMState) else h
    return hs


@pytest.mark.parametrize("cell_cls", [RNNCell, LSTMCell, GRUCell])
def test_state_gradient_norms_equal_autograd_by_hand(cell_cls):
    torch.manual_seed(0)
    cell = cell_cls(3, 4, dtype=torch.float64)
    layer_cls = {RNNCell: RNN, LSTMCell: LSTM}.get(cell_cls)
    from rnnkit import GRU

    layer = (layer_cls or GRU)(3, 4, batch_first=True, dtype=torch.float64)
    layer.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()})
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    readout = torch.randn(4, dtype=torch.float64)

    hs = unrolled(cell, x)
    (hs[-1] @ readout).pow(2).mean().backward()  # a loss placed at the last step
    by_hand = torch.stack([h.grad.norm(dim=-1).mean() for h in hs])

    (norms,) = state_gradient_norms(lambda: (layer(x)[0][:, -1] @ readout).pow(2).mean())
    torch.testing.assert_close(norms, by_hand)
    assert norms[-1] > 0 and norms[0] > 0


def test_jacobian_norms_equal_the_explicit_jacobian():
    torch.manual_seed(0)
    layer = LSTM(2, 3, batch_first=True, dtype=torch.float64)
    x = torch.randn(1, 5, 2, dtype=torch.float64)
    norms = jacobian_norms(lambda: layer(x)[0])
    cell = LSTMCell(2, 3, dtype=torch.float64)
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in layer.state_dict().items()})

    def h_last_from(t, h_t, c_t):
        state = LSTMState(h_t, c_t)
        for s in range(t + 1, 5):
            h, state = cell(x[:, s], state)
        return state.h if t < 4 else h_t

    states, state = [], None
    with torch.no_grad():
        for t in range(5):
            _, state = cell(x[:, t], state)
            states.append(state)
    for t in range(5):
        jac = torch.autograd.functional.jacobian(lambda h, t=t: h_last_from(t, h, states[t].c), states[t].h)
        assert norms[t].item() == pytest.approx(jac.norm().item(), rel=1e-9)
    assert norms[-1].item() == pytest.approx(math.sqrt(3)), "lag 0: the identity"


def test_adding_problem_statistics():
    x, y = adding_problem(20_000, 50, torch.Generator().manual_seed(0))
    markers = x[..., 1]
    assert torch.all(markers[:, :25].sum(1) == 1) and torch.all(markers[:, 25:].sum(1) == 1), "one marker in each half"
    torch.testing.assert_close(y, (x[..., 0] * markers).sum(1))
    assert ((y - 1) ** 2).mean().item() == pytest.approx(1 / 6, abs=0.005), "predicting 1 scores MSE ~0.167"
    assert 0 <= x[..., 0].min() and x[..., 0].max() <= 1


def test_copy_task_layout_and_baseline():
    x, y = copy_task(500, 30, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (500, 50)
    assert torch.all((x[:, :10] >= 1) & (x[:, :10] <= 8))
    assert torch.all(x[:, 10:39] == 0) and torch.all(x[:, 39] == COPY_DELIMITER) and torch.all(x[:, 40:] == 0)
    assert torch.equal(y[:, -10:], x[:, :10]) and torch.all(y[:, :-10] == 0)
    # the memoryless strategy: blank for sure until the last 10 steps, then uniform over the 8 symbols
    logits = torch.full((500, 50, 9), -1e9)
    logits[:, :-10, 0] = 0
    logits[:, -10:, 1:] = 0
    memoryless = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).item()
    assert memoryless == pytest.approx(copy_baseline(30)) == pytest.approx(10 * math.log(8) / 50)


def test_lstm_learns_the_adding_problem_at_t20(tmp_path):
    torch.manual_seed(0)
    config = MemoryConfig("adding", 20, "lstm", 64)
    task = MemoryTask(config)
    train = TrainConfig(steps=400, out=str(tmp_path / "run"), batch_size=50, lr=3e-3, clip_norm=1.0, eval_every=400,
                        progress=False)  # fmt: skip
    result = Trainer(task, GeneratedBatches(make_batch(config), 50), train).fit()
    assert result.last_eval["test_loss"] < 0.05, result.last_eval


def test_memory_model_for_copy_outputs_every_step():
    model = MemoryModel(MemoryConfig("copy", 12, "gru"))
    x, y = copy_task(3, 12)
    assert model(x).shape == (3, 32, 9)
    assert model.loss(model(x), y).item() > 0


def test_diagnose_and_bench_commands_write_png_and_json(tmp_path):
    assert main(["diagnose", "--cell", "rnn,lstm", "--length", "12", "--train-steps", "10", "--out", str(tmp_path / "d")]) == 0
    result = json.loads((tmp_path / "d" / "gradients.json").read_text())
    assert set(result["cells"]) == {"rnn", "lstm"} and len(result["cells"]["rnn"]["init"]["dL_dh"]) == 12
    assert (tmp_path / "d" / "gradients.png").stat().st_size > 10_000
    assert set(result["exploding"]) == {"no clipping", "clip norm 1"}
    argv = ["bench", "memory", "--task", "copy", "--length", "5", "--cell", "lstm,rnn-relu", "--init", "rnnkit,identity",
            "--steps", "10", "--eval-every", "5", "--out", str(tmp_path / "b")]  # fmt: skip
    assert main(argv) == 0
    bench = json.loads((tmp_path / "b" / "copy-T5.json").read_text())
    assert set(bench["runs"]) == {"lstm/rnnkit", "rnn-relu/rnnkit", "rnn-relu/identity"}
    assert (tmp_path / "b" / "copy-T5.png").exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["diagnose", "--length", "1"], "length must be an integer >= 2, got 1"),
        (["diagnose", "--cell", "rnn,transformer"], "unknown: transformer"),
        (["bench", "memory", "--length", "0"], "length must be an integer >= 2, got 0"),
        (["bench", "memory", "--cell", "lstm", "--init", "xavier"], "--init takes rnnkit, torch or identity"),
    ],
)
def test_bad_input(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_task_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "memory", "--task", "sorting"])
    assert "invalid choice: 'sorting'" in capsys.readouterr().err
