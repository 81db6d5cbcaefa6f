"""Time series for forecasting: read, checked and made regular, with explicit covariates.

A :class:`TimeSeries` holds one regular series: its time stamps, the target columns, and three
kinds of covariates, each with its own rule (so that none can leak the future):

- **past covariates**: observed along with the targets, known only up to now (e.g. today's
  rainfall when forecasting temperature). The model reads them at ``t`` for a forecast made at ``t``.
- **future covariates**: known ahead (holidays, planned prices). The model reads them at
  ``t + 1 ... t + horizon``, so they must be given for the rows being forecast. Calendar
  features are future covariates the library generates from the time stamps
  (:func:`calendar_features`).
- **static covariates**: one value per series (a store's size). Their columns must be constant.

Regularity: the frequency is inferred from the time stamps or given (a pandas offset alias such
as ``30min``, ``D``, ``B``), or ``rows`` says "consecutive observations, whatever their dates"
(trading days, say). Missing steps and NaNs are an error naming the rows, unless
``fill="interpolate"`` (linear in time; leading and trailing gaps are still an error).

Bundled data (offline): ``seattle-weather`` (vega_datasets, daily 2012-2015), ``seattle-temps``
(hourly 2010), ``taylor`` (pmdarima: half-hourly electricity demand of England and Wales,
Monday 5 June to Sunday 27 August 2000), ``msft`` (pmdarima: daily prices 1986-2017, trading
days), ``sunspots`` (pmdarima, monthly).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

ROWS = "rows"  # the frequency of a series indexed by observation, not by calendar
FILLS = ("error", "interpolate")
TRANSFORMS = ("none", "log")
DATASETS = ("taylor", "seattle-weather", "seattle-temps", "msft", "sunspots")
#: Seasonal periods, in days, that calendar features describe (as Fourier terms).
CALENDAR_PERIODS = {"day": 1.0, "week": 7.0, "year": 365.2425}
CALENDAR_HARMONICS = {"day": 3, "week": 3, "year": 2}


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:  # pragma: no cover - pandas is a dependency
        raise ValueError("forecasting needs pandas: pip install pandas") from None
    return pandas


@dataclass
class SeriesSpec:
    """What the columns of a table mean. ``freq``: a pandas offset alias, ``rows``, or None to
    infer it. ``transform="log"`` models the log of the targets (which must be positive)."""

    targets: list[str]
    time_col: str | None = None
    past: list[str] = field(default_factory=list)
    future: list[str] = field(default_factory=list)
    static: list[str] = field(default_factory=list)
    freq: str | None = None
    fill: str = "error"
    transform: str = "none"

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("--target: give at least one target column")
        if self.fill not in FILLS:
            raise ValueError(f"fill must be one of {', '.join(FILLS)}, got {self.fill!r}")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}, got {self.transform!r}")
        roles = {"--target": self.targets, "--past-covariates": self.past, "--future-covariates": self.future,
                 "--static-covariates": self.static}  # fmt: skip
        seen: dict[str, str] = {}
        for role, columns in roles.items():
            for column in columns:
                if column in seen or column == self.time_col:
                    other = seen.get(column, "--time-col")
                    raise ValueError(f"{role}: column {column!r} is already used by {other}")
                seen[column] = role


@dataclass
class TimeSeries:
    """One regular series. ``times``: ``T`` pandas time stamps (None for a ``rows`` series
    without dates); ``target (T, n)``, ``past (T, p)``, ``future (T, f)`` float64 arrays;
    ``static (s,)``. Targets are stored transformed (``spec.transform``)."""

    spec: SeriesSpec
    times: Any
    freq: str
    target: np.ndarray
    past: np.ndarray
    future: np.ndarray
    static: np.ndarray
    name: str = "series"

    def __len__(self) -> int:
        return self.target.shape[0]

    def head(self, rows: int) -> TimeSeries:
        """The first ``rows`` steps (a forecast made at the end of them sees nothing later)."""
        times = None if self.times is None else self.times[:rows]
        return replace(self, times=times, target=self.target[:rows], past=self.past[:rows], future=self.future[:rows])

    def future_times(self, steps: int) -> Any:
        """The time stamps of the ``steps`` rows after the end (None for a ``rows`` series)."""
        if self.times is None or self.freq == ROWS:
            return None
        pd = _pandas()
        return pd.date_range(self.times[-1], periods=steps + 1, freq=self.freq)[1:]

    def inverse(self, values: np.ndarray) -> np.ndarray:
        """Targets back in the units of the data (undoes ``spec.transform``)."""
        return np.exp(values) if self.spec.transform == "log" else values


def from_frame(frame: Any, spec: SeriesSpec, name: str = "series") -> TimeSeries:
    """Check a pandas DataFrame against ``spec`` and make it a regular :class:`TimeSeries`."""
    pd = _pandas()
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"data must be a pandas DataFrame, got {type(frame).__name__}")
    columns = [spec.time_col] if spec.time_col else []
    columns += spec.targets + spec.past + spec.future + spec.static
    if missing := [c for c in columns if c not in frame.columns]:
        available = ", ".join(map(str, frame.columns[:20]))
        raise ValueError(f"{name}: no column {', '.join(map(repr, missing))} (columns: {available})")
    frame = frame.reset_index(drop=True)
    times = None
    freq = spec.freq or ROWS
    if spec.time_col:
        times = _parse_times(frame[spec.time_col], spec.time_col)
        order = np.argsort(times.values, kind="stable")
        frame, times = frame.iloc[order].reset_index(drop=True), times[order]
        if times.has_duplicates:
            rows = sorted(set(np.flatnonzero(times.duplicated(keep=False)).tolist()))
            raise ValueError(f"--time-col {spec.time_col!r}: duplicated time stamps at rows {_rows(rows)}")
        if spec.freq != ROWS:
            freq = spec.freq or _infer_freq(times, spec.time_col)
            frame, times = _regularise(frame, times, freq, spec.time_col, spec.fill)
    elif spec.freq not in (None, ROWS):
        raise ValueError(f"--freq {spec.freq} needs --time-col (a series without dates is indexed by rows)")
    target = _numeric(frame, spec.targets, "--target", spec.fill)
    if spec.transform == "log":
        if (bad := np.flatnonzero(~(target > 0).all(axis=1))).size:
            raise ValueError(f"--transform log: targets must be positive, not at rows {_rows(bad.tolist())}")
        target = np.log(target)
    past = _numeric(frame, spec.past, "--past-covariates", spec.fill)
    future = _numeric(frame, spec.future, "--future-covariates", spec.fill)
    static = _numeric(frame, spec.static, "--static-covariates", "error")
    if static.size and (bad := [c for c, values in zip(spec.static, static.T) if not np.all(values == values[0])]):
        raise ValueError(f"--static-covariates: column {bad[0]!r} is not constant (static covariates are one value per series)")
    return TimeSeries(spec, times, freq, target, past, future, static[0] if static.size else np.zeros(0), name)


def read_csv_frame(path: str | Path) -> Any:
    """A CSV file with a header row, as a DataFrame (a one-line error if it is not one)."""
    pd = _pandas()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--data: no such file {path}")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise ValueError(f"--data: {path} is not a readable CSV file ({str(error).splitlines()[0]})") from None


def read_csv(path: str | Path, spec: SeriesSpec) -> TimeSeries:
    """A CSV file with a header row; see :func:`from_frame`."""
    return from_frame(read_csv_frame(path), spec, Path(path).name)


def _rows(rows: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def _parse_times(column: Any, name: str) -> Any:
    pd = _pandas()
    try:
        times = pd.DatetimeIndex(pd.to_datetime(column))
    except (ValueError, TypeError):
        raise ValueError(f"--time-col {name!r}: not dates or times (e.g. {column.iloc[0]!r})") from None
    if times.hasnans:
        rows = np.flatnonzero(times.isna()).tolist()
        raise ValueError(f"--time-col {name!r}: missing time stamps at rows {_rows(rows)}")
    return times


def _infer_freq(times: Any, name: str) -> str:
    pd = _pandas()
    if len(times) < 3:
        raise ValueError(f"--time-col {name!r}: too few rows ({len(times)}) to infer a frequency")
    with warnings.catch_warnings():  # pandas 3 warns that infer_freq will return an offset
        warnings.simplefilter("ignore")
        inferred = pd.infer_freq(times)
    if inferred is not None:
        return inferred if isinstance(inferred, str) else inferred.freqstr
    steps = pd.Series(times[1:] - times[:-1])
    common = steps.mode().iloc[0]
    if (steps % common != pd.Timedelta(0)).any():
        raise ValueError(
            f"--time-col {name!r}: irregular time steps; give --freq (e.g. D, 30min, B) or --freq rows "
            "to treat rows as consecutive steps"
        )
    if common % pd.Timedelta(days=1) == pd.Timedelta(0):
        days = common // pd.Timedelta(days=1)
        return "D" if days == 1 else f"{days}D"
    return pd.tseries.frequencies.to_offset(common).freqstr  # gaps: a multiple of the common step


def _regularise(frame: Any, times: Any, freq: str, name: str, fill: str) -> tuple[Any, Any]:
    pd = _pandas()
    try:
        grid = pd.date_range(times[0], times[-1], freq=freq)
    except ValueError:
        raise ValueError(f"--freq: {freq!r} is not a pandas frequency (e.g. D, h, 30min, B, MS) or 'rows'") from None
    if not times.isin(grid).all():
        off = np.flatnonzero(~times.isin(grid)).tolist()
        raise ValueError(f"--time-col {name!r}: rows {_rows(off)} are off the {freq} grid; give the right --freq or --freq rows")
    if len(grid) == len(times):
        return frame, grid
    if fill != "interpolate":
        missing = grid[~grid.isin(times)]
        raise ValueError(
            f"--time-col {name!r}: {len(missing)} missing time steps at frequency {freq} (first {missing[0]}); give --fill "
            "interpolate, or --freq rows to take the rows as consecutive steps (trading days, say)"
        )
    frame = frame.set_index(pd.DatetimeIndex(times)).reindex(grid).reset_index(drop=True)
    return frame, grid  # the new rows are NaN, interpolated with the other NaNs


def _numeric(frame: Any, columns: list[str], role: str, fill: str) -> np.ndarray:
    pd = _pandas()
    if not columns:
        return np.zeros((len(frame), 0))
    values = []
    for column in columns:
        series = pd.to_numeric(frame[column], errors="coerce")
        text = frame[column].notna() & series.isna()
        if text.any():
            rows = np.flatnonzero(text.to_numpy()).tolist()
            raise ValueError(f"{role}: column {column!r} is not numeric (e.g. {frame[column].iloc[rows[0]]!r} at row {rows[0]})")
        values.append(series.to_numpy(dtype=np.float64))
    array = np.stack(values, axis=1)
    missing = ~np.isfinite(array)
    if missing.any():
        rows = np.flatnonzero(missing.any(axis=1)).tolist()
        if fill != "interpolate":
            raise ValueError(f"{role}: missing values (NaN) at rows {_rows(rows)}; give --fill interpolate")
        if missing[0].any() or missing[-1].any():
            raise ValueError(f"{role}: missing values at the first or last row cannot be interpolated (rows {_rows(rows)})")
        index = np.arange(len(array))
        for j in range(array.shape[1]):
            bad = missing[:, j]
            array[bad, j] = np.interp(index[bad], index[~bad], array[~bad, j])
    return array


def calendar_names(freq: str, span_days: float, periods: list[str] | None = None) -> list[str]:
    """The calendar features for a series of this frequency and length: Fourier terms of the
    day, week and year (or of ``periods`` among them) that the sampling resolves (a period at
    least 2 steps long) and, for the year, only when the series covers at least one."""
    if bad := [p for p in periods or [] if p not in CALENDAR_PERIODS]:
        raise ValueError(f"--calendar takes auto, none or periods among {', '.join(CALENDAR_PERIODS)}, got {bad[0]!r}")
    if freq == ROWS:
        return []
    pd = _pandas()
    offset = pd.tseries.frequencies.to_offset(freq)
    try:
        step_days = pd.Timedelta(offset).total_seconds() / 86400
    except ValueError:  # calendar offsets (months, business days) have no fixed length
        step_days = {"B": 1.4, "W": 7.0}.get(offset.name.split("-")[0], 30.0)
    names = []
    for period, days in CALENDAR_PERIODS.items():
        if (periods is None or period in periods) and days >= 2 * step_days and (period != "year" or span_days >= 365):
            for k in range(1, CALENDAR_HARMONICS[period] + 1):
                names += [f"{period}_sin{k}", f"{period}_cos{k}"]
    return names


def calendar_features(times: Any, names: list[str]) -> np.ndarray:
    """``(len(times), len(names))`` Fourier terms ``sin/cos(2 pi k u)``, ``u`` the phase of each
    time stamp within its day, week (from Monday 00:00) or year; a function of the time stamp
    alone, so it is known for any future row."""
    if not names:
        return np.zeros((0 if times is None else len(times), 0))
    pd = _pandas()
    stamps = pd.DatetimeIndex(times)
    days = (stamps - pd.Timestamp("2000-01-03")) / pd.Timedelta(days=1)  # a Monday
    columns = []
    for name in names:
        period, term = name.split("_")
        phase = 2 * math.pi * int(term[3:]) * np.asarray(days, dtype=np.float64) / CALENDAR_PERIODS[period]
        columns.append(np.sin(phase) if term.startswith("sin") else np.cos(phase))
    return np.stack(columns, axis=1)


@dataclass
class DatasetDefaults:
    """A bundled dataset's table and its usual settings (the CLI's defaults for it)."""

    frame: Any
    spec: SeriesSpec
    horizon: int
    season: int  # seasonal period in steps: seasonal-naive baseline and MASE scale
    lags: list[int]  # seasonal lags the model reads (see Forecaster)
    calendar: list[str] | None = None  # calendar periods to describe (None: all the sampling resolves)


def bundled(name: str) -> DatasetDefaults:
    """A bundled dataset, read offline from the package that ships it."""
    pd = _pandas()
    if name in ("seattle-weather", "seattle-temps"):
        try:
            from vega_datasets import local_data
        except ImportError:
            raise ValueError(f"--dataset {name} needs vega_datasets: pip install vega_datasets==0.9.0") from None
        if name == "seattle-weather":
            frame = local_data.seattle_weather()
            spec = SeriesSpec(["temp_max"], "date", freq="D")  # --past-covariates temp_min ... did not help (README)
            return DatasetDefaults(frame, spec, horizon=7, season=365, lags=[], calendar=["year"])  # weather has no week
        frame = local_data.seattle_temps()
        return DatasetDefaults(frame, SeriesSpec(["temp"], "date", freq="h", fill="interpolate"), 24, 24, [24])
    try:
        from pmdarima import datasets
    except ImportError:
        raise ValueError(f"--dataset {name} needs pmdarima: pip install 'rnnkit[forecast]'") from None
    if name == "taylor":
        demand = datasets.load_taylor(as_series=False)
        times = pd.date_range("2000-06-05", periods=len(demand), freq="30min")  # Monday 5 June 2000 (R forecast::taylor)
        frame = pd.DataFrame({"time": times, "demand": demand})
        return DatasetDefaults(frame, SeriesSpec(["demand"], "time", freq="30min"), horizon=48, season=48, lags=[336])
    if name == "msft":
        frame = datasets.load_msft()
        spec = SeriesSpec(["Close"], "Date", freq=ROWS, transform="log")
        return DatasetDefaults(frame, spec, horizon=5, season=1, lags=[])
    if name == "sunspots":
        series = datasets.load_sunspots(as_series=True)
        frame = pd.DataFrame({"month": pd.date_range("1749-01-01", periods=len(series), freq="MS"), "sunspots": series.values})
        return DatasetDefaults(frame, SeriesSpec(["sunspots"], "month", freq="MS"), horizon=12, season=12, lags=[])
    raise ValueError(f"--dataset must be one of {', '.join(DATASETS)}, got {name!r}")
