"""``sae``: SAE features tracked across checkpoints with sae-lens.

Per checkpoint: one TopK SAE on the hook's activations (trained with sae-lens'
``SAETrainer``, saved in sae-lens' format under ``<run>/saes/<settings id>/seed=<s>/step=<t>/``),
its L0, explained variance, dead fraction and CE loss recovered, the best
feature's correlation with "this token appeared earlier in its context", and the
lineage events against the previous checkpoint's SAE (Hungarian matching on
decoder cosine and activation correlation). Per seed: the lineage table
(``lineage.parquet`` beside the SAEs) and the birth step of the most
induction-related feature. Across seeds per checkpoint: feature universality by
activation correlation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from interp_ext import diskio
from interp_ext.measurement.runner import (
    Checkpoint,
    Family,
    MeasureError,
    Settings,
    closest_first,
    setting,
)
from interp_ext.sae_tracking.matching import (
    activation_correlation,
    decoder_cosine,
    match_features,
    similarity_matrix,
    universality,
)
from interp_ext.sae_tracking.tracking import (
    birth_step,
    earlier_occurrence,
    hook_activations,
    token_set,
)

# sae-lens is imported where an SAE is trained or loaded, not when the command line starts

QUALITY = (
    "l0",
    "explained_variance",
    "dead_fraction",
    "ce_recovered",
    "induction_feature_corr",
    "decoder_match_share",
)
SOURCES = ("auto", "recorded", "generate")
SAES = "saes"  # the run's folder of trained SAEs: saes/<settings>/seed=<s>/step=<t>/
METHODS = ("both", "decoder", "activation")


@dataclass(frozen=True)
class SAETrackingSettings(Settings):
    family = "sae"

    hook: str = setting("", "TransformerLens hook name, e.g. blocks.1.hook_resid_post.")
    width: int = setting(256, "SAE latents (d_sae).")
    k: int = setting(8, "TopK active latents per token.")
    lr: float = setting(1e-3, "Adam learning rate of each SAE.")
    epochs: int = setting(8, "Passes over the activations.")
    source: str = setting(
        "auto",
        "Where activations come from: recorded (the run's recordings only), generate (run the "
        "checkpoint on corpus text) or auto.",
    )
    n_tokens: int = setting(
        32_768, "Activation vectors generated per checkpoint (source generate/auto)."
    )
    threshold: float = setting(0.7, "Similarity threshold for a match.")
    method: str = setting(
        "both", "Match by decoder cosine, activation correlation, or both (their minimum)."
    )
    warm_start: bool = setting(
        False,
        "Start each checkpoint's SAE from the previous checkpoint's (SAE-Track) instead of a fresh one.",
    )

    def check(self) -> None:
        self.require(
            bool(self.hook),
            "hook",
            "name a TransformerLens hook point, e.g. blocks.1.hook_resid_post",
        )
        self.require(self.width >= 2, "width", "must be >= 2")
        self.require(1 <= self.k <= self.width, "k", f"must lie in [1, width={self.width}]")
        self.require(
            self.lr > 0 and self.epochs >= 1 and self.n_tokens >= 1,
            "lr",
            "lr must be > 0, epochs and n_tokens >= 1",
        )
        self.require(self.source in SOURCES, "source", f"choose one of {SOURCES}")
        self.require(0 < self.threshold <= 1, "threshold", "must lie in (0, 1]")
        self.require(self.method in METHODS, "method", f"choose one of {METHODS}")

    @property
    def training(self):
        from interp_ext.sae_tracking.train import SAESettings

        return SAESettings(width=self.width, k=self.k, lr=self.lr, epochs=self.epochs)


def check_vector_hook(model, hook: str) -> None:
    """An SAE reads one vector per token: the hook's activation must be [batch, pos, d]."""
    _, cache = model.run_with_cache(
        torch.zeros(1, 2, dtype=torch.long), names_filter=[hook], return_type=None
    )
    shape = tuple(cache[hook].shape)
    if len(shape) != 3:
        vectors = [h for h in model.hook_dict if h.endswith(("hook_resid_post", "hook_resid_mid"))]
        raise MeasureError(
            f"hook {hook!r} is not a vector activation (shape {list(shape)} on a [1, 2] batch; an SAE needs "
            f"[batch, pos, d]); use a residual-stream hook such as {vectors[:2]}"
        )


@dataclass
class Tracker:
    """One seed's previous SAE (for lineage) and the fixed token sets."""

    eval_tokens: torch.Tensor
    probe: torch.Tensor
    indicator: torch.Tensor
    prev: tuple[int, torch.Tensor, torch.Tensor] | None = None


