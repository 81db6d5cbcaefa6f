"""Time-series forecasting: quantile forecasts of the next steps, with a rolling-origin backtest.

Data (:mod:`rnnkit.data.series`): any CSV (``--data FILE --time-col C --target Y ...``) or a
bundled dataset (``--dataset taylor|seattle-weather|msft|...``). Split in time order: training
rows, then validation rows (model selection), then the last ``--test-fraction`` as test.
Model: :class:`~rnnkit.apps.forecast.model.Forecaster`. Training: truncated BPTT over streams
cut at random offsets of the training rows (:class:`rnnkit.train.OffsetStreams`); each stream's
state is first warmed up on the ``--lookback`` rows before it, then every step is a forecast
origin with a pinball loss.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit.apps.forecast import evaluation as ev
from rnnkit.apps.forecast.features import FeatureLayout, Features, Scaler, build_features
from rnnkit.apps.forecast.model import DECODERS, Forecaster, ForecasterConfig, conformal_widths, pinball_loss
from rnnkit.apps.forecast.predictor import ForecastModel
from rnnkit.data.series import DATASETS, FILLS, TRANSFORMS, SeriesSpec, TimeSeries, bundled, calendar_names, from_frame, read_csv
from rnnkit.train import OffsetStreams, Task, TrainConfig
from rnnkit.train.distributed import DistContext

NAME = "forecast"
CELL_CHOICES = ("gru", "lstm", "rnn")
#: Small data overfits fast: a low rate, weight decay, dropout, a 5-network ensemble, frequent
#: evaluation and the best evaluation's weights.
TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 600, "batch_size": 16, "bptt_steps": 50, "lr": 5e-4, "optimizer": "adamw", "weight_decay": 0.05,
    "clip_norm": 1.0, "schedule": "cosine", "warmup_steps": 50, "eval_every": 25, "checkpoint_every": 200,
    "restore_best": True,
}  # fmt: skip
STREAM_CHUNKS = 4  # chunks of --bptt-steps each stream runs for after its warm-up


class ForecastTask(Task):
    name = NAME
    metric = "val_pinball"

    def __init__(self, forecaster: ForecastModel, train: Features, valid: Features, valid_origins: np.ndarray,
                 lookback: int) -> None:  # fmt: skip
        self.forecaster, self.model = forecaster, forecaster.model
        self.train, self.valid, self.valid_origins, self.lookback = train, valid, torch.as_tensor(valid_origins), lookback

    def loss(self, model: nn.Module, data: Any, state: Any) -> tuple[Tensor, Any]:
        positions = data
        if state is None:  # a fresh stream: warm the state up on the look-back before it, no gradient
            with torch.no_grad():
                before = positions[:, :1] - torch.arange(self.lookback, 0, -1)
                _, state = self.model.encode(self.train.inputs[before], None)
        batch = self.train.take(positions)
        forecast, state = model(batch.inputs, batch.ahead, batch.lagged, batch.anchor, state)
        return pinball_loss(forecast, batch.target, batch.mask, self.model.config.quantiles), state

    def valid_forecast(self) -> Tensor:
        """The (uncalibrated) quantiles at every validation origin, from one encoder pass."""
        hidden, _ = self.model.encode(self.valid.inputs[None])
        return self.forecaster.raw(hidden[:, 0, self.valid_origins], self.valid, self.valid_origins)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        forecast = self.valid_forecast()
        target, mask = self.valid.target[self.valid_origins], self.valid.mask[self.valid_origins]
        median = forecast[..., self.model.config.quantiles.index(0.5)] if 0.5 in self.model.config.quantiles else None
        metrics = {"val_pinball": pinball_loss(forecast, target, mask, self.model.config.quantiles).item()}
        if median is not None:
            error = (median - target).abs() * mask[..., None]
            metrics["val_mae_scaled"] = error.sum().item() / (mask.sum().item() * target.shape[-1])
        return metrics

    def describe(self) -> dict[str, Any]:
        return self.forecaster.describe()

    @torch.no_grad()
    def final_description(self) -> dict[str, Any]:
        """With the conformal calibration of the intervals on the validation origins (used when a
        series is too short for the adaptive calibration on its own recent errors)."""
        index = self.valid_origins
        widths = conformal_widths(
            self.valid_forecast(), self.valid.target[index], self.valid.mask[index], self.model.config.quantiles
        )
        return {**self.describe(), "calibration": None if widths is None else widths.tolist()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("forecast: data")
    group.add_argument("--dataset", choices=DATASETS, help="a bundled dataset (default: taylor, unless --data)")
    group.add_argument("--data", help="a CSV file with a header row")
    group.add_argument("--time-col", help="the column of time stamps (omit for a series indexed by rows)")
    group.add_argument("--target", nargs="+", help="target column(s): several are forecast jointly")
    group.add_argument("--past-covariates", nargs="*", default=None, metavar="COL", help="columns known only up to now")
    group.add_argument("--future-covariates", nargs="*", default=None, metavar="COL", help="columns known ahead")
    group.add_argument(
        "--static-covariates", nargs="*", default=None, metavar="COL", help="constant columns (one value per series)"
    )
    group.add_argument("--freq", help="pandas frequency (D, h, 30min, B, MS...) or 'rows'; default: inferred")
    group.add_argument("--fill", choices=FILLS, help="missing steps and NaNs: an error (default) or linear interpolation")
    group.add_argument("--transform", choices=TRANSFORMS, help="model the log of positive targets (default: none)")
    group.add_argument(
        "--calendar", help="calendar features (future covariates): auto (the dataset's, else every period the sampling "
        "resolves), none, or periods among day,week,year (default: auto)",
    )  # fmt: skip
    group.add_argument("--test-fraction", type=float, default=0.2, help="last rows held out for the backtest (default: 0.2)")
    group.add_argument(
        "--valid-fraction", type=float, default=0.1, help="rows before the test part for validation (default: 0.1)"
    )
    model = parser.add_argument_group("forecast: model")
    model.add_argument("--horizon", type=int, help="steps forecast at once (default: the dataset's, else 24)")
    model.add_argument(
        "--lookback", type=int, help="history read before the first forecast (default: the largest lag, else 4 x horizon)"
    )
    model.add_argument("--season", type=int, help="seasonal period in steps: baselines and MASE (default: the dataset's, else 1)")
    model.add_argument(
        "--lags", type=int, nargs="*", help="seasonal lags (>= horizon) read for each step ahead (default: the dataset's)"
    )
    model.add_argument(
        "--quantiles", type=float, nargs="+", default=[0.1, 0.5, 0.9], help="quantile levels (default: 0.1 0.5 0.9)"
    )
    model.add_argument(
        "--calibration-window", type=int, default=100,
        help="forecast origins whose errors calibrate the intervals of the next forecast (default: %(default)s)",
    )  # fmt: skip
    model.add_argument("--decoder", choices=DECODERS, default="direct", help="an MLP for all steps, or a recurrent decoder")
    model.add_argument("--hidden", type=int, default=64, help="encoder hidden size (default: %(default)s)")
    model.add_argument("--layers", type=int, default=1, help="encoder layers (default: %(default)s)")
    model.add_argument("--head-hidden", type=int, default=128, help="hidden size of the direct head's MLP (default: %(default)s)")
    model.add_argument("--dropout", type=float, default=0.3, help="dropout on the encoder output (default: %(default)s)")
    model.add_argument(
        "--members", type=int, default=5, help="ensemble size: networks trained side by side, quantiles averaged (default: 5)"
    )


def resolve_data(args: argparse.Namespace) -> tuple[TimeSeries, dict[str, Any]]:
    """The series and the settings that go with it: a bundled dataset's, overridden by flags."""
    if args.data and args.dataset:
        raise ValueError("give --data or --dataset, not both")
    chosen: dict[str, Any] = {"dataset": None, "data": args.data, "horizon": None, "season": None, "lags": None, "calendar": None}
    overrides = {k: getattr(args, k.replace("-", "_"), None) for k in ("target", "time_col", "freq", "fill", "transform")}
    roles = {"past": args.past_covariates, "future": args.future_covariates, "static": args.static_covariates}
    if args.data:
        if not args.target:
            raise ValueError("--data needs --target (and --time-col for dated rows)")
        spec = SeriesSpec(args.target, args.time_col, **{k: v or [] for k, v in roles.items()}, freq=args.freq,
                          fill=args.fill or "error", transform=args.transform or "none")  # fmt: skip
        series = read_csv(args.data, spec)
    else:
        name = args.dataset or "taylor"
        preset = bundled(name)
        spec = preset.spec
        changes = {
            "targets": overrides["target"], "time_col": overrides["time_col"], "freq": overrides["freq"],
            "fill": overrides["fill"], "transform": overrides["transform"], **roles,
        }  # fmt: skip
        spec = SeriesSpec(**{**asdict(spec), **{k: v for k, v in changes.items() if v is not None}})
        series = from_frame(preset.frame, spec, name)
        chosen.update(dataset=name, horizon=preset.horizon, season=preset.season, lags=preset.lags, calendar=preset.calendar)
    horizon = args.horizon or chosen["horizon"] or 24
    chosen["horizon"] = horizon
    chosen["season"] = args.season or chosen["season"] or 1
    chosen["lags"] = args.lags if args.lags is not None else (chosen["lags"] or [])
    chosen["lookback"] = args.lookback or max([*chosen["lags"], 4 * horizon])
    if args.calendar not in (None, "auto", "none"):
        chosen["calendar"] = [p.strip() for p in args.calendar.split(",") if p.strip()]
    return series, chosen


