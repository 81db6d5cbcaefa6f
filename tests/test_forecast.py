"""Forecasting: series data, features without look-ahead, the model, metrics, calibration,
streaming, the app and its CLI."""

import argparse
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import rnnkit
from rnnkit.apps import forecast as app
from rnnkit.apps.forecast import evaluation as ev
from rnnkit.apps.forecast.features import FeatureLayout, Scaler, build_features
from rnnkit.apps.forecast.model import Forecaster, ForecasterConfig, calibrate, conformal_widths, pinball_loss
from rnnkit.cli import main
from rnnkit.data.series import ROWS, SeriesSpec, bundled, calendar_features, calendar_names, from_frame
from rnnkit.train import OffsetStreams


def seasonal_frame(rows=24 * 7 * 8, seed=0, start="2024-01-01"):
    """Hourly: a daily profile, a weekend shift, AR(1) noise, and a covariate known ahead."""
    rng = np.random.default_rng(seed)
    times = pd.date_range(start, periods=rows, freq="h")
    noise = np.zeros(rows)
    for t in range(1, rows):
        noise[t] = 0.8 * noise[t - 1] + rng.normal(0, 0.5)
    hour = times.hour.to_numpy()
    weekend = (times.day_of_week.to_numpy() >= 5).astype(float)
    promo = (rng.random(rows) < 0.1).astype(float)
    load = 20 + 4 * np.sin(2 * np.pi * hour / 24) - 3 * weekend + 2 * promo + noise
    return pd.DataFrame({"time": times, "load": load, "temp": rng.normal(size=rows), "promo": promo, "site": 7.0})


