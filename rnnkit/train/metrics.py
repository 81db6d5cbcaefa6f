"""The per-run metrics log (JSON lines) and the training-curve plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rnnkit.train.checkpoint import atomic_write_text


class MetricsLog:
    """Append-only ``metrics.jsonl``: one record per logged step or evaluation."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (left by a run killed after its last checkpoint)."""
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
        return records


def plot_curves(records: list[dict[str, Any]], path: Path, metric: str, title: str = "") -> None:
    """Training loss (and the validation metric, where recorded) against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    valid = [(r["step"], r[metric]) for r in records if r.get("kind") == "eval" and metric in r]
    figure, axis = plt.subplots(figsize=(7, 4))
    if train:
        axis.plot(*zip(*train), label="training loss", alpha=0.8)
    if valid:
        axis.plot(*zip(*valid), "o-", label=f"validation {metric}")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
