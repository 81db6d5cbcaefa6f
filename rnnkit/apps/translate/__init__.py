"""Machine translation: encoder-decoder with attention, beam search, BLEU.

Data (:mod:`rnnkit.data.parallel`): numbers written out by ``num2words`` (default, ``--pair
en-fr``), dates by ``babel``, the English-Spanish Bible (``--task bible``), or any TSV file
(``--data``). Model: :class:`~rnnkit.apps.translate.model.Seq2Seq`. Training: full BPTT over
whole pairs, teacher forcing with a linear schedule (``--teacher-forcing START END``).
"""

from __future__ import annotations

import argparse
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rnnkit.apps.translate.evaluation import WordByWord, plot_attention, scores
from rnnkit.apps.translate.model import ATTENTIONS, CELLS, Seq2Seq, Translator, TranslatorConfig, collate
from rnnkit.data.parallel import TASKS, UNITS, ParallelData, Vocab, load_parallel, normalise, pieces
from rnnkit.train import Task, TrainConfig
from rnnkit.train.data import GeneratedBatches, ShuffledBatches
from rnnkit.train.distributed import DistContext

NAME = "translate"
CELL_CHOICES = tuple(CELLS)
TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 3000, "batch_size": 64, "lr": 2e-3, "clip_norm": 1.0, "schedule": "cosine", "warmup_steps": 100,
    "eval_every": 250, "checkpoint_every": 500,
}  # fmt: skip
VOCAB_SAMPLE = 20_000  # generated pairs the vocabularies of generated tasks are built from
EVAL_SIZE = 500  # validation pairs translated (greedy) at each evaluation during training


@dataclass
class TeacherForcing:
    """The probability of feeding the true previous token: ``start`` at step 0, linearly to
    ``end`` at step ``steps`` (constant ``start`` when the budget is in minutes)."""

    start: float = 1.0
    end: float = 1.0
    steps: int | None = None

    def __post_init__(self) -> None:
        for value in (self.start, self.end):
            if not 0 <= value <= 1:
                raise ValueError(f"--teacher-forcing takes probabilities in [0, 1], got {value}")

    def ratio(self, step: int) -> float:
        if not self.steps:
            return self.start
        return self.start + (self.end - self.start) * min(1.0, step / self.steps)


class TranslateTask(Task):
    name = NAME
    metric = "val_loss"

    def __init__(self, model: Seq2Seq, data: ParallelData, teacher: TeacherForcing) -> None:
        self.model, self.data, self.teacher = model, data, teacher
        self.source_vocab = Vocab(model.config.source_vocab, model.config.units)
        self.target_vocab = Vocab(model.config.target_vocab, model.config.units)
        self.valid = collate([self.encode(pair) for pair in data.valid])[0]

    def encode(self, pair: tuple[str, str]) -> tuple[list[int], list[int]]:
        return self.source_vocab.encode(pair[0]), self.target_vocab.encode(pair[1])

    def loss(self, model: nn.Module, data: Any, state: Any) -> tuple[Tensor, None]:
        source, lengths, target = data
        logits, _ = model(source, lengths, target[:, :-1], self.teacher.ratio(self.step))
        return F.cross_entropy(logits.flatten(0, 1), target[:, 1:].flatten(), ignore_index=0), None

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        source, lengths, target = self.valid
        total, count = 0.0, 0
        for start in range(0, source.shape[0], 256):
            part = slice(start, start + 256)
            width = int(lengths[part].max())
            logits, _ = model(source[part, :width], lengths[part], target[part, :-1])
            gold = target[part, 1:]
            total += F.cross_entropy(logits.flatten(0, 1), gold.flatten(), ignore_index=0, reduction="sum").item()
            count += int((gold != 0).sum())
        pairs = self.data.valid[:EVAL_SIZE]
        outputs = Translator(self.model).translate([s for s, _ in pairs], allow_unknown=True)
        exact = sum(normalise(o) == normalise(t) for o, (_, t) in zip(outputs, pairs)) / len(pairs)
        return {"val_loss": total / count, "val_exact_match": exact}

    def describe(self) -> dict[str, Any]:
        return asdict(self.model.config)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("translate")
    group.add_argument(
        "--task", choices=TASKS, default="numbers", help="generated or bundled parallel text (default: %(default)s)"
    )
    group.add_argument("--pair", help="source-target languages (default: en-fr; the Bible is en-es)")
    group.add_argument("--data", help="a TSV file of source<TAB>target lines instead of --task")
    group.add_argument(
        "--units", choices=UNITS, default="word", help="words and punctuation, or characters (default: %(default)s)"
    )
    group.add_argument("--embedding", type=int, default=128)
    group.add_argument("--hidden", type=int, default=256)
    group.add_argument("--layers", type=int, default=1, help="encoder layers (default: %(default)s)")
    group.add_argument("--attention", choices=ATTENTIONS, default="additive", help="additive (Bahdanau), general or dot (Luong)")
    group.add_argument("--dropout", type=float, help="default: 0 for generated tasks (endless data), 0.2 for corpora")
    group.add_argument("--vocab-size", type=int, default=16_000, help="largest vocabulary per side (default: %(default)s)")
    group.add_argument("--max-length", type=int, default=80, help="longest training pair, in pieces (default: %(default)s)")
    group.add_argument(
        "--teacher-forcing", type=float, nargs=2, metavar=("START", "END"), default=(1.0, 0.8),
        help="probability of feeding the true previous token, linear from START to END (default: 1.0 0.8)",
    )  # fmt: skip


