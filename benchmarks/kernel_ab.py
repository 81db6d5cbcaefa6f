"""Two builds of the native kernel against each other and nn.LSTM, in one process.

    python benchmarks/kernel_ab.py long-seq old.cpp new.cpp --repeats 120 [--cell GRU]
    python benchmarks/kernel_ab.py 4,30,128,2048 old.cpp new.cpp   # any (B, T, I, H)
    python benchmarks/kernel_ab.py big old.cpp new.cpp --keep-freed-memory   # as the trainer runs

Builds both sources as separate extensions, then times a training step (forward + backward) of
an LSTM (or --cell GRU, reset after, or RNN) with each, interleaved with torch.nn's step and
alternating their order, and prints
the medians. The host's phases move all three together, which separate runs cannot separate
from a change in the kernel. Prints only; tests never assert on time.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from pathlib import Path

import torch
from layers import CELLS, CONFIGS  # benchmarks/layers.py, beside this script
from torch.utils.cpp_extension import load

import rnnkit
from rnnkit.kernels import native
from rnnkit.train.allocator import keep_freed_memory


def build(source: Path):  # noqa: ANN201
    key = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    return load(name=f"rnnkit_ab_{key}", sources=[str(source)], extra_cflags=native.compile_flags(), verbose=False)


def config_sizes(text: str) -> tuple[int, int, int, int]:
    """A configuration's name (``layers.CONFIGS``) or its sizes written ``B,T,I,H``."""
    if text in CONFIGS:
        return CONFIGS[text]
    parts = text.split(",")
    if len(parts) != 4 or not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(CONFIGS)} or four positive integers B,T,I,H, got {text!r}")
    return tuple(int(part) for part in parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=config_sizes, help=f"{', '.join(CONFIGS)}, or B,T,I,H")
    parser.add_argument("a", type=Path, help="kernel source A (e.g. a copy of csrc/recurrence.cpp at one commit)")
    parser.add_argument("b", type=Path, help="kernel source B")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--cell", choices=CELLS, default="LSTM")
    parser.add_argument(
        "--keep-freed-memory", action="store_true", help="the trainer's allocator setting (rnnkit.train.allocator)"
    )
    args = parser.parse_args()
    if args.keep_freed_memory:
        keep_freed_memory()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    builds = {"A": build(args.a), "B": build(args.b)}
    batch, steps, inputs, hidden = args.config
    x = torch.randn(steps, batch, inputs)
    theirs = CELLS[args.cell][1](inputs, hidden)
    ours = getattr(rnnkit, args.cell).from_torch(theirs)  # a GRU in torch's form: reset after

    def step(layer: torch.nn.Module) -> float:
        start = time.perf_counter()
        out, _ = layer(x)
        out.sum().backward()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"torch": [], "A": [], "B": []}
    for i in range(args.repeats):
        for name in ("torch", "A", "B") if i % 2 == 0 else ("torch", "B", "A"):
            if name != "torch":
                native.extension = lambda build=builds[name]: build  # the wrapper looks the extension up per call
            times[name].append(step(theirs if name == "torch" else ours))
    for name, values in times.items():
        print(f"{name:6s} {1e3 * statistics.median(values[4:]):8.3f} ms")


if __name__ == "__main__":
    main()
