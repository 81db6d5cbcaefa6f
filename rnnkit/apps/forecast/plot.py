"""Pictures and tables of forecasts: history, forecast and intervals; the backtest table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rnnkit.apps.forecast.predictor import ForecastModel
from rnnkit.data.series import TimeSeries


def table_text(table: dict[str, dict[str, float]], forecaster: ForecastModel, origins: int) -> str:
    """The backtest table as aligned text, one method a row."""
    columns = list(dict.fromkeys(key for metrics in table.values() for key in metrics))
    width = max(len(m) for m in table) + 2
    info = forecaster.info
    source = info.get("dataset") or info.get("data")
    title = (
        f"backtest: {source}, horizon {forecaster.horizon}, {origins} origins over the last "
        f"{round(float(info['test_fraction']) * 100)}%, MASE scaled by the in-sample seasonal naive (m={info['season']})"
    )
    lines = [title, "method".ljust(width) + "".join(c.rjust(14) for c in columns)]
    for method, metrics in table.items():
        cells = "".join((f"{metrics[c]:.4g}" if c in metrics else "-").rjust(14) for c in columns)
        lines.append(method.ljust(width) + cells)
    return "\n".join(lines)


def _axis(series: TimeSeries, rows: np.ndarray) -> Any:
    return series.times[rows] if series.times is not None else rows


def plot_backtest(series: TimeSeries, forecaster: ForecastModel, result: dict[str, Any], path: Path, shown: int = 3) -> None:
    """The test part with ``shown`` forecasts (median and outer interval) from evenly spaced origins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test_start, starts, quantiles = result["test_start"], result["origins"], result["quantiles"]
    horizon = forecaster.horizon
    first = max(0, test_start - 2 * horizon)
    rows = np.arange(first, len(series))
    fig, axes = plt.subplots(series.target.shape[1], 1, figsize=(11, 3.2 * series.target.shape[1]), squeeze=False)
    levels = forecaster.quantiles
    middle = levels.index(0.5) if 0.5 in levels else len(levels) // 2
    picks = np.linspace(0, len(starts) - 1, min(shown, len(starts))).round().astype(int)
    for j, ax in enumerate(axes[:, 0]):
        ax.plot(_axis(series, rows), series.inverse(series.target[rows, j]), color="0.3", lw=0.8, label="observed")
        for n, i in enumerate(picks):
            ahead = starts[i] + np.arange(1, horizon + 1)
            x = _axis(series, ahead)
            low, high = series.inverse(quantiles[i, :, j, 0]), series.inverse(quantiles[i, :, j, -1])
            label = f"{round((levels[-1] - levels[0]) * 100)}% interval" if n == 0 else None
            ax.fill_between(x, low, high, color="C0", alpha=0.25, label=label)
            ax.plot(
                x, series.inverse(quantiles[i, :, j, middle]), color="C0", lw=1.2, label="median forecast" if n == 0 else None
            )
        ax.axvline(_axis(series, np.array([test_start]))[0], color="C3", ls="--", lw=0.8, label="test part starts")
        ax.set_ylabel(forecaster.spec.targets[j])
        ax.legend(loc="upper left", fontsize=8)
    axes[0, 0].set_title(f"rnnkit forecast backtest: {forecaster.info.get('dataset') or forecaster.info.get('data')}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_forecast(series: TimeSeries, forecaster: ForecastModel, table: Any, path: Path) -> None:
    """The last ``4 x horizon`` observed steps, then the forecast: median and outer interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    horizon = forecaster.horizon
    rows = np.arange(max(0, len(series) - 4 * horizon), len(series))
    ahead = table["time"] if "time" in table else len(series) - 1 + table["step"]
    fig, axes = plt.subplots(series.target.shape[1], 1, figsize=(11, 3.2 * series.target.shape[1]), squeeze=False)
    names = [c for c in table.columns if c not in ("step", "time")]
    for j, ax in enumerate(axes[:, 0]):
        target = forecaster.spec.targets[j]
        mine = [c for c in names if c.rsplit("_q", 1)[0] == target]
        ax.plot(_axis(series, rows), series.inverse(series.target[rows, j]), color="0.3", lw=0.8, label="observed")
        ax.fill_between(ahead, table[mine[0]], table[mine[-1]], color="C0", alpha=0.25, label=f"{mine[0]} - {mine[-1]}")
        ax.plot(ahead, table[mine[len(mine) // 2]], color="C0", lw=1.2, label=mine[len(mine) // 2])
        ax.set_ylabel(target)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