class SAETracking(Family):
    name = "sae"
    report_order = 110
    settings = SAETrackingSettings
    stateful = True
    summary_metrics = QUALITY

    def prepare(self, run, settings: SAETrackingSettings) -> SAETrackingSettings:
        from interp_ext.models import build_model

        model = build_model(run.config.model, run.d_vocab)
        valid = list(model.hook_dict)
        if settings.hook not in valid:
            raise MeasureError(
                f"unknown hook {settings.hook!r} for this model; valid hook names (closest first): {closest_first(settings.hook, valid)}"
            )
        check_vector_hook(model, settings.hook)
        if settings.source == "recorded" and settings.hook not in run.config.record.hooks:
            raise MeasureError(
                f"hook {settings.hook!r} was not recorded in {run.path}; recorded hooks: {run.config.record.hooks or 'none'}. "
                "Pick one of those, or use source='generate' to run the checkpoint on corpus text"
            )
        return settings

    def start_seed(self, run, settings: SAETrackingSettings, seed: int) -> Tracker:
        probe = run.probe_set()["lm"]
        probe = probe.reshape(-1, probe.shape[-1])[:64]
        return Tracker(token_set(run, 4096, seed=1), probe, earlier_occurrence(probe).flatten())

    def replay_steps(
        self, settings: SAETrackingSettings, sequence: list[int], todo: list[int], state: Tracker
    ) -> set[int]:
        first = sequence.index(todo[0])
        return {sequence[first - 1]} if first > 0 else set()

    def checkpoint(
        self, ctx: Checkpoint, settings: SAETrackingSettings, state: Tracker
    ) -> pd.DataFrame | None:
        from interp_ext.sae_tracking.train import ce_recovered, encode, load_sae, sae_quality

        path = ctx.run.layout.artifact(SAES, settings.id, ctx.seed, ctx.step)
        ensure_sae(ctx, settings, path, state.prev[0] if state.prev else None)
        sae, model = load_sae(path), ctx.model
        eval_acts = hook_activations(model, state.eval_tokens.to(model.cfg.device), settings.hook)
        f_eval, w_dec, prev = encode(sae, eval_acts), sae.W_dec.detach(), state.prev
        # a checkpoint holding the previous one's weights again (found at import) is no step: the
        # lineage skips it, and the next checkpoint is matched against the last distinct one
        duplicate = ctx.step in ctx.run.duplicate_steps(ctx.seed)
        if not duplicate:
            state.prev = (ctx.step, w_dec, f_eval)
        if ctx.replay:
            return None
        q = sae_quality(sae, eval_acts)
        q["ce_recovered"] = ce_recovered(
            model, sae, state.eval_tokens[:32].to(model.cfg.device), settings.hook
        )
        f_probe = encode(
            sae, hook_activations(model, state.probe.to(model.cfg.device), settings.hook)
        )
        corr = activation_correlation(f_probe, state.indicator[:, None])[:, 0]
        diskio.write_npy(
            path / "induction_corr.npy", corr
        )  # every feature's, to follow one through training
        q["induction_feature_corr"] = float(corr.max())
        q["induction_feature"] = float(np.argmax(corr))
        if prev is not None and not duplicate:
            q.update(lineage(prev, ctx.step, w_dec, f_eval, settings, path.parent))
        return pd.DataFrame(
            [{"metric": m, "component": settings.hook, "value": v} for m, v in q.items()]
        )

    def finish_seed(
        self, run, settings: SAETrackingSettings, seed: int, rows: pd.DataFrame
    ) -> pd.DataFrame | None:
        folder = run.layout.artifact(SAES, settings.id, seed)
        steps = sorted(rows[rows.metric == "l0"].step.unique())
        parts = [folder / "lineage" / f"step={t}.parquet" for t in steps[1:]]
        parts = [p for p in parts if p.exists()]
        if not parts:
            return None
        table = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        diskio.write_parquet(folder / "lineage.parquet", table)
        best = int(
            rows[(rows.metric == "induction_feature") & (rows.step == steps[-1])].value.iloc[0]
        )
        birth = birth_step(table, int(steps[-1]), best, int(steps[0]))
        out = [
            {
                "step": -1,
                "metric": "induction_feature_birth_step",
                "component": settings.hook,
                "value": birth,
            }
        ]
        for step, feature in followed(table, int(steps[-1]), best).items():
            corr = folder / f"step={step}" / "induction_corr.npy"
            if corr.exists():
                out += [
                    {
                        "step": step,
                        "metric": "followed_feature",
                        "component": settings.hook,
                        "value": float(feature),
                    },
                    {
                        "step": step,
                        "metric": "followed_feature_corr",
                        "component": settings.hook,
                        "value": float(np.load(corr)[feature]),
                    },
                ]
        return pd.DataFrame(out)

    def describe(self, rows: pd.DataFrame) -> list[str]:
        q = rows[rows.metric.isin(QUALITY[:4]) & (rows.seed >= 0)].groupby("metric")["value"].mean()
        lines = [
            "SAE quality (mean over seeds and checkpoints): "
            + ", ".join(f"{m} {v:.3f}" for m, v in q.items())
        ]
        birth = rows[rows.metric == "induction_feature_birth_step"].value
        if len(birth):
            lines.append(
                f"birth step of the most induction-related feature: {birth.mean():.0f} (mean over seeds)"
            )
        return lines

    def cross_seed_step(
        self, run, settings: SAETrackingSettings, seeds: list[int], step: int
    ) -> pd.DataFrame | None:
        from interp_ext.sae_tracking.tracking import eval_features

        eval_tokens = token_set(run, 4096, seed=1)
        present = [
            s
            for s in seeds
            if (run.layout.artifact(SAES, settings.id, s, step) / "cfg.json").exists()
        ]
        feats = {
            s: eval_features(
                run,
                run.layout.artifact(SAES, settings.id, s, step),
                s,
                step,
                settings.hook,
                eval_tokens,
            )
            for s in present
        }
        vals = [
            universality(activation_correlation(feats[a], feats[b]), settings.threshold)
            for i, a in enumerate(present)
            for b in present[i + 1 :]
        ]
        if not vals:
            return None
        return pd.DataFrame(
            [{"metric": "universality", "component": settings.hook, "value": float(np.mean(vals))}]
        )

    def report(self, page) -> list[str]:
        from interp_ext.families.sae.report import section

        return section(page)


