"""From a :class:`~rnnkit.data.series.TimeSeries` to the tensors the forecaster reads.

Every row ``t`` is a *forecast origin*: the last observed step of a forecast of the next
``horizon`` steps. What a forecast made at ``t`` may read, and nothing else:

- encoder input ``x_t = [z_t, z_t - z_{t-1}, past_t, future_t, calendar_t, static]``, where
  ``z = (y - mean) / std`` are the scaled targets; the recurrent state carries ``x_{<=t}``;
- for each step ``k = 1 ... horizon``: the future covariates and calendar features of row
  ``t + k`` (known ahead by definition), and for each seasonal lag ``m >= horizon`` the value
  ``z_{t+k-m} - z_t`` (observed, since ``t + k - m <= t``);
- the forecast is ``z_t + d * delta_k``: the network predicts changes from the last value, in
  units of ``d``, the standard deviation of one-step changes of ``z`` (so a random walk's
  changes are of order 1 however small its steps); "no change", the naive forecast, is its zero.
  Changes and lag differences are read in the same units.

The scaler is fitted on the training rows only. Targets of row ``t`` are ``z_{t+k}``, with a
mask for ``t + k`` past the end of the part being used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from rnnkit.data.series import TimeSeries, calendar_features


@dataclass
class Scaler:
    """Per-column standardisation, fitted on the training rows only (lists for JSON)."""

    target_mean: list[float]
    target_std: list[float]
    past_mean: list[float]
    past_std: list[float]
    future_mean: list[float]
    future_std: list[float]
    step_std: list[float]  # d: std of the one-step changes of the scaled targets

    @classmethod
    def fit(cls, series: TimeSeries, rows: int) -> Scaler:
        def stats(values: np.ndarray) -> tuple[list[float], list[float]]:
            part = values[:rows]
            std = part.std(axis=0) if len(part) else np.ones(values.shape[1])
            return part.mean(axis=0).tolist(), np.where(std > 1e-8, std, 1.0).tolist()

        target = stats(series.target)
        steps = np.diff((series.target[:rows] - target[0]) / target[1], axis=0)
        step_std = steps.std(axis=0) if len(steps) > 1 else np.ones(series.target.shape[1])
        return cls(*target, *stats(series.past), *stats(series.future), np.where(step_std > 1e-8, step_std, 1.0).tolist())

    def in_steps(self, changes: np.ndarray) -> np.ndarray:
        """Changes of scaled targets in units of ``d`` (``step_std``)."""
        return changes / np.asarray(self.step_std)

    def scale(self, values: np.ndarray, kind: str) -> np.ndarray:
        mean, std = getattr(self, f"{kind}_mean"), getattr(self, f"{kind}_std")
        return (values - np.asarray(mean)) / np.asarray(std)

    def to_json(self) -> dict[str, list[float]]:
        return asdict(self)


@dataclass
class FeatureLayout:
    """Which features the model reads; saved with the model so forecasts rebuild them."""

    horizon: int
    lags: list[int]
    calendar: list[str]

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"--horizon must be >= 1, got {self.horizon}")
        if bad := [m for m in self.lags if m < self.horizon]:
            raise ValueError(f"--lags: each seasonal lag must be >= --horizon {self.horizon} (known at the origin), got {bad[0]}")


@dataclass
class Features:
    """Tensors over every origin ``t`` of one series (float32): ``inputs (T, I)``, ``ahead
    (T, H, A)`` (covariates of rows t+1..t+H; zero past the end when not known), ``lagged (T, H,
    n*len(lags))``, ``anchor (T, n)`` (``z_t``), ``target (T, H, n)`` and ``mask (T, H)``."""

    inputs: Tensor
    ahead: Tensor
    lagged: Tensor
    anchor: Tensor
    target: Tensor
    mask: Tensor

    def take(self, index: Tensor) -> Features:
        return Features(*(t[index] for t in (self.inputs, self.ahead, self.lagged, self.anchor, self.target, self.mask)))


def known_ahead(series: TimeSeries, scaler: Scaler, layout: FeatureLayout, future_rows: np.ndarray | None = None) -> np.ndarray:
    """``(T + H, A)``: scaled future covariates and calendar features of every row and of the
    ``H`` rows after the end (``future_rows (H, f)`` gives the user's future covariates there)."""
    horizon = layout.horizon
    times = series.times
    future_times = series.future_times(horizon)
    user = scaler.scale(series.future, "future")
    extra = np.zeros((horizon, user.shape[1])) if future_rows is None else scaler.scale(future_rows, "future")
    calendar = calendar_features(times, layout.calendar)
    if layout.calendar:
        calendar = np.concatenate([calendar, calendar_features(future_times, layout.calendar)])
    return np.concatenate([np.concatenate([user, extra]), calendar], axis=1) if calendar.size else np.concatenate([user, extra])


def build_features(series: TimeSeries, scaler: Scaler, layout: FeatureLayout, limit: int | None = None,
                   future_rows: np.ndarray | None = None) -> Features:  # fmt: skip
    """The features of every origin of ``series``; targets beyond row ``limit`` (exclusive,
    default the end) are masked out, so training never sees its validation or test rows."""
    horizon, count = layout.horizon, len(series)
    limit = count if limit is None else limit
    z = scaler.scale(series.target, "target")
    change = scaler.in_steps(np.diff(z, axis=0, prepend=z[:1]))
    known = known_ahead(series, scaler, layout, future_rows)
    static = np.broadcast_to(series.static, (count, series.static.size))
    past = scaler.scale(series.past, "past")
    inputs = np.concatenate([z, change, past, known[:count], static], axis=1)
    steps = np.arange(1, horizon + 1)
    rows = np.arange(count)[:, None] + steps[None, :]  # (T, H): row t + k
    ahead = known[np.minimum(rows, len(known) - 1)]
    padded = np.concatenate([z, np.full((horizon, z.shape[1]), np.nan)])
    target = padded[rows]
    mask = rows < limit
    target[~mask] = 0.0
    lagged = [
        np.where((rows - m >= 0)[..., None], scaler.in_steps(z[np.maximum(rows - m, 0)] - z[:, None, :]), 0.0)
        for m in layout.lags
    ]
    lagged_all = np.concatenate(lagged, axis=2) if lagged else np.zeros((count, horizon, 0))

    def tensor(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    return Features(tensor(inputs), tensor(ahead), tensor(lagged_all), tensor(z), tensor(target), torch.from_numpy(mask))
