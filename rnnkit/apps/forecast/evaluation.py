"""Forecast accuracy and the baselines every forecaster is compared with, on the same origins.

Arrays are ``forecast (O, H, n)`` and ``actual (O, H, n)``: ``O`` forecast origins, ``H`` steps
ahead, ``n`` targets. With ``e = actual - forecast``:

- MAE ``mean|e|``, RMSE ``sqrt(mean e^2)``;
- sMAPE ``100 * mean(2|e| / (|actual| + |forecast|))`` (terms with a zero denominator count 0);
- MASE ``MAE / scale``, ``scale = mean_t |y_t - y_{t-m}|`` over the training rows (in-sample
  seasonal-naive error, period ``m``; per target, then averaged);
- coverage: the share of actual values inside ``[lower, upper]``; mean pinball loss.

Baselines: naive (``y_t`` for every step), seasonal naive (``y_{t+k-m*ceil(k/m)}``) and
``pmdarima.auto_arima`` fitted on the training rows, with Fourier terms of the seasonal periods as
exogenous regressors, then filtered forward with its parameters fixed to forecast from each origin.
"""

from __future__ import annotations

import math
import warnings

import numpy as np


def mase_scale(train: np.ndarray, season: int) -> np.ndarray:
    """``(n,)``: the in-sample MAE of the seasonal-naive forecast, period ``season``."""
    if len(train) <= season:
        raise ValueError(f"MASE needs more than season={season} training rows, got {len(train)}")
    scale = np.abs(train[season:] - train[:-season]).mean(axis=0)
    if np.any(scale == 0):
        raise ValueError("MASE is undefined: the training part is exactly periodic (its seasonal-naive error is 0)")
    return scale


def point_metrics(forecast: np.ndarray, actual: np.ndarray, scale: np.ndarray) -> dict[str, float]:
    error = actual - forecast
    denominator = np.abs(actual) + np.abs(forecast)
    smape = np.divide(2 * np.abs(error), denominator, out=np.zeros_like(error), where=denominator > 0)
    return {
        "MAE": float(np.abs(error).mean()),
        "RMSE": float(np.sqrt((error**2).mean())),
        "sMAPE": float(100 * smape.mean()),
        "MASE": float((np.abs(error).mean(axis=(0, 1)) / scale).mean()),
    }


def coverage(lower: np.ndarray, upper: np.ndarray, actual: np.ndarray) -> float:
    return float(((actual >= lower) & (actual <= upper)).mean())


def pinball(quantiles: np.ndarray, actual: np.ndarray, levels: list[float]) -> float:
    """Mean pinball loss of ``quantiles (O, H, n, Q)`` at ``levels``."""
    error = actual[..., None] - quantiles
    tau = np.asarray(levels)
    return float(np.maximum(tau * error, (tau - 1) * error).mean())


def origins(rows: int, test_start: int, horizon: int, stride: int = 1) -> np.ndarray:
    """Forecast origins (last observed row) whose ``horizon`` steps all lie in the test rows."""
    if stride < 1:
        raise ValueError(f"--stride must be >= 1, got {stride}")
    found = np.arange(test_start - 1, rows - horizon, stride)
    if not found.size:
        raise ValueError(f"the test part ({rows - test_start} rows) is shorter than the horizon {horizon}")
    return found


def actuals(target: np.ndarray, starts: np.ndarray, horizon: int) -> np.ndarray:
    return target[starts[:, None] + np.arange(1, horizon + 1)[None, :]]


def naive(target: np.ndarray, starts: np.ndarray, horizon: int) -> np.ndarray:
    return np.repeat(target[starts][:, None, :], horizon, axis=1)


def seasonal_naive(target: np.ndarray, starts: np.ndarray, horizon: int, season: int) -> np.ndarray:
    k = np.arange(1, horizon + 1)
    back = season * np.ceil(k / season).astype(int)  # the last observed value in the same phase
    return target[starts[:, None] + k[None, :] - back[None, :]]


def fourier_terms(rows: int, periods: list[int], harmonics: int = 3) -> np.ndarray:
    t = np.arange(rows)[:, None]
    columns = [f(2 * math.pi * k * t / m) for m in periods if m > 1 for k in range(1, harmonics + 1) for f in (np.sin, np.cos)]
    return np.concatenate(columns, axis=1) if columns else np.zeros((rows, 0))


def auto_arima(target: np.ndarray, train_rows: int, starts: np.ndarray, horizon: int, periods: list[int],
               level: float = 0.8) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:  # fmt: skip
    """``(forecast, lower, upper)`` of each target from ``pmdarima.auto_arima`` (None without
    pmdarima). Orders and parameters come from the training rows only."""
    try:
        import pmdarima
    except ImportError:
        return None
    exog = fourier_terms(len(target), periods)
    results = []
    for j in range(target.shape[1]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = pmdarima.auto_arima(
                target[:train_rows, j], X=exog[:train_rows] if exog.size else None, seasonal=False, stepwise=True,
                suppress_warnings=True, error_action="ignore", max_p=3, max_q=3,
            )  # fmt: skip
            fitted = model.arima_res_.apply(target[:, j], exog=exog if exog.size else None, refit=False)
            point, lower, upper = (np.zeros((len(starts), horizon)) for _ in range(3))
            for i, t in enumerate(starts):
                prediction = fitted.get_prediction(start=int(t) + 1, end=int(t) + horizon, dynamic=True)
                point[i] = prediction.predicted_mean
                interval = np.asarray(prediction.conf_int(alpha=1 - level))
                lower[i], upper[i] = interval[:, 0], interval[:, 1]
        results.append((point, lower, upper))
    return tuple(np.stack([r[i] for r in results], axis=-1) for i in range(3))  # type: ignore[return-value]
