"""The training engine: TBPTT streams, carry and detach, clipping, the NaN guard, schedules,
checkpoints (atomic, verified, never pickled), exact resume after SIGKILL, torchrun."""

import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F
from toy_training import ToyTask, build, corpus

from conftest import assert_close
from rnnkit import LSTMState
from rnnkit.train import (
    Batch,
    CheckpointError,
    PhasedBatches,
    ShuffledBatches,
    StreamBatches,
    TrainConfig,
    Trainer,
    TrainingDiverged,
)
from rnnkit.train import checkpoint as ckpt
from rnnkit.train import trainer as trainer_module
from rnnkit.train.trainer import steps_that_fit

HERE = Path(__file__).parent
SCRIPT = str(HERE / "toy_training.py")


def config(tmp_path, **overrides):
    values = {"steps": 6, "out": str(tmp_path / "run"), "batch_size": 4, "bptt_steps": 10, "progress": False}
    values.update(overrides)
    return TrainConfig(**values)


def weights(path):
    return load_file(str(Path(path) / "model.safetensors"))


def assert_identical(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# -- data ------------------------------------------------------------------------------------


def test_stream_layout_is_contiguous_streams_without_copies():
    tokens = torch.arange(1001)
    data = StreamBatches(tokens, batch_size=4, bptt_steps=10)
    assert data.streams.untyped_storage().data_ptr() == tokens.untyped_storage().data_ptr(), "a view, not windows"
    first, second = next(data), next(data)
    inputs, targets = first.data
    assert first.starts_streams and not second.starts_streams
    for b in range(4):  # stream b starts at b * 250 and continues across chunks
        assert torch.equal(inputs[b], torch.arange(b * 250, b * 250 + 10))
        assert torch.equal(targets[b], torch.arange(b * 250 + 1, b * 250 + 11))
        assert torch.equal(second.data[0][b], torch.arange(b * 250 + 10, b * 250 + 20))
    for _ in range(23):
        next(data)
    assert next(data).starts_streams and data.state_dict() == {"epoch": 1, "chunk": 1}
    shard = StreamBatches(tokens, batch_size=4, bptt_steps=10, rank=1, world_size=2)
    assert torch.equal(next(shard).data[0], inputs[2:]), "rank 1 of 2 takes streams 2 and 3"


def test_data_sources_resume_exactly():
    collate = lambda items: (torch.stack(items), 3 * len(items))  # noqa: E731
    examples = [torch.full((3,), i) for i in range(10)]
    a = ShuffledBatches(examples, 3, collate, seed=5)
    seen = [next(a).data for _ in range(7)]
    b = ShuffledBatches(examples, 3, collate, seed=5)
    b.load_state_dict(ShuffledBatches(examples, 3, collate, seed=5).state_dict() | {"epoch": 1, "index": 1})
    assert torch.equal(next(b).data, seen[4]), "epoch 1, batch 1 is the 5th batch (3 per epoch)"
    assert sorted(torch.cat(seen[:3]).unique().tolist()) != [], "an epoch draws without replacement"
    assert len(set(torch.cat(seen[:3])[:, 0].tolist())) == 9


def test_length_bucketing_pads_little_and_still_shuffles_every_example():
    lengths = torch.randint(1, 400, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    examples = list(enumerate(lengths))  # (id, length)
    collate = lambda items: (items, sum(n for _, n in items))  # noqa: E731

    def epoch(source):
        return [next(source).data for _ in range(100)]

    def padding(batches):
        return sum(max(n for _, n in b) * len(b) - sum(n for _, n in b) for b in batches)

    plain = epoch(ShuffledBatches(examples, 10, collate, seed=1))
    source = ShuffledBatches(examples, 10, collate, seed=1, length=lambda e: e[1], pool=20)
    first, second = epoch(source), epoch(source)
    assert sorted(i for b in first for i, _ in b) == list(range(1000)), "an epoch still draws every example once"
    assert padding(first) < padding(plain) / 10
    assert {tuple(b) for b in first} != {tuple(b) for b in second}, "the batches change every epoch"
    resumed = ShuffledBatches(examples, 10, collate, seed=1, length=lambda e: e[1], pool=20)
    resumed.load_state_dict({"epoch": 1, "index": 7})
    assert next(resumed).data == second[7]


def test_phased_batches_switch_source_after_the_first_phase_and_resume():
    collate = lambda items: (items, len(items))  # noqa: E731
    make = lambda: PhasedBatches(ShuffledBatches(list("abcdef"), 2, collate), 4, ShuffledBatches([1, 2, 3, 4], 2, collate))  # noqa: E731
    phased = make()
    drawn = [next(phased).data for _ in range(7)]
    assert all(isinstance(x, str) for b in drawn[:4] for x in b) and all(isinstance(x, int) for b in drawn[4:] for x in b)
    resumed = make()
    reference = make()
    for _ in range(3):
        next(reference)
    resumed.load_state_dict(reference.state_dict())
    assert [next(resumed).data for _ in range(4)] == drawn[3:]


def test_stream_too_short_is_a_clear_error():
    with pytest.raises(
        ValueError, match=r"the corpus has 50 tokens, fewer than one chunk needs \(batch_size \* bptt_steps \+ 1 = 81\)"
    ):
        StreamBatches(torch.arange(50), batch_size=8, bptt_steps=10)


# -- truncated BPTT ----------------------------------------------------------------------------


class RecordingTask(ToyTask):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.returned, self.losses = [], []

    def loss(self, model, data, state):
        loss, new_state = super().loss(model, data, state)
        self.returned.append(new_state)
        self.losses.append(loss)
        return loss, new_state


def test_tbptt_carries_detached_state_across_chunks(tmp_path):
    tokens, vocab = corpus()
    task = RecordingTask(vocab)
    Trainer(task, StreamBatches(tokens, 4, 10), config(tmp_path, steps=3)).fit()
    assert task.seen_states[0] is None, "the first chunk starts from zeros"
    for previous, received in zip(task.returned, task.seen_states[1:]):
        assert isinstance(received, LSTMState), "the LSTM tuple state is carried as such"
        assert previous.h.grad_fn is not None, "the chunk's own final state is in its graph"
        for old, new in zip(previous, received):
            assert torch.equal(old, new), "the carried state is the previous chunk's final state"
            assert new.grad_fn is None and not new.requires_grad, "and it is detached"
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        task.losses[0].backward()  # the old chunk's graph is gone: the graph does not grow


def test_tbptt_refuses_a_shuffling_loader_and_a_changing_batch(tmp_path):
    tokens, vocab = corpus()
    shuffled = ShuffledBatches(
        list(tokens.split(11))[:-1], 4, lambda items: ((torch.stack(items)[:, :-1], torch.stack(items)[:, 1:]), 40)
    )
    with pytest.raises(ValueError, match="bptt_steps needs a stream source"):
        Trainer(ToyTask(vocab), shuffled, config(tmp_path))
    with pytest.raises(ValueError, match="cuts chunks of 20 steps but bptt_steps is 10"):
        Trainer(ToyTask(vocab), StreamBatches(tokens, 4, 20), config(tmp_path))

    class Shrinking(StreamBatches):
        def __next__(self):
            batch = super().__next__()
            if self.chunk == 3:
                inputs, targets = batch.data
                return Batch((inputs[:2], targets[:2]), inputs[:2].numel(), 2)
            return batch

    with pytest.raises(
        ValueError, match="truncated BPTT needs a constant batch size: the carried state holds 4 sequences but this batch has 2"
    ):
        Trainer(ToyTask(vocab), Shrinking(tokens, 4, 10), config(tmp_path)).fit()


def test_full_bptt_with_shuffled_batches_learns(tmp_path):
    trainer = build(config(tmp_path, steps=60, bptt_steps=None, lr=1e-2, eval_every=60), shuffled=True)
    first = trainer.task.evaluate(trainer.model)["val_loss"]
    result = trainer.fit()
    assert result.last_eval["val_loss"] < first - 0.8, (first, result.last_eval)


# -- clipping ----------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", [{"clip_norm": 0.05}, {"clip_norm": None, "clip_value": 0.001}])
def test_clipping_changes_the_update_exactly_as_torch(tmp_path, clip):
    cfg = config(tmp_path, steps=1, optimizer="sgd", lr=0.5, **clip)
    trainer = build(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    batch = StreamBatches(corpus()[0][:-400], 4, 10)
    inputs, targets = next(batch).data
    trainer.fit()

    model = type(trainer.model)(trainer.task.vocab)
    model.load_state_dict(before)
    logits, _ = model(inputs)
    F.cross_entropy(logits.reshape(-1, trainer.task.vocab), targets.reshape(-1)).backward()
    if clip.get("clip_norm"):
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip["clip_norm"])
        assert norm > clip["clip_norm"], "the test must actually clip"
    else:
        torch.nn.utils.clip_grad_value_(model.parameters(), clip["clip_value"])
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.5 * p.grad  # SGD's first step (momentum buffer = gradient)
    for name, p in model.state_dict().items():
        torch.testing.assert_close(trainer.model.state_dict()[name], p, rtol=0, atol=1e-7)
    record = json.loads((Path(cfg.out) / "metrics.jsonl").read_text().splitlines()[0])
    assert record["grad_norm"] > 0, "the pre-clip norm is logged every step"


# -- NaN guard -----------------------------------------------------------------------------------


def test_nan_guard_skips_a_poisoned_batch(tmp_path):
    trainer = build(config(tmp_path, steps=5))
    trainer.task.poison_steps = {3}
    trainer._start_or_resume()
    for _ in range(2):
        trainer._train_step()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.warns(RuntimeWarning, match="step 3: non-finite loss or gradient, update skipped"):
        trainer._train_step()
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items()), "no update on a NaN step"
    assert trainer.carry is None, "a NaN state is not carried on"
    trainer._train_step()
    assert trainer.skipped == 1 and trainer.consecutive_bad == 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    skips = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in skips if r["kind"] == "skip"] == [3]


