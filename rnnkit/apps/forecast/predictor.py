"""A trained forecaster with everything it needs to forecast new data, and its streaming form.

:class:`Forecaster` (what ``rnnkit.load`` returns) keeps the network, the series description,
the scaler fitted on the training rows and the feature layout. It forecasts the steps after
the end of a series (:meth:`~ForecastModel.predict`), every origin of a backtest in one encoder
pass (:meth:`~ForecastModel.quantiles_at`), or opens a :class:`StreamingForecaster`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rnnkit.apps.forecast.features import FeatureLayout, Features, Scaler, build_features
from rnnkit.apps.forecast.model import Forecaster, calibrate, conformal_widths
from rnnkit.data.series import SeriesSpec, TimeSeries, from_frame


class ForecastModel:
    """``model``: the network; ``spec``: the columns it was trained on; ``scaler`` and ``layout``:
    its features; ``info``: the data and split it was trained on (JSON)."""

    def __init__(self, model: Forecaster, spec: SeriesSpec, scaler: Scaler, layout: FeatureLayout, info: dict[str, Any],
                 calibration: list | None = None) -> None:  # fmt: skip
        self.model, self.spec, self.scaler, self.layout, self.info = model.eval(), spec, scaler, layout, info
        self.calibration = None if calibration is None else torch.tensor(calibration, dtype=torch.float32)

    def raw(self, hidden: Tensor, features: Features, index: Any) -> Tensor:
        """Uncalibrated quantiles ``(..., H, n, Q)`` in scaled units at origins ``index``, from the
        members' top outputs there, ``hidden (K, ..., hidden)``."""
        return self.model.combine(
            self.model.head_forward(hidden, features.ahead[index], features.lagged[index], features.anchor[index])
        )

    def calibrated(self, raw: Tensor, features: Features, t: int) -> Tensor:
        """The forecast of origin ``t`` (``raw[t]``) with intervals calibrated on
        the model's own errors at the ``calibration_window`` origins before ``t``, using only the
        outcomes known at ``t`` (rows ``<= t``): adaptive split conformal, which follows changes
        of volatility. Too few known outcomes: the calibration fitted on the validation rows."""
        forecast = raw[t]
        first = max(0, t - int(self.info.get("calibration_window", 0)))
        known = (torch.arange(first, t)[:, None] + torch.arange(1, self.horizon + 1)[None, :]) <= t
        widths = conformal_widths(raw[first:t], features.target[first:t], known & features.mask[first:t], self.quantiles)
        widths = self.calibration if widths is None else widths
        return forecast if widths is None else calibrate(forecast, widths, self.quantiles)

    def unscale(self, quantiles: Tensor) -> np.ndarray:
        std, mean = np.asarray(self.scaler.target_std), np.asarray(self.scaler.target_mean)
        return quantiles.double().numpy() * std[:, None] + mean[:, None]

    @property
    def horizon(self) -> int:
        return self.layout.horizon

    @property
    def quantiles(self) -> list[float]:
        return self.model.config.quantiles

    def describe(self) -> dict[str, Any]:
        described = {"network": self.model.describe(), "spec": asdict(self.spec), "scaler": self.scaler.to_json(),
                     "layout": asdict(self.layout), "info": self.info}  # fmt: skip
        if self.calibration is not None:
            described["calibration"] = self.calibration.tolist()
        return described

    def check(self, series: TimeSeries) -> None:
        if series.target.shape[1] != self.model.config.targets:
            raise ValueError(f"the model forecasts {self.model.config.targets} targets, the data has {series.target.shape[1]}")
        lookback = int(self.info["lookback"])
        if len(series) < lookback:
            raise ValueError(f"--data: {len(series)} rows, fewer than the model's look-back of {lookback}")

    @torch.no_grad()
    def quantiles_at(self, series: TimeSeries, starts: np.ndarray, future_rows: np.ndarray | None = None) -> np.ndarray:
        """``(O, H, n, Q)`` quantile forecasts, in the data's units (transformed targets), made at
        each origin in ``starts`` from the rows up to it (one encoder pass over the series)."""
        self.check(series)
        features = build_features(series, self.scaler, self.layout, future_rows=future_rows)
        hidden, _ = self.model.encode(features.inputs[None])
        window = int(self.info.get("calibration_window", 0))
        needed = torch.as_tensor(np.unique(np.concatenate([np.arange(max(0, t - window), t + 1) for t in starts])))
        raw = torch.zeros(len(series), *features.target.shape[1:], len(self.quantiles))  # the head runs where needed only
        raw[needed] = self.raw(hidden[:, 0, needed], features, needed)
        return self.unscale(torch.stack([self.calibrated(raw, features, int(t)) for t in starts]))

    def predict(self, data: Any, future_rows: np.ndarray | None = None) -> Any:
        """Forecast the ``horizon`` steps after the end of ``data`` (a TimeSeries, or a DataFrame
        with the training columns). Returns a DataFrame: ``step``, ``time`` (if dated), and per
        target its quantiles ``<target>_q10`` ... in the data's units."""
        import pandas as pd

        series, future_rows = self.observed(data) if not isinstance(data, TimeSeries) else (data, future_rows)
        if self.spec.future and future_rows is None:
            raise ValueError(
                f"forecasting needs the future covariates {', '.join(self.spec.future)} of the next {self.horizon} rows"
            )
        values = self.quantiles_at(series, np.array([len(series) - 1]), future_rows)[0]
        table = {"step": np.arange(1, self.horizon + 1)}
        if (times := series.future_times(self.horizon)) is not None:
            table["time"] = times
        for j, name in enumerate(self.spec.targets):
            for q, level in enumerate(self.quantiles):
                table[f"{name}_q{round(level * 100):02d}"] = series.inverse(values[:, j, q])
        return pd.DataFrame(table)

    def observed(self, frame: Any) -> tuple[TimeSeries, np.ndarray | None]:
        """Split a table into its observed rows and, if it ends with rows whose targets are all
        empty, the future covariates given there (exactly ``horizon`` rows are used)."""
        import pandas as pd

        if missing := [c for c in self.spec.targets + self.spec.future if c not in frame.columns]:
            raise ValueError(f"--data: no column {', '.join(map(repr, missing))} (the model was trained on them)")
        empty = frame[self.spec.targets].isna().all(axis=1).to_numpy()
        last = len(empty) - int(np.argmin(empty[::-1])) if not empty.all() else 0
        series = from_frame(frame.iloc[:last], self.spec, "--data")
        if not self.spec.future:
            return series, None
        ahead = frame.iloc[last : last + self.horizon][self.spec.future]
        if len(ahead) < self.horizon:
            raise ValueError(
                f"--data: the future covariates {', '.join(self.spec.future)} must be given for the {self.horizon} rows "
                f"after the last observation (rows with empty targets); found {len(ahead)}"
            )
        values = ahead.apply(lambda column: pd.to_numeric(column, errors="coerce")).to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            rows = (last + np.flatnonzero(~np.isfinite(values).all(axis=1))).tolist()
            raise ValueError(f"--data: a future covariate is NaN at forecast time (rows {', '.join(map(str, rows))})")
        return series, values

    def stream(self, history: Any) -> StreamingForecaster:
        """A :class:`StreamingForecaster` that has read ``history`` (a TimeSeries or a DataFrame
        with the training columns)."""
        return StreamingForecaster(self, history if isinstance(history, TimeSeries) else self.observed(history)[0])


