"""rnnkit vs torch.nn, side by side in one process: a training step (forward + backward) of one
layer for RNN, LSTM and GRU on four configurations, and single-step inference.

Timings are interleaved (rnnkit, torch, rnnkit, torch, ...) and the median of the repeats is
reported; 2 threads. Writes JSON and prints a table of ratios (torch time / rnnkit time: > 1
means rnnkit is faster).

    python benchmarks/layers.py [--repeats 15] [--out benchmarks/results/layers.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import rnnkit

CONFIGS = {  # name: (B, T, I, H)
    "charLM": (64, 100, 64, 256),
    "big": (64, 100, 128, 512),
    "small-ts": (32, 48, 8, 64),
    "long-seq": (8, 500, 32, 128),
}
CELLS = {
    # name: (rnnkit layer, torch layer); GRU like for like: reset_after=True is torch's form
    "LSTM": (lambda i, h: rnnkit.LSTM(i, h), lambda i, h: nn.LSTM(i, h)),
    "GRU": (lambda i, h: rnnkit.GRU(i, h, reset_after=True), lambda i, h: nn.GRU(i, h)),
    "RNN": (lambda i, h: rnnkit.RNN(i, h), lambda i, h: nn.RNN(i, h)),
}


def train_step(layer: nn.Module, x: torch.Tensor) -> None:
    out, _ = layer(x)
    out.sum().backward()


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def compare(ours, theirs, run, repeats: int, warmup: int = 2) -> dict[str, float]:
    for _ in range(warmup):
        run(ours), run(theirs)
    times_ours, times_theirs = [], []
    for _ in range(repeats):
        times_ours.append(timed(run, ours))
        times_theirs.append(timed(run, theirs))
    a, b = statistics.median(times_ours), statistics.median(times_theirs)
    return {"rnnkit_ms": 1e3 * a, "torch_ms": 1e3 * b, "speedup": b / a}


def gemm_peak(repeats: int = 10) -> float:
    """fp32 GFLOP/s of a large square GEMM, measured here: the roofline for the big config."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = min(timed(torch.mm, a, b) for _ in range(repeats))
    return 2 * 2048**3 / best / 1e9


def step_inference(repeats: int) -> dict[str, float]:
    """One LSTM step at B=1, H=128: rnnkit.LSTMCell vs nn.LSTMCell (the generation loop)."""
    theirs = nn.LSTMCell(128, 128)
    ours = rnnkit.LSTMCell.from_torch(theirs)
    x, state = torch.randn(1, 128), (torch.zeros(1, 128), torch.zeros(1, 128))

    def run(cell):
        with torch.no_grad():
            for _ in range(100):
                cell(x, state)

    result = compare(ours, theirs, run, repeats)
    return {k: v / 100 if k.endswith("_ms") else v for k, v in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default="benchmarks/results/layers.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    results = {"torch": torch.__version__, "machine": platform.processor() or platform.machine(), "threads": 2, "train": {}}
    results["gemm_peak_gflops"] = gemm_peak()
    for config, (batch, steps, inputs, hidden) in CONFIGS.items():
        x = torch.randn(steps, batch, inputs)
        for cell, (make_ours, make_theirs) in CELLS.items():
            theirs = make_theirs(inputs, hidden)
            ours = type(make_ours(1, 1)).from_torch(theirs) if cell != "GRU" else rnnkit.GRU.from_torch(theirs)
            result = compare(ours, theirs, lambda layer, x=x: train_step(layer, x), args.repeats)
            result["backend"] = rnnkit.last_backend()
            gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[cell]
            flops = 3 * 2 * steps * batch * gates * hidden * (inputs + hidden)  # forward + 2x backward GEMMs
            result["rnnkit_gflops"] = flops / (result["rnnkit_ms"] / 1e3) / 1e9
            results["train"][f"{cell}/{config}"] = result
            print(f"{cell:4s} {config:9s} rnnkit {result['rnnkit_ms']:8.2f} ms  torch {result['torch_ms']:8.2f} ms  "
                  f"speedup {result['speedup']:5.2f}x  ({result['rnnkit_gflops']:.0f} GFLOP/s)", flush=True)  # fmt: skip
    results["step_inference_lstm_b1_h128"] = step_inference(args.repeats)
    s = results["step_inference_lstm_b1_h128"]
    ours_us, torch_us = s["rnnkit_ms"] * 1e3, s["torch_ms"] * 1e3
    print(f"LSTM single step B=1 H=128: rnnkit {ours_us:.1f} us  torch {torch_us:.1f} us  speedup {s['speedup']:.2f}x")
    print(f"fp32 GEMM peak here: {results['gemm_peak_gflops']:.0f} GFLOP/s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
