"""Checkpoints: the run's own format, and the source an imported checkpoint is read from.

A native checkpoint is one safetensors file per seed and step: ``params/<name>``,
``exp_avg/<name>``, ``exp_avg_sq/<name>`` and metadata (format, seed, step, AdamW's
step count). Batches are a pure function of (seed, step) and training draws no
other random numbers, so the step is the whole RNG and data state.

An imported checkpoint (``interp-ext import``) stays where it was made and is
converted when read (:func:`load_imported`): its weights and AdamW moments go
through TransformerLens' own per-architecture converters.
"""

from __future__ import annotations

from pathlib import Path

import torch

from interp_ext.diskio import load_safetensors, safetensors_metadata, write_safetensors
from interp_ext.errors import CheckpointError

FORMAT = "interp-ext-checkpoint/1"


def save_checkpoint(
    path: Path,
    params: dict[str, torch.Tensor],
    seed: int,
    step: int,
    exp_avg: dict[str, torch.Tensor] | None = None,
    exp_avg_sq: dict[str, torch.Tensor] | None = None,
    adam_step: float = 0.0,
) -> None:
    """One seed's checkpoint: parameters, AdamW state and the data position (= step).

    Batches are a pure function of (seed, step) and training draws no other
    random numbers, so the step is the whole RNG and data state: no generator
    state is stored (a resumed run's checkpoints equal the uninterrupted run's).
    """
    tensors = {f"params/{k}": v for k, v in params.items()}
    if exp_avg is not None and exp_avg_sq is not None:
        tensors.update({f"exp_avg/{k}": v for k, v in exp_avg.items()})
        tensors.update({f"exp_avg_sq/{k}": v for k, v in exp_avg_sq.items()})
    meta = {
        "format": FORMAT,
        "seed": str(seed),
        "step": str(step),
        "adam_step": repr(float(adam_step)),
    }
    write_safetensors(path, tensors, meta)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns:
        dict with ``params``, ``exp_avg``, ``exp_avg_sq`` (empty dicts at step 0),
        ``adam_step``, ``seed`` and ``step``.
    """
    tensors = load_safetensors(path)
    meta = safetensors_metadata(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an interp-ext checkpoint (metadata {meta})")
    out: dict = {"params": {}, "exp_avg": {}, "exp_avg_sq": {}}
    for key, value in tensors.items():
        kind, _, name = key.partition("/")
        if kind in out:  # files of earlier versions also hold rng/torch_cpu, unused
            out[kind][name] = value
    out.update(
        seed=int(meta["seed"]),
        step=int(meta["step"]),
        adam_step=float(meta["adam_step"]),
    )
    return out
