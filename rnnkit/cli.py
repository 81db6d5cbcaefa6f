"""The ``rnnkit`` command line.

``rnnkit train <app>`` builds every app's parser from the same shared training options (see
:func:`add_train_options`), so ``--steps | --minutes``, ``--out``, ``--seed``, ``--resume``,
``--cell``, clipping and ``--bptt-steps`` mean the same everywhere. User errors print one line
(``rnnkit: error: ...``) and exit 2; set ``RNNKIT_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

import rnnkit
from rnnkit.apps import APPS, get_app
from rnnkit.kernels import cpu_has_bf16
from rnnkit.train import CheckpointError, TrainConfig, Trainer, TrainingDiverged, from_environment
from rnnkit.train.checkpoint import atomic_write_text

USER_ERRORS = (ValueError, TypeError, CheckpointError, TrainingDiverged, FileNotFoundError, PermissionError)
ARGS_FILE = "args.json"
FLOAT32 = "float32"  # the key of an app's defaults for runs without bf16 (precision_defaults)
ENSEMBLE_HELP = "model directory; repeat --model to predict with an ensemble of sentiment models (their mean probabilities)"


def add_train_options(parser: argparse.ArgumentParser, defaults: dict[str, Any], cells: tuple[str, ...]) -> None:
    """The training options every application shares; ``defaults`` are the app's.

    ``defaults["float32"]``, if an app has it, replaces some defaults (``steps``, ``bptt_steps``)
    for a run whose ``--bf16`` resolves to off: see :func:`precision_defaults`.
    """
    not_config = ("steps", "minutes", "bf16", FLOAT32)
    base = TrainConfig(**{"steps": 1, **{k: v for k, v in defaults.items() if k not in not_config}})
    float32 = defaults.get(FLOAT32, {})
    group = parser.add_argument_group("training (the same for every application)")
    budget = group.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="total optimizer steps (counted across --resume)")
    default_budget = f"{defaults['steps']} steps" if defaults.get("steps") else f"{defaults.get('minutes')} minutes"
    if "steps" in float32:
        default_budget += f"; {float32['steps']} steps in float32"
    budget.add_argument(
        "--minutes", type=float,
        help=f"wall-time budget of this run; a cosine schedule then decays over the steps that fit it, sized from "
        f"the run's pace (default budget: {default_budget})",
    )  # fmt: skip
    group.add_argument("--out", default=None, help="run directory: checkpoints, metrics, plot, final model (default: runs/<app>)")
    group.add_argument("--seed", type=int, default=0, help="seeds weights, dropout and data order (default: 0)")
    group.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    group.add_argument("--cell", choices=cells, default=cells[0], help=f"recurrent cell (default: {cells[0]})")
    clip = group.add_mutually_exclusive_group()
    clip.add_argument(
        "--clip-norm", type=float, default=base.clip_norm, help="clip the global gradient norm (default: %(default)s)"
    )
    clip.add_argument("--clip-value", type=float, help="clip each gradient element instead")
    clip.add_argument("--no-clip", action="store_true", help="no clipping (the pre-clip norm is still logged)")
    chunk = f"{base.bptt_steps}; {float32['bptt_steps']} in float32" if "bptt_steps" in float32 else base.bptt_steps
    group.add_argument(  # None: the precision's default, chosen in train_config
        "--bptt-steps", type=int, default=None, help=f"truncated-BPTT chunk length (default: {chunk})"
    )
    group.add_argument("--lr", type=float, default=base.lr, help="learning rate (default: %(default)s)")
    group.add_argument("--batch-size", type=int, default=base.batch_size, help="global batch size (default: %(default)s)")
    group.add_argument(
        "--checkpoint-every",
        type=int,
        default=base.checkpoint_every,
        help="optimizer steps between checkpoints (default: %(default)s)",
    )
    group.add_argument(
        "--eval-every", type=int, default=base.eval_every, help="optimizer steps between evaluations (default: %(default)s)"
    )
    group.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default=base.optimizer)
    group.add_argument("--weight-decay", type=float, default=base.weight_decay)
    group.add_argument(
        "--schedule",
        choices=("constant", "cosine", "step"),
        help=f"after warm-up (default: {defaults.get('schedule', 'constant')})",
    )
    group.add_argument("--warmup-steps", type=int, default=base.warmup_steps)
    group.add_argument(
        "--early-stop-patience",
        type=int,
        default=base.early_stop_patience,
        help="evaluations without improvement before stopping",
    )
    group.add_argument("--keep-checkpoints", type=int, default=base.keep_checkpoints)
    best = group.add_mutually_exclusive_group()
    best.add_argument(
        "--restore-best", action="store_true", default=base.restore_best,
        help=f"save the weights of the best evaluation, not the last (default: {'on' if base.restore_best else 'off'})",
    )  # fmt: skip
    best.add_argument("--no-restore-best", dest="restore_best", action="store_false", help="save the last weights")
    ema = "off" if base.ema_decay is None else base.ema_decay
    group.add_argument(
        "--ema-decay", type=float, default=base.ema_decay,
        help=f"evaluate and save a moving average of the weights with this decay, e.g. 0.999 (default: {ema})",
    )  # fmt: skip
    bf16_default = defaults.get("bf16", False)
    shown = "on where the CPU has bf16 instructions" if bf16_default == "auto" else ("on" if bf16_default else "off")
    group.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=bf16_default,
        help=f"bf16 mixed precision (autocast): GEMMs in bf16; weights, state, optimizer float32 (default: {shown})",
    )  # fmt: skip
    group.add_argument(
        "--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
        help="malloc keeps freed memory for the next step's tensors instead of returning it to the OS: "
        "no page faults on the step's large tensors (glibc; default: on)",
    )  # fmt: skip
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


def precision_defaults(defaults: dict[str, Any], bf16: bool) -> dict[str, Any]:
    """An app's defaults for a run in bf16 mode (``bf16``) or in float32: the float32 run takes
    ``defaults["float32"]``'s values where it has them. The char-LM's full training uses this to
    fit its hour on a CPU without bf16 instructions (shorter chunks and fewer characters)."""
    return {**defaults, **({} if bf16 else defaults.get(FLOAT32, {}))}


def train_config(args: argparse.Namespace, defaults: dict[str, Any]) -> TrainConfig:
    bf16 = resolve_bf16(args.bf16)
    defaults = precision_defaults(defaults, bf16)
    bptt_steps = defaults.get("bptt_steps") if args.bptt_steps is None else args.bptt_steps
    steps, minutes = args.steps, args.minutes
    schedule = args.schedule or defaults.get("schedule", "constant")
    clip_norm = None if (args.no_clip or args.clip_value) else args.clip_norm
    if steps is None and minutes is None:
        steps, minutes = defaults.get("steps"), defaults.get("minutes")
    return TrainConfig(
        steps=steps, minutes=minutes, out=args.out, seed=args.seed, resume=args.resume, batch_size=args.batch_size,
        bptt_steps=bptt_steps, lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay,
        schedule=schedule, warmup_steps=args.warmup_steps, clip_norm=clip_norm,
        clip_value=args.clip_value, eval_every=args.eval_every, early_stop_patience=args.early_stop_patience,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints, progress=not args.no_progress,
        restore_best=args.restore_best, ema_decay=args.ema_decay or None, bf16=bf16,
        keep_freed_memory=args.keep_freed_memory,
    )  # fmt: skip


def resolve_bf16(choice: bool | str) -> bool:
    """``--bf16`` as given, or for an app whose default is ``"auto"``: on when training runs on
    a CPU that has bf16 instructions (AVX512-BF16 or AMX), where it is faster than float32."""
    if choice == "auto":
        return not torch.cuda.is_available() and cpu_has_bf16()
    return bool(choice)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnkit", description="Recurrent neural networks: train, generate, evaluate.")
    parser.add_argument("--version", action="version", version=f"rnnkit {rnnkit.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser("train", help="train an application's model")
    apps = train.add_subparsers(dest="app", metavar="APP", required=True)
    parser.app_parsers = {}  # name -> its `rnnkit train <name>` parser (resume sets defaults on it)
    for name in APPS:
        app = get_app(name)
        app_parser = apps.add_parser(name, help=(app.__doc__ or "").strip().splitlines()[0])
        add_train_options(app_parser, app.TRAIN_DEFAULTS, app.CELL_CHOICES)
        app.add_arguments(app_parser)
        parser.app_parsers[name] = app_parser

    generate = commands.add_parser("generate", help="generate text with a trained char-LM")
    generate.add_argument("--model", required=True, help="model directory (the --out of training)")
    generate.add_argument("--prime", default="", help="text to start from (default: none)")
    generate.add_argument("--length", type=int, default=500)
    generate.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (argmax)")
    generate.add_argument("--top-k", type=int)
    generate.add_argument("--top-p", type=float)
    generate.add_argument("--seed", type=int)
    generate.add_argument("--allow-unknown", action="store_true", help="map characters the model never saw to the unknown symbol")

    translate = commands.add_parser("translate", help="translate with a trained encoder-decoder")
    translate.add_argument("texts", nargs="*", help="source texts (or --file)")
    translate.add_argument("--model", required=True, help="model directory")
    translate.add_argument("--file", help="a UTF-8 file with one source text per line")
    translate.add_argument("--beam", type=int, default=1, help="beam size; 1 is greedy (default: %(default)s)")
    translate.add_argument("--length-penalty", type=float, default=0.6, help="GNMT length penalty alpha (default: %(default)s)")
    translate.add_argument("--max-length", type=int, help="longest output in pieces (default: 2 x source + 10)")
    translate.add_argument("--heatmap", help="write the attention heatmap of the first text to this PNG")

    predict = commands.add_parser("predict", help="classify texts with a trained sentiment model")
    predict.add_argument("texts", nargs="*", help="texts to classify (or --file)")
    predict.add_argument("--model", required=True, action="append", metavar="DIR", help=ENSEMBLE_HELP)
    predict.add_argument("--file", help="a UTF-8 file with one text per line")
    predict.add_argument("--explain", action="store_true", help="also the words with the highest attention weights")

    evaluate = commands.add_parser("evaluate", help="evaluate a trained model on its validation data")
    evaluate.add_argument("--model", required=True, action="append", metavar="DIR", help=ENSEMBLE_HELP)
    evaluate.add_argument("--data", help="other data to evaluate on (same format as training)")
    evaluate.add_argument(
        "--beam", type=int, default=5, help="translation: beam size compared with greedy (default: %(default)s)"
    )
    evaluate.add_argument("--limit", type=int, help="translation: score only the first N pairs of each test set")
    evaluate.add_argument("--stride", type=int, help="forecasting: steps between backtest origins (default: horizon / 4)")
    evaluate.add_argument("--no-arima", action="store_true", help="forecasting: skip the auto_arima baseline (the slow one)")

    forecast = commands.add_parser("forecast", help="forecast the steps after the end of a series with a trained forecaster")
    forecast.add_argument("--model", required=True, help="model directory")
    forecast.add_argument(
        "--data", help="CSV with the training columns (default: the training data); trailing rows with empty targets "
        "give the future covariates",
    )  # fmt: skip
    forecast.add_argument("--output", help="CSV of the forecast quantiles (default: <model>/forecast.csv)")
    forecast.add_argument("--plot", help="PNG of history, forecast and interval (default: <model>/forecast.png)")

    diagnose = commands.add_parser(
        "diagnose", help="plot gradient flow: dL/dh_t against time lag, per cell (vanishing/exploding)"
    )
    diagnose.add_argument("--cell", default="rnn,lstm,gru", help="comma-separated cells (default: %(default)s)")
    diagnose.add_argument("--length", type=int, default=200)
    diagnose.add_argument(
        "--train-steps", type=int, default=300, help="training steps on the adding problem before the second profile"
    )
    diagnose.add_argument("--init", choices=("rnnkit", "torch"), default="rnnkit")
    diagnose.add_argument("--model", help="a trained char-LM directory: profile its own layers on held-out text instead")
    diagnose.add_argument("--seed", type=int, default=0)
    diagnose.add_argument("--out", default="runs/diagnose")

    bench = commands.add_parser("bench", help="benchmarks")
    bench_kinds = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    memory = bench_kinds.add_parser("memory", help="long-memory tasks: which cells solve them, and when")
    memory.add_argument("--task", choices=("adding", "copy"), default="adding")
    memory.add_argument("--length", type=int, default=200)
    memory.add_argument("--cell", default="rnn,lstm,gru", help="comma-separated cells (default: %(default)s)")
    memory.add_argument("--init", default="rnnkit", help="comma-separated inits: rnnkit, torch, identity (IRNN, rnn-relu only)")
    memory.add_argument("--steps", type=int, default=3000)
    memory.add_argument("--eval-every", type=int, default=50)
    memory.add_argument("--seed", type=int, default=0)
    memory.add_argument("--out", default="runs/bench-memory")

    demo = commands.add_parser("demo", help="the main job: train a Shakespeare char-LM for a few minutes, then generate")
    demo.add_argument("--steps", type=int, help="training steps (default: 3000, 3 to 4 minutes on 2 cores)")
    demo.add_argument("--out", help="run directory (default: runs/demo-<time>)")
    demo.add_argument("--seed", type=int, default=0)
    return parser


def run_train(app_name: str, argv: list[str], parser: argparse.ArgumentParser, args: argparse.Namespace):
    """Train an app as the (already parsed) arguments say; returns (trainer result, app, args)."""
    app = get_app(app_name)
    args.out = args.out or f"runs/{app_name}"
    saved = Path(args.out) / ARGS_FILE
    if args.resume and saved.is_file():  # the first run's options, unless given again now
        previous = json.loads(saved.read_text())
        # a budget given now replaces the first run's; with none, the run keeps its own
        given_now = ("resume",) if args.steps is None and args.minutes is None else ("steps", "minutes", "resume")
        parser.app_parsers[app_name].set_defaults(**{k: v for k, v in previous.items() if k not in given_now})
        args = parser.parse_args(argv)
        args.out = args.out or f"runs/{app_name}"
    config = train_config(args, app.TRAIN_DEFAULTS)
    args.bf16, args.bptt_steps = config.bf16, config.bptt_steps  # saved as resolved: --resume trains the same run
    context = from_environment()
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    task, batches = app.build(args, config, context)
    if context.is_main:
        Path(config.out).mkdir(parents=True, exist_ok=True)
        if not args.resume or not saved.is_file():
            atomic_write_text(saved, json.dumps({k: v for k, v in vars(args).items() if k not in ("command", "app")}, indent=1))
    result = Trainer(task, batches, config, context).fit()
    return result, app, args


def print_result(result: Any) -> None:
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.last_eval.items() if isinstance(v, float))
    print(f"stopped ({result.stopped}) at step {result.step}; {metrics}")
    print(f"model saved in {result.out}")


def run_generate(args: argparse.Namespace) -> None:
    loaded = rnnkit.load(args.model)
    if not hasattr(loaded, "stream"):
        raise ValueError(f"{args.model} is not a text-generation model")
    options = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}
    stream = loaded.stream(args.prime, args.length, allow_unknown=args.allow_unknown, **options)
    first = next(stream, "")  # validate everything before printing anything
    sys.stdout.write(args.prime + first)
    for char in stream:
        sys.stdout.write(char)
        sys.stdout.flush()
    sys.stdout.write("\n")


def run_translate(args: argparse.Namespace) -> None:
    from rnnkit.apps.translate import Translator, save_heatmap

    translator = rnnkit.load(args.model)
    if not isinstance(translator, Translator):
        raise ValueError(f"{args.model} is not a translation model")
    texts = read_texts(args.texts, args.file)
    options = {"beam": args.beam, "length_penalty": args.length_penalty, "max_length": args.max_length}
    for output in translator.translate(texts, **options):
        print(output)
    if args.heatmap:
        save_heatmap(translator, texts[0], Path(args.heatmap), args.beam)
        print(f"attention heatmap: {args.heatmap}", file=sys.stderr)


def read_texts(texts: list[str], file: str | None) -> list[str]:
    """Texts from the command line and, one a line, from ``file``."""
    texts = list(texts)
    if file:
        try:
            texts += [line for line in Path(file).read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise ValueError(f"--file: {file} is not UTF-8 text") from None
    if not texts:
        raise ValueError("give texts, or --file")
    return texts


def load_classifier(directories: list[str]) -> Any:
    """The sentiment model in ``directories[0]``, or the ensemble of those in all of them."""
    from rnnkit.apps.sentiment.model import Classifier, Ensemble

    models = [rnnkit.load(directory) for directory in directories]
    for directory, model in zip(directories, models):
        if not isinstance(model, Classifier):
            raise ValueError(f"--model: {directory} is not a classification model")
    return models[0] if len(models) == 1 else Ensemble(models)


def run_predict(args: argparse.Namespace) -> None:
    classifier = load_classifier(args.model)
    texts = read_texts(args.texts, args.file)
    explained = [classifier.explain(text) for text in texts] if args.explain else [None] * len(texts)  # errors first
    for text, (label, probability), words in zip(texts, classifier.predict(texts), explained):
        print(f"{label}\t{probability:.3f}\t{text}")
        if words is not None:
            print("\t" + ", ".join(f"{word} {weight:.2f}" for word, weight in words))


def run_forecast(args: argparse.Namespace) -> None:
    from rnnkit.apps.forecast import ForecastModel, rebuild_series
    from rnnkit.apps.forecast.plot import plot_forecast
    from rnnkit.data.series import read_csv_frame

    forecaster = rnnkit.load(args.model)
    if not isinstance(forecaster, ForecastModel):
        raise ValueError(f"{args.model} is not a forecasting model")
    if args.data:
        series, future_rows = forecaster.observed(read_csv_frame(args.data))
    else:
        series, future_rows = rebuild_series(forecaster), None
    table = forecaster.predict(series, future_rows)
    output = Path(args.output or Path(args.model) / "forecast.csv")
    plot = Path(args.plot or Path(args.model) / "forecast.png")
    atomic_write_text(output, table.to_csv(index=False))
    plot_forecast(series, forecaster, table, plot)
    print(table.to_string(index=False))
    print(f"forecast: {output}; plot: {plot}", file=sys.stderr)


def run_evaluate(args: argparse.Namespace) -> None:
    from rnnkit.io import read_model_dir

    directories, args.model = args.model, args.model[0]
    config, _ = read_model_dir(Path(args.model))
    loaded = load_classifier(directories) if len(directories) > 1 else rnnkit.load(args.model)
    metrics = get_app(config["app"]).evaluate_model(loaded, config, args)
    if "report" in metrics:  # a table the application formatted itself
        print(metrics.pop("report"))
    for key, value in metrics.items():
        print(f"{key:>15}: {value:.4f}" if isinstance(value, float) else f"{key:>15}: {value}")


def run_demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Train the demo char-LM, score it on the whole held-out validation split, generate."""
    from rnnkit.apps import charlm

    out = args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    steps = args.steps or charlm.DEMO_STEPS
    argv = ["train", "charlm", "--steps", str(steps), "--out", out, "--seed", str(args.seed), *charlm.DEMO_FLAGS]
    print(f"rnnkit demo: a 2-layer LSTM (hidden 256) learns Shakespeare's plays, {steps} steps; 4 whole plays held out")
    started = time.monotonic()
    result, _, train_args = run_train("charlm", argv, parser, parser.parse_args(argv))
    minutes = (time.monotonic() - started) / 60
    model = rnnkit.load(out)
    _, valid_text = charlm.load_text(None)
    metrics = model.evaluate(valid_text)
    print(f"trained {result.step} steps in {minutes:.1f} min; held-out plays ({metrics['chars']:,} characters): "
          f"{metrics['val_loss']:.3f} nats/char, {metrics['bits_per_char']:.3f} bits/char")  # fmt: skip
    print(f"\nGenerated from the prime 'ROMEO:' (temperature 0.8, seed {args.seed}):\n")
    print("ROMEO:" + model.generate("ROMEO:", 600, temperature=0.8, seed=args.seed))
    print(f"\nModel saved in {out}. Next: rnnkit generate --model {out} --prime 'JULIET:' --length 500")