def split_rows(rows: int, test_fraction: float, valid_fraction: float, needed: int) -> tuple[int, int]:
    """``(valid_start, test_start)`` in time order; each part must hold ``needed`` rows."""
    if not 0 < test_fraction < 1 or not 0 < valid_fraction < 1 or test_fraction + valid_fraction >= 0.9:
        raise ValueError("--test-fraction and --valid-fraction must be in (0, 1) and leave at least 10% for training")
    test_start = rows - round(rows * test_fraction)
    valid_start = test_start - round(rows * valid_fraction)
    if min(valid_start, test_start - valid_start, rows - test_start) < needed:
        raise ValueError(
            f"too few rows ({rows}) for the look-back and horizon: training, validation and test parts each need "
            f"{needed} rows (lookback + horizon)"
        )
    return valid_start, test_start


def build(args: argparse.Namespace, config: TrainConfig, context: DistContext) -> tuple[ForecastTask, OffsetStreams]:
    series, chosen = resolve_data(args)
    horizon, lookback = chosen["horizon"], chosen["lookback"]
    largest_lag = max(chosen["lags"], default=1)
    if lookback < largest_lag:
        raise ValueError(f"--lookback must be >= 1 and cover the largest seasonal lag ({largest_lag}), got {lookback}")
    if args.calibration_window < 1:
        raise ValueError(f"--calibration-window must be >= 1, got {args.calibration_window}")
    valid_start, test_start = split_rows(len(series), args.test_fraction, args.valid_fraction, lookback + horizon)
    span = 0.0 if series.times is None else (series.times[-1] - series.times[0]).total_seconds() / 86400
    calendar = calendar_names(series.freq, span, chosen["calendar"]) if args.calendar != "none" else []
    layout = FeatureLayout(horizon, sorted(chosen["lags"]), calendar)
    scaler = Scaler.fit(series, valid_start)
    train = build_features(series, scaler, layout, limit=valid_start)
    valid = build_features(series.head(test_start), scaler, layout)
    network = ForecasterConfig(
        series.target.shape[1], train.inputs.shape[1], train.ahead.shape[-1], train.lagged.shape[-1], horizon,
        args.quantiles, args.cell, args.hidden, args.layers, args.dropout, args.decoder, args.head_hidden, scaler.step_std,
        args.members,
    )  # fmt: skip
    valid_origins = np.arange(valid_start - 1, test_start - horizon)
    info = {**chosen, "rows": len(series), "valid_start": valid_start, "test_start": test_start, "seed": config.seed,
            "calibration_window": args.calibration_window,
            "test_fraction": args.test_fraction, "valid_fraction": args.valid_fraction}  # fmt: skip
    forecaster = ForecastModel(Forecaster(network), series.spec, scaler, layout, info)
    forecaster.model.train()
    room = valid_start - lookback
    if room < config.bptt_steps:
        raise ValueError(f"the {valid_start} training rows leave fewer than --bptt-steps after the look-back of {lookback}")
    length = min(room, STREAM_CHUNKS * config.bptt_steps)
    length -= length % config.bptt_steps
    batches = OffsetStreams(valid_start, length, config.bptt_steps, config.batch_size, config.seed, context.rank,
                            context.world_size, first=lookback)  # fmt: skip
    return ForecastTask(forecaster, train, valid, valid_origins, lookback), batches


