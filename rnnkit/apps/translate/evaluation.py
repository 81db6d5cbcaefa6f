"""Translation quality: exact match, BLEU and chrF (``sacrebleu``), the copy and word-by-word
baselines, and the attention heatmap."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from torch import Tensor

from rnnkit.data.parallel import Pair, normalise, pieces


def scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Exact-match accuracy (after whitespace normalisation), corpus BLEU and chrF (sacrebleu's
    defaults: 13a tokenisation, 4-grams; chrF with character 6-grams)."""
    import sacrebleu

    exact = sum(normalise(h) == normalise(r) for h, r in zip(hypotheses, references, strict=True))
    return {
        "exact_match": exact / max(1, len(references)),
        "bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
        "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
    }


class WordByWord:
    """The word-by-word baseline: each source word becomes the target word it co-occurs with most
    strongly in the training pairs (Dice coefficient ``2 c(e, f) / (c(e) + c(f))``, counted once
    per pair); words never seen are copied. Punctuation is kept as it is."""

    def __init__(self, pairs: list[Pair]) -> None:
        source_count: Counter[str] = Counter()
        target_count: Counter[str] = Counter()
        joint: Counter[tuple[str, str]] = Counter()
        tokenized = [(set(_words(s)), set(_words(t))) for s, t in pairs]
        for source, target in tokenized:
            source_count.update(source)
            target_count.update(target)
        for source, target in tokenized:
            for e in source:
                for f in target:
                    joint[e, f] += 1
        best: dict[str, tuple[float, str]] = {}
        for (e, f), together in joint.items():
            dice = 2 * together / (source_count[e] + target_count[f])
            if dice > best.get(e, (0.0, ""))[0]:
                best[e] = (dice, f)
        self.table = {e: f for e, (_, f) in best.items()}

    def __call__(self, text: str) -> str:
        out = []
        for piece in pieces(text):
            word = piece.strip()
            out.append(piece[: len(piece) - len(word)] + (self.table.get(word, word) if word[0].isalnum() else word))
        return "".join(out).strip()


def _words(text: str) -> list[str]:
    return [p.strip() for p in pieces(text)]


def plot_attention(source: list[str], output: list[str], weights: Tensor, path: Path, title: str = "") -> None:
    """Heatmap of ``weights (len(output), len(source))``: rows are output pieces."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(4, 0.42 * len(source) + 1.5), max(3, 0.36 * len(output) + 1.2)))
    axis.imshow(weights.numpy(), cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
    axis.set_xticks(range(len(source)), [p.strip() or "␣" for p in source], rotation=70, fontsize=8)
    axis.set_yticks(range(len(output)), [p.strip() or "␣" for p in output], fontsize=8)
    axis.set_xlabel("source")
    axis.set_ylabel("output")
    if title:
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
