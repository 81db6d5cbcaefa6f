"""The char-LM on rnnkit vs the same model on torch.nn.LSTM, trained one after the other in one
process for the same wall time: validation loss against training time, in one plot, and
throughput (tokens/s). Then training steps of the two taken in turn on the same batches: their
throughput ratio without the host's drift between the two trainings.

Same data (Shakespeare, 4 held-out plays), model (embedding 64, 2 layers, hidden 256 unless
given), initial weights, optimizer, schedule and seed; only the recurrent layer differs.

    python benchmarks/charlm.py --minutes 10 [--hidden 256] [--out benchmarks/results/charlm]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from rnnkit.apps.charlm import CharLMTask, load_text
from rnnkit.apps.charlm.model import CharLM, CharLMConfig, evaluate_stream
from rnnkit.data.text import CharVocab
from rnnkit.train import StreamBatches, TrainConfig, Trainer


def build(backend: str, vocab: CharVocab, args: argparse.Namespace) -> CharLM:
    """The char-LM with the recurrent layer of ``backend``; the same seed gives both the same weights."""
    torch.manual_seed(args.seed)
    model = CharLM(CharLMConfig(len(vocab), "lstm", 64, args.hidden, 2, 0.0))
    if backend == "torch.nn.LSTM":
        model.rnn = model.rnn.to_torch()  # identical weights, torch's fused (oneDNN) LSTM
    return model


def train(backend: str, args: argparse.Namespace, train_text: str, valid_text: str) -> dict:
    vocab = CharVocab.from_text(train_text)
    model = build(backend, vocab, args)
    task = CharLMTask(model, vocab, vocab.encode(valid_text[: args.eval_chars]), None)
    out = Path(args.out) / backend
    shutil.rmtree(out, ignore_errors=True)
    config = TrainConfig(
        minutes=args.minutes, out=str(out), seed=args.seed, batch_size=64, bptt_steps=100, lr=2e-3, clip_norm=5.0,
        eval_every=args.eval_every, checkpoint_every=10**9, progress=False,
    )  # fmt: skip
    Trainer(task, StreamBatches(vocab.encode(train_text), 64, 100), config).fit()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = {r["step"]: r["seconds"] for r in records if r["kind"] == "train"}
    curve = [(seconds[r["step"]], r["val_loss"]) for r in records if r["kind"] == "eval"]
    full = evaluate_stream(model, vocab.encode(valid_text))
    tokens_per_s = [r["tokens_per_s"] for r in records if r["kind"] == "train"][-1]
    print(
        f"{backend:14s} {len(seconds)} steps, {tokens_per_s:,.0f} tokens/s, held-out {full['val_loss']:.4f} nats/char", flush=True
    )
    return {"curve": curve, "steps": len(seconds), "tokens_per_s": tokens_per_s, "val_loss_full": full["val_loss"]}


def interleaved_throughput(args: argparse.Namespace, train_text: str, steps: int = 30) -> dict:
    """Training steps (forward, loss, backward, clipping, Adam) of the two models in turn, the
    order alternating, on the same consecutive batches of the training text (each from a zero
    state); tokens/s from the medians. The trainings above run one after the other, so a drift
    of the host's speed between them moves their ratio; this does not. It runs after them, so
    under the allocator setting the trainer made (``keep_freed_memory``), as they did."""
    vocab = CharVocab.from_text(train_text)
    ids = vocab.encode(train_text)
    models = {backend: build(backend, vocab, args) for backend in ("rnnkit.LSTM", "torch.nn.LSTM")}
    task = CharLMTask(models["rnnkit.LSTM"], vocab, ids[:0], None)  # for its loss only
    optimizers = {name: torch.optim.Adam(model.parameters(), lr=2e-3) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    batch, length, warmup = 64, 100, 3
    for i in range(warmup + steps):
        window = ids[i * batch * (length + 1) : (i + 1) * batch * (length + 1)].view(batch, length + 1)
        for name in list(models)[:: 1 if i % 2 == 0 else -1]:
            model, optimizer = models[name], optimizers[name]
            start = time.perf_counter()
            loss, _ = task.loss(model, (window[:, :-1], window[:, 1:]), None)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    result = {f"{name} tokens_per_s": batch * length / statistics.median(t) for name, t in times.items()}
    result["ratio"] = result["rnnkit.LSTM tokens_per_s"] / result["torch.nn.LSTM tokens_per_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training time for each model")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--eval-chars", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/charlm")
    args = parser.parse_args()
    torch.set_num_threads(2)
    train_text, valid_text = load_text(None)
    results = {"minutes": args.minutes, "hidden": args.hidden}
    for backend in ("rnnkit.LSTM", "torch.nn.LSTM"):
        results[backend] = train(backend, args, train_text, valid_text)
    ratio = results["rnnkit.LSTM"]["tokens_per_s"] / results["torch.nn.LSTM"]["tokens_per_s"]
    results["throughput_ratio"] = ratio
    print(f"throughput: rnnkit / torch.nn = {ratio:.2f}x")
    results["interleaved"] = in_turn = interleaved_throughput(args, train_text)
    print(
        f"training steps in turn: rnnkit {in_turn['rnnkit.LSTM tokens_per_s']:,.0f} tokens/s, "
        f"torch.nn {in_turn['torch.nn.LSTM tokens_per_s']:,.0f} tokens/s, ratio {in_turn['ratio']:.2f}x",
        flush=True,
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for backend in ("rnnkit.LSTM", "torch.nn.LSTM"):
        seconds, losses = zip(*results[backend]["curve"])
        axis.plot([s / 60 for s in seconds], losses, "o-", label=f"{backend} ({results[backend]['tokens_per_s']:,.0f} tok/s)")
    axis.set_xlabel("training time (minutes, evaluation excluded)")
    axis.set_ylabel("validation loss (nats/char, first 100k held-out chars)")
    axis.set_title(f"char-LM, 2-layer LSTM hidden {args.hidden}, same wall time")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    figure.savefig(Path(args.out) / "curves.png", dpi=110)
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}/curves.png and results.json")


if __name__ == "__main__":
    main()
