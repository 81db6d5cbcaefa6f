"""The trainer's typed configuration, shared by every application and the CLI."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "step")


@dataclass
class TrainConfig:
    """Options of one training run. The CLI flag of each field is ``--field-name``.

    Budget: ``steps`` (total optimizer steps, counted across resumes) and/or ``minutes`` (wall
    time of this invocation); training stops at whichever comes first. A cosine schedule decays
    over ``steps``; with ``minutes`` alone the trainer sizes ``steps`` to fit the time from the
    run's pace, and sizes again at each evaluation (:func:`rnnkit.train.trainer.steps_that_fit`),
    so that the decay ends as the time runs out whatever the machine.
    """

    steps: int | None = None
    minutes: float | None = None
    out: str = "runs/latest"
    seed: int = 0
    resume: bool = False
    batch_size: int = 32
    bptt_steps: int | None = None  # TBPTT chunk length; None = full BPTT over whole sequences
    lr: float = 2e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "constant"  # after warm-up: constant, cosine (to lr * min_lr_ratio) or step decay
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    step_every: int = 1000  # step decay: multiply lr by step_gamma every step_every steps
    step_gamma: float = 0.5
    clip_norm: float | None = 5.0  # clip the global gradient norm (default); None to disable
    clip_value: float | None = None  # clip each gradient element instead of the norm
    eval_every: int = 500
    early_stop_patience: int | None = None  # evaluations without improvement before stopping
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    restore_best: bool = False  # export the weights of the best evaluation, not the last (Keras restore_best_weights)
    ema_decay: float | None = None  # evaluate and export an exponential moving average of the weights
    bf16: bool = False  # mixed precision: forward and backward under torch.autocast("cpu", dtype=torch.bfloat16)
    keep_freed_memory: bool = True  # malloc keeps freed memory for the next step's tensors (rnnkit.train.allocator)
    nan_patience: int = 5  # consecutive non-finite steps before training stops
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.steps is None and self.minutes is None:
            raise ValueError("give a budget: steps or minutes (or both)")
        positive_ints = ("batch_size", "eval_every", "checkpoint_every", "keep_checkpoints", "nan_patience")
        for name in ("steps", "bptt_steps", "early_stop_patience", "step_every", *positive_ints):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("minutes", "lr", "clip_norm", "clip_value"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.ema_decay is not None and not (isinstance(self.ema_decay, (int, float)) and 0 < self.ema_decay < 1):
            raise ValueError(f"ema_decay must be a number in (0, 1) or None, got {self.ema_decay!r}")
        if self.clip_value is not None and self.clip_norm is not None:
            raise ValueError("clip_norm and clip_value are exclusive: set one of them to None")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("warmup_steps and weight_decay must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1 or not 0 < self.step_gamma <= 1:
            raise ValueError("min_lr_ratio must be in [0, 1] and step_gamma in (0, 1]")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def lr_factor(self, step: int) -> float:
        """Learning-rate multiplier at optimizer step ``step`` (0-based): linear warm-up, then
        the schedule. A cosine schedule whose ``steps`` are not sized yet holds the rate."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "cosine" and self.steps is not None:
            span = max(1, self.steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.schedule == "step":
            return self.step_gamma ** ((step - self.warmup_steps) // self.step_every)
        return 1.0