def test_nan_guard_stops_after_k_bad_steps_keeping_the_last_checkpoint(tmp_path):
    trainer = build(config(tmp_path, steps=20, checkpoint_every=2, nan_patience=3))
    trainer.task.poison_steps = set(range(6, 30))
    with (
        pytest.warns(RuntimeWarning),
        pytest.raises(TrainingDiverged, match=r"training stopped at step 8: 3 consecutive steps .*step-00000004"),
    ):
        trainer.fit()
    tensors, meta = ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000004")
    assert meta["step"] == 4 and all(torch.isfinite(t).all() for t in tensors["model"].values())


# -- schedules, early stopping, budgets -----------------------------------------------------------


def test_schedules():
    cosine = TrainConfig(steps=110, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert [cosine.lr_factor(s) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert (
        cosine.lr_factor(10) == 1.0
        and cosine.lr_factor(60) == pytest.approx(0.55)
        and cosine.lr_factor(110) == pytest.approx(0.1)
    )
    step = TrainConfig(steps=10, schedule="step", step_every=3, step_gamma=0.5)
    assert [step.lr_factor(s) for s in (0, 2, 3, 6)] == [1.0, 1.0, 0.5, 0.25]


def test_schedule_drives_the_optimizer(tmp_path):
    trainer = build(config(tmp_path, steps=4, warmup_steps=4, lr=1.0))
    trainer.fit()
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert lrs == [0.5, 0.75, 1.0, 1.0]  # the lr set for the *next* step, after each step


class GroupedTask(ToyTask):
    """The embedding frozen (rate 0), the recurrent layers at a quarter of the rate."""

    def parameter_groups(self):
        m = self.model
        return [{"params": m.head.parameters()}, {"params": m.embed.parameters(), "lr_scale": 0.0},
                {"params": m.rnn.parameters(), "lr_scale": 0.25}]  # fmt: skip


def test_parameter_groups_scale_the_rate_and_follow_the_schedule(tmp_path):
    tokens, vocab = corpus()
    task = GroupedTask(vocab)
    embedding = task.model.embed.weight.detach().clone()
    recurrent = task.model.rnn.weight_hh_l0.detach().clone()
    data = StreamBatches(tokens, 4, 10)
    trainer = Trainer(task, data, config(tmp_path, steps=4, warmup_steps=4, lr=1e-2))
    trainer.fit()
    assert [group["lr"] for group in trainer.optimizer.param_groups] == [1e-2, 0.0, 0.25e-2]  # after warm-up: factor 1
    torch.testing.assert_close(task.model.embed.weight.detach(), embedding, rtol=0, atol=0)
    assert not torch.equal(task.model.rnn.weight_hh_l0.detach(), recurrent)


def test_parameter_groups_must_cover_every_parameter_once(tmp_path):
    tokens, vocab = corpus()
    task = ToyTask(vocab)
    task.parameter_groups = lambda: [{"params": task.model.head.parameters()}]
    with pytest.raises(ValueError, match="every parameter of the model exactly once"):
        Trainer(task, StreamBatches(tokens, 4, 10), config(tmp_path))


def test_early_stopping(tmp_path):
    trainer = build(config(tmp_path, steps=100, eval_every=1, early_stop_patience=2))
    scores = iter([3.0, 2.0, 2.5, 2.6, 1.0])
    trainer.task.evaluate = lambda model: {"val_loss": next(scores)}
    result = trainer.fit()
    assert result.stopped == "early_stop" and result.step == 4 and result.best == 2.0


def test_ema_evaluates_and_exports_the_moving_average_and_leaves_training_alone(tmp_path):
    """With ema_decay d, after update s the average is ``e = m e + (1 - m) w_s``, ``m = min(d,
    (1 + s) / (10 + s))``, from the initial weights; evaluations score it and the model
    directory holds it, while the training weights follow exactly the run without it."""
    decay, steps = 0.8, 12
    plain = build(config(tmp_path, steps=steps, eval_every=6, checkpoint_every=steps, out=str(tmp_path / "plain")))
    plain.fit()
    trainer = build(config(tmp_path, steps=steps, eval_every=6, checkpoint_every=steps, ema_decay=decay))
    seen, inner = [], trainer.task.loss
    trainer.task.loss = lambda model, *a: (seen.append(_cloned_params(trainer.model)), inner(model, *a))[1]
    scored, evaluate = [], trainer.task.evaluate
    trainer.task.evaluate = lambda model: (scored.append(_cloned_params(model)), evaluate(model))[1]
    trainer.fit()
    training = ckpt.load_latest(tmp_path / "run" / "checkpoints")[0]["model"]
    assert_identical(training, ckpt.load_latest(tmp_path / "plain" / "checkpoints")[0]["model"])

    after_update = [*seen[1:], training]  # the weights after updates 1 .. steps
    average = dict(seen[0])
    averages = []
    for s, w in enumerate(after_update, start=1):
        m = min(decay, (1 + s) / (10 + s))
        average = {k: m * average[k] + (1 - m) * w[k] for k in average}
        averages.append(average)
    for name, value in weights(tmp_path / "run").items():
        assert_close(value, average[name], torch.float32)
        assert not torch.allclose(value, training[name]), f"{name}: the average, not the last weights"
    assert len(scored) == 2
    for evaluated, step in zip(scored, (6, 12)):
        for name, value in evaluated.items():
            assert_close(value, averages[step - 1][name], torch.float32)
    assert_identical(weights(tmp_path / "plain"), training)  # without ema_decay: the last weights


def _cloned_params(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_ema_resumes_exactly(tmp_path):
    build(config(tmp_path, steps=10, checkpoint_every=5, ema_decay=0.9, out=str(tmp_path / "whole"))).fit()
    build(config(tmp_path, steps=5, checkpoint_every=5, ema_decay=0.9)).fit()
    build(config(tmp_path, steps=10, checkpoint_every=5, ema_decay=0.9, resume=True)).fit()
    assert_identical(weights(tmp_path / "whole"), weights(tmp_path / "run"))


def test_minutes_budget_and_outputs(tmp_path):
    result = build(config(tmp_path, steps=None, minutes=0.002, eval_every=1000)).fit()
    assert result.stopped == "time" and result.step >= 1
    out = tmp_path / "run"
    assert {"model.safetensors", "config.json", "metrics.jsonl", "curves.png"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "config.json").read_text())["app"] == "toy"


def test_steps_that_fit():
    assert steps_that_fit(60, seconds_per_step=0.5, seconds_left=100.0) == 260
    assert steps_that_fit(60, seconds_per_step=0.3, seconds_left=1.0) == 63, "whole steps only"
    assert steps_that_fit(60, seconds_per_step=1.0, seconds_left=-5.0) == 61, "the budget is spent: one more step"
    with pytest.raises(ValueError, match="seconds_per_step must be positive, got 0"):
        steps_that_fit(60, seconds_per_step=0, seconds_left=1.0)


class StepClock:
    """A stand-in for the trainer's ``time`` module whose monotonic clock moves ``seconds(step)``
    with every training step (the task's loss moves it), so that sizing is exact and not timed."""

    def __init__(self, task, seconds=lambda step: 1.0):
        self.now = 0.0
        self.perf_counter = time.perf_counter
        loss = task.loss

        def ticking_loss(*args):
            self.now += seconds(task.step + 1)
            return loss(*args)

        task.loss = ticking_loss

    def monotonic(self):
        return self.now


def train_records(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_time_budget_sizes_the_cosine_schedule_and_resume_keeps_it(tmp_path, monkeypatch):
    """``minutes`` without ``steps``, cosine: steps 10-60 are timed (1 s each on the stand-in
    clock), so the 120.5 s budget fits 60 + 60 steps; the rate ends at the schedule's floor, and
    a run killed after step 100 and resumed under another budget keeps the 120 and ends equal."""
    budget = {"steps": None, "minutes": 120.5 / 60, "schedule": "cosine", "warmup_steps": 5, "checkpoint_every": 50}

    def run(out, seconds=lambda step: 1.0, **overrides):
        trainer = build(config(tmp_path, out=str(tmp_path / out), **{**budget, **overrides}))
        monkeypatch.setattr(trainer_module, "time", StepClock(trainer.task, seconds))
        return trainer, trainer.fit()

    trainer, result = run("whole")
    assert (trainer.sized_steps, result.step, result.stopped) == (120, 120, "steps")
    records = train_records(tmp_path / "whole")
    assert [r for r in records if r["kind"] == "sized"] == [{"kind": "sized", "step": 60, "steps": 120, "seconds_per_step": 1.0}]
    lrs = {r["step"]: r["lr"] for r in records if r["kind"] == "train"}
    assert lrs[60] == pytest.approx(2e-3), "the rate holds until the steps are sized"
    assert lrs[120] == pytest.approx(2e-3 * trainer.config.min_lr_ratio), "and ends at the floor"
    assert lrs[61] < lrs[60] and lrs[90] == pytest.approx(2e-3 * trainer.config.lr_factor(90))

    run("run")
    killed = tmp_path / "run" / "checkpoints"
    for newest in ckpt.list_checkpoints(killed)[:1]:  # keep step 100: as if killed before step 120 was saved
        shutil.rmtree(newest)
    assert ckpt.load_latest(killed)[1]["sized_steps"] == 120
    trainer, result = run("run", resume=True, minutes=10.0)
    assert (trainer.sized_steps, result.step, result.stopped) == (120, 120, "steps")
    assert_identical(weights(tmp_path / "whole"), weights(tmp_path / "run"))


def test_time_budget_sizes_again_at_each_evaluation(tmp_path, monkeypatch):
    """Steps take 1 s up to step 60, then 2 s. Sized at step 60 from steps 10-60 (1 s each: 60
    more fit the 120.5 s), then after each evaluation from all the timed steps: at step 70, 70 s
    over 60 steps leave 40.5 s for 34 more; at 80, 90 s over 70 leave 20.5 s for 15; at 90, 1.
    The deadline stops the run at step 91, the last of the schedule."""
    trainer = build(config(tmp_path, steps=None, minutes=120.5 / 60, schedule="cosine", eval_every=10))
    monkeypatch.setattr(trainer_module, "time", StepClock(trainer.task, lambda step: 1.0 if step <= 60 else 2.0))
    result = trainer.fit()
    sized = [(r["step"], r["steps"]) for r in train_records(tmp_path / "run") if r["kind"] == "sized"]
    assert sized == [(60, 120), (70, 104), (80, 95), (90, 91)]
    assert (result.step, result.stopped) == (91, "time")


def test_config_errors():
    with pytest.raises(ValueError, match="give a budget"):
        TrainConfig()
    with pytest.raises(ValueError, match="clip_norm and clip_value are exclusive"):
        TrainConfig(steps=1, clip_value=1.0)
    with pytest.raises(ValueError, match="bptt_steps must be a positive integer, got 0"):
        TrainConfig(steps=1, bptt_steps=0)
    with pytest.raises(ValueError, match="lr must be a positive number, got nan"):
        TrainConfig(steps=1, lr=math.nan)
    with pytest.raises(ValueError, match=r"ema_decay must be a number in \(0, 1\) or None, got 1.0"):
        TrainConfig(steps=1, ema_decay=1.0)
    with pytest.raises(ValueError, match="optimizer must be one of adam, adamw, sgd, got 'rmsprop'"):
        TrainConfig(steps=1, optimizer="rmsprop")


# -- checkpoints and resume -------------------------------------------------------------------------


def run_script(out, *args, check=True, env=None):
    command = [sys.executable, SCRIPT, str(out), *args]
    return subprocess.run(command, check=check, capture_output=True, text=True, timeout=300, env=env)


def test_fresh_run_refuses_to_overwrite_and_resume_without_checkpoint_starts(tmp_path):
    build(config(tmp_path, steps=5, checkpoint_every=5)).fit()
    with pytest.raises(ValueError, match="already holds checkpoints: pass --resume"):
        build(config(tmp_path, steps=5)).fit()
    with pytest.warns(RuntimeWarning, match="no checkpoint in"):
        build(config(tmp_path, steps=2, resume=True, out=str(tmp_path / "empty"))).fit()


def test_sigkill_mid_training_resumes_bit_identical(tmp_path):
    """Kill -9 a run mid-way (with dropout, so RNG state matters); resuming it ends with the
    same weights, bit for bit, and the same metrics as an uninterrupted run."""
    args = ("--steps", "40", "--dropout", "0.3", "--checkpoint-every", "5")
    run_script(tmp_path / "whole", *args)
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, SCRIPT, str(killed), *args, "--step-sleep", "0.05"])
    deadline = time.monotonic() + 120
    while not (killed / "checkpoints" / "step-00000015").exists():
        assert time.monotonic() < deadline and process.poll() is None, "the run should reach step 15"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "model.safetensors").exists(), "killed before the end"
    run_script(killed, *args, "--resume")
    assert_identical(weights(tmp_path / "whole"), weights(killed))
    timing = ("tokens_per_s", "seconds")  # wall-clock fields differ between any two runs

    def lines(run):
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in timing} for r in records]

    assert lines(tmp_path / "whole") == lines(killed), "the same losses, norms and evaluations, step by step"


