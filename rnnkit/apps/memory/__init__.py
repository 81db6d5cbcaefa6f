"""Long-memory tasks (the adding problem, copy memory) that separate RNN, LSTM and GRU.

``rnnkit train memory --task adding --length 200 --cell lstm`` trains one model with the
shared trainer; ``rnnkit bench memory`` trains several cells side by side and reports when
each solves the task. Data are generated (:mod:`rnnkit.data.synthetic`), seeded per step.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rnnkit.data.synthetic import COPY_DELIMITER, adding_baseline, adding_problem, check_length, copy_baseline, copy_task
from rnnkit.heads import OutputLayer
from rnnkit.layers import GRU, LSTM, RNN
from rnnkit.train import Task, TrainConfig
from rnnkit.train.data import GeneratedBatches
from rnnkit.train.distributed import DistContext

NAME = "memory"
CELL_CHOICES = ("lstm", "gru", "rnn", "rnn-relu")
TASKS = ("adding", "copy")
#: The literature's setup: hidden 128, Adam 1e-3, batch 50, clip 1.
TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 3000, "batch_size": 50, "lr": 1e-3, "clip_norm": 1.0, "eval_every": 100, "checkpoint_every": 1000,
}  # fmt: skip
TEST_SIZE, TEST_SEED = 1000, 20_250_101
SOLVED = {"adding": 0.01}  # test MSE; copy: below 10% of the memoryless baseline (see solved_below)


def solved_below(task: str, length: int) -> float:
    return SOLVED["adding"] if task == "adding" else 0.1 * copy_baseline(length)


def baseline(task: str, length: int) -> float:
    return adding_baseline() if task == "adding" else copy_baseline(length)


@dataclass
class MemoryConfig:
    task: str
    length: int
    cell: str = "lstm"
    hidden: int = 128
    init: str = "rnnkit"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.cell not in CELL_CHOICES:
            raise ValueError(f"cell must be one of {', '.join(CELL_CHOICES)}, got {self.cell!r}")
        check_length(self.length)


class MemoryModel(nn.Module):
    """One recurrent layer and the output layer: adding -> ``y = W h_T + b`` (identity);
    copy -> ``y_t = softmax(W h_t + b)`` over blank and the 8 symbols, at every step."""

    def __init__(self, config: MemoryConfig) -> None:
        super().__init__()
        self.config = config
        inputs = 2 if config.task == "adding" else COPY_DELIMITER + 1
        if config.cell in ("rnn", "rnn-relu"):
            nonlinearity = "relu" if config.cell == "rnn-relu" else "tanh"
            self.rnn = RNN(inputs, config.hidden, nonlinearity=nonlinearity, batch_first=True, init=config.init)
        else:
            self.rnn = {"lstm": LSTM, "gru": GRU}[config.cell](inputs, config.hidden, batch_first=True, init=config.init)
        outputs = 1 if config.task == "adding" else COPY_DELIMITER
        self.head = OutputLayer(config.hidden, outputs, activation="identity" if config.task == "adding" else "softmax")

    def features(self, x: Tensor) -> Tensor:
        return x if self.config.task == "adding" else F.one_hot(x, COPY_DELIMITER + 1).float()

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(self.features(x))
        if self.config.task == "adding":
            return self.head(out[:, -1]).squeeze(-1)
        return self.head.logits(out)

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        if self.config.task == "adding":
            return F.mse_loss(prediction, target)
        return F.cross_entropy(prediction.flatten(0, 1), target.flatten())


def make_batch(config: MemoryConfig):
    generate = adding_problem if config.task == "adding" else copy_task

    def make(batch: int, generator: torch.Generator) -> tuple[tuple[Tensor, Tensor], int]:
        x, y = generate(batch, config.length, generator)
        return (x, y), batch * x.shape[1]

    return make


class MemoryTask(Task):
    name = NAME
    metric = "test_loss"

    def __init__(self, config: MemoryConfig) -> None:
        self.config = config
        self.model = MemoryModel(config)
        generate = adding_problem if config.task == "adding" else copy_task
        self.test = generate(TEST_SIZE, config.length, torch.Generator().manual_seed(TEST_SEED))

    def loss(self, model: nn.Module, data: Any, state: Any) -> tuple[Tensor, None]:
        x, y = data
        return self.model.loss(model(x), y), None

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        x, y = self.test
        loss = sum(
            self.model.loss(model(x[i : i + 250]), y[i : i + 250]).item() * len(x[i : i + 250]) for i in range(0, len(x), 250)
        )
        return {"test_loss": loss / len(x), "baseline": baseline(self.config.task, self.config.length)}

    def describe(self) -> dict[str, Any]:
        return asdict(self.config)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("memory")
    group.add_argument("--task", choices=TASKS, default="adding")
    group.add_argument("--length", type=int, default=200, help="T: sequence length / delay (default: %(default)s)")
    group.add_argument("--hidden", type=int, default=128)
    group.add_argument("--init", choices=("rnnkit", "torch", "identity"), default="rnnkit", help="weight initialisation")


def build(args: argparse.Namespace, config: TrainConfig, context: DistContext) -> tuple[MemoryTask, GeneratedBatches]:
    task = MemoryTask(MemoryConfig(args.task, args.length, args.cell, args.hidden, args.init))
    data = GeneratedBatches(make_batch(task.config), config.batch_size, config.seed, context.rank, context.world_size)
    return task, data


def load(config: dict[str, Any], weights: dict[str, Tensor]) -> MemoryModel:
    model = MemoryModel(MemoryConfig(**config["model"]))
    model.load_state_dict(weights)
    return model.eval()


def evaluate_model(loaded: MemoryModel, config: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    task = MemoryTask(loaded.config)
    with torch.no_grad():
        return task.evaluate(loaded)
