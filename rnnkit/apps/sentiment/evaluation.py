"""Classification metrics, the confusion matrix picture, and the TF-IDF baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rnnkit.apps.sentiment.ngrams import fit_tfidf
from rnnkit.data.reviews import LabelledTexts


def confusion(gold: list[int], predicted: list[int], classes: int) -> np.ndarray:
    """``(C, C)`` counts: row = true class, column = predicted class."""
    matrix = np.zeros((classes, classes), dtype=int)
    np.add.at(matrix, (np.asarray(gold), np.asarray(predicted)), 1)
    return matrix


def classification_report(gold: list[int], predicted: list[int], classes: int) -> dict[str, float]:
    """Accuracy and macro F1 (the mean over classes of ``2 P R / (P + R)``, 0 for a class never
    predicted nor present)."""
    matrix = confusion(gold, predicted, classes)
    true_positive = np.diag(matrix).astype(float)
    precision = np.divide(true_positive, matrix.sum(axis=0), out=np.zeros(classes), where=matrix.sum(axis=0) > 0)
    recall = np.divide(true_positive, matrix.sum(axis=1), out=np.zeros(classes), where=matrix.sum(axis=1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(classes), where=(precision + recall) > 0)
    return {"accuracy": float(true_positive.sum() / matrix.sum()), "macro_f1": float(f1.mean())}


def plot_confusion(gold: list[int], predicted: list[int], classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = confusion(gold, predicted, len(classes))
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2.5, 1.2 * len(classes) + 2))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {np.trace(matrix) / matrix.sum():.1%} on {matrix.sum()} test texts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tfidf_baseline(data: LabelledTexts) -> dict[str, float] | None:
    """TF-IDF of word 1-2 grams + logistic regression (:mod:`.ngrams`), ``C`` chosen on the
    validation split; test accuracy and macro F1 (None without scikit-learn)."""
    try:
        vectorizer, logistic = fit_tfidf(data)
    except ImportError:
        return None
    predicted = logistic.predict(vectorizer.transform([t for t, _ in data.test])).tolist()
    return classification_report([label for _, label in data.test], predicted, len(data.classes))
