"""Per-block gradient Gram matrices kept beside the metrics: the geometry family writes them, the
basis-free cross-seed comparison (Stream 2) reads them instead of recomputing the gradients.

``<run>/grams/<geometry settings id>/seed=<s>/step=<t>.safetensors``: block name -> B x B Gram of
one checkpoint's per-batch gradients.
"""

from __future__ import annotations

import torch

from interp_ext import diskio


def gram_path(run, settings_id: str, seed: int, step: int):
    return run.layout.artifact("grams", settings_id, seed, step, ".safetensors")


def save_grams(run, settings_id: str, seed: int, step: int, grams: dict[str, torch.Tensor]) -> None:
    if grams:
        diskio.write_safetensors(gram_path(run, settings_id, seed, step), grams)


def load_grams(run, settings_id: str, seed: int, step: int) -> dict[str, torch.Tensor] | None:
    """The saved Grams, or None when that checkpoint's were not kept."""
    path = gram_path(run, settings_id, seed, step)
    return diskio.load_safetensors(path) if path.exists() else None
