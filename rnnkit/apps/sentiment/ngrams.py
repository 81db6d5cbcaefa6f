"""TF-IDF of word 1-2 grams with logistic regression: the baseline, and the n-gram half of a mix.

::

    tf-idf   x_g = (1 + log count_g(text)) * idf_g,   idf_g = log((1 + n) / (1 + df_g)) + 1,   x = x / ||x||_2
    p(y | text) = softmax(W x + b)                     logistic regression, C chosen on the validation split

over the 1- and 2-grams of :func:`rnnkit.data.reviews.tokenize` seen in at least 2 training texts
(scikit-learn's ``TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)``, then
``LogisticRegression``). scikit-learn fits it; :class:`NgramClassifier` holds the fitted numbers
as tensors (saved in safetensors with the model, never pickled) and computes the same
probabilities itself.

A mix (``--ngram-mix``) combines it with the network, ``p = (1 - w) p_net + w p_ngram``, with
``w`` from 0, 0.1, ..., 1 chosen by validation accuracy (ties: the smaller ``w``). Bag-of-n-gram
and sequence models make different errors, and their mixes have long been strong on movie
reviews (Mesnil et al. 2014, NB-SVM with an RNN language model and paragraph vectors).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.data.reviews import LabelledTexts, tokenize

TFIDF_C = (0.25, 1.0, 4.0, 16.0)  # logistic-regression strengths tried on the validation split
MIX_WEIGHTS = tuple(i / 10 for i in range(11))  # the n-gram model's weights tried on the validation split


def grams_of(text: str) -> list[str]:
    """The word 1-grams, then 2-grams (two words joined by a space), of a text."""
    words = tokenize(text)
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


def fit_tfidf(data: LabelledTexts) -> tuple[Any, Any]:
    """scikit-learn's vectorizer and logistic regression, fitted on the training split, ``C`` the
    best of ``TFIDF_C`` on the validation split. ImportError without scikit-learn."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(tokenizer=tokenize, token_pattern=None, lowercase=False, ngram_range=(1, 2), min_df=2,
                                 sublinear_tf=True)  # fmt: skip
    train = vectorizer.fit_transform([t for t, _ in data.train])
    y_train = [label for _, label in data.train]
    valid, y_valid = vectorizer.transform([t for t, _ in data.valid]), [label for _, label in data.valid]
    fits = [LogisticRegression(C=c, max_iter=2000).fit(train, y_train) for c in TFIDF_C]
    return vectorizer, max(fits, key=lambda model: model.score(valid, y_valid))


class NgramClassifier(nn.Module):
    """``probabilities(texts) -> (N, C)`` of a fitted TF-IDF + logistic regression (see the module's
    equations). ``grams`` are the features in order; buffers ``idf (F,)``, ``weight (C, F)``,
    ``bias (C,)``. A two-class scikit-learn model's single row ``z`` becomes the rows ``[0, z]``,
    whose softmax is its ``[1 - sigmoid(z), sigmoid(z)]``."""

    def __init__(self, grams: list[str], classes: int) -> None:
        super().__init__()
        self.grams, self.index = grams, {gram: i for i, gram in enumerate(grams)}
        self.register_buffer("idf", torch.zeros(len(grams), dtype=torch.float64))
        self.register_buffer("weight", torch.zeros(classes, len(grams), dtype=torch.float64))
        self.register_buffer("bias", torch.zeros(classes, dtype=torch.float64))

    @classmethod
    def from_sklearn(cls, vectorizer: Any, logistic: Any, classes: int) -> NgramClassifier:
        grams = [""] * len(vectorizer.vocabulary_)
        for gram, i in vectorizer.vocabulary_.items():
            grams[i] = gram
        model = cls(grams, classes)
        coef, intercept = torch.from_numpy(logistic.coef_), torch.from_numpy(logistic.intercept_)
        if coef.shape[0] == 1:  # binary: sigmoid(z) = softmax([0, z])[1]
            coef, intercept = torch.cat([torch.zeros_like(coef), coef]), torch.cat([torch.zeros_like(intercept), intercept])
        model.idf.copy_(torch.from_numpy(vectorizer.idf_))
        model.weight.copy_(coef)
        model.bias.copy_(intercept)
        return model

    def features(self, texts: list[str]) -> Tensor:
        """``(N, F)`` sparse: the L2-normalised sublinear TF-IDF of each text's known n-grams."""
        rows, cols, counts = [], [], []
        for row, text in enumerate(texts):
            for col, count in Counter(self.index[gram] for gram in grams_of(text) if gram in self.index).items():
                rows.append(row), cols.append(col), counts.append(count)
        device = self.weight.device
        rows_t, cols_t = torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(cols, dtype=torch.long, device=device)
        values = (1 + torch.tensor(counts, dtype=torch.float64, device=device).log()) * self.idf[cols_t]
        norms = torch.zeros(len(texts), dtype=torch.float64, device=device).index_add_(0, rows_t, values**2).sqrt()
        indices = torch.stack([rows_t, cols_t])  # valid by construction: no invariant checks
        return torch.sparse_coo_tensor(indices, values / norms[rows_t], (len(texts), len(self.grams)), check_invariants=False)

    @torch.no_grad()
    def probabilities(self, texts: list[str]) -> Tensor:
        """``(N, C)`` float32 class probabilities."""
        logits = torch.sparse.mm(self.features(texts), self.weight.t()) + self.bias
        return logits.softmax(dim=-1).float()


def choose_mix_weight(p_net: Tensor, p_ngram: Tensor, labels: Tensor) -> tuple[float, float]:
    """The ``w`` of ``MIX_WEIGHTS`` whose mix ``(1 - w) p_net + w p_ngram`` is the most accurate on
    ``labels`` (ties: the smaller ``w``), and that accuracy."""
    accuracy = [float((((1 - w) * p_net + w * p_ngram).argmax(dim=-1) == labels).float().mean()) for w in MIX_WEIGHTS]
    best = max(range(len(MIX_WEIGHTS)), key=lambda i: (accuracy[i], -i))
    return MIX_WEIGHTS[best], accuracy[best]
