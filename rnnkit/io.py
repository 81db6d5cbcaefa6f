"""Model directories: ``model.safetensors`` (weights) + ``config.json`` (what rebuilds the model).

``config.json`` holds ``{"format": 1, "app": <application>, "model": <its description>, ...}``;
:func:`rnnkit.load` reads ``app`` and lets that application rebuild its object.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from rnnkit.train.checkpoint import CheckpointError, atomic_save_tensors, atomic_write_text, load_tensors, read_json

FORMAT_VERSION = 1
WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save_model(
    directory: Path, app: str, description: dict[str, Any], model: nn.Module, extra: dict[str, Any] | None = None
) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(directory / WEIGHTS, {k: v.detach().clone() for k, v in model.state_dict().items()})
    config = {"format": FORMAT_VERSION, "app": app, "model": description, **(extra or {})}
    atomic_write_text(directory / CONFIG, json.dumps(config, indent=1))


def read_model_dir(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(config, weights)`` of a model directory, with one-line errors for what is missing."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"model directory {directory} does not exist")
    for name in (CONFIG, WEIGHTS):
        if not (directory / name).is_file():
            raise CheckpointError(f"model directory {directory} has no {name} (train a model into it first)")
    config = read_json(directory / CONFIG)
    if config.get("format") != FORMAT_VERSION or "app" not in config:
        raise CheckpointError(f"{directory / CONFIG} is not an rnnkit model config")
    return config, load_tensors(directory / WEIGHTS)


def load(directory: str | Path) -> Any:
    """Load a model directory written by ``rnnkit train <app>``; returns the app's model object."""
    from rnnkit.apps import get_app

    config, weights = read_model_dir(Path(directory))
    return get_app(config["app"]).load(config, weights)