def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    args = ("--steps", "20", "--checkpoint-every", "5")
    run_script(tmp_path / "whole", *args)
    run = tmp_path / "run"
    run_script(run, "--steps", "15", "--checkpoint-every", "5")
    newest = run / "checkpoints" / "step-00000015"
    data = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(data[: len(data) // 2])  # cut short, as by a crash
    (run / "checkpoints" / ".tmp-step-00000020-99999").mkdir()  # an interrupted write
    with pytest.warns(RuntimeWarning, match="skipping damaged checkpoint: .*step-00000015/model.safetensors is damaged"):
        _, meta, path = ckpt.load_latest(run / "checkpoints")
    assert meta["step"] == 10
    run_script(run, *args, "--resume")
    assert_identical(weights(tmp_path / "whole"), weights(run))
    assert not list((run / "checkpoints").glob(".tmp-*")), "leftovers of interrupted writes are cleaned"


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_is_never_loaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build(config(tmp_path, steps=5, checkpoint_every=5)).fit()
    path = tmp_path / "run" / "checkpoints" / "step-00000005"
    torch.save({"weight": Exploit()}, path / "model.safetensors")
    meta = json.loads((path / "meta.json").read_text())
    meta["files"]["model.safetensors"] = ckpt.sha256(path / "model.safetensors")  # even with a matching hash
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="is not a valid safetensors file .*rnnkit never loads pickles"):
        ckpt.load_checkpoint(path)
    torch.save({"weight": Exploit()}, tmp_path / "run" / "model.safetensors")
    import rnnkit.io

    with pytest.raises(CheckpointError, match="never loads pickles"):
        rnnkit.io.read_model_dir(tmp_path / "run")
    assert not (tmp_path / "pwned").exists()


def test_ctrl_c_checkpoints_and_stops(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, SCRIPT, str(out), "--steps", "1000", "--checkpoint-every", "1000", "--step-sleep", "0.05"]
    )
    while not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 3:
        assert process.poll() is None
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    step = json.loads((out / "config.json").read_text())["step"]
    assert 3 <= step < 1000 and (out / "checkpoints" / f"step-{step:08d}").is_dir()


