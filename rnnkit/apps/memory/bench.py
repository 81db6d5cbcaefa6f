"""``rnnkit bench memory`` and ``rnnkit diagnose``: the long-memory benchmark and the
gradient-flow plots, built on the memory application and :mod:`rnnkit.diagnostics`."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from rnnkit.apps.memory import CELL_CHOICES, TRAIN_DEFAULTS, MemoryConfig, MemoryTask, baseline, make_batch, solved_below
from rnnkit.data.synthetic import adding_problem, check_length
from rnnkit.diagnostics import jacobian_norms, state_gradient_norms
from rnnkit.train import TrainConfig, Trainer, TrainingDiverged
from rnnkit.train.data import GeneratedBatches


def parse_cells(text: str) -> list[str]:
    cells = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in cells if c not in CELL_CHOICES]
    if not cells or unknown:
        raise ValueError(
            f"--cell takes a comma-separated list of {', '.join(CELL_CHOICES)}; unknown: {', '.join(unknown) or '(empty)'}"
        )
    return cells


def train_one(
    config: MemoryConfig, out: Path, steps: int, eval_every: int, seed: int, clip_norm: float | None = 1.0
) -> dict[str, Any]:
    """Train one cell; the test loss every ``eval_every`` steps and the first step it is solved."""
    torch.manual_seed(seed)
    task = MemoryTask(config)
    shutil.rmtree(out, ignore_errors=True)
    train = TrainConfig(
        steps=steps, out=str(out), seed=seed, batch_size=TRAIN_DEFAULTS["batch_size"], lr=TRAIN_DEFAULTS["lr"],
        clip_norm=clip_norm, eval_every=eval_every, checkpoint_every=10**9, progress=False, nan_patience=10**9,
    )  # fmt: skip
    data = GeneratedBatches(make_batch(config), train.batch_size, seed)
    diverged = None
    try:
        Trainer(task, data, train).fit()
    except TrainingDiverged as error:
        diverged = str(error)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["test_loss"]) for r in records if r["kind"] == "eval"]
    threshold = solved_below(config.task, config.length)
    solved = next((step for step, loss in curve if loss < threshold), None)
    grad_norms = [r["grad_norm"] for r in records if r["kind"] in ("train", "skip")]
    return {
        "curve": curve,
        "solved_at": solved,
        "final": curve[-1][1] if curve else math.nan,
        "grad_norms": grad_norms,
        "diverged": diverged,
    }


def bench_memory(
    task: str, length: int, cells: list[str], inits: list[str], steps: int, eval_every: int, seed: int, out: Path
) -> dict:
    check_length(length)
    results: dict[str, Any] = {"task": task, "length": length, "steps": steps, "baseline": baseline(task, length),
                               "solved_below": solved_below(task, length), "runs": {}}  # fmt: skip
    for cell in cells:
        for init in inits:
            if init == "identity" and cell != "rnn-relu":
                continue  # the IRNN initialisation is for ReLU RNNs
            name = f"{cell}/{init}"
            run = train_one(
                MemoryConfig(task, length, cell, 128, init), out / "runs" / name.replace("/", "-"), steps, eval_every, seed
            )
            results["runs"][name] = run
            solved = f"solved at step {run['solved_at']}" if run["solved_at"] else "not solved"
            print(
                f"{task} T={length} {name:18s} final test loss {run['final']:.4f} (baseline {results['baseline']:.4f}); {solved}",
                flush=True,
            )
    _plot_bench(results, out / f"{task}-T{length}.png")
    (out / f"{task}-T{length}.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out / f'{task}-T{length}.png'} and .json")
    return results


def _plot_bench(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for name, run in results["runs"].items():
        if run["curve"]:
            axis.plot(*zip(*run["curve"]), label=name)
    axis.axhline(results["baseline"], color="gray", linestyle="--", label="memoryless baseline")
    axis.axhline(results["solved_below"], color="gray", linestyle=":", label="solved")
    axis.set_yscale("log")
    axis.set_xlabel("training step")
    axis.set_ylabel("test MSE" if results["task"] == "adding" else "test cross-entropy (nats/step)")
    axis.set_title(f"{results['task']} problem, T = {results['length']}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def gradient_profile(model, x: torch.Tensor, y: torch.Tensor) -> dict[str, list[float]]:
    """dL/dh_t (loss at the last step) and ||∂h_T/∂h_t||_F, indexed by lag T-1-t."""
    model.eval()
    grads = state_gradient_norms(lambda: model.loss(model(x), y))[0].flip(0)
    jac = jacobian_norms(lambda: model.rnn(model.features(x))[0]).flip(0)
    return {"dL_dh": grads.tolist(), "jacobian": jac.tolist()}


def diagnose(cells: list[str], length: int, train_steps: int, seed: int, out: Path, init: str = "rnnkit") -> dict:
    """Gradient flow at initialisation and after training on the adding problem, per cell;
    plus exploding gradients: a ReLU RNN with large recurrent weights, with and without clipping."""
    check_length(length)
    out.mkdir(parents=True, exist_ok=True)
    x, y = adding_problem(16, length, torch.Generator().manual_seed(seed + 1))
    results: dict[str, Any] = {"length": length, "train_steps": train_steps, "init": init, "cells": {}}
    for cell in cells:
        config = MemoryConfig("adding", length, cell, 128, init)
        torch.manual_seed(seed)
        entry = {"init": gradient_profile(MemoryTask(config).model, x, y)}
        if train_steps:
            torch.manual_seed(seed)
            task = MemoryTask(config)
            run_dir = out / "runs" / cell
            shutil.rmtree(run_dir, ignore_errors=True)
            train = TrainConfig(steps=train_steps, out=str(run_dir), seed=seed, batch_size=50, lr=1e-3, clip_norm=1.0,
                                eval_every=train_steps, checkpoint_every=10**9, progress=False)  # fmt: skip
            Trainer(task, GeneratedBatches(make_batch(config), 50, seed), train).fit()
            entry["trained"] = gradient_profile(task.model, x, y)
        results["cells"][cell] = entry
        ratio = entry["init"]["dL_dh"][-1] / entry["init"]["dL_dh"][0]
        print(f"{cell:8s} at init: ||dL/dh|| at lag {length - 1} is {ratio:.1e} x its value at lag 0", flush=True)
    results["exploding"] = exploding(length=min(length, EXPLODING_LENGTH), steps=max(50, train_steps // 2), seed=seed, out=out)
    _plot_diagnose(results, out / "gradients.png")
    (out / "gradients.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out / 'gradients.png'} and {out / 'gradients.json'}")
    return results


EXPLODING_LENGTH, EXPLODING_GAIN = 50, 1.2


def exploding(length: int, steps: int, seed: int, out: Path) -> dict[str, Any]:
    """A ReLU RNN whose recurrent weights are 1.2 x identity over 50 steps (activations stay
    finite, gradients are huge), trained by plain SGD (momentum 0.9, lr 1e-3; Adam would hide
    the effect by normalising the step): the pre-clip gradient norm over training, without
    clipping and with clipping to norm 1."""
    runs = {}
    for label, clip in (("no clipping", None), ("clip norm 1", 1.0)):
        config = MemoryConfig("adding", length, "rnn-relu", 128, "identity")
        torch.manual_seed(seed)
        task = MemoryTask(config)
        with torch.no_grad():
            task.model.rnn.weight_hh_l0.mul_(EXPLODING_GAIN)
        run_dir = out / "runs" / f"exploding-{'clip' if clip else 'noclip'}"
        shutil.rmtree(run_dir, ignore_errors=True)
        train = TrainConfig(steps=steps, out=str(run_dir), seed=seed, batch_size=50, lr=1e-3, clip_norm=clip, optimizer="sgd",
                            eval_every=steps, checkpoint_every=10**9, progress=False, nan_patience=10**9)  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # skipped steps are counted below
            Trainer(task, GeneratedBatches(make_batch(config), 50, seed), train).fit()
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        norms = [r["grad_norm"] for r in records if r["kind"] in ("train", "skip")]
        evals = [r["test_loss"] for r in records if r["kind"] == "eval"]
        runs[label] = {
            "grad_norms": norms,
            "skipped": sum(r["kind"] == "skip" for r in records),
            "final": evals[-1] if evals else None,
        }
        median, skipped = sorted(norms)[len(norms) // 2], runs[label]["skipped"]
        final = runs[label]["final"]
        print(
            f"exploding, {label}: median pre-clip norm {median:.3g}, {skipped} non-finite steps skipped, final test MSE {final}"
        )
    return runs


def _plot_diagnose(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = ["init", "trained"] if any("trained" in e for e in results["cells"].values()) else ["init"]
    figure, axes = plt.subplots(1, len(stages) + 1, figsize=(5 * (len(stages) + 1), 4))
    for axis, stage in zip(axes, stages):
        for cell, entry in results["cells"].items():
            values = [max(v, 1e-30) for v in entry[stage]["dL_dh"]]
            axis.plot(range(len(values)), values, label=cell)
        axis.set_yscale("log")
        axis.set_xlabel("time lag T-1-t")
        axis.set_ylabel("||dL/dh_t|| (loss at the last step)")
        title = "at initialisation" if stage == "init" else f"after {results['train_steps']} training steps"
        axis.set_title(f"adding problem, T={results['length']}, {title}")
        axis.grid(alpha=0.3)
        axis.legend()
    axis = axes[-1]
    for label, run in results["exploding"].items():
        norms = [n if math.isfinite(n) else float("nan") for n in run["grad_norms"]]
        axis.plot(norms, "o-", markersize=3, label=f"{label}: {run['skipped']} of {len(norms)} steps non-finite")
    axis.set_yscale("log")
    axis.set_xlabel("training step")
    axis.set_ylabel("pre-clip gradient norm")
    axis.set_title(f"ReLU RNN, W_hh = {EXPLODING_GAIN} I, T = {EXPLODING_LENGTH}, SGD")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
