"""rnnkit vs torch.nn, side by side in one process: a training step (forward + backward) of one
layer for RNN, LSTM and GRU on four configurations; the LSTM's bf16 mode (CPU autocast) on two;
single-step inference of each cell; and the char-LM's generation loop. Also the LSTM's time per
step as T grows, and its training step's peak memory (one fresh process per library and
configuration: a process's peak resident memory only grows).

Timings are interleaved (rnnkit, torch, rnnkit, torch, ...) and the median of the repeats is
reported; 2 threads. Writes JSON and prints a table of ratios (torch time / rnnkit time: > 1
means rnnkit is faster), with each training step's share of the fp32 GEMM peak measured in the
same run and the share the issue's target ratio would need (past 100%: out of reach here).

    python benchmarks/layers.py [--repeats 15] [--out benchmarks/results/layers.json]

By default the process runs under glibc's own allocator settings, as a script of torch.nn's
would. ``--keep-freed-memory`` applies the trainer's setting (``rnnkit.train.allocator``): it ends
the page faults of torch.nn's fresh buffers, so torch.nn's steps get faster and the ratios are
those a training under ``rnnkit train`` sees.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import rnnkit
from rnnkit.kernels import cpu_has_bf16
from rnnkit.train.allocator import keep_freed_memory

CONFIGS = {  # name: (B, T, I, H)
    "charLM": (64, 100, 64, 256),
    "big": (64, 100, 128, 512),
    "small-ts": (32, 48, 8, 64),
    "long-seq": (8, 500, 32, 128),
}
# the targets: torch time / rnnkit time for a training step
TARGETS = {
    "LSTM": {"charLM": 1.1, "big": 1.1, "small-ts": 1.5, "long-seq": 1.5},
    "GRU": dict.fromkeys(CONFIGS, 2.0),
    "RNN": dict.fromkeys(CONFIGS, 1.5),
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


def gemm_peak(repeats: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of a large square GEMM, measured here, the best of torch.mm (MKL for fp32) and
    oneDNN's matmul (the library the kernel's large products use): fp32's is the roofline for
    the big config; bf16's says whether bf16 could speed training up on this CPU."""
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    candidates = [lambda: torch.mm(a, b)]
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        candidates.append(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], ""))
    best = min(timed(gemm) for gemm in candidates for _ in range(repeats))
    return 2 * 2048**3 / best / 1e9


def bf16_lstm(repeats: int) -> dict[str, dict[str, float]]:
    """bf16 mode: an rnnkit LSTM training step under ``torch.autocast("cpu", dtype=torch.bfloat16)``
    against ``nn.LSTM`` in float32 (the issue's target) and ``nn.LSTM`` under the same autocast,
    interleaved, on charLM and big."""
    results = {}
    for config in ("charLM", "big"):
        batch, steps, inputs, hidden = CONFIGS[config]
        x = torch.randn(steps, batch, inputs)
        theirs = nn.LSTM(inputs, hidden)
        ours = rnnkit.LSTM.from_torch(theirs)

        def run(layer: nn.Module, bf16: bool, x: torch.Tensor = x) -> float:
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out, _ = layer(x)
            out.float().sum().backward()
            return time.perf_counter() - start

        runs = {"rnnkit_bf16": (ours, True), "torch_fp32": (theirs, False), "torch_bf16": (theirs, True)}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for i in range(repeats + 2):
            for name, (layer, bf16) in runs.items():
                elapsed = run(layer, bf16)
                if i >= 2:  # two warm-up rounds
                    times[name].append(elapsed)
        ms = {f"{name}_ms": 1e3 * statistics.median(t) for name, t in times.items()}
        results[config] = {
            **ms,
            "speedup_vs_torch_fp32": ms["torch_fp32_ms"] / ms["rnnkit_bf16_ms"],
            "speedup_vs_torch_bf16": ms["torch_bf16_ms"] / ms["rnnkit_bf16_ms"],
        }
    return results


STEP_CELLS = {"LSTM": (rnnkit.LSTMCell, nn.LSTMCell), "GRU": (rnnkit.GRUCell, nn.GRUCell), "RNN": (rnnkit.RNNCell, nn.RNNCell)}