# -- data parallel ------------------------------------------------------------------------------------


def test_two_process_gloo_run_equals_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same thread count (so the same GEMM sums) in both runs
    run_script(tmp_path / "one", "--steps", "12", "--batch-size", "8", env=env)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", SCRIPT, str(tmp_path / "two")]
    done = subprocess.run([*command, "--steps", "12", "--batch-size", "8"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]  # torchrun's own message, not just its exit status
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")

    def losses(run):  # on a mismatch: from which step the two runs part
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [round(row["loss"], 6) for row in rows if row["kind"] == "train"]

    for key in one:
        report = lambda m, key=key: f"{key}: {m}\none: {losses('one')}\ntwo: {losses('two')}"  # noqa: E731
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-5, msg=report)


def test_pruning_keeps_the_last_n_and_the_best(tmp_path):
    trainer = build(config(tmp_path, steps=8, eval_every=2, checkpoint_every=2, keep_checkpoints=1))
    scores = iter([1.0, 3.0, 4.0, 5.0])  # the best evaluation is the first, at step 2
    trainer.task.evaluate = lambda model: {"val_loss": next(scores, 6.0)}
    trainer.fit()
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["step-00000002", "step-00000008"], "the best (step 2) and the newest"


FAULTS_OF_FIVE_ALLOCATIONS = """
import resource, sys, torch
from rnnkit.train.allocator import keep_freed_memory
kept = sys.argv[1] == "keep" and keep_freed_memory()
for _ in range(3):  # 64 MiB at a time: the heap grows to fit
    torch.empty(16 << 20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.empty(16 << 20).fill_(1.0)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's; elsewhere keep_freed_memory is a no-op")
def test_keep_freed_memory_reuses_a_freed_tensor_without_page_faults():
    """A training step's large tensors are freed and allocated again each step: kept, a 64 MiB
    tensor reuses the last one's pages once the heap has grown to fit; released (glibc's default),
    each is a fresh mmap that faults once per page (16,384 of 4 KiB, or 32 with transparent huge
    pages)."""

    def faults(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", FAULTS_OF_FIVE_ALLOCATIONS, mode], capture_output=True, text=True, check=True)
        kept, count = out.stdout.split()
        return kept, int(count)

    kept, released = faults("keep"), faults("release")
    assert kept[0] == "True" and kept[1] < 16_384, "fewer than one fresh tensor's pages in all"
    assert released[0] == "False" and released[1] >= 5 * 32


def test_the_trainer_keeps_freed_memory_unless_told_not_to(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("rnnkit.train.trainer.keep_freed_memory", lambda: calls.append(1) or True)
    build(config(tmp_path / "a", steps=1))
    assert calls == [1]
    build(config(tmp_path / "b", steps=1, keep_freed_memory=False))
    assert calls == [1]
