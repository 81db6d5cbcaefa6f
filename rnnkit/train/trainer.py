"""The one Trainer every application uses: full or truncated BPTT, clipping, a NaN guard,
schedules, early stopping, weight averaging, atomic checkpoints with exact resume, logs, and
data parallelism.

An application provides a :class:`Task` (its model, a loss over one batch, an evaluation) and a
batch source from :mod:`rnnkit.train.data`; everything else is here.
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.cells.base import State
from rnnkit.driver import detach_state
from rnnkit.train import checkpoint as ckpt
from rnnkit.train.allocator import keep_freed_memory
from rnnkit.train.config import TrainConfig
from rnnkit.train.distributed import DistContext, all_gather_cat, all_reduce_sum
from rnnkit.train.metrics import MetricsLog, plot_curves

BEST_WEIGHTS = "best-weights.safetensors"  # with restore_best: the weights of the best evaluation so far
#: A run with a time budget and a cosine schedule sizes its step count after timing this many
#: optimizer steps, not counting its first SIZING_SKIP (allocations, kernel set-up).
SIZING_SKIP, SIZING_STEPS = 10, 50


class Task(ABC):
    """What an application gives the trainer.

    ``model``: the module to train. ``name``: the application (saved with the model).
    ``metric``: the key of :meth:`evaluate` that selects the best checkpoint and drives early
    stopping (lower is better). ``step``: the trainer sets it to the 0-based optimizer step
    before each :meth:`loss`, for schedules inside the loss (e.g. teacher forcing).
    """

    name: str = "task"
    metric: str = "val_loss"
    model: nn.Module
    step: int = 0
    partial_updates: bool = False  # some steps leave parameters unused (DDP must then look for them)

    @abstractmethod
    def loss(self, model: nn.Module, data: Any, state: State) -> tuple[Tensor, State]:
        """Mean loss of one batch, and the state to carry into the next chunk (TBPTT) or None.

        ``model`` is the module to call (it may be a DistributedDataParallel wrapper of
        ``self.model``); ``state`` is the carried state, already detached, or None. A carried
        state is laid out as rnnkit layers return it, ``(L*D, N, H)``: the batch is dim 1.
        """

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Validation metrics, with ``model`` in eval mode and gradients off."""
        return {}

    def parameter_groups(self) -> list[dict[str, Any]] | None:
        """Optimizer groups ``{"params": [...], "lr_scale": s}``, each at ``s`` times the
        configured learning rate (and its schedule); every parameter of ``model`` in exactly
        one group; the metrics log the first group's rate. Default None: one group at the
        configured rate. (ULMFiT's discriminative rates: a pretrained encoder learns slower
        than a fresh classifier.)"""
        return None

    def describe(self) -> dict[str, Any]:
        """JSON that rebuilds the model (sizes, vocabulary, ...), saved beside its weights."""
        return {}

    def final_description(self) -> dict[str, Any]:
        """The description saved with the final model: :meth:`describe` plus anything computed
        from the final weights (a forecaster's interval calibration, say)."""
        return self.describe()


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


@dataclass
class TrainResult:
    step: int
    stopped: str  # "steps", "time", "early_stop" or "interrupted"
    best: float | None
    out: Path
    last_eval: dict[str, float] = field(default_factory=dict)
    skipped_steps: int = 0


def steps_that_fit(step: int, seconds_per_step: float, seconds_left: float) -> int:
    """The step a run now at ``step`` reaches when the ``seconds_left`` of its time budget go
    at ``seconds_per_step`` (its mean pace so far, evaluations included): the step count a
    cosine schedule decays over under ``--minutes`` (see ``Trainer._size_steps``)."""
    if seconds_per_step <= 0:
        raise ValueError(f"seconds_per_step must be positive, got {seconds_per_step!r}")
    return step + max(1, int(max(0.0, seconds_left) / seconds_per_step))


def make_optimizer(model: nn.Module, config: TrainConfig, groups: list[dict[str, Any]] | None = None) -> torch.optim.Optimizer:
    """The configured optimizer over ``model``'s parameters, in ``groups`` (see
    :meth:`Task.parameter_groups`) or in one group."""
    params: Any = model.parameters()
    if groups is not None:
        params = [{"params": list(group["params"]), "lr": config.lr * group.get("lr_scale", 1.0)} for group in groups]
        listed = [id(p) for group in params for p in group["params"]]  # lists: a generator is read once
        if sorted(listed) != sorted(id(p) for p in model.parameters()):
            raise ValueError("parameter_groups must list every parameter of the model exactly once")
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