def train_args(tmp_path, csv, *extra):
    return ["train", "forecast", "--data", str(csv), "--time-col", "time", "--target", "load", "--horizon", "6",
            "--lookback", "24", "--season", "24", "--hidden", "16", "--head-hidden", "32", "--members", "2",
            "--steps", "150", "--lr", "3e-3", "--eval-every", "50", "--out", str(tmp_path / "run"), "--no-progress",
            *extra]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small forecaster trained on the synthetic hourly series, future covariate included."""
    tmp_path = tmp_path_factory.mktemp("forecast")
    csv = tmp_path / "load.csv"
    seasonal_frame().to_csv(csv, index=False)
    torch.manual_seed(0)
    assert main(train_args(tmp_path, csv, "--future-covariates", "promo", "--static-covariates", "site")) == 0
    return tmp_path / "run", csv


# -- data -----------------------------------------------------------------------------------------
def test_a_frame_becomes_a_regular_series_with_its_covariates():
    frame = seasonal_frame(rows=100).sample(frac=1, random_state=0)  # shuffled rows: sorted by time
    spec = SeriesSpec(["load"], "time", past=["temp"], future=["promo"], static=["site"])
    series = from_frame(frame, spec)
    assert series.freq == "h" and len(series) == 100 and series.times.is_monotonic_increasing
    assert series.target.shape == (100, 1) and series.past.shape == (100, 1) and series.static.tolist() == [7.0]
    assert str(series.future_times(2)[0]) == str(series.times[-1] + pd.Timedelta(hours=1))


def test_missing_steps_are_an_error_or_interpolated():
    frame = seasonal_frame(rows=50).drop(index=[10, 11])
    with pytest.raises(ValueError, match=r"2 missing time steps at frequency h \(first 2024-01-01 10:00:00\)"):
        from_frame(frame, SeriesSpec(["load"], "time", freq="h"))
    holes = seasonal_frame(rows=50)
    holes.loc[[10, 11], "load"] = np.nan
    with pytest.raises(ValueError, match=r"--target: missing values \(NaN\) at rows 10, 11; give --fill interpolate"):
        from_frame(holes, SeriesSpec(["load"], "time", freq="h"))
    series = from_frame(frame, SeriesSpec(["load"], "time", freq="h", fill="interpolate"))
    full = seasonal_frame(rows=50)["load"].to_numpy()
    assert len(series) == 50
    assert series.target[10, 0] == pytest.approx(full[9] + (full[12] - full[9]) / 3)


def test_rows_frequency_keeps_trading_days_consecutive():
    frame = pd.DataFrame({"day": ["2024-01-05", "2024-01-08", "2024-01-09", "2024-01-11"], "close": [1.0, 2, 3, 4]})
    with pytest.raises(
        ValueError, match=r"'day': 3 missing time steps at frequency D \(first 2024-01-06 00:00:00\); give --fill"
    ):
        from_frame(frame, SeriesSpec(["close"], "day"))
    series = from_frame(frame, SeriesSpec(["close"], "day", freq=ROWS, transform="log"))
    assert len(series) == 4 and series.future_times(3) is None
    np.testing.assert_allclose(series.inverse(series.target[:, 0]), [1, 2, 3, 4])


def test_calendar_features_are_fourier_terms_of_the_time_stamp():
    assert calendar_names("30min", 84) == [f"{p}_{f}{k}" for p in ("day", "week") for k in (1, 2, 3) for f in ("sin", "cos")]
    assert calendar_names("D", 1460, ["year"]) == ["year_sin1", "year_cos1", "year_sin2", "year_cos2"]
    assert calendar_names(ROWS, 1e9) == []
    stamps = pd.DatetimeIndex(["2024-01-01 06:00", "2024-01-03 18:00"])  # a Monday 06:00; Wednesday 18:00
    values = calendar_features(stamps, ["day_sin1", "day_cos1", "week_sin1"])
    np.testing.assert_allclose(values[0], [1.0, 0.0, math.sin(2 * math.pi * 0.25 / 7)], atol=1e-9)
    np.testing.assert_allclose(values[1], [-1.0, 0.0, math.sin(2 * math.pi * 2.75 / 7)], atol=1e-9)


def test_bundled_datasets_read_offline():
    taylor = bundled("taylor")
    series = from_frame(taylor.frame, taylor.spec)
    assert len(series) == 4032 and series.freq == "30min" and str(series.times[0]) == "2000-06-05 00:00:00"
    assert taylor.horizon == 48 and taylor.lags == [336]
    weather = bundled("seattle-weather")
    assert len(from_frame(weather.frame, weather.spec)) == 1461 and weather.season == 365
    msft = from_frame(bundled("msft").frame, bundled("msft").spec)
    assert len(msft) == 7983 and msft.freq == ROWS and msft.spec.transform == "log"
    temps = bundled("seattle-temps")
    assert len(from_frame(temps.frame, temps.spec)) == 8760  # the hour missing from 2010 is interpolated
    sunspots = bundled("sunspots")
    assert from_frame(sunspots.frame, sunspots.spec).freq == "MS" and sunspots.season == 12


# -- features -------------------------------------------------------------------------------------
def small_series(rows=60):
    spec = SeriesSpec(["load"], "time", past=["temp"], future=["promo"], static=["site"])
    return from_frame(seasonal_frame(rows=rows), spec)


def test_features_follow_the_equations():
    series = small_series()
    layout = FeatureLayout(horizon=3, lags=[24], calendar=["day_sin1", "day_cos1"])
    scaler = Scaler.fit(series, 40)
    f = build_features(series, scaler, layout, limit=50)
    y = series.target[:, 0]
    mean, std = y[:40].mean(), y[:40].std()
    z = (y - mean) / std
    d = np.diff(z[:40]).std()
    assert scaler.step_std == pytest.approx([d])
    t = 30
    promo = (series.future[:, 0] - series.future[:40, 0].mean()) / series.future[:40, 0].std()
    calendar = calendar_features(series.times, layout.calendar)
    expected = [z[t], (z[t] - z[t - 1]) / d, (series.past[t, 0] - series.past[:40, 0].mean()) / series.past[:40, 0].std(),
                promo[t], *calendar[t], 7.0]  # fmt: skip
    np.testing.assert_allclose(f.inputs[t].double().numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f.ahead[t, 1].double().numpy(), [promo[t + 2], *calendar[t + 2]], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f.lagged[t, :, 0].double().numpy(), (z[t + 1 - 24 : t + 4 - 24] - z[t]) / d, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f.target[t, :, 0].double().numpy(), z[t + 1 : t + 4], rtol=1e-5, atol=1e-5)
    assert f.mask[46].tolist() == [True, True, True] and f.mask[47].tolist() == [True, True, False]
    assert not f.mask[49].any()


def test_seasonal_lags_shorter_than_the_horizon_are_refused():
    with pytest.raises(ValueError, match="--lags: each seasonal lag must be >= --horizon 48"):
        FeatureLayout(horizon=48, lags=[24], calendar=[])


def test_the_scaler_and_features_at_t_use_data_up_to_t_only():
    series = small_series()
    changed = small_series()
    changed.target[45:] += 100.0  # the future after row 44
    changed.past[45:] -= 50.0
    layout = FeatureLayout(horizon=3, lags=[], calendar=["day_sin1"])
    scaler = Scaler.fit(series, 40)
    assert Scaler.fit(changed, 40) == scaler
    a, b = build_features(series, scaler, layout), build_features(changed, scaler, layout)
    assert torch.equal(a.inputs[:45], b.inputs[:45]) and torch.equal(a.ahead[:45], b.ahead[:45])
    assert not torch.equal(a.inputs[45:], b.inputs[45:])


# -- the model ------------------------------------------------------------------------------------
def config(**changes):
    base = dict(targets=2, inputs=5, ahead=3, lagged=2, horizon=4, hidden=8, head_hidden=16, members=2)
    return ForecasterConfig(**{**base, **changes})


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("decoder", ["direct", "rnn"])
def test_forecaster_shapes_state_and_sorted_quantiles(cell, decoder):
    torch.manual_seed(0)
    model = Forecaster(config(cell=cell, decoder=decoder, layers=2)).eval()
    x, ahead, lagged, anchor = torch.randn(3, 7, 5), torch.randn(3, 7, 4, 3), torch.randn(3, 7, 4, 2), torch.randn(3, 7, 2)
    out, state = model(x, ahead, lagged, anchor)
    assert out.shape == (2, 3, 7, 4, 2, 3)
    assert (out.diff(dim=-1) >= 0).all()
    # chunks with the carried (stacked) state equal one pass
    first, s1 = model(x[:, :3], ahead[:, :3], lagged[:, :3], anchor[:, :3])
    second, _ = model(x[:, 3:], ahead[:, 3:], lagged[:, 3:], anchor[:, 3:], s1)
    torch.testing.assert_close(torch.cat([first, second], dim=2), out)
    # each member is its own network: member 1 alone gives the second slice
    alone, _ = model.members[1].encode(x)
    torch.testing.assert_close(model.members[1].head_forward(alone, ahead, lagged, anchor), out[1])


def test_gradcheck_of_the_forecaster_in_float64():
    torch.manual_seed(0)
    model = Forecaster(config(members=1, hidden=4, head_hidden=5)).double()
    double = torch.float64
    inputs = (torch.randn(2, 3, 5, dtype=double, requires_grad=True), torch.randn(2, 3, 4, 3, dtype=double),
              torch.randn(2, 3, 4, 2, dtype=double, requires_grad=True), torch.randn(2, 3, 2, dtype=double))  # fmt: skip
    assert torch.autograd.gradcheck(lambda x, lag: model(x, inputs[1], lag, inputs[3])[0], (inputs[0], inputs[2]))


def test_pinball_loss_by_hand():
    forecast = torch.tensor([[[[1.0, 2.0, 3.0]]], [[[0.0, 0.0, 0.0]]]])  # (O=2, H=1, n=1, Q=3)
    target = torch.tensor([[[2.5]], [[-1.0]]])
    mask = torch.tensor([[True], [False]])
    # origin 0: tau .1: 0.1*1.5; .5: 0.5*0.5; .9: (0.9-1)*(-0.5) = 0.05  -> mean over 3
    assert pinball_loss(forecast, target, mask, [0.1, 0.5, 0.9]).item() == pytest.approx((0.15 + 0.25 + 0.05) / 3)


def test_conformal_widths_reach_the_nominal_coverage():
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(2000, 1, 1, generator=generator) * 2.0
    too_narrow = torch.tensor([-0.5, 0.0, 0.5]).expand(2000, 1, 1, 3)
    widths = conformal_widths(too_narrow[:1000], target[:1000], torch.ones(1000, 1, dtype=torch.bool), [0.1, 0.5, 0.9])
    fixed = calibrate(too_narrow[1000:], widths, [0.1, 0.5, 0.9])
    covered = ((target[1000:] >= fixed[..., 0]) & (target[1000:] <= fixed[..., 2])).float().mean().item()
    assert 0.77 <= covered <= 0.83
    assert fixed[0, 0, 0, 2].item() == pytest.approx(2 * 1.2816, rel=0.08)  # the normal's 90% quantile, sd 2
    assert conformal_widths(too_narrow[:10], target[:10], torch.ones(10, 1, dtype=torch.bool), [0.1, 0.5, 0.9]) is None


# -- metrics and baselines ------------------------------------------------------------------------
def test_metrics_equal_hand_computed_values():
    train = np.array([[1.0], [3.0], [2.0], [5.0]])
    assert ev.mase_scale(train, 1).tolist() == [(2 + 1 + 3) / 3]
    assert ev.mase_scale(train, 2).tolist() == [(1 + 2) / 2]
    forecast = np.array([[[2.0], [4.0]]])
    actual = np.array([[[1.0], [5.0]]])
    metrics = ev.point_metrics(forecast, actual, np.array([2.0]))
    assert metrics["MAE"] == 1.0 and metrics["RMSE"] == 1.0 and metrics["MASE"] == 0.5
    assert metrics["sMAPE"] == pytest.approx(100 * (2 / 3 + 2 / 9) / 2)
    assert ev.coverage(np.array([0.0, 0.0]), np.array([1.0, 1.0]), np.array([0.5, 2.0])) == 0.5


def test_baselines_and_origins():
    target = np.arange(10, dtype=float)[:, None] ** 2
    starts = ev.origins(10, 7, 2)
    assert starts.tolist() == [6, 7]  # both forecast steps lie in rows 7..9
    assert ev.naive(target, starts, 2)[:, :, 0].tolist() == [[36, 36], [49, 49]]
    assert ev.seasonal_naive(target, starts, 2, 3)[:, :, 0].tolist() == [[16, 25], [25, 36]]
    assert ev.actuals(target, starts, 2)[:, :, 0].tolist() == [[49, 64], [64, 81]]
    with pytest.raises(ValueError, match="shorter than the horizon"):
        ev.origins(10, 9, 2)


# -- training, saving, forecasting ------------------------------------------------------------------
def test_offset_streams_resume_exactly():
    streams = OffsetStreams(500, 60, 20, 4, seed=3, first=24)
    seen = [next(streams) for _ in range(5)]
    assert seen[0].starts_streams and not seen[1].starts_streams and seen[3].starts_streams
    assert all(int(b.data.min()) >= 24 and int(b.data.max()) < 500 for b in seen)
    torch.testing.assert_close(seen[1].data, seen[0].data + 20)
    resumed = OffsetStreams(500, 60, 20, 4, seed=3, first=24)
    resumed.load_state_dict(json.loads(json.dumps(streams.state_dict())))
    assert torch.equal(next(resumed).data, next(streams).data)


def test_a_short_run_beats_seasonal_naive_and_keeps_the_best_weights(trained):
    run, _ = trained
    forecaster = rnnkit.load(run)
    series = app.rebuild_series(forecaster)
    result = app.backtest(forecaster, series, stride=1, arima=False)
    table = result["table"]
    assert table["rnnkit"]["MASE"] < 0.8 * table["seasonal naive m=24"]["MASE"], table
    assert 0.6 <= table["rnnkit"]["coverage 80%"] <= 0.95, table
    saved = json.loads((run / "config.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = min((r for r in records if r["kind"] == "eval"), key=lambda r: r["val_pinball"])
    assert saved["weights_from_step"] == best["step"]


def test_no_look_ahead_perturbing_the_future_leaves_the_forecast_unchanged(trained):
    forecaster = rnnkit.load(trained[0])
    series = app.rebuild_series(forecaster)
    origin = 900
    before = forecaster.quantiles_at(series, np.array([origin]))
    changed = app.rebuild_series(forecaster)
    changed.target[origin + 1 :] *= 3.0
    changed.future[origin + forecaster.horizon + 1 :] = 1.0 - changed.future[origin + forecaster.horizon + 1 :]
    np.testing.assert_array_equal(forecaster.quantiles_at(changed, np.array([origin])), before)
    changed.target[origin] += 1.0  # the present does change it
    assert not np.array_equal(forecaster.quantiles_at(changed, np.array([origin])), before)


def test_intervals_widen_with_the_horizon(tmp_path):
    rng = np.random.default_rng(1)
    walk = pd.DataFrame({"close": 100 + np.cumsum(rng.normal(0, 1, 1500))})
    csv = tmp_path / "walk.csv"
    walk.to_csv(csv, index=False)
    argv = ["train", "forecast", "--data", str(csv), "--target", "close", "--horizon", "8", "--lookback", "16", "--hidden", "8",
            "--members", "1", "--steps", "200", "--lr", "3e-3", "--eval-every", "50", "--out", str(tmp_path / "run"),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    forecaster = rnnkit.load(tmp_path / "run")
    series = app.rebuild_series(forecaster)
    q = forecaster.quantiles_at(series, np.arange(1300, 1490, 10))
    width = (q[..., 2] - q[..., 0]).mean(axis=(0, 2))
    assert width[-1] > 1.8 * width[0], width  # a random walk's spread grows like sqrt(k): sqrt(8) ~ 2.8
    assert (np.diff(width) > -0.05 * width[:-1]).all(), width


def test_save_load_round_trip_and_streaming_equals_batch(trained):
    run, _ = trained
    first, second = rnnkit.load(run), rnnkit.load(run)
    series = app.rebuild_series(first)
    future = np.array([[0.0], [1.0], [0.0], [0.0], [1.0], [0.0]])
    np.testing.assert_array_equal(first.predict(series, future).to_numpy(), second.predict(series, future).to_numpy())
    stream = first.stream(series.head(1000))
    for t in range(1000, 1010):
        stream.update(series.inverse(series.target[t]), series.past[t], series.future[t])
    streamed = stream.forecast(future)
    batch = first.predict(series.head(1010), future)
    np.testing.assert_allclose(streamed[:, 0, :], batch[["load_q10", "load_q50", "load_q90"]].to_numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="update: target must be 1 finite numbers"):
        stream.update([float("nan")], [], [0.0])


def test_cli_forecast_writes_csv_and_png_and_evaluate_prints_the_table(trained, tmp_path, capsys):
    run, csv = trained
    frame = pd.read_csv(csv).iloc[:1000]
    future = seasonal_frame(rows=1006).iloc[1000:].assign(load=np.nan)
    data = tmp_path / "with_future.csv"
    pd.concat([frame, future]).to_csv(data, index=False)
    out, png = tmp_path / "f.csv", tmp_path / "f.png"
    assert main(["forecast", "--model", str(run), "--data", str(data), "--output", str(out), "--plot", str(png)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["step", "time", "load_q10", "load_q50", "load_q90"] and len(table) == 6
    assert table["time"].iloc[0] == str(future["time"].iloc[0]) and png.stat().st_size > 5000
    assert (table["load_q10"] <= table["load_q50"]).all() and (table["load_q50"] <= table["load_q90"]).all()
    capsys.readouterr()
    assert main(["evaluate", "--model", str(run), "--no-arima", "--stride", "3"]) == 0
    printed = capsys.readouterr().out
    assert "backtest:" in printed and "seasonal naive m=24" in printed and "coverage 80%" in printed
    saved = json.loads((run / "backtest.json").read_text())
    assert set(saved["methods"]) == {"rnnkit", "naive", "seasonal naive m=24"} and (run / "backtest.png").is_file()


def test_several_targets_are_forecast_jointly(tmp_path, capsys):
    csv = tmp_path / "two.csv"
    frame = seasonal_frame(rows=600)
    frame.assign(other=frame["load"] * 0.5 + frame["temp"]).to_csv(csv, index=False)
    argv = train_args(tmp_path, csv)
    argv[argv.index("--target") + 1 : argv.index("--target") + 2] = ["load", "other"]
    argv[argv.index("--steps") + 1] = "20"
    assert main(argv) == 0
    forecaster = rnnkit.load(tmp_path / "run")
    assert forecaster.model.config.targets == 2
    table = forecaster.predict(pd.read_csv(csv))
    assert [c for c in table.columns if c.endswith("_q50")] == ["load_q50", "other_q50"] and len(table) == 6
    result = app.backtest(forecaster, app.rebuild_series(forecaster), arima=False)
    assert result["quantiles"].shape[1:] == (6, 2, 3) and np.isfinite(result["table"]["rnnkit"]["MASE"])


def test_auto_arima_baseline_is_computed_from_the_same_origins():
    pytest.importorskip("pmdarima", reason="pmdarima is in the dev extra; CI installs it")
    rng = np.random.default_rng(0)
    y = np.zeros((300, 1))
    for t in range(1, 300):
        y[t] = 0.7 * y[t - 1] + rng.normal()
    starts = ev.origins(300, 240, 3)
    point, lower, upper = ev.auto_arima(y, 240, starts, 3, [])
    assert point.shape == (len(starts), 3, 1) and (lower <= point).all() and (point <= upper).all()
    assert abs(point[0, 0, 0] - 0.7 * y[starts[0], 0]) < 0.5  # an AR(1) forecast shrinks toward 0


# -- bad input --------------------------------------------------------------------------------------
BAD = [
    (lambda f: f.drop(columns="time"), [], "no column 'time'"),
    (lambda f: f, ["--target", "nope"], "no column 'nope'"),
    (lambda f: f.assign(load=f["load"].astype(str).where(f.index != 5, "twelve")), [], "--target: column 'load' is not numeric"),
    (lambda f: f.iloc[:40], [], "too few rows"),
    (lambda f: pd.concat([f, f.iloc[[3]]]), [], "duplicated time stamps at rows 3, 4"),
    (
        lambda f: f.drop(index=[5, 9, 17]).assign(time=lambda g: g["time"] + pd.to_timedelta(np.arange(len(g)) % 3, "min")),
        [],
        "irregular time steps; give --freq",
    ),  # fmt: skip
]


@pytest.mark.parametrize(("change", "extra", "message"), BAD)
def test_bad_input_gives_a_one_line_error(tmp_path, capsys, change, extra, message):
    csv = tmp_path / "bad.csv"
    change(seasonal_frame(rows=400)).to_csv(csv, index=False)
    argv = train_args(tmp_path, csv)
    if extra:
        argv[argv.index("--target") + 1] = extra[1]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_forecast_needs_future_covariates_without_nan(trained, tmp_path, capsys):
    run, csv = trained
    future = seasonal_frame(rows=1006).iloc[1000:].assign(load=np.nan)
    future.loc[future.index[2], "promo"] = np.nan
    data = tmp_path / "nan.csv"
    pd.concat([pd.read_csv(csv).iloc[:1000], future]).to_csv(data, index=False)
    assert main(["forecast", "--model", str(run), "--data", str(data)]) == 2
    assert "a future covariate is NaN at forecast time (rows 1002)" in capsys.readouterr().err
    pd.read_csv(csv).iloc[:1000].to_csv(data, index=False)  # no future rows at all
    assert main(["forecast", "--model", str(run), "--data", str(data)]) == 2
    assert "must be given for the 6 rows after the last observation" in capsys.readouterr().err


def test_conflicting_sources_and_a_lookback_shorter_than_a_lag(capsys):
    assert main(["train", "forecast", "--data", "x.csv", "--dataset", "taylor", "--steps", "1"]) == 2
    assert "give --data or --dataset, not both" in capsys.readouterr().err
    assert main(["train", "forecast", "--dataset", "taylor", "--lookback", "100", "--steps", "1"]) == 2
    assert "--lookback must be >= 1 and cover the largest seasonal lag (336), got 100" in capsys.readouterr().err


# -- the targets on real data (slow) ----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(("dataset", "bar"), [("taylor", 0.307), ("seattle-weather", 0.73), ("msft", 1.07)])
def test_default_training_reaches_the_targets(tmp_path, dataset, bar):
    assert main(["train", "forecast", "--dataset", dataset, "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    forecaster = rnnkit.load(tmp_path / "run")
    result = app.backtest(forecaster, app.rebuild_series(forecaster), arima=False)
    rnnkit_row = result["table"]["rnnkit"]
    assert rnnkit_row["MASE"] < bar, result["table"]
    assert 0.75 <= rnnkit_row["coverage 80%"] <= 0.85, result["table"]


def test_evaluate_model_without_a_model_dir_returns_the_report(trained):
    forecaster = rnnkit.load(trained[0])
    out = app.evaluate_model(forecaster, {}, argparse.Namespace(data=None, stride=6, no_arima=True, model=None))
    assert out["report"].splitlines()[1].split()[:2] == ["method", "MAE"]