def step_inference(repeats: int) -> dict[str, dict[str, float]]:
    """One step at B=1, I=H=128 of each cell against torch.nn's, gradients off (the generation
    loop); times are per step, in ms."""
    results = {}
    for name, (ours_type, theirs_type) in STEP_CELLS.items():
        theirs = theirs_type(128, 128)
        ours = ours_type.from_torch(theirs)  # GRU: torch's reset-after form
        x, h = torch.randn(1, 128), torch.zeros(1, 128)
        state = (h, h.clone()) if name == "LSTM" else h

        def run(cell, state=state, x=x):
            with torch.no_grad():
                for _ in range(100):
                    cell(x, state)

        result = compare(ours, theirs, run, repeats)
        run(ours)
        results[name] = {**{k: v / 100 if k.endswith("_ms") else v for k, v in result.items()}, "backend": rnnkit.last_backend()}
    return results


def generation(repeats: int, chars: int = 200) -> dict[str, float]:
    """The autoregressive loop of text generation: the default char-LM's shape (embedding 64,
    2-layer LSTM, hidden 512), one character at a time; rnnkit layers vs torch.nn.LSTM with the
    same weights. Times are per character, in ms."""
    from rnnkit.apps.charlm.model import CharLM, CharLMConfig, LanguageModel
    from rnnkit.data.text import CharVocab

    vocab = CharVocab(list("\n !',-.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))
    model = CharLM(CharLMConfig(len(vocab), "lstm", 64, 512, 2, 0.0))
    ours = LanguageModel(model, vocab)
    twin = CharLM(model.config)
    twin.load_state_dict(model.state_dict())
    twin.rnn = twin.rnn.to_torch()
    theirs = LanguageModel(twin, vocab)
    result = compare(ours, theirs, lambda lm: lm.generate("ROMEO:", chars, seed=0), max(3, repeats // 3))
    ours.generate("ROMEO:", 1, seed=0)
    return {**{k: v / chars if k.endswith("_ms") else v for k, v in result.items()}, "backend": rnnkit.last_backend()}


def per_step_vs_length(repeats: int, lengths: tuple[int, ...] = (125, 250, 500, 1000)) -> dict[str, dict[str, float]]:
    """An LSTM training step at long-seq's B, I, H for growing T: milliseconds per time step."""
    batch, _, inputs, hidden = CONFIGS["long-seq"]
    theirs = nn.LSTM(inputs, hidden)
    ours = rnnkit.LSTM.from_torch(theirs)
    results = {}
    for steps in lengths:
        x = torch.randn(steps, batch, inputs)
        result = compare(ours, theirs, lambda layer, x=x: train_step(layer, x), max(3, repeats // 3))
        results[str(steps)] = {"rnnkit_ms_per_step": result["rnnkit_ms"] / steps, "torch_ms_per_step": result["torch_ms"] / steps}
    return results


def peak_memory_probe(config: str, library: str) -> float:
    """MiB by which 3 LSTM training steps raise this process's peak resident memory (the
    kernel is built and loaded first, so only the steps count)."""
    batch, steps, inputs, hidden = CONFIGS[config]
    torch.set_num_threads(2)
    torch.manual_seed(0)
    layer = rnnkit.LSTM(inputs, hidden) if library == "rnnkit" else nn.LSTM(inputs, hidden)
    x = torch.randn(steps, batch, inputs)
    rnnkit.kernels.native.extension()
    before = peak_resident_kib()
    for _ in range(3):
        train_step(layer, x)
    return (peak_resident_kib() - before) / 1024


def peak_resident_kib() -> int:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: a child keeps
    its parent's peak across fork and exec, which would hide the probe's own growth."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (the memory probe needs Linux)")


def peak_memory() -> dict[str, dict[str, float]]:
    """peak_memory_probe for both libraries on every configuration, each in a fresh process."""
    results = {}
    for config in CONFIGS:
        row = {}
        for library in ("rnnkit", "torch"):
            command = [sys.executable, __file__, "--memory-probe", config, library]
            row[f"{library}_mib"] = float(subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()[-1])
        results[config] = row
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default="benchmarks/results/layers.json")
    parser.add_argument("--keep-freed-memory", action="store_true", help="the trainer's allocator setting")
    parser.add_argument("--memory-probe", nargs=2, metavar=("CONFIG", "LIBRARY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        print(peak_memory_probe(*args.memory_probe))
        return
    if args.keep_freed_memory:
        keep_freed_memory()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    results = {"torch": torch.__version__, "machine": platform.processor() or platform.machine(), "threads": 2, "train": {}}
    results["allocator"] = "keep_freed_memory" if args.keep_freed_memory else "glibc default"
    results["gemm_peak_gflops"] = gemm_peak()
    # without bf16 instructions a bf16 GEMM is emulated (a minute for this one on an AVX2 host,
    # and oneDNN has no kernel for it at all): neither it nor bf16 mode is timed there
    bf16 = cpu_has_bf16()
    results["bf16_gemm_peak_gflops"] = gemm_peak(dtype=torch.bfloat16) if bf16 else None
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
            # the share of the fp32 GEMM peak the step runs at, and the share its target would need:
            # past 100% the target is out of reach at this host's GEMM speed
            result["peak_share"] = result["rnnkit_gflops"] / results["gemm_peak_gflops"]
            target_ms = result["torch_ms"] / TARGETS[cell][config]
            result["target_peak_share"] = flops / (target_ms / 1e3) / 1e9 / results["gemm_peak_gflops"]
            results["train"][f"{cell}/{config}"] = result
            print(f"{cell:4s} {config:9s} rnnkit {result['rnnkit_ms']:8.2f} ms  torch {result['torch_ms']:8.2f} ms  "
                  f"speedup {result['speedup']:5.2f}x  ({result['rnnkit_gflops']:.0f} GFLOP/s, "
                  f"{100 * result['peak_share']:.0f}% of peak; {TARGETS[cell][config]}x needs "
                  f"{100 * result['target_peak_share']:.0f}%)", flush=True)  # fmt: skip
    if not bf16:
        print("bf16 mode not timed: this CPU has no bf16 instructions (AVX512-BF16 or AMX)")
    else:
        results["bf16_lstm"] = bf16_lstm(args.repeats)
    for config, r in results.get("bf16_lstm", {}).items():
        print(f"LSTM {config:9s} bf16 mode: rnnkit {r['rnnkit_bf16_ms']:8.2f} ms  torch fp32 {r['torch_fp32_ms']:8.2f} ms  "
              f"torch bf16 {r['torch_bf16_ms']:8.2f} ms  speedup vs fp32 {r['speedup_vs_torch_fp32']:5.2f}x  "
              f"vs torch bf16 {r['speedup_vs_torch_bf16']:5.2f}x", flush=True)  # fmt: skip
    results["step_inference_b1_h128"] = step_inference(args.repeats)
    for cell, s in results["step_inference_b1_h128"].items():
        ours_us, torch_us = s["rnnkit_ms"] * 1e3, s["torch_ms"] * 1e3
        print(f"{cell:4s} single step B=1 H=128: rnnkit {ours_us:6.1f} us  torch {torch_us:6.1f} us  "
              f"speedup {s['speedup']:5.2f}x  ({s['backend']})")  # fmt: skip
    results["generation_charlm_h512"] = g = generation(args.repeats)
    print(f"char-LM generation (2x512 LSTM), per character: rnnkit {g['rnnkit_ms'] * 1e3:.0f} us  "
          f"torch {g['torch_ms'] * 1e3:.0f} us  speedup {g['speedup']:.2f}x  ({g['backend']})")  # fmt: skip
    results["lstm_ms_per_time_step"] = per_step_vs_length(args.repeats)
    for steps, r in results["lstm_ms_per_time_step"].items():
        print(f"LSTM long-seq shape, T={steps:>4s}: per time step rnnkit {r['rnnkit_ms_per_step'] * 1e3:6.1f} us  "
              f"torch {r['torch_ms_per_step'] * 1e3:6.1f} us")  # fmt: skip
    results["lstm_peak_memory"] = peak_memory()
    for config, r in results["lstm_peak_memory"].items():
        print(f"LSTM {config:9s} training step peak memory: rnnkit {r['rnnkit_mib']:6.1f} MiB  torch {r['torch_mib']:6.1f} MiB")
    bf16_peak = f"{results['bf16_gemm_peak_gflops']:.0f} GFLOP/s" if bf16 else "not timed"
    print(f"GEMM peak here: fp32 {results['gemm_peak_gflops']:.0f} GFLOP/s, bf16 {bf16_peak}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