__all__ = ["SAETracking", "SAETrackingSettings"]


def ensure_sae(ctx: Checkpoint, settings: SAETrackingSettings, path, previous: int | None) -> None:
    """Train the checkpoint's SAE unless a valid one is saved; a warm-started SAE is valid only if it
    continued the same predecessor (``warm_from.json``)."""
    from interp_ext.sae_tracking.tracking import activations_for
    from interp_ext.sae_tracking.train import save_sae, train_sae

    origin = {"warm_from": previous if settings.warm_start else None}
    marker = path / "warm_from.json"
    valid = (
        not settings.warm_start
        or ctx.replay
        or (marker.exists() and json.loads(marker.read_text()) == origin)
    )
    if (
        path / "cfg.json"
    ).exists() and valid:  # a replayed step only rebuilds the state from its saved SAE
        return

    acts = activations_for(
        ctx.run,
        ctx.seed,
        ctx.step,
        settings.hook,
        settings.source,
        settings.n_tokens,
        settings.training,
    )
    start = (
        ctx.run.layout.artifact(SAES, settings.id, ctx.seed, previous)
        if settings.warm_start and previous is not None
        else None
    )
    save_sae(train_sae(acts, settings.training, settings.hook, start_from=start), path)
    diskio.write_json(marker, origin)


def lineage(
    prev: tuple,
    step: int,
    w_dec: torch.Tensor,
    f_eval: torch.Tensor,
    settings: SAETrackingSettings,
    folder,
) -> dict[str, float]:
    """Events against the previous checkpoint's SAE (saved as a lineage part) and the share of features
    whose decoder direction is still there (best decoder cosine > 0.9)."""
    events = match_features(
        similarity_matrix(prev[1], w_dec, prev[2], f_eval, settings.method), settings.threshold
    )
    pairs = events.pairs.assign(step_from=prev[0], step_to=step)
    diskio.write_parquet(folder / "lineage" / f"step={step}.parquet", pairs)
    cosine = decoder_cosine(prev[1], w_dec)
    out = {name: float(v) for name, v in events.counts.items()}
    out["decoder_match_share"] = float((cosine.max(axis=0) > 0.9).mean())
    return out


def followed(table: pd.DataFrame, step: int, feature: int) -> dict[int, int]:
    """step -> the feature a last-checkpoint feature came from, followed back through persisted links."""
    out = {step: feature}
    while True:
        link = table[
            (table.step_to == step) & (table.feature_to == feature) & (table.event == "persisted")
        ]
        if link.empty:
            return out
        feature, step = int(link.feature_from.iloc[0]), int(link.step_from.iloc[0])
        out[step] = feature
