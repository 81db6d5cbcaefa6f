"""Atomic checkpoints: safetensors for tensors, JSON for everything else. No pickle, ever.

A checkpoint is a directory ``step-XXXXXXXX/`` holding ``<group>.safetensors`` files and a
``meta.json`` that records the SHA-256 of each of them. It is written under a temporary name,
every file fsync'ed, then renamed into place (an atomic step), so a kill at any moment leaves
either the whole checkpoint or none. Loading verifies the hashes; a damaged checkpoint is
reported and the previous one is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

FORMAT_VERSION = 1
PREFIX = "step-"


class CheckpointError(ValueError):
    """A checkpoint or model file that cannot be used (missing, damaged, or not safetensors)."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file so that readers see the old or the new content, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


def atomic_save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_tensors(path: Path) -> dict[str, Tensor]:
    """Load a safetensors file; anything else (a pickle, a truncated file) is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a valid safetensors file ({error}); rnnkit never loads pickles") from error


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError as error:
        raise CheckpointError(f"{path} is missing") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def save_checkpoint(root: Path, step: int, tensors: dict[str, dict[str, Tensor]], meta: dict[str, Any]) -> Path:
    """Write ``root/step-XXXXXXXX`` atomically; returns its path. An existing one is kept."""
    root = Path(root)
    final = root / f"{PREFIX}{step:08d}"
    if final.exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    files = {}
    for group, group_tensors in tensors.items():
        path = tmp / f"{group}.safetensors"
        save_file({k: v.detach().contiguous() for k, v in group_tensors.items()}, str(path))
        _fsync(path)
        files[path.name] = sha256(path)
    with open(tmp / "meta.json", "w", encoding="utf-8") as handle:
        json.dump({"format": FORMAT_VERSION, "step": step, "files": files, **meta}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    _fsync(tmp)
    os.rename(tmp, final)
    _fsync(root)
    return final


def load_checkpoint(path: Path) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
    """Read and verify one checkpoint directory: ``(tensors by group, meta)``."""
    path = Path(path)
    meta = read_json(path / "meta.json")
    if meta.get("format") != FORMAT_VERSION or not isinstance(meta.get("files"), dict):
        raise CheckpointError(f"{path} has an unknown checkpoint format {meta.get('format')!r}")
    tensors = {}
    for name, digest in meta["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing")
        if sha256(file) != digest:
            raise CheckpointError(f"{file} is damaged (its SHA-256 does not match meta.json)")
        tensors[name.removesuffix(".safetensors")] = load_tensors(file)
    return tensors, meta


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories under ``root``, newest (highest step) first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]), reverse=True)


def load_latest(root: Path) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any], Path] | None:
    """The newest checkpoint that verifies; damaged ones are reported and skipped."""
    candidates = list_checkpoints(root)
    for path in candidates:
        try:
            tensors, meta = load_checkpoint(path)
        except CheckpointError as error:
            warnings.warn(f"skipping damaged checkpoint: {error}", RuntimeWarning, stacklevel=2)
            continue
        return tensors, meta, path
    if candidates:
        raise CheckpointError(f"no usable checkpoint in {root}: all {len(candidates)} are damaged")
    return None


def prune(root: Path, keep_last: int, keep_steps: set[int] = frozenset()) -> None:
    """Delete all but the newest ``keep_last`` checkpoints and those in ``keep_steps``, and
    leftovers of interrupted writes."""
    root = Path(root)
    for path in list_checkpoints(root)[keep_last:]:
        if int(path.name[len(PREFIX) :]) not in keep_steps:
            shutil.rmtree(path, ignore_errors=True)
    for leftover in root.glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
