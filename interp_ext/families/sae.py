"""``sae``: SAE features tracked across checkpoints with sae-lens (SPEC section 9).

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

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from interp_ext.runner import (
    Checkpoint,
    Family,
    MeasureError,
    Settings,
    closest_first,
    register,
    setting,
)
from interp_ext.sae_tracking.matching import (
    activation_correlation,
    match_features,
    similarity_matrix,
    universality,
)
from interp_ext.sae_tracking.tracking import (
    birth_step,
    earlier_occurrence,
    hook_activations,
    sae_dir,
    token_set,
)

# sae-lens is imported where an SAE is trained or loaded, not when the command line starts

QUALITY = ("l0", "explained_variance", "dead_fraction", "ce_recovered", "induction_feature_corr")
SOURCES = ("auto", "recorded", "generate")
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
        "recorded (the run's recordings only), generate (run the checkpoint on corpus text) or auto.",
    )
    n_tokens: int = setting(
        32_768, "Activation vectors generated per checkpoint (source generate/auto)."
    )
    threshold: float = setting(0.7, "Similarity threshold for a match.")
    method: str = setting(
        "both", "Match by decoder cosine, activation correlation, or both (their minimum)."
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


@dataclass
class Tracker:
    """One seed's previous SAE (for lineage) and the fixed token sets."""

    eval_tokens: torch.Tensor
    probe: torch.Tensor
    indicator: torch.Tensor
    prev: tuple[int, torch.Tensor, torch.Tensor] | None = None


@register
class SAETracking(Family):
    name = "sae"
    settings = SAETrackingSettings
    stateful = True
    summary_metrics = QUALITY

    def prepare(self, run, settings: SAETrackingSettings) -> SAETrackingSettings:
        from interp_ext.models import build_model

        valid = list(build_model(run.config.model, run.d_vocab).hook_dict)
        if settings.hook not in valid:
            raise MeasureError(
                f"unknown hook {settings.hook!r} for this model; valid hook names (closest first): {closest_first(settings.hook, valid)}"
            )
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
        from interp_ext.sae_tracking.tracking import activations_for
        from interp_ext.sae_tracking.train import (
            ce_recovered,
            encode,
            load_sae,
            sae_quality,
            save_sae,
            train_sae,
        )

        path = sae_dir(ctx.run, settings.id, ctx.seed, ctx.step)
        if not (path / "cfg.json").exists():
            acts = activations_for(
                ctx.run,
                ctx.seed,
                ctx.step,
                settings.hook,
                settings.source,
                settings.n_tokens,
                settings.training,
            )
            save_sae(train_sae(acts, settings.training, settings.hook), path)
        sae, model = load_sae(path), ctx.model
        eval_acts = hook_activations(model, state.eval_tokens.to(model.cfg.device), settings.hook)
        f_eval, w_dec, prev = encode(sae, eval_acts), sae.W_dec.detach(), state.prev
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
        q["induction_feature_corr"] = float(corr.max())
        q["induction_feature"] = float(np.argmax(corr))
        if prev is not None:
            events = match_features(
                similarity_matrix(prev[1], w_dec, prev[2], f_eval, settings.method),
                settings.threshold,
            )
            q.update({name: float(v) for name, v in events.counts.items()})
            pairs = events.pairs.assign(step_from=prev[0], step_to=ctx.step)
            (path.parent / "lineage").mkdir(exist_ok=True)
            pairs.to_parquet(path.parent / "lineage" / f"step={ctx.step}.parquet", index=False)
        return pd.DataFrame(
            [{"metric": m, "component": settings.hook, "value": v} for m, v in q.items()]
        )

    def finish_seed(
        self, run, settings: SAETrackingSettings, seed: int, rows: pd.DataFrame
    ) -> pd.DataFrame | None:
        folder = sae_dir(run, settings.id, seed)
        steps = sorted(rows[rows.metric == "l0"].step.unique())
        parts = [folder / "lineage" / f"step={t}.parquet" for t in steps[1:]]
        parts = [p for p in parts if p.exists()]
        if not parts:
            return None
        table = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        table.to_parquet(folder / "lineage.parquet", index=False)
        best = rows[(rows.metric == "induction_feature") & (rows.step == steps[-1])]
        birth = birth_step(table, int(steps[-1]), int(best.value.iloc[0]), int(steps[0]))
        return pd.DataFrame(
            [
                {
                    "step": -1,
                    "metric": "induction_feature_birth_step",
                    "component": settings.hook,
                    "value": birth,
                }
            ]
        )

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
        present = [s for s in seeds if (sae_dir(run, settings.id, s, step) / "cfg.json").exists()]
        feats = {
            s: eval_features(
                run, sae_dir(run, settings.id, s, step), s, step, settings.hook, eval_tokens
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


__all__ = ["SAETracking", "SAETrackingSettings"]
