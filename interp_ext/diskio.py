"""Atomic file writes and checked reads: every file a run holds is written through here.

A file is written to a temporary name in its own folder and renamed into place,
so a crash or Ctrl-C leaves either the old file or the new one, never half of
one. Reads of binary files turn a truncated or corrupt file into a
:class:`~interp_ext.errors.CheckpointError` that names it.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from interp_ext.errors import CheckpointError, RunError


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Write ``path`` by ``write(tmp)`` to a temporary file beside it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_dir(path: Path, write: Callable[[Path], None]) -> Path:
    """Write the folder ``path`` by ``write(tmp)`` into a temporary folder beside it, then move it
    into place (an existing folder is replaced whole): a reader never sees half of it."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        tmp.mkdir()
        write(tmp)
        if path.exists():
            old = _tmp(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def write_text(path: Path, text: str) -> Path:
    return atomic(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, payload) -> Path:
    return write_text(path, json.dumps(payload, indent=2, default=str))


def write_npy(path: Path, array: np.ndarray) -> Path:
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)

    return atomic(path, save)


def write_safetensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def write_parquet(path: Path, frame) -> Path:
    return atomic(path, lambda tmp: frame.to_parquet(tmp, index=False))


def read_json(path: Path, what: str = "file") -> dict:
    """A JSON file; a missing or unreadable one is a one-line :class:`RunError` naming it."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path} does not exist ({what})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(
            f"{path} is not valid JSON ({what}: {err}); restore it from a copy, or make the run again"
        ) from err


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning a truncated or corrupt file into a clear error."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{path} is corrupt or truncated ({err}); delete it to fall back to the previous checkpoint"
        ) from err


def safetensors_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{path} is corrupt or truncated ({err}); delete it to fall back to the previous checkpoint"
        ) from err
