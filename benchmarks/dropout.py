"""rnnkit's dropout (counter-based mask, native kernel) against torch's ``F.dropout``, side by
side in one process: forward + backward on the default char-LM's layer output (64 x 200 x 512,
float32, p = 0.3), medians of interleaved repeats, 2 threads. Writes JSON and prints the ratio.

    python benchmarks/dropout.py [--repeats 21] [--out benchmarks/results/dropout.json]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from layers import compare  # benchmarks/layers.py, beside this script
from torch.nn import functional as F

from rnnkit.dropout import dropout
from rnnkit.kernels import native
from rnnkit.train.allocator import keep_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--out", default="benchmarks/results/dropout.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    native.extension()  # built before timing
    keep_freed_memory()  # as the Trainer does: each repeat reuses the last one's pages
    shape, p = (64, 200, 512), 0.3
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)

    def run(fn) -> None:  # noqa: ANN001
        fn(x, p, training=True).backward(grad)

    result = compare(dropout, F.dropout, run, args.repeats)
    results = {"torch": torch.__version__, "machine": platform.processor() or platform.machine(), "threads": 2,
               "shape": list(shape), "p": p, "forward_backward": result}  # fmt: skip
    print(f"dropout {shape} p={p}, forward + backward: rnnkit {result['rnnkit_ms']:.2f} ms  "
          f"torch {result['torch_ms']:.2f} ms  speedup {result['speedup']:.1f}x")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
