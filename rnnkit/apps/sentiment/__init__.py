"""Sentiment analysis: sequence classification of movie reviews (or any labelled texts).

Data (:mod:`rnnkit.data.reviews`): Rotten Tomatoes sentences (default, ``--dataset rt``), IMDB
reviews, both, or any CSV (``--data FILE --text-col C --label-col L``); seeded 80/10/10 splits.
Model: :class:`~rnnkit.apps.sentiment.model.SequenceClassifier`. Training: full BPTT over
whole padded texts (with ``lengths``, batched by length): the first ``--pretrain-steps`` train
the encoder as a bidirectional language model on the training texts (or on ``--pretrain-data``'s
training split), the rest the classifier (cross-entropy); the weights of the best validation
accuracy are kept (of the best validation LM loss, for a run that only pretrains). ``--init DIR``
starts from such a model's vocabulary, embedding and encoder (ULMFiT: pretrain once, fine-tune
many).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rnnkit.apps.sentiment.evaluation import classification_report, plot_confusion, tfidf_baseline
from rnnkit.apps.sentiment.model import CELLS, POOLINGS, Classifier, ClassifierConfig, Ensemble, SequenceClassifier
from rnnkit.apps.sentiment.ngrams import NgramClassifier, choose_mix_weight, fit_tfidf
from rnnkit.data.parallel import pad_batch
from rnnkit.data.reviews import DATASETS, LabelledTexts, WordVocab, movie_reviews, read_labelled_csv
from rnnkit.io import read_model_dir
from rnnkit.train import CheckpointError, PhasedBatches, ShuffledBatches, Task, TrainConfig
from rnnkit.train.distributed import DistContext

NAME = "sentiment"
CELL_CHOICES = tuple(CELLS)
TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 2000, "batch_size": 32, "lr": 2e-3, "clip_norm": 5.0, "schedule": "cosine", "warmup_steps": 50,
    "eval_every": 100, "checkpoint_every": 500, "restore_best": True,
}  # fmt: skip
EVAL_BATCH = 128
LM_VALID = 256  # held-out texts that measure the language model while it pretrains


def collate(examples: list[tuple[list[int], int]]) -> tuple[tuple[Tensor, Tensor, Tensor], int]:
    """``(ids, label)`` examples -> ``(tokens (N, T) padded with 0, lengths (N,), labels (N,))``."""
    tokens, lengths = pad_batch([ids for ids, _ in examples])
    return (tokens, lengths, torch.tensor([label for _, label in examples])), int(lengths.sum())


class SentimentTask(Task):
    """Cross-entropy of the class; for the first ``pretrain_steps`` steps the bidirectional
    language-model loss instead (then validated on ``lm_valid``, the pretraining texts' own
    held-out ones). A run that only pretrains selects its best weights by ``val_lm_loss``."""

    name = NAME

    def __init__(self, model: SequenceClassifier, valid: list[tuple[list[int], int]], pretrain_steps: int = 0,
                 lm_valid: list[tuple[list[int], int]] | None = None, pretrain_only: bool = False,
                 encoder_lr_scale: float = 1.0, ngram_data: LabelledTexts | None = None) -> None:  # fmt: skip
        self.model, self.pretrain_steps, self.encoder_lr_scale = model, pretrain_steps, encoder_lr_scale
        self.ngram_data = ngram_data  # given: mix a TF-IDF model fitted on it into the final classifier
        self.valid = sorted(valid, key=lambda example: len(example[0]))  # batches of similar lengths pad little
        self.lm_valid = sorted(valid[:LM_VALID] if lm_valid is None else lm_valid, key=lambda example: len(example[0]))
        self.partial_updates = pretrain_steps > 0  # the LM heads, then the classifier's, sit out
        self.metric = "val_lm_loss" if pretrain_only else "val_error"

    def loss(self, model: nn.Module, data: Any, state: Any) -> tuple[Tensor, None]:
        tokens, lengths, labels = data
        if self.step < self.pretrain_steps:  # first the encoder learns the language of the texts
            return model(tokens, lengths, language_model=True)[0], None
        logits, _ = model(tokens, lengths)
        return F.cross_entropy(logits, labels), None

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if self.step < self.pretrain_steps or self.metric == "val_lm_loss":
            total, words = 0.0, 0
            for start in range(0, len(self.lm_valid), EVAL_BATCH):
                (tokens, lengths, _), _ = collate(self.lm_valid[start : start + EVAL_BATCH])
                total += self.model.lm_loss(tokens, lengths).item() * int(lengths.sum())
                words += int(lengths.sum())
            return {"val_lm_loss": total / words}
        correct, total = 0, 0.0
        for start in range(0, len(self.valid), EVAL_BATCH):
            (tokens, lengths, labels), _ = collate(self.valid[start : start + EVAL_BATCH])
            logits, _ = self.model(tokens, lengths)
            total += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += int((logits.argmax(dim=-1) == labels).sum())
        accuracy = correct / len(self.valid)
        return {"val_error": 1 - accuracy, "val_accuracy": accuracy, "val_loss": total / len(self.valid)}

    def parameter_groups(self) -> list[dict[str, Any]] | None:
        """The classifier's own layers at the configured rate, the embedding and encoder at
        ``encoder_lr_scale`` times it (ULMFiT's discriminative fine-tuning)."""
        if self.encoder_lr_scale == 1.0:
            return None
        encoder = [*self.model.embed.parameters(), *self.model.encoder.parameters()]
        shared = {id(p) for p in encoder}
        own = [p for p in self.model.parameters() if id(p) not in shared]
        return [{"params": own, "lr_scale": 1.0}, {"params": encoder, "lr_scale": self.encoder_lr_scale}]

    def describe(self) -> dict[str, Any]:
        return self.model.describe()

    def final_description(self) -> dict[str, Any]:
        """With ``--ngram-mix``: the TF-IDF + logistic regression model fitted on the training split,
        mixed into the final classifier with the weight of the best validation accuracy."""
        if self.ngram_data is not None:
            data = self.ngram_data
            vectorizer, logistic = fit_tfidf(data)
            ngrams = NgramClassifier.from_sklearn(vectorizer, logistic, len(data.classes))
            classifier = Classifier(self.model)
            valid = [(text, label) for text, label in data.valid if classifier.vocab.encode(text)]
            texts, labels = [text for text, _ in valid], torch.tensor([label for _, label in valid])
            network = classifier.probabilities(texts, strict=False, mix=False)
            weight, _ = choose_mix_weight(network, ngrams.probabilities(texts), labels)
            self.model.mix_in(ngrams, weight)
        return self.describe()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sentiment")
    group.add_argument("--dataset", choices=DATASETS, help="bundled movie reviews (default: rt, unless --data)")
    group.add_argument("--data", help="a CSV file with a text and a label column")
    group.add_argument("--text-col", default="text", help="the text column of --data (default: %(default)s)")
    group.add_argument("--label-col", default="label", help="the label column of --data (default: %(default)s)")
    group.add_argument(
        "--split-seed", type=int, default=0,
        help="seed of the 80/10/10 train/validation/test split (default: %(default)s); fixed, not --seed, so runs "
        "with different --seed share one test split (and can be evaluated as an ensemble)",
    )  # fmt: skip
    group.add_argument("--vocab-size", type=int, default=30_000, help="largest vocabulary (default: %(default)s)")
    group.add_argument("--max-words", type=int, default=400, help="texts are cut to their first N words in training")
    group.add_argument("--embedding", type=int, default=100)
    group.add_argument("--hidden", type=int, default=128)
    group.add_argument("--layers", type=int, default=1)
    group.add_argument("--unidirectional", action="store_true", help="one direction (default: bidirectional)")
    group.add_argument("--pooling", choices=POOLINGS, default="attention", help="over valid steps (default: %(default)s)")
    group.add_argument("--dropout", type=float, default=0.3)
    group.add_argument(
        "--word-dropout", type=float, default=0.0, metavar="P",
        help="in training, each word of a text becomes <unk> with probability P (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--pretrain-steps", type=int, default=0,
        help="first steps train the encoder as a bidirectional language model on the training texts (default: 0)",
    )  # fmt: skip
    group.add_argument(
        "--pretrain-data", choices=DATASETS,
        help="pretrain on the training split of these bundled reviews instead of the task's own (e.g. both)",
    )  # fmt: skip
    group.add_argument("--lm-words", type=int, default=30_000, help="words the language model predicts (default: %(default)s)")
    group.add_argument(
        "--encoder-lr-scale", type=float, default=1.0, metavar="S",
        help="the embedding and encoder learn at S times --lr (ULMFiT's discriminative rates; e.g. 0.3 with --init; "
        "0 freezes them; default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--ngram-mix", action="store_true",
        help="after training, mix in a TF-IDF 1-2-gram logistic regression fitted on the training split: "
        "p = (1 - w) p_net + w p_ngram, w in 0, 0.1, ..., 1 chosen on the validation split (needs scikit-learn)",
    )  # fmt: skip
    group.add_argument(
        "--init", metavar="DIR",
        help="start from a trained sentiment model's vocabulary, embedding and encoder (e.g. a pretrained one); "
        "its sizes and cell replace --embedding, --hidden, --layers, --cell",
    )  # fmt: skip


def load_data(dataset: str | None, data: str | None, text_col: str, label_col: str, seed: int) -> LabelledTexts:
    if data and dataset:
        raise ValueError("give --data or --dataset, not both")
    if data:
        return read_labelled_csv(data, text_col, label_col, seed)
    return movie_reviews(dataset or "rt", seed)


def build(args: argparse.Namespace, config: TrainConfig, context: DistContext) -> tuple[SentimentTask, Any]:
    if args.vocab_size < 3 or args.max_words < 1:
        raise ValueError("--vocab-size must be >= 3 and --max-words >= 1")
    if args.pretrain_steps < 0 or args.lm_words < 3:
        raise ValueError("--pretrain-steps must be >= 0 and --lm-words >= 3")
    if not args.encoder_lr_scale >= 0:  # NaN too
        raise ValueError(f"--encoder-lr-scale must be >= 0, got {args.encoder_lr_scale}")
    if args.encoder_lr_scale != 1.0 and args.pretrain_steps:
        raise ValueError("--encoder-lr-scale applies to fine-tuning: pretrain in its own run (--steps = --pretrain-steps)")
    if args.pretrain_data and not args.pretrain_steps:
        raise ValueError("--pretrain-data needs --pretrain-steps N (N > 0)")
    pretrain_only = config.steps is not None and args.pretrain_steps >= config.steps
    if args.ngram_mix and pretrain_only:
        raise ValueError("--ngram-mix applies to a classifier: this run only pretrains (--steps = --pretrain-steps)")
    if args.ngram_mix:
        try:
            import sklearn  # noqa: F401
        except ImportError:
            raise ValueError("--ngram-mix needs scikit-learn: pip install 'rnnkit[sentiment]'") from None
    init = _read_init(args.init) if args.init else None
    if init is not None and not args.data and (init[0].get("data") or {}).get("dataset"):
        init_split = _split_seed(init[0]["data"])
        if init_split != args.split_seed:  # its training texts would include this run's test texts
            raise ValueError(f"--split-seed: {args.init} was trained on the split of seed {init_split}; "
                             f"fine-tuning on bundled reviews needs the same split (--split-seed {init_split})")  # fmt: skip
    data = load_data(args.dataset, args.data, args.text_col, args.label_col, args.split_seed)
    lm_data = movie_reviews(args.pretrain_data, args.split_seed) if args.pretrain_data else data
    described = {"dataset": None if args.data else (args.dataset or "rt"), "data": args.data, "text_col": args.text_col,
                 "label_col": args.label_col, "split_seed": args.split_seed}  # fmt: skip
    if init is not None:
        vocab = WordVocab(init[0]["words"])
    else:  # from training splits only: the task's, and the pretraining texts'
        texts = [text for text, _ in data.train] + ([text for text, _ in lm_data.train] if args.pretrain_data else [])
        vocab = WordVocab.build(texts, args.vocab_size)
    sizes = dict(cell=args.cell, embedding=args.embedding, hidden=args.hidden, layers=args.layers,
                 bidirectional=not args.unidirectional, lm_words=args.lm_words if args.pretrain_steps else 0)  # fmt: skip
    if init is not None:
        sizes.update({key: init[0][key] for key in sizes if key != "lm_words"})
        sizes["lm_words"] = init[0]["lm_words"] or sizes["lm_words"]  # keep its language model, if it has one
    model = SequenceClassifier(ClassifierConfig(
        vocab.words(), data.classes, pooling=args.pooling, dropout=args.dropout, word_dropout=args.word_dropout,
        data=described, **sizes,
    ))  # fmt: skip
    if init is not None:
        model.load_state_dict(init[1], strict=False)  # the classifier's own layers start afresh

    def encoded(examples: list[tuple[str, int]]) -> list[tuple[list[int], int]]:
        return [(ids[: args.max_words], label) for ids, label in _encode(vocab, examples)]

    def batches(examples: list[tuple[list[int], int]]) -> ShuffledBatches:
        return ShuffledBatches(examples, config.batch_size, collate, config.seed, context.rank, context.world_size,
                               length=lambda example: len(example[0]))  # fmt: skip

    source: Any = batches(encoded(data.train))
    if args.pretrain_data:
        source = PhasedBatches(batches(encoded(lm_data.train)), args.pretrain_steps, source)
    valid, lm_valid = _encode(vocab, data.valid), None
    if args.pretrain_steps:  # the language model is measured on a fixed sample of LM_VALID held-out texts
        held_out = valid if lm_data is data else _encode(vocab, lm_data.valid)
        sample = torch.randperm(len(held_out), generator=torch.Generator().manual_seed(0))[:LM_VALID]
        lm_valid = [held_out[i] for i in sample]
    ngram_data = data if args.ngram_mix else None
    task = SentimentTask(model, valid, args.pretrain_steps, lm_valid, pretrain_only, args.encoder_lr_scale, ngram_data)
    return task, source


def _read_init(directory: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The model config and the embedding, encoder and LM-head weights of a sentiment model."""
    try:
        config, weights = read_model_dir(Path(directory))
    except CheckpointError as error:
        raise ValueError(f"--init: {error}") from None
    if config.get("app") != NAME:
        raise ValueError(f"--init: {directory} holds a {config.get('app')} model, not a sentiment one")
    kept = {k: v for k, v in weights.items() if k.split(".")[0] in ("embed", "encoder", "lm_heads")}
    return config["model"], kept


def _split_seed(described: dict[str, Any]) -> int:
    """The split seed a model's data description records (models saved before ``--split-seed``
    split by their training ``seed``)."""
    return int(described.get("split_seed", described.get("seed", 0)))


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
    return load_data(None if path else described.get("dataset"), path, text_col, label_col, _split_seed(described))


def evaluate_model(classifier: Classifier, config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Test accuracy and macro F1 of the model (or :class:`Ensemble`) and of the TF-IDF baseline on
    the same split (for a model with an n-gram mix, the network's accuracy alone too); writes
    ``confusion.png`` beside the model (an ensemble's ``ensemble-confusion.png`` beside its first)."""
    data = rebuild_data(classifier, getattr(args, "data", None))
    if data.classes != classifier.config.classes:
        raise ValueError(f"the data's classes {data.classes} are not the model's {classifier.config.classes}")
    test = [(text, label) for text, label in data.test if classifier.vocab.encode(text)]  # texts with words
    gold = [label for _, label in test]
    texts = [text for text, _ in test]
    probabilities = classifier.probabilities(texts, strict=False)
    predicted = probabilities.argmax(dim=-1).tolist()
    results: dict[str, Any] = {f"test {k}": v for k, v in classification_report(gold, predicted, len(data.classes)).items()}
    if classifier.mixes_ngrams:  # --ngram-mix: the network's own numbers too
        network = classifier.probabilities(texts, strict=False, mix=False)
        alone = classification_report(gold, network.argmax(dim=-1).tolist(), len(data.classes))
        results["network alone test accuracy"] = alone["accuracy"]
    baseline = tfidf_baseline(data)
    if baseline is not None:
        results.update({f"tf-idf test {k}": v for k, v in baseline.items()})
    if model_dir := getattr(args, "model", None):
        path = Path(model_dir) / ("ensemble-confusion.png" if isinstance(classifier, Ensemble) else "confusion.png")
        plot_confusion(gold, predicted, data.classes, path)
        results["confusion"] = str(path)
    return results
