"""Activations for SAEs over a run, and the pieces of lineage tracking.

Activations come from the run's recordings (``source="recorded"``) or are
generated on the fly by running the checkpoint on corpus windows
(``source="generate"``); ``auto`` uses recordings when they hold enough vectors.
BOS positions are dropped (their activations are outliers shared by every sequence).
The ``sae`` family (:mod:`interp_ext.families.sae`) drives them over a run.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from interp_ext.data import sample_sequences
from interp_ext.errors import MeasureError

log = logging.getLogger("interp_ext")


class HookNotRecordedError(MeasureError):
    """The hook was not recorded and on-the-fly generation is disabled."""


def token_set(run, n_tokens: int, seed: int = 0) -> torch.Tensor:
    """Corpus windows [n_seq, n_ctx] (BOS first) for generating activations: fixed per run."""
    n_ctx = run.config.model.n_ctx
    rng = np.random.default_rng([0x5AE, seed])
    bos = run.bos
    n_seq = max(1, math.ceil(n_tokens / (n_ctx - 1)))
    return torch.from_numpy(sample_sequences(run.train_tokens(), n_seq, n_ctx, bos, rng))


@torch.no_grad()
def hook_activations(model, tokens: torch.Tensor, hook: str, batch: int = 64) -> torch.Tensor:
    """Activations at ``hook`` for every non-BOS position: [n_seq * (pos - 1), d]."""
    out = []
    for i in range(0, tokens.shape[0], batch):
        _, cache = model.run_with_cache(
            tokens[i : i + batch], names_filter=[hook], return_type=None
        )
        act = cache[hook][:, 1:]
        out.append(act.reshape(-1, act.shape[-1]).float().cpu())
    return torch.cat(out)


def activations_for(
    run, seed: int, step: int, hook: str, source: str, n_tokens: int, settings
) -> torch.Tensor:
    recorded = hook in run.config.record.hooks
    if source == "recorded" and not recorded:
        raise HookNotRecordedError(
            f"hook {hook!r} was not recorded in {run.path}; recorded hooks: {run.config.record.hooks or 'none'}. "
            "Pick one of those, or use source='generate' to run the checkpoint on corpus text"
        )
    if recorded and source in ("recorded", "auto"):
        acts = run.activations(seed, step)[hook]
        acts = (
            acts[:, 1:].reshape(-1, acts.shape[-1])
            if acts.ndim == 3
            else acts.reshape(-1, acts.shape[-1])
        )
        if source == "recorded" or acts.shape[0] >= settings.min_tokens_per_latent * settings.width:
            return acts.float()
    model = run.model(seed, step)
    return hook_activations(model, token_set(run, n_tokens).to(model.cfg.device), hook)


def earlier_occurrence(tokens: torch.Tensor) -> torch.Tensor:
    """1 where the token at a position appeared earlier in its sequence (BOS excluded): [n_seq, pos - 1]."""
    n, p = tokens.shape
    out = torch.zeros(n, p - 1)
    for b in range(n):
        seen: set[int] = set()
        for i in range(1, p):
            t = int(tokens[b, i])
            out[b, i - 1] = float(t in seen)
            seen.add(t)
    return out


def eval_features(
    run, path: Path, seed: int, step: int, hook: str, eval_tokens: torch.Tensor
) -> torch.Tensor:
    """Latent activations of the SAE saved at ``path`` for (seed, step) on the evaluation tokens."""
    from interp_ext.sae_tracking.train import encode, load_sae

    model = run.model(seed, step)
    return encode(load_sae(path), hook_activations(model, eval_tokens.to(model.cfg.device), hook))


def birth_step(lineage: pd.DataFrame, step: int, feature: int, first_step: int) -> float:
    """Follow a feature back through persisted/split links to the step where it appeared."""
    current = feature
    while True:
        link = lineage[
            (lineage.step_to == step)
            & (lineage.feature_to == current)
            & lineage.event.isin(["persisted", "split"])
        ]
        if link.empty:
            return float(step)
        current = int(link.feature_from.iloc[0])
        step = int(link.step_from.iloc[0])
        if step == first_step:
            return float(first_step)