class Trainer:
    """Trains ``task.model`` on ``data`` as ``config`` says; see :meth:`fit`."""

    def __init__(self, task: Task, data: Any, config: TrainConfig, context: DistContext | None = None) -> None:
        self.task, self.data, self.config = task, data, config
        self.context = context or DistContext()
        if config.bptt_steps is not None:
            if not getattr(data, "stateful", False):
                raise ValueError(
                    "bptt_steps needs a stream source (rnnkit.train.StreamBatches): "
                    "a shuffling loader would carry state between unrelated sequences"
                )
            if data.bptt_steps != config.bptt_steps:
                raise ValueError(
                    f"the stream source cuts chunks of {data.bptt_steps} steps but bptt_steps is {config.bptt_steps}"
                )
        if config.keep_freed_memory:  # each step's large tensors reuse the last step's memory: no page faults
            keep_freed_memory()
        self.model = task.model.to(self.context.device)
        self.train_model: nn.Module = self.model
        if self.context.active:
            self.train_model = nn.parallel.DistributedDataParallel(self.model, find_unused_parameters=task.partial_updates)
        self.optimizer = make_optimizer(self.model, config, task.parameter_groups())
        # reads self.config at every step: a time-budgeted cosine run sizes its steps once running
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: self.config.lr_factor(step))
        self.out = Path(config.out)
        self.checkpoints = self.out / "checkpoints"
        self.log = MetricsLog(self.out / "metrics.jsonl")
        self.step = 0
        self.carry: State = None
        self.carry_batch = 0
        self.best: float | None = None
        self.best_step: int | None = None
        self.evals_since_best = 0
        self.consecutive_bad = 0
        self.skipped = 0
        self.last_eval: dict[str, float] = {}
        self._interrupted = False
        self.sized_steps: int | None = None  # set by _size_steps
        self._sizing_from: tuple[int, float] | None = None  # (step, time) the sizing's timing starts from
        # Polyak averaging: evaluations and the exported model use these weights, not the last step's
        self.ema: dict[str, Tensor] | None = None
        if config.ema_decay is not None:
            self.ema = {name: p.detach().clone() for name, p in self.model.named_parameters()}

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until ``steps`` or ``minutes`` runs out, early stopping or Ctrl-C; checkpoint
        every ``checkpoint_every`` steps and at the end; write the model, metrics and plot."""
        main = self.context.is_main
        self._start_or_resume()
        config = self.config  # the restored step count, if the run being resumed sized one
        deadline = None if config.minutes is None else time.monotonic() + 60 * config.minutes
        sizing = deadline is not None and config.steps is None and config.schedule == "cosine"
        timed_from = self.step + SIZING_SKIP  # this invocation's first steps are not timed
        previous_handler = self._catch_interrupt()
        bar = self._progress_bar()
        stopped, tokens, busy = "steps", 0, 0.0
        try:
            while self.config.steps is None or self.step < self.config.steps:
                started = time.perf_counter()
                loss, norm, batch_tokens = self._train_step()
                busy += time.perf_counter() - started
                tokens += batch_tokens * self.context.world_size
                if main:
                    record = {"kind": "train", "step": self.step, "loss": loss, "grad_norm": norm}
                    record.update(lr=self.scheduler.get_last_lr()[0], tokens_per_s=tokens / max(busy, 1e-9), seconds=busy)
                    self.log.write(record)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{record['tokens_per_s']:,.0f}", refresh=False)
                stop = None
                if self.step % config.eval_every == 0:
                    stop = "early_stop" if self._evaluate() else None
                    if bar is not None and self.last_eval:
                        shown = ", ".join(f"{k} {v:.4f}" for k, v in self.last_eval.items() if isinstance(v, float))
                        bar.write(f"step {self.step}: {shown}")
                if sizing:
                    self._size_steps(deadline, timed_from, bar)
                if deadline is not None and time.monotonic() >= deadline:
                    stop = stop or "time"
                if self._interrupted:
                    stop = "interrupted"
                if self._agree(stop is not None):
                    stopped = stop or "time"
                    break
                if self.step % config.checkpoint_every == 0 and self.consecutive_bad == 0:
                    self._save()  # never in the middle of a run of non-finite steps
        finally:
            if bar is not None:
                bar.close()
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
        if self.step % config.eval_every != 0 or not self.last_eval:
            self._evaluate()
        self._save()
        if main:
            self._export()
        return TrainResult(self.step, stopped, self.best, self.out, self.last_eval, self.skipped)

    def _train_step(self) -> tuple[float, float, int]:
        """One optimizer step; a non-finite loss or gradient skips the update (the NaN guard)."""
        config = self.config
        batch = next(self.data)
        if batch.starts_streams:
            self.carry = None
        if self.carry is not None and batch.size != self.carry_batch:
            raise ValueError(
                f"truncated BPTT needs a constant batch size: the carried state holds {self.carry_batch} "
                f"sequences but this batch has {batch.size}"
            )
        self.carry_batch = batch.size
        self.model.train()
        self.task.step = self.step
        # bf16 mixed precision on the model's device; the weights and the optimizer stay float32
        with torch.autocast(self.context.device.type, dtype=torch.bfloat16, enabled=config.bf16):
            loss, carry = self.task.loss(self.train_model, batch.data, self.carry)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # always, so that every rank joins the gradient all-reduce
        params = [p for p in self.model.parameters() if p.grad is not None]
        # The pre-clip global norm, logged every step; gradients are already all-reduced here.
        norm = torch.nn.utils.clip_grad_norm_(params, config.clip_norm or math.inf)
        if config.clip_value is not None:
            torch.nn.utils.clip_grad_value_(params, config.clip_value)
        stats = all_reduce_sum(torch.stack([loss.detach().float(), norm.float()]), self.context)
        mean_loss = stats[0].item() / self.context.world_size
        norm_value = stats[1].item() / self.context.world_size
        self.step += 1
        if math.isfinite(mean_loss) and math.isfinite(norm_value):
            self.optimizer.step()
            self._update_ema()
            self.carry = detach_state(carry)  # TBPTT: the next chunk starts from here, graph cut
            self.consecutive_bad = 0
        else:
            self.skipped += 1
            self.consecutive_bad += 1
            self.carry = None
            self.optimizer.zero_grad(set_to_none=True)
            if self.context.is_main:
                self.log.write({"kind": "skip", "step": self.step, "loss": mean_loss, "grad_norm": norm_value})
                warnings.warn(f"step {self.step}: non-finite loss or gradient, update skipped", RuntimeWarning, stacklevel=2)
            if self.consecutive_bad >= config.nan_patience:
                last = ckpt.list_checkpoints(self.checkpoints)
                where = f"; the last good checkpoint is {last[0]}" if last else ""
                raise TrainingDiverged(
                    f"training stopped at step {self.step}: {self.consecutive_bad} consecutive steps had a "
                    f"non-finite loss or gradient (try a lower --lr or --clip-norm){where}"
                )
        self.scheduler.step()
        return mean_loss, norm_value, batch.tokens

    @torch.no_grad()
    def _update_ema(self) -> None:
        """``ema = d * ema + (1 - d) * weights`` after each update, with ``d = min(ema_decay,
        (1 + step) / (10 + step))`` so that the first steps' weights are not over-weighted."""
        if self.ema is None:
            return
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        for name, param in self.model.named_parameters():
            self.ema[name].lerp_(param.detach(), 1 - decay)

    @contextmanager
    def _evaluated_weights(self) -> Iterator[None]:
        """Inside: the model holds the weights that evaluations score and exports save (the
        moving average with ``ema_decay``); the training weights come back on the way out."""
        if self.ema is None:
            yield
            return
        training = {name: p.detach().clone() for name, p in self.model.named_parameters()}
        _copy_into_parameters(self.model, self.ema)
        try:
            yield
        finally:
            _copy_into_parameters(self.model, training)

    def _evaluate(self) -> bool:
        """Evaluate on the main process; returns True when early stopping says stop."""
        if not self.context.is_main:
            return False
        self.model.eval()
        with torch.no_grad(), self._evaluated_weights():
            metrics = self.task.evaluate(self.model)
            value = metrics.get(self.task.metric)
            improved = value is not None and (self.best is None or value < self.best)
            if improved and self.config.restore_best:  # the weights just scored
                self.out.mkdir(parents=True, exist_ok=True)
                ckpt.atomic_save_tensors(self.out / BEST_WEIGHTS, _cloned(self.model.state_dict()))
        self.model.train()
        if not metrics:
            return False
        self.last_eval = metrics
        self.log.write({"kind": "eval", "step": self.step, **metrics})
        if value is None:
            return False
        if improved:
            self.best, self.best_step, self.evals_since_best = value, self.step, 0
        else:
            self.evals_since_best += 1
        patience = self.config.early_stop_patience
        return patience is not None and self.evals_since_best >= patience

    def _size_steps(self, deadline: float, timed_from: int, bar: Any) -> None:
        """Under a time budget with a cosine schedule, the step count the schedule decays over.

        The steps from ``timed_from`` on are timed, evaluations included. After SIZING_STEPS of
        them, and again after each evaluation, ``steps`` becomes what fits the rest of the budget
        at their mean speed (:func:`steps_that_fit`; the mean over ranks, so that all agree): a
        slow start or a change of pace moves the end of the decay, not past the deadline.
        """
        if self.step == timed_from:
            self._sizing_from = (self.step, time.monotonic())
            return
        if self._sizing_from is None:
            return
        first_step, started = self._sizing_from
        if self.step - first_step < SIZING_STEPS:
            return
        if self.sized_steps is not None and self.step % self.config.eval_every != 0:
            return
        now = time.monotonic()
        per_step = (now - started) / (self.step - first_step)
        fit = torch.tensor([float(steps_that_fit(self.step, per_step, deadline - now))], dtype=torch.float64)
        first = self.sized_steps is None
        self.sized_steps = int(all_reduce_sum(fit, self.context).item() / self.context.world_size)
        self.config = replace(self.config, steps=self.sized_steps)
        if self.context.is_main:
            self.log.write({"kind": "sized", "step": self.step, "steps": self.sized_steps, "seconds_per_step": per_step})
        if bar is not None:
            bar.total = self.sized_steps
            if first:
                bar.write(f"time budget: {self.sized_steps} steps at {per_step:.3f} s a step (sized again at each evaluation)")

    def _agree(self, stop: bool) -> bool:
        """Every rank stops at the same step: any rank's reason to stop stops all."""
        if not self.context.active:
            return stop
        return bool(all_reduce_sum(torch.tensor([float(stop)]), self.context).item() > 0)

    # -- checkpoints -----------------------------------------------------------------------------
    def _start_or_resume(self) -> None:
        if self.context.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        existing = ckpt.list_checkpoints(self.checkpoints)
        if not self.config.resume:
            if existing:
                raise ValueError(f"{self.out} already holds checkpoints: pass --resume to continue, or choose another --out")
            if self.context.is_main and self.log.path.exists():
                self.log.path.unlink()
            return
        found = ckpt.load_latest(self.checkpoints)
        if found is None:
            warnings.warn(f"--resume: no checkpoint in {self.checkpoints}, starting from scratch", RuntimeWarning, stacklevel=3)
            return
        tensors, meta, path = found
        self._restore(tensors, meta)
        if self.context.is_main:
            self.log.truncate_after(self.step)

    def _save(self) -> None:
        """Checkpoint the whole training state (every rank takes part; the main one writes)."""
        carry_kind, carry = None, {}
        if self.carry is not None:
            parts = self.carry if isinstance(self.carry, tuple) else (self.carry,)
            carry_kind = type(self.carry).__name__ if isinstance(self.carry, tuple) else "tensor"
            carry = {f"carry.{i}": all_gather_cat(t, self.context, dim=1) for i, t in enumerate(parts)}
        rng = all_gather_cat(torch.get_rng_state().unsqueeze(0), self.context)
        if not self.context.is_main:
            return
        optimizer_tensors, optimizer_meta = _optimizer_to_flat(self.optimizer)
        meta = {
            "task": self.task.name,
            "model": self.task.describe(),
            "config": self.config.to_json(),
            "world_size": self.context.world_size,
            "data": self.data.state_dict(),
            "optimizer": optimizer_meta,
            "scheduler": self.scheduler.state_dict(),
            "python_random": _jsonable(random.getstate()),
            "carry_kind": carry_kind,
            "sized_steps": self.sized_steps,
            "counters": {"best": self.best, "best_step": self.best_step, "evals_since_best": self.evals_since_best,
                         "consecutive_bad": self.consecutive_bad, "skipped": self.skipped},
        }  # fmt: skip
        tensors = {"model": _cloned(self.model.state_dict()), "optimizer": optimizer_tensors, "state": {"rng": rng, **carry}}
        if self.ema is not None:
            tensors["ema"] = _cloned(self.ema)
        ckpt.save_checkpoint(self.checkpoints, self.step, tensors, meta)
        ckpt.prune(self.checkpoints, self.config.keep_checkpoints, {self.best_step} if self.best_step else set())

    def _restore(self, tensors: dict[str, dict[str, Tensor]], meta: dict[str, Any]) -> None:
        if meta.get("model") != _jsonable(self.task.describe()):
            raise ValueError("the checkpoint in --out was made for a different model; choose another --out")
        self.model.load_state_dict(tensors["model"])
        if self.ema is not None:  # a checkpoint made without ema_decay starts the average here
            saved = tensors.get("ema") or {}
            self.ema = {name: saved.get(name, p.detach()).clone() for name, p in self.model.named_parameters()}
        self.optimizer.load_state_dict(_optimizer_from_flat(tensors["optimizer"], meta["optimizer"]))
        self.scheduler.load_state_dict(meta["scheduler"])
        self.data.load_state_dict(meta["data"])
        random.setstate(_tupled(meta["python_random"]))
        self.step = int(meta["step"])
        counters = meta["counters"]
        self.best, self.best_step = counters["best"], counters["best_step"]
        self.evals_since_best, self.consecutive_bad = counters["evals_since_best"], counters["consecutive_bad"]
        self.skipped = counters["skipped"]
        # a time-budgeted cosine run keeps the step count it sized, if it is resumed under a time budget again
        sized = meta.get("sized_steps")
        if sized is not None and self.config.steps is None and self.config.schedule == "cosine":
            self.sized_steps = int(sized)
            self.config = replace(self.config, steps=self.sized_steps)
        state, rank, world = tensors["state"], self.context.rank, self.context.world_size
        rng = state["rng"]
        if meta["world_size"] != world:
            warnings.warn("resuming with another number of processes: the run will not be bit-identical", stacklevel=3)
        torch.set_rng_state(rng[min(rank, rng.shape[0] - 1)])
        self.carry = None
        if meta["carry_kind"] is not None:
            parts = [state[f"carry.{i}"] for i in range(sum(k.startswith("carry.") for k in state))]
            per_rank = parts[0].shape[1] // world
            parts = [p[:, rank * per_rank : (rank + 1) * per_rank].to(self.context.device) for p in parts]
            self.carry_batch = per_rank
            if meta["carry_kind"] == "tensor":
                self.carry = parts[0]
            else:  # an (h, c) pair: LSTMState serves rnnkit's LSTM and torch.nn.LSTM (any 2-tuple) alike
                from rnnkit.cells import LSTMState

                self.carry = LSTMState(*parts)

    def _export(self) -> None:
        """The model directory: weights, config (with the app's description), curves."""
        from rnnkit.io import save_model

        extra = {"train": self.config.to_json(), "step": self.step, "metrics": self.last_eval}
        if self.config.restore_best and (self.out / BEST_WEIGHTS).is_file():
            self.model.load_state_dict(ckpt.load_tensors(self.out / BEST_WEIGHTS))
            extra.update(weights_from_step=self.best_step, metrics={self.task.metric: self.best})
        elif self.ema is not None:
            _copy_into_parameters(self.model, self.ema)
        self.model.eval()
        save_model(self.out, self.task.name, self.task.final_description(), self.model, extra=extra)
        records = self.log.read()
        if records:
            plot_curves(records, self.out / "curves.png", self.task.metric, title=f"rnnkit {self.task.name}")

    # -- console -----------------------------------------------------------------------------------
    def _progress_bar(self) -> Any:
        if not (self.config.progress and self.context.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=self.config.steps, initial=self.step, unit="step", dynamic_ncols=True, desc=self.task.name, mininterval=1.0
        )

    def _catch_interrupt(self) -> Any:
        """First Ctrl-C: finish the step, checkpoint, stop. A second one aborts."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum: int, frame: Any) -> None:
            if self._interrupted:
                raise KeyboardInterrupt
            self._interrupted = True

        return signal.signal(signal.SIGINT, handler)


@torch.no_grad()
def _copy_into_parameters(model: nn.Module, values: dict[str, Tensor]) -> None:
    """Overwrite each parameter of ``model`` in place with ``values[name]``."""
    for name, param in model.named_parameters():
        param.copy_(values[name])


def _cloned(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached copies: tied (shared-storage) parameters become separate tensors for safetensors."""
    return {k: v.detach().clone() for k, v in state.items()}


def _optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"{index}.{key}"] = value.detach().clone()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": _jsonable(state["param_groups"]), "scalars": scalars}


def _optimizer_from_flat(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value
