"""A tiny character language model trained by rnnkit's Trainer: the subject of the training
tests, runnable as a script (``python tests/toy_training.py OUT --steps N``) for the kill,
resume and torchrun tests."""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn
from torch.nn import functional as F

import rnnkit
from rnnkit.train import ShuffledBatches, StreamBatches, Task, TrainConfig, Trainer, from_environment

TEXT = "the cat sat on the mat. the dog sat on the log. a cat and a dog met on a mat by a log.\n"


def corpus(repeats: int = 60) -> torch.Tensor:
    """A deterministic pseudo-text: the sentences above, shuffled word order per line."""
    generator = torch.Generator().manual_seed(1234)
    words = TEXT.split()
    lines = [" ".join(words[i] for i in torch.randperm(len(words), generator=generator).tolist()) for _ in range(repeats)]
    text = "\n".join(lines)
    vocab = sorted(set(text))
    return torch.tensor([vocab.index(ch) for ch in text]), len(vocab)


class TinyLM(nn.Module):
    def __init__(self, vocab: int, hidden: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.rnn = rnnkit.LSTM(8, hidden, num_layers=2, batch_first=True, dropout=dropout)
        self.head = rnnkit.OutputLayer(hidden, vocab)

    def forward(self, tokens, state=None):
        out, state = self.rnn(self.embed(tokens), state)
        return self.head.logits(out), state


class ToyTask(Task):
    name = "toy"

    def __init__(self, vocab: int, hidden: int = 32, dropout: float = 0.0, valid: torch.Tensor | None = None) -> None:
        self.vocab, self.hidden, self.dropout = vocab, hidden, dropout
        self.model = TinyLM(vocab, hidden, dropout)
        self.valid = valid
        self.poison_steps: set[int] = set()  # batches whose loss is made NaN (NaN-guard tests)
        self.calls = 0
        self.seen_states: list = []

    def loss(self, model, data, state):
        self.calls += 1
        self.seen_states.append(state)
        inputs, targets = data
        logits, state = model(inputs, state)
        loss = F.cross_entropy(logits.reshape(-1, self.vocab), targets.reshape(-1))
        if self.calls in self.poison_steps:
            loss = loss * float("nan")
        return loss, state

    def evaluate(self, model):
        if self.valid is None:
            return {}
        inputs, targets = self.valid[:-1].unsqueeze(0), self.valid[1:].unsqueeze(0)
        logits, _ = model(inputs)
        return {"val_loss": F.cross_entropy(logits.reshape(-1, self.vocab), targets.reshape(-1)).item()}

    def describe(self):
        return {"vocab": self.vocab, "hidden": self.hidden, "dropout": self.dropout}


def build(config: TrainConfig, dropout: float = 0.0, shuffled: bool = False):
    context = from_environment()
    torch.manual_seed(config.seed)
    tokens, vocab = corpus()
    task = ToyTask(vocab, dropout=dropout, valid=tokens[-400:])
    if shuffled:
        examples = list(tokens[:-400].split(40))[:-1]
        collate = lambda items: ((torch.stack(items)[:, :-1], torch.stack(items)[:, 1:]), 39 * len(items))  # noqa: E731
        data = ShuffledBatches(
            examples, config.batch_size, collate, seed=config.seed, rank=context.rank, world_size=context.world_size
        )
    else:
        data = StreamBatches(tokens[:-400], config.batch_size, config.bptt_steps, context.rank, context.world_size)
    return Trainer(task, data, config, context)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--step-sleep", type=float, default=0.0)
    args = parser.parse_args(argv)
    config = TrainConfig(
        steps=args.steps, out=args.out, resume=args.resume, batch_size=args.batch_size, bptt_steps=10,
        checkpoint_every=args.checkpoint_every, eval_every=10, progress=False, lr=3e-3,
    )  # fmt: skip
    trainer = build(config, dropout=args.dropout)
    if args.step_sleep:  # slow each step down so a test can kill the run mid-way
        import time

        inner = trainer.task.loss
        trainer.task.loss = lambda *a: (time.sleep(args.step_sleep), inner(*a))[1]
    trainer.fit()


if __name__ == "__main__":
    main(sys.argv[1:])