def load(config: dict[str, Any], weights: dict[str, Tensor]) -> ForecastModel:
    described = config["model"]
    model = Forecaster(ForecasterConfig(**described["network"]))
    model.load_state_dict(weights)
    return ForecastModel(model, SeriesSpec(**described["spec"]), Scaler(**described["scaler"]),
                         FeatureLayout(**described["layout"]), described["info"], described.get("calibration"))  # fmt: skip


def rebuild_series(forecaster: ForecastModel, data_path: str | None = None) -> TimeSeries:
    """The series the model was trained on (or ``data_path``, a CSV with the same columns)."""
    info = forecaster.info
    path = data_path or info.get("data")
    if path:
        return read_csv(path, forecaster.spec)
    return from_frame(bundled(info["dataset"]).frame, forecaster.spec, info["dataset"])


def backtest(forecaster: ForecastModel, series: TimeSeries, stride: int | None = None, arima: bool = True) -> dict[str, Any]:
    """Rolling-origin backtest over the test part (the last ``test_fraction`` of ``series``):
    the model and the baselines forecast from the same origins; returns a table of metrics per
    method, plus the origins, actuals and the model's quantiles."""
    info, horizon = forecaster.info, forecaster.horizon
    rows = len(series)
    test_start = rows - round(rows * float(info["test_fraction"]))
    stride = stride or max(1, horizon // 4)
    starts = ev.origins(rows, test_start, horizon, stride)
    target = series.target
    actual = ev.actuals(target, starts, horizon)
    season = int(info["season"])
    scale = ev.mase_scale(target[:test_start], season)
    quantiles = forecaster.quantiles_at(series, starts)
    levels = forecaster.quantiles
    table: dict[str, dict[str, float]] = {}
    median = quantiles[..., levels.index(0.5)] if 0.5 in levels else quantiles.mean(axis=-1)
    table["rnnkit"] = ev.point_metrics(median, actual, scale)
    table["rnnkit"]["pinball"] = ev.pinball(quantiles, actual, levels)
    if len(levels) >= 2:
        table["rnnkit"][f"coverage {round((levels[-1] - levels[0]) * 100)}%"] = ev.coverage(
            quantiles[..., 0], quantiles[..., -1], actual
        )
    table["naive"] = ev.point_metrics(ev.naive(target, starts, horizon), actual, scale)
    if season > 1:
        for m in sorted({season, *forecaster.layout.lags}):
            table[f"seasonal naive m={m}"] = ev.point_metrics(ev.seasonal_naive(target, starts, horizon, m), actual, scale)
    if arima:
        periods = sorted({m for m in (season, *forecaster.layout.lags) if m > 1})
        found = ev.auto_arima(target, test_start, starts, horizon, periods)
        if found is not None:
            table["auto_arima"] = ev.point_metrics(found[0], actual, scale)
            table["auto_arima"]["coverage 80%"] = ev.coverage(found[1], found[2], actual)
    return {"table": table, "origins": starts, "actual": actual, "quantiles": quantiles, "test_start": test_start}


def evaluate_model(forecaster: ForecastModel, config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The backtest table (model and baselines) as ``report``; with ``args.model``, also writes
    ``backtest.json`` and ``backtest.png`` beside the model."""
    import json
    from pathlib import Path

    from rnnkit.apps.forecast.plot import plot_backtest, table_text
    from rnnkit.train.checkpoint import atomic_write_text

    series = rebuild_series(forecaster, getattr(args, "data", None))
    result = backtest(forecaster, series, getattr(args, "stride", None), not getattr(args, "no_arima", False))
    out: dict[str, Any] = {"report": table_text(result["table"], forecaster, len(result["origins"]))}
    if model_dir := getattr(args, "model", None):
        table = {"origins": len(result["origins"]), "horizon": forecaster.horizon, "methods": result["table"]}
        atomic_write_text(Path(model_dir) / "backtest.json", json.dumps(table, indent=1))
        plot_backtest(series, forecaster, result, Path(model_dir) / "backtest.png")
        out["written"] = f"{Path(model_dir) / 'backtest.json'}, {Path(model_dir) / 'backtest.png'}"
    return out


__all__ = ["ForecastModel", "backtest", "build", "evaluate_model", "load", "rebuild_series"]
