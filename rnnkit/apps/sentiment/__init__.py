"""Sentiment analysis: sequence classification of movie reviews (or any labelled texts).

Data (:mod:`rnnkit.data.reviews`): Rotten Tomatoes sentences (default, ``--dataset rt``), IMDB
reviews, both, or any CSV (``--data FILE --text-col C --label-col L``); seeded 80/10/10 splits.
Model: :class:`~rnnkit.apps.sentiment.model.SequenceClassifier`. Training: full BPTT over
whole padded texts (with ``lengths``): the first ``--pretrain-steps`` train the encoder as a
bidirectional language model on the training texts, the rest the classifier (cross-entropy);
the weights of the best validation accuracy are kept.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rnnkit.apps.sentiment.evaluation import classification_report, plot_confusion, tfidf_baseline
from rnnkit.apps.sentiment.model import CELLS, POOLINGS, Classifier, ClassifierConfig, SequenceClassifier
from rnnkit.data.parallel import pad_batch
from rnnkit.data.reviews import DATASETS, LabelledTexts, WordVocab, movie_reviews, read_labelled_csv
from rnnkit.train import ShuffledBatches, Task, TrainConfig
from rnnkit.train.distributed import DistContext

NAME = "sentiment"
CELL_CHOICES = tuple(CELLS)
TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 2000, "batch_size": 32, "lr": 2e-3, "clip_norm": 5.0, "schedule": "cosine", "warmup_steps": 50,
    "eval_every": 100, "checkpoint_every": 500, "restore_best": True,
}  # fmt: skip
EVAL_BATCH = 128


def collate(examples: list[tuple[list[int], int]]) -> tuple[tuple[Tensor, Tensor, Tensor], int]:
    """``(ids, label)`` examples -> ``(tokens (N, T) padded with 0, lengths (N,), labels (N,))``."""
    tokens, lengths = pad_batch([ids for ids, _ in examples])
    return (tokens, lengths, torch.tensor([label for _, label in examples])), int(lengths.sum())


class SentimentTask(Task):
    name = NAME
    metric = "val_error"

    def __init__(self, model: SequenceClassifier, valid: list[tuple[list[int], int]], pretrain_steps: int = 0) -> None:
        self.model, self.valid, self.pretrain_steps = model, valid, pretrain_steps
        self.partial_updates = pretrain_steps > 0  # the LM heads, then the classifier's, sit out

    def loss(self, model: nn.Module, data: Any, state: Any) -> tuple[Tensor, None]:
        tokens, lengths, labels = data
        if self.step < self.pretrain_steps:  # first the encoder learns the language of the texts
            return model(tokens, lengths, language_model=True)[0], None
        logits, _ = model(tokens, lengths)
        return F.cross_entropy(logits, labels), None

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        correct, total = 0, 0.0
        for start in range(0, len(self.valid), EVAL_BATCH):
            (tokens, lengths, labels), _ = collate(self.valid[start : start + EVAL_BATCH])
            logits, _ = self.model(tokens, lengths)
            total += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += int((logits.argmax(dim=-1) == labels).sum())
        accuracy = correct / len(self.valid)
        metrics = {"val_error": 1 - accuracy, "val_accuracy": accuracy, "val_loss": total / len(self.valid)}
        if self.step < self.pretrain_steps:
            (tokens, lengths, _), _ = collate(self.valid[:EVAL_BATCH])
            metrics["val_lm_loss"] = self.model.lm_loss(tokens, lengths).item()
        return metrics

    def describe(self) -> dict[str, Any]:
        return self.model.describe()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sentiment")
    group.add_argument("--dataset", choices=DATASETS, help="bundled movie reviews (default: rt, unless --data)")
    group.add_argument("--data", help="a CSV file with a text and a label column")
    group.add_argument("--text-col", default="text", help="the text column of --data (default: %(default)s)")
    group.add_argument("--label-col", default="label", help="the label column of --data (default: %(default)s)")
    group.add_argument("--vocab-size", type=int, default=30_000, help="largest vocabulary (default: %(default)s)")
    group.add_argument("--max-words", type=int, default=400, help="texts are cut to their first N words in training")
    group.add_argument("--embedding", type=int, default=100)
    group.add_argument("--hidden", type=int, default=128)
    group.add_argument("--layers", type=int, default=1)
    group.add_argument("--unidirectional", action="store_true", help="one direction (default: bidirectional)")
    group.add_argument("--pooling", choices=POOLINGS, default="attention", help="over valid steps (default: %(default)s)")
    group.add_argument("--dropout", type=float, default=0.3)
    group.add_argument(
        "--pretrain-steps", type=int, default=0,
        help="first steps train the encoder as a bidirectional language model on the training texts (default: 0)",
    )  # fmt: skip
    group.add_argument("--lm-words", type=int, default=10_000, help="words the language model predicts (default: %(default)s)")


def load_data(dataset: str | None, data: str | None, text_col: str, label_col: str, seed: int) -> LabelledTexts:
    if data and dataset:
        raise ValueError("give --data or --dataset, not both")
    if data:
        return read_labelled_csv(data, text_col, label_col, seed)
    return movie_reviews(dataset or "rt", seed)


def build(args: argparse.Namespace, config: TrainConfig, context: DistContext) -> tuple[SentimentTask, ShuffledBatches]:
    if args.vocab_size < 3 or args.max_words < 1:
        raise ValueError("--vocab-size must be >= 3 and --max-words >= 1")
    if args.pretrain_steps < 0 or args.lm_words < 3:
        raise ValueError("--pretrain-steps must be >= 0 and --lm-words >= 3")
    data = load_data(args.dataset, args.data, args.text_col, args.label_col, config.seed)
    vocab = WordVocab.build((text for text, _ in data.train), args.vocab_size)
    described = {"dataset": None if args.data else (args.dataset or "rt"), "data": args.data, "text_col": args.text_col,
                 "label_col": args.label_col, "seed": config.seed}  # fmt: skip
    model = SequenceClassifier(ClassifierConfig(
        vocab.words(), data.classes, args.cell, args.embedding, args.hidden, args.layers, not args.unidirectional,
        args.pooling, args.dropout, args.lm_words if args.pretrain_steps else 0, described,
    ))  # fmt: skip
    train = [(ids[: args.max_words], label) for ids, label in _encode(vocab, data.train)]
    return SentimentTask(model, _encode(vocab, data.valid), args.pretrain_steps), ShuffledBatches(
        train, config.batch_size, collate, config.seed, context.rank, context.world_size
    )


def _encode(vocab: WordVocab, examples: list[tuple[str, int]]) -> list[tuple[list[int], int]]:
    """Encoded examples; a text with no words at all is left out (it has nothing to classify)."""
    return [(ids, label) for ids, label in ((vocab.encode(text), label) for text, label in examples) if ids]


def load(config: dict[str, Any], weights: dict[str, Tensor]) -> Classifier:
    model = SequenceClassifier(ClassifierConfig(**config["model"]))
    model.load_state_dict(weights)
    return Classifier(model)


def rebuild_data(classifier: Classifier, data_path: str | None = None) -> LabelledTexts:
    """The dataset and split the model was trained on (or ``data_path``, a CSV, split alike)."""
    described = classifier.config.data
    text_col, label_col = described.get("text_col", "text"), described.get("label_col", "label")
    path = data_path or described.get("data")
    return load_data(None if path else described.get("dataset"), path, text_col, label_col, int(described.get("seed", 0)))


def evaluate_model(classifier: Classifier, config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Test accuracy and macro F1 of the model and of the TF-IDF baseline on the same split;
    writes ``confusion.png`` beside the model."""
    data = rebuild_data(classifier, getattr(args, "data", None))
    if data.classes != classifier.config.classes:
        raise ValueError(f"the data's classes {data.classes} are not the model's {classifier.config.classes}")
    test = [(text, label) for text, label in data.test if classifier.vocab.encode(text)]  # texts with words
    gold = [label for _, label in test]
    predicted = classifier.probabilities([text for text, _ in test], strict=False).argmax(dim=-1).tolist()
    results: dict[str, Any] = {f"test {k}": v for k, v in classification_report(gold, predicted, len(data.classes)).items()}
    baseline = tfidf_baseline(data)
    if baseline is not None:
        results.update({f"tf-idf test {k}": v for k, v in baseline.items()})
    if model_dir := getattr(args, "model", None):
        path = Path(model_dir) / "confusion.png"
        plot_confusion(gold, predicted, data.classes, path)
        results["confusion"] = str(path)
    return results