def build_data(args: argparse.Namespace, seed: int) -> ParallelData:
    pair = args.pair or ("en-es" if args.task == "bible" and not args.data else "en-fr")
    return load_parallel(None if args.data else args.task, pair, args.data, seed)


def build(args: argparse.Namespace, config: TrainConfig, context: DistContext) -> tuple[TranslateTask, Any]:
    data = build_data(args, config.seed)
    if args.vocab_size < 8 or args.max_length < 1:
        raise ValueError("--vocab-size must be >= 8 and --max-length >= 1")
    texts = data.training_texts(VOCAB_SAMPLE, config.seed)
    source_vocab = Vocab.build((s for s, _ in texts), args.units, args.vocab_size)
    target_vocab = Vocab.build((t for _, t in texts), args.units, args.vocab_size)
    generated = data.train is None
    dropout = args.dropout if args.dropout is not None else (0.0 if generated else 0.2)
    described = {"task": None if args.data else args.task, "pair": args.pair, "data": args.data, "seed": config.seed}
    model_config = TranslatorConfig(
        source_vocab.items[4:], target_vocab.items[4:], args.units, args.cell, args.embedding, args.hidden,
        args.layers, args.attention, dropout, described,
    )  # fmt: skip
    task = TranslateTask(Seq2Seq(model_config), data, TeacherForcing(*args.teacher_forcing, config.steps))
    if generated:

        def make(batch: int, generator: torch.Generator) -> tuple[tuple[Tensor, ...], int]:
            rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
            return collate([task.encode(data.sample(rng)) for _ in range(batch)])

        return task, GeneratedBatches(make, config.batch_size, config.seed, context.rank, context.world_size)
    examples = [
        task.encode(p) for p in data.train if max(len(pieces(p[0], args.units)), len(pieces(p[1], args.units))) <= args.max_length
    ]
    return task, ShuffledBatches(examples, config.batch_size, collate, config.seed, context.rank, context.world_size)


def load(config: dict[str, Any], weights: dict[str, Tensor]) -> Translator:
    model = Seq2Seq(TranslatorConfig(**config["model"]))
    model.load_state_dict(weights)
    return Translator(model)


def rebuild_data(translator: Translator, data_path: str | None = None) -> ParallelData:
    """The dataset the model was trained on (or ``data_path``, a TSV file), same split."""
    described = translator.config.data
    args = argparse.Namespace(task=described.get("task"), pair=described.get("pair"), data=data_path or described.get("data"))
    return build_data(args, int(described.get("seed", 0)))


def evaluate_model(translator: Translator, config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Every test set: greedy and beam search (exact match, BLEU, chrF), with the copy-the-source
    and word-by-word baselines for corpora; writes an attention heatmap beside the model."""
    data = rebuild_data(translator, getattr(args, "data", None))
    beam = getattr(args, "beam", None) or 5
    limit = getattr(args, "limit", None)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    results: dict[str, Any] = {}
    for name, pairs in data.test.items():
        pairs = pairs[:limit]
        sources, references = [s for s, _ in pairs], [t for _, t in pairs]
        runs = {
            "greedy": translator.translate(sources, allow_unknown=True),
            f"beam {beam}": translator.translate(sources, beam=beam, allow_unknown=True),
        }
        if data.train is not None:
            runs["copy source"] = sources
            runs["word by word"] = _word_by_word(data, sources)
        for method, outputs in runs.items():
            for metric, value in scores(outputs, references).items():
                results[f"{name} {method} {metric}"] = value
    model_dir = getattr(args, "model", None)
    if model_dir:
        source = next(iter(data.test.values()))[0][0]
        path = Path(model_dir) / "attention.png"
        save_heatmap(translator, source, path, allow_unknown=True)
        results["heatmap"] = str(path)
    return results


def _word_by_word(data: ParallelData, sources: list[str]) -> list[str]:
    baseline = WordByWord(data.train)
    return [baseline(s) for s in sources]


def save_heatmap(translator: Translator, source: str, path: Path, beam: int = 1, allow_unknown: bool = False) -> str:
    output = translator.translate(source, beam=beam, allow_unknown=allow_unknown)[0]
    src, out, weights = translator.attention(source, output, allow_unknown)
    plot_attention(src, out, weights, path, f"{source}\n-> {output}")
    return output