def run_diagnose(args: argparse.Namespace) -> None:
    from rnnkit.apps.memory.bench import diagnose, parse_cells

    if args.model:
        return diagnose_model(args)
    diagnose(parse_cells(args.cell), args.length, args.train_steps, args.seed, Path(args.out), args.init)


def diagnose_model(args: argparse.Namespace) -> None:
    """dL/dh_t per layer of a trained char-LM on held-out text: its own loss, and the last step's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch.nn import functional as F

    from rnnkit.apps import charlm
    from rnnkit.diagnostics import state_gradient_norms
    from rnnkit.io import read_model_dir

    config, _ = read_model_dir(Path(args.model))
    if config["app"] != "charlm":
        raise ValueError("diagnose --model takes a char-LM model directory")
    loaded = rnnkit.load(args.model)
    _, valid = charlm.load_text(config["model"].get("data"))
    tokens = loaded.vocab.encode(valid[: 8 * (args.length + 1)]).view(8, args.length + 1)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def loss(last_only: bool):
        logits, _ = loaded.model(inputs)
        if last_only:
            return F.cross_entropy(logits[:, -1], targets[:, -1])
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        k: [n.flip(0).tolist() for n in state_gradient_norms(lambda k=k: loss(k == "last_step"))]
        for k in ("own_loss", "last_step")
    }
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, (kind, per_layer) in zip(axes, results.items()):
        for layer, values in enumerate(per_layer):
            axis.plot([max(v, 1e-30) for v in values], label=f"layer {layer}")
        axis.set_yscale("log")
        axis.set_xlabel("time lag T-1-t")
        axis.set_ylabel("||dL/dh_t||")
        axis.set_title("the model's own loss (all steps)" if kind == "own_loss" else "loss at the last step")
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out / "gradients.png", dpi=110)
    (out / "gradients.json").write_text(json.dumps({"model": str(args.model), "length": args.length, **results}, indent=1))
    print(f"wrote {out / 'gradients.png'} and {out / 'gradients.json'}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            result, _, _ = run_train(args.app, argv, parser, args)
            print_result(result)
        elif args.command == "generate":
            run_generate(args)
        elif args.command == "translate":
            run_translate(args)
        elif args.command == "predict":
            run_predict(args)
        elif args.command == "forecast":
            run_forecast(args)
        elif args.command == "evaluate":
            run_evaluate(args)
        elif args.command == "diagnose":
            run_diagnose(args)
        elif args.command == "bench":
            from rnnkit.apps.memory.bench import bench_memory, parse_cells

            inits = [i.strip() for i in args.init.split(",")]
            if bad := [i for i in inits if i not in ("rnnkit", "torch", "identity")]:
                raise ValueError(f"--init takes rnnkit, torch or identity, got {', '.join(bad)}")
            bench_memory(
                args.task, args.length, parse_cells(args.cell), inits, args.steps, args.eval_every, args.seed, Path(args.out)
            )
        elif args.command == "demo":
            run_demo(args, parser)
        else:
            parser.print_help()
    except USER_ERRORS as error:
        if os.environ.get("RNNKIT_DEBUG"):
            raise
        print(f"rnnkit: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
