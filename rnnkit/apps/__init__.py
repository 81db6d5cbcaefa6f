"""Applications. Each is a module with the same hooks, registered here by name:

- ``NAME``, ``CELL_CHOICES``, ``TRAIN_DEFAULTS`` (its defaults for the shared training flags;
  an optional ``"float32"`` entry replaces some of them when bf16 mode is off);
- ``add_arguments(parser)``: its own flags for ``rnnkit train <name>``;
- ``build(args, config, context) -> (task, batches)``: what the Trainer trains;
- ``load(config, weights)``: the trained object that ``rnnkit.load`` returns;
- ``evaluate_model(loaded, config, args) -> metrics``: ``rnnkit evaluate``.
"""

from __future__ import annotations

import importlib
from typing import Any

APPS: dict[str, str] = {
    "charlm": "rnnkit.apps.charlm",
    "memory": "rnnkit.apps.memory",
    "translate": "rnnkit.apps.translate",
    "forecast": "rnnkit.apps.forecast",
    "sentiment": "rnnkit.apps.sentiment",
}


def get_app(name: str) -> Any:
    if name not in APPS:
        raise ValueError(f"unknown application {name!r}; available: {', '.join(sorted(APPS))}")
    return importlib.import_module(APPS[name])
