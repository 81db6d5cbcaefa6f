"""The README's Python examples run as written.

A block that needs files first (a trained model, its data) is preceded by a comment
``<!-- setup: NAME -->``; the test makes them in a temporary working directory.
"""

import re
from pathlib import Path

import numpy as np
import pandas as pd

from rnnkit.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def forecast_setup() -> None:
    """``load.csv`` (hourly, one target ``load``) and a small forecaster in ``runs/forecast``."""
    times = pd.date_range("2024-01-01", periods=24 * 7 * 3, freq="h")
    load = 40_000 + 3_000 * np.sin(2 * np.pi * times.hour.to_numpy() / 24)
    pd.DataFrame({"time": times, "load": load}).to_csv("load.csv", index=False)
    argv = ["train", "forecast", "--data", "load.csv", "--time-col", "time", "--target", "load", "--horizon", "6",
            "--lookback", "24", "--hidden", "8", "--members", "1", "--steps", "5", "--eval-every", "5",
            "--out", "runs/forecast", "--no-progress"]  # fmt: skip
    assert main(argv) == 0


SETUPS = {"forecast": forecast_setup}


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"(?:<!-- setup: (\w+) -->\n)?```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has Python examples"
    monkeypatch.chdir(tmp_path)
    for setup, block in blocks:
        if setup:
            SETUPS[setup]()
        exec(compile(block, str(README), "exec"), {})
