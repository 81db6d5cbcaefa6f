"""The sequence classifier: embedding, an rnnkit encoder, pooling over valid steps, softmax.

::

    w_t  = <unk> with probability word_dropout            in training only (word dropout)
    e_t  = E[w_t]                                        word embedding
    h_t  = encoder(e_t, h_{t-1})                         rnnkit LSTM / GRU / RNN, (bi)directional: h_t = [fwd; bwd]
    pooling over t < length only (padding never reaches the result):
      last       h = [fwd h_{length-1}; bwd h_0]          the final state of each direction
      max        h = max_t h_t                            per feature
      mean       h = (1 / length) sum_t h_t
      attention  a_t = softmax_t(v^T tanh(W h_t + b)),  h = sum_t a_t h_t     (additive, Bahdanau)
    p(y | text) = softmax(W_hy h + b_y)                  the output layer (rnnkit.heads.OutputLayer)
    p_mix(y | text) = (1 - w) p(y | text) + w p_ngram(y | text)    with --ngram-mix (see ngrams.py)

Language-model pretraining (ULMFiT's route, here as ELMo's bidirectional LM, so one pass trains
both directions of the classifier's own encoder)::

    p(w_{t+1} | w_<=t) = adaptive_softmax_f(fwd_t),   p(w_{t-1} | w_>=t) = adaptive_softmax_b(bwd_t)

over the ``lm_words`` most frequent words (rarer ones are predicted as ``<unk>``). The softmax
is adaptive (Grave et al. 2017, ``torch.nn.AdaptiveLogSoftmaxWithLoss``): the frequent words
and one entry per tail cluster share the head, each tail cluster (ids from ``LM_CUTOFFS``) is
scored only for the words it holds, through a projection 4x narrower per cluster. Ids are
ranked by frequency (the vocabulary's order), which is what makes that cheap: most targets
fall in the head, which scores 500 words and 3 clusters instead of 30,000 words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.apps.sentiment.ngrams import NgramClassifier
from rnnkit.data.reviews import WordVocab
from rnnkit.heads import OutputLayer
from rnnkit.layers import GRU, LSTM, RNN

CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}
POOLINGS = ("max", "mean", "last", "attention")
LM_CUTOFFS = (500, 2500, 10_000)  # the adaptive softmax's clusters: ids [0, 500), [500, 2500), ...


def language_model_head(hidden: int, words: int) -> nn.AdaptiveLogSoftmaxWithLoss:
    """An adaptive softmax over ``words`` frequency-ranked ids (the cutoffs below ``words``)."""
    cutoffs = [c for c in LM_CUTOFFS if c < words] or [max(1, words // 2)]
    return nn.AdaptiveLogSoftmaxWithLoss(hidden, words, cutoffs, div_value=4.0)


@dataclass
class ClassifierConfig:
    """What rebuilds the classifier: its vocabulary (words after ``<pad>``, ``<unk>``), classes and sizes."""

    words: list[str]
    classes: list[str]
    cell: str = "lstm"
    embedding: int = 100
    hidden: int = 128
    layers: int = 1
    bidirectional: bool = True
    pooling: str = "attention"
    dropout: float = 0.3
    word_dropout: float = 0.0  # training replaces each word by <unk> with this probability
    lm_words: int = 0  # > 0: language-model heads over this many words, for pretraining
    ngrams: list[str] = field(default_factory=list)  # the n-gram model's features, if mixed in (ngrams.py)
    ngram_weight: float = 0.0  # w of p = (1 - w) p_net + w p_ngram
    data: dict[str, Any] = field(default_factory=dict)  # how to rebuild the dataset (for evaluate)

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"--pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        for name in ("embedding", "hidden", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.ngram_weight <= 1:
            raise ValueError(f"ngram_weight must be in [0, 1], got {self.ngram_weight}")
        for name in ("dropout", "word_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")


class SequenceClassifier(nn.Module):
    """``forward(tokens (N, T), lengths (N,)) -> (logits (N, C), attention (N, T) or None)``."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(len(c.words) + 2, c.embedding, padding_idx=0)
        self.encoder = CELLS[c.cell](c.embedding, c.hidden, c.layers, batch_first=True, bidirectional=c.bidirectional,
                                     dropout=c.dropout if c.layers > 1 else 0.0)  # fmt: skip
        width = c.hidden * (2 if c.bidirectional else 1)
        if c.pooling == "attention":
            self.score = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1, bias=False))
        self.dropout = nn.Dropout(c.dropout)
        self.output = OutputLayer(width, len(c.classes))
        if c.lm_words:
            directions = 2 if c.bidirectional else 1
            words = min(c.lm_words, len(c.words) + 2)
            self.lm_heads = nn.ModuleList(language_model_head(c.hidden, words) for _ in range(directions))
        self.ngrams = NgramClassifier(c.ngrams, len(c.classes)) if c.ngrams else None

    def mix_in(self, ngrams: NgramClassifier, weight: float) -> None:
        """Mix ``ngrams``'s probabilities into the classifier's with ``weight`` (saved with it)."""
        self.ngrams, self.config.ngrams, self.config.ngram_weight = ngrams, ngrams.grams, weight

    def forward(self, tokens: Tensor, lengths: Tensor, language_model: bool = False) -> tuple[Tensor, Tensor | None]:
        """``(logits, attention)``; with ``language_model``, ``(lm_loss, None)`` instead (through
        ``forward``, so a DistributedDataParallel wrapper synchronises its gradients too)."""
        if language_model:
            return self.lm_loss(tokens, lengths), None
        c = self.config
        if self.training and c.word_dropout:  # whole words become <unk> (id 1); padding (id 0) stays
            dropped = (torch.rand(tokens.shape, device=tokens.device) < c.word_dropout) & (tokens > 1)
            tokens = tokens.masked_fill(dropped, 1)
        steps, h_n = self.encoder(self.dropout(self.embed(tokens)), lengths=lengths)  # (N, T, D*H), zero past lengths
        valid = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]  # (N, T)
        attention = None
        if c.pooling == "max":
            pooled = steps.masked_fill(~valid[..., None], float("-inf")).amax(dim=1)
        elif c.pooling == "mean":
            pooled = steps.sum(dim=1) / lengths[:, None].to(steps.dtype)
        elif c.pooling == "last":
            final = h_n[0] if isinstance(h_n, tuple) else h_n  # (L*D, N, H): the top layer's directions last
            pooled = final[-(2 if c.bidirectional else 1) :].transpose(0, 1).flatten(1)
        else:
            scores = self.score(steps).squeeze(-1).masked_fill(~valid, float("-inf"))
            attention = scores.softmax(dim=1)
            pooled = (attention[..., None] * steps).sum(dim=1)
        return self.output.logits(self.dropout(pooled)), attention

    def _lm_inputs(self, tokens: Tensor, lengths: Tensor) -> tuple[list[Tensor], Tensor]:
        """Per direction, ``(N, T, H)`` features at every position; and the targets ``(N, T)``,
        ids past the LM's words as ``<unk>`` and padding as -1."""
        if not self.config.lm_words:
            raise ValueError("this classifier has no language-model heads (lm_words = 0)")
        steps, _ = self.encoder(self.dropout(self.embed(tokens)), lengths=lengths)
        valid = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
        targets = tokens.masked_fill(tokens >= self.lm_heads[0].n_classes, 1).masked_fill(~valid, -1)
        return list(self.dropout(steps).split(self.config.hidden, dim=-1)), targets

    def lm_log_probs(self, tokens: Tensor, lengths: Tensor) -> list[Tensor]:
        """Per direction, ``(N, T, V)`` log-probabilities at every position: the forward
        direction's at ``t`` (it has read ``w_0 ... w_t``) score ``w_{t+1}``, the backward's
        (read ``w_t ... w_{length-1}``) score ``w_{t-1}``."""
        features, _ = self._lm_inputs(tokens, lengths)
        return [head.log_prob(half.flatten(0, 1)).unflatten(0, half.shape[:2]) for head, half in zip(self.lm_heads, features)]

    def lm_loss(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Mean cross-entropy of the next word (forward direction) and, bidirectional, of the
        previous word (backward direction), from valid positions to valid positions."""
        features, targets = self._lm_inputs(tokens, lengths)
        # fwd_t predicts w_{t+1}, bwd_t predicts w_{t-1}; both positions must be valid
        pairs = [(features[0][:, :-1], targets[:, 1:], targets[:, :-1])]
        if len(features) == 2:
            pairs.append((features[1][:, 1:], targets[:, :-1], targets[:, 1:]))
        losses = []
        for head, (inputs, target, source) in zip(self.lm_heads, pairs):
            scored = (target >= 0) & (source >= 0)
            losses.append(head(inputs[scored], target[scored]).loss)
        return torch.stack(losses).mean()

    def describe(self) -> dict[str, Any]:
        return asdict(self.config)


class Classifier:
    """A trained classifier with its vocabulary: :meth:`predict` texts, :meth:`explain` them."""

    def __init__(self, model: SequenceClassifier) -> None:
        self.model = model.eval()
        self.config = model.config
        self.vocab = WordVocab(model.config.words)

    def encode(self, texts: list[str], strict: bool = True) -> list[list[int]]:
        """Word ids; an empty text is an error, and so (``strict``) is one whose words are all unknown."""
        encoded = []
        for text in texts:
            ids = self.vocab.encode(text)
            if not ids:
                raise ValueError(f"cannot classify an empty text ({text!r})")
            if strict and all(i == 1 for i in ids):
                raise ValueError(f"every word of {text[:60]!r} is unknown to the model")
            encoded.append(ids)
        return encoded

    @property
    def mixes_ngrams(self) -> bool:
        """True if its probabilities mix in an n-gram model (``--ngram-mix``)."""
        return self.model.ngrams is not None and self.config.ngram_weight > 0

    @torch.no_grad()
    def probabilities(self, texts: list[str], batch_size: int = 64, strict: bool = True, mix: bool = True) -> Tensor:
        """``(N, C)`` class probabilities: the network's, mixed with the n-gram model's if it has one
        (``mix=False``: the network's alone)."""
        from rnnkit.data.parallel import pad_batch

        encoded, out = self.encode(texts, strict), []
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # batched by length: little padding
        for start in range(0, len(encoded), batch_size):
            tokens, lengths = pad_batch([encoded[i] for i in order[start : start + batch_size]])
            out.append(self.model(tokens, lengths)[0].softmax(dim=-1))
        network = torch.cat(out)[torch.tensor(order).argsort()]
        if not (mix and self.mixes_ngrams):
            return network
        weight = self.config.ngram_weight
        return (1 - weight) * network + weight * self.model.ngrams.probabilities(texts)

    def predict(self, texts: str | list[str]) -> list[tuple[str, float]]:
        """``(label, probability)`` per text."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        probabilities = self.probabilities(texts)
        best = probabilities.argmax(dim=-1)
        return [(self.config.classes[int(i)], float(p[i])) for i, p in zip(best, probabilities)]

    @torch.no_grad()
    def explain(self, text: str, top: int = 5) -> list[tuple[str, float]]:
        """The ``top`` words with the highest attention weights (attention pooling only)."""
        if self.config.pooling != "attention":
            raise ValueError(f"--explain needs a model with attention pooling; this one pools by {self.config.pooling}")
        from rnnkit.data.reviews import tokenize

        ids = self.encode([text])[0]
        _, attention = self.model(torch.tensor([ids]), torch.tensor([len(ids)]))
        words = tokenize(text)
        ranked = sorted(zip(words, attention[0].tolist()), key=lambda pair: -pair[1])
        return ranked[:top]


class Ensemble(Classifier):
    """Several classifiers of the same classes and data split, predicting the mean of their class
    probabilities, ``p(y | text) = (1 / K) sum_k p_k(y | text)`` (e.g. fine-tunings of one
    pretrained encoder with different ``--seed``). Each member reads the text with its own vocabulary.
    Its ``config`` and ``vocab`` are the first member's."""

    def __init__(self, members: list[Classifier]) -> None:
        if len(members) < 2:
            raise ValueError(f"--model: an ensemble needs at least 2 models, got {len(members)}")
        first = members[0]
        for member in members[1:]:
            if member.config.classes != first.config.classes:
                raise ValueError(f"--model: the ensemble's models have different classes "
                                 f"({first.config.classes} and {member.config.classes})")  # fmt: skip
            if member.config.data != first.config.data:
                raise ValueError(f"--model: the ensemble's models were trained on different data or splits "
                                 f"({first.config.data} and {member.config.data})")  # fmt: skip
        self.members, self.model, self.config, self.vocab = members, first.model, first.config, first.vocab

    def encode(self, texts: list[str], strict: bool = True) -> list[list[int]]:
        raise NotImplementedError("an ensemble's members encode texts with their own vocabularies")

    @property
    def mixes_ngrams(self) -> bool:
        return any(member.mixes_ngrams for member in self.members)

    def probabilities(self, texts: list[str], batch_size: int = 64, strict: bool = True, mix: bool = True) -> Tensor:
        """``(N, C)``: the mean of the members' class probabilities."""
        members = [member.probabilities(texts, batch_size, strict, mix) for member in self.members]
        return torch.stack(members).mean(dim=0)

    def explain(self, text: str, top: int = 5) -> list[tuple[str, float]]:
        raise ValueError("--explain: give one --model (an ensemble has one attention per member)")
