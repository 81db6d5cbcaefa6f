"""A multi-layer LSTM training step, rnnkit against torch.nn, under one allocator setting.

    python benchmarks/allocator.py keep      # the trainer's default: glibc keeps freed memory
    python benchmarks/allocator.py release   # glibc's own default: large buffers mapped afresh

The setting (``rnnkit.train.allocator.keep_freed_memory``) holds for the whole process, so each
setting needs its own run. The two layers share weights (``from_torch``) and their steps are
interleaved, alternating their order; prints the medians. Prints only; tests never assert on time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import rnnkit
from rnnkit.train.allocator import keep_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("setting", choices=("keep", "release"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100, help="time steps of the sequence")
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=14)
    args = parser.parse_args()
    if args.setting == "keep":
        keep_freed_memory()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(args.inputs, args.hidden, num_layers=args.layers)
    ours = rnnkit.LSTM.from_torch(theirs)
    x = torch.randn(args.steps, args.batch, args.inputs)

    def step(layer: torch.nn.Module) -> float:
        start = time.perf_counter()
        out, _ = layer(x)
        out.sum().backward()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"torch": [], "rnnkit": []}
    for i in range(args.repeats + 2):
        for name in ("rnnkit", "torch") if i % 2 == 0 else ("torch", "rnnkit"):
            elapsed = step(ours if name == "rnnkit" else theirs)
            if i >= 2:  # the first two rounds warm up
                times[name].append(elapsed)
    torch_ms, ours_ms = (1e3 * statistics.median(times[name]) for name in ("torch", "rnnkit"))
    print(f"{args.setting}: torch {torch_ms:.1f} ms, rnnkit {ours_ms:.1f} ms, ratio {torch_ms / ours_ms:.2f}x")


if __name__ == "__main__":
    main()
