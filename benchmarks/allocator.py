"""A multi-layer LSTM training step, rnnkit against torch.nn, under one allocator setting.

    python benchmarks/allocator.py keep      # the trainer's default: glibc keeps freed memory
    python benchmarks/allocator.py release   # glibc's own default: large buffers mapped afresh
    perf record -g python benchmarks/allocator.py keep --only rnnkit   # one library's steps, to profile

The setting (``rnnkit.train.allocator.keep_freed_memory``) holds for the whole process, so each
setting needs its own run. The two layers share weights (``from_torch``); their steps are timed
in turn by ``layers.compare`` (medians). Prints only; tests never assert on time.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from layers import compare, timed, train_step  # benchmarks/layers.py, beside this script

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
    parser.add_argument("--only", choices=("rnnkit", "torch"), help="time this library's steps alone (for a profiler)")
    args = parser.parse_args()
    if args.setting == "keep":
        keep_freed_memory()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(args.inputs, args.hidden, num_layers=args.layers)
    ours = rnnkit.LSTM.from_torch(theirs)
    x = torch.randn(args.steps, args.batch, args.inputs)
    if args.only:
        layer = ours if args.only == "rnnkit" else theirs
        times = [timed(train_step, layer, x) for _ in range(args.repeats + 2)][2:]
        print(f"{args.setting}: {args.only} alone {1e3 * statistics.median(times):.1f} ms")
        return
    result = compare(ours, theirs, lambda layer: train_step(layer, x), args.repeats)
    print(
        f"{args.setting}: torch {result['torch_ms']:.1f} ms, rnnkit {result['rnnkit_ms']:.1f} ms, ratio {result['speedup']:.2f}x"
    )


if __name__ == "__main__":
    main()