class StreamingForecaster:
    """Forecasts that follow a live series: :meth:`update` reads one new observation with one
    encoder step (the carried state replaces re-reading the history), :meth:`forecast` gives the
    next ``horizon`` steps. It equals :meth:`ForecastModel.predict` on the whole series so far.

    It keeps only what the next forecasts need: the last rows (seasonal lags, the calibration
    window) and the encoder's outputs at them, from which the adaptive interval calibration
    re-scores the recent forecasts (with the future covariates known by now, as a batch pass does).
    """

    def __init__(self, forecaster: ForecastModel, history: TimeSeries) -> None:
        forecaster.check(history)
        self.f = forecaster
        self.keep = int(forecaster.info.get("calibration_window", 0)) + forecaster.horizon + max([*forecaster.layout.lags, 1]) + 1
        features = build_features(history, forecaster.scaler, forecaster.layout)
        with torch.no_grad():
            hidden, self.state = forecaster.model.encode(features.inputs[None])
        self.recent, self.hiddens = _tail(history, self.keep), hidden[:, 0, -self.keep :]  # (K, rows, hidden)

    @torch.no_grad()
    def update(self, target: Any, past: Any = (), future: Any = ()) -> None:
        """Read the next row: its targets, past covariates and future covariates (each a
        sequence in the order of the model's columns)."""
        spec, scaler = self.f.spec, self.f.scaler
        row = [np.asarray(v, dtype=np.float64).reshape(1, -1) for v in (target, past, future)]
        for values, names, role in zip(row, (spec.targets, spec.past, spec.future), ("target", "past", "future")):
            if values.shape[1] != len(names) or not np.isfinite(values).all():
                raise ValueError(f"update: {role} must be {len(names)} finite numbers, got {values.ravel().tolist()}")
        if spec.transform == "log":
            if not (row[0] > 0).all():
                raise ValueError("update: targets must be positive (the model forecasts their log)")
            row[0] = np.log(row[0])
        recent = self.recent
        following = recent.future_times(1)
        times = None if following is None else recent.times.append(following)
        self.recent = _tail(TimeSeries(recent.spec, times, recent.freq, np.concatenate([recent.target, row[0]]),
                                       np.concatenate([recent.past, row[1]]), np.concatenate([recent.future, row[2]]),
                                       recent.static, recent.name), self.keep)  # fmt: skip
        inputs = build_features(_tail(self.recent, 2), scaler, self.f.layout).inputs[-1:]  # the new row's (and its change)
        hidden, self.state = self.f.model.encode(inputs[None], self.state)
        self.hiddens = torch.cat([self.hiddens, hidden[:, 0]], dim=1)[:, -self.keep :]

    @torch.no_grad()
    def forecast(self, future_rows: np.ndarray | None = None) -> np.ndarray:
        """``(H, n, Q)`` quantiles of the next ``horizon`` steps, in the data's units."""
        f = self.f
        features = build_features(self.recent, f.scaler, f.layout, future_rows=future_rows)
        raw = f.raw(self.hiddens, features, slice(None))
        return self.recent.inverse(f.unscale(f.calibrated(raw, features, len(self.recent) - 1)))


def _tail(series: TimeSeries, rows: int) -> TimeSeries:
    start = max(0, len(series) - rows)
    times = None if series.times is None else series.times[start:]
    return TimeSeries(series.spec, times, series.freq, series.target[start:], series.past[start:], series.future[start:],
                      series.static, series.name)  # fmt: skip
