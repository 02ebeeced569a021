"""SAEs over a run: one per (seed, checkpoint, hook), lineage, universality, induction features.

Activations come from the run's recordings (``source="recorded"``) or are
generated on the fly by running the checkpoint on corpus windows
(``source="generate"``); ``auto`` uses recordings when they hold enough vectors.
BOS positions are dropped (their activations are outliers shared by every sequence).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from interp_ext.data import sample_sequences
from interp_ext.sae_tracking.matching import activation_correlation, match_features, similarity_matrix, universality
from interp_ext.sae_tracking.train import SAESettings, ce_recovered, encode, load_sae, sae_quality, save_sae, train_sae

log = logging.getLogger("interp_ext")


class HookNotRecordedError(ValueError):
    """The hook was not recorded and on-the-fly generation is disabled."""


def sae_dir(run, seed: int, step: int, hook: str) -> Path:
    return run.path / "saes" / f"seed={seed}" / f"step={step}" / hook


def token_set(run, n_tokens: int, seed: int = 0) -> torch.Tensor:
    """Corpus windows [n_seq, n_ctx] (BOS first) for generating activations: fixed per run."""
    n_ctx = run.config.model.n_ctx
    rng = np.random.default_rng([0x5AE, seed])
    bos = run.tokenizer().convert_tokens_to_ids("<|endoftext|>")
    n_seq = max(1, math.ceil(n_tokens / (n_ctx - 1)))
    return torch.from_numpy(sample_sequences(run.train_tokens(), n_seq, n_ctx, bos, rng))


@torch.no_grad()
def hook_activations(model, tokens: torch.Tensor, hook: str, batch: int = 64) -> torch.Tensor:
    """Activations at ``hook`` for every non-BOS position: [n_seq * (pos - 1), d]."""
    out = []
    for i in range(0, tokens.shape[0], batch):
        _, cache = model.run_with_cache(tokens[i : i + batch], names_filter=[hook], return_type=None)
        act = cache[hook][:, 1:]
        out.append(act.reshape(-1, act.shape[-1]).float().cpu())
    return torch.cat(out)


def activations_for(run, seed: int, step: int, hook: str, source: str, n_tokens: int, settings: SAESettings) -> torch.Tensor:
    recorded = hook in run.config.record.hooks
    if source == "recorded" and not recorded:
        raise HookNotRecordedError(
            f"hook {hook!r} was not recorded in {run.path}; recorded hooks: {run.config.record.hooks or 'none'}. "
            "Pick one of those, or use source='generate' to run the checkpoint on corpus text"
        )
    if recorded and source in ("recorded", "auto"):
        acts = run.activations(seed, step)[hook]
        acts = acts[:, 1:].reshape(-1, acts.shape[-1]) if acts.ndim == 3 else acts.reshape(-1, acts.shape[-1])
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


def track_run(
    run,
    hook: str,
    steps: list[int] | None = None,
    seeds: list[int] | None = None,
    width: int = 256,
    k: int = 8,
    source: str = "auto",
    n_tokens: int = 32_768,
    threshold: float = 0.7,
    method: str = "both",
    progress: bool = True,
) -> pd.DataFrame:
    """Train SAEs at each (seed, step), measure them, match them and write rows and lineages.

    Rows (``family="sae"``, component = hook): ``l0``, ``explained_variance``,
    ``dead_fraction``, ``ce_recovered``; lineage counts ``n_persisted`` ...
    ``n_merged`` at the later step of each pair; ``universality`` (seed -1) per
    step; ``induction_feature_corr`` (best feature's correlation with "token
    appeared earlier") per step and ``induction_feature_birth_step`` per seed.
    Lineage tables go to ``saes/seed=<s>/lineage_<hook>.parquet``.
    """
    from tqdm.auto import tqdm

    from interp_ext import distributed

    settings = SAESettings(width=width, k=k)
    seeds = run.seeds if seeds is None else list(seeds)
    steps = run.steps if steps is None else list(steps)
    if source not in ("auto", "recorded", "generate"):
        raise ValueError(f"source={source!r}: choose 'auto', 'recorded' or 'generate'")
    eval_tokens = token_set(run, 4096, seed=1)
    probe = run.probe_set()["lm"]
    probe = probe.reshape(-1, probe.shape[-1])[:64]
    indicator = earlier_occurrence(probe).flatten()
    feats_eval: dict[tuple[int, int], torch.Tensor] = {}
    # under torchrun each rank trains and tracks its share of the seeds
    mine = distributed.shard(seeds, run.device)
    bar = tqdm(total=len(mine) * len(steps), desc=f"SAEs {hook}", disable=not progress, dynamic_ncols=True)
    for seed in mine:
        rows: list[dict] = []
        prev = None
        lineage = []
        best_feature_by_step: dict[int, int] = {}
        for step in steps:
            model = run.model(seed, step)
            path = sae_dir(run, seed, step, hook)
            if (path / "cfg.json").exists():
                sae = load_sae(path)
            else:
                acts = activations_for(run, seed, step, hook, source, n_tokens, settings)
                trained = train_sae(acts, settings, hook)
                save_sae(trained, path)
                sae = load_sae(path)
            eval_acts = hook_activations(model, eval_tokens.to(model.cfg.device), hook)
            q = sae_quality(sae, eval_acts)
            q["ce_recovered"] = ce_recovered(model, sae, eval_tokens[:32].to(model.cfg.device), hook)
            f_eval = encode(sae, eval_acts)
            feats_eval[(seed, step)] = f_eval
            f_probe = encode(sae, hook_activations(model, probe.to(model.cfg.device), hook))
            corr = activation_correlation(f_probe, indicator[:, None])[:, 0]
            best = int(np.argmax(corr))
            best_feature_by_step[step] = best
            q["induction_feature_corr"] = float(corr[best])
            rows += [{"seed": seed, "step": step, "family": "sae", "metric": name, "component": hook, "value": v} for name, v in q.items()]
            w_dec = sae.W_dec.detach()
            if prev is not None:
                sim = similarity_matrix(prev[1], w_dec, prev[2], f_eval, method)
                events = match_features(sim, threshold)
                rows += [{"seed": seed, "step": step, "family": "sae", "metric": name, "component": hook, "value": float(v)} for name, v in events.counts.items()]
                lineage.append(events.pairs.assign(step_from=prev[0], step_to=step))
            prev = (step, w_dec, f_eval)
            bar.update(1)
        if lineage:
            table = pd.concat(lineage, ignore_index=True)
            out = run.path / "saes" / f"seed={seed}" / f"lineage_{hook}.parquet"
            table.to_parquet(out, index=False)
            birth = birth_step(table, steps[-1], best_feature_by_step[steps[-1]], steps[0])
            rows.append({"seed": seed, "step": -1, "family": "sae", "metric": "induction_feature_birth_step", "component": hook, "value": birth})
        run.append_metrics(rows)
    bar.close()
    # universality needs every seed's SAE at a step: once all ranks saved theirs, each rank takes a share of the steps
    distributed.barrier()
    rows = []
    for step in distributed.share(steps):
        present = [s for s in seeds if (s, step) in feats_eval or (sae_dir(run, s, step, hook) / "cfg.json").exists()]
        feats = {s: feats_eval[(s, step)] if (s, step) in feats_eval else eval_features(run, s, step, hook, eval_tokens) for s in present}
        vals = [universality(activation_correlation(feats[a], feats[b]), threshold) for i, a in enumerate(present) for b in present[i + 1 :]]
        if vals:
            rows.append({"seed": -1, "step": step, "family": "sae", "metric": "universality", "component": hook, "value": float(np.mean(vals))})
    run.append_metrics(rows)
    distributed.barrier()
    m = run.metrics("sae")
    m = m[(m.component == hook) & m.seed.isin(seeds + [-1]) & m.step.isin(steps + [-1])]
    return m.reset_index(drop=True)


def eval_features(run, seed: int, step: int, hook: str, eval_tokens: torch.Tensor) -> torch.Tensor:
    """Latent activations of the saved SAE of (seed, step) on the evaluation tokens."""
    model = run.model(seed, step)
    return encode(load_sae(sae_dir(run, seed, step, hook)), hook_activations(model, eval_tokens.to(model.cfg.device), hook))


def birth_step(lineage: pd.DataFrame, step: int, feature: int, first_step: int) -> float:
    """Follow a feature back through persisted/split links to the step where it appeared."""
    current = feature
    while True:
        link = lineage[(lineage.step_to == step) & (lineage.feature_to == current) & lineage.event.isin(["persisted", "split"])]
        if link.empty:
            return float(step)
        current = int(link.feature_from.iloc[0])
        step = int(link.step_from.iloc[0])
        if step == first_step:
            return float(first_step)
