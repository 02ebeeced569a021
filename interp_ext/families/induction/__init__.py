"""``induction``: induction and previous-token heads over training.

Per checkpoint: every head's induction, previous-token, duplicate-token and copying
scores, K-composition of every head pair, the in-context-learning score and the
repeated-sequence loss drop (``circuits.induction``). Per seed: the formation step
(steepest rise of the best layer >= 1 induction score), the heads detected at the
last measured checkpoint with their previous-token partners, and the mean-ablation
check. Across seeds: a t-interval of the formation step over seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import pandas as pd

from circuits.circuit import Circuit
from circuits.induction import (
    DEFAULT_PREV_THRESHOLD,
    DEFAULT_THRESHOLD,
    ablation_check,
    best_induction_score,
    circuit_from_scores,
    composition_baseline,
    detect_induction_heads,
    formation_step,
    frequent_tokens,
    head_scores,
    model_scores,
    previous_token_partners,
)
from interp_ext.measurement.probes import heldout_probe, repeated_probe
from interp_ext.measurement.runner import (
    Checkpoint,
    Family,
    MeasureError,
    Settings,
    setting,
)
from interp_ext.stats import t_interval


@dataclass(frozen=True)
class InductionSettings(Settings):
    family = "induction"
    # 1: no formation step for a seed whose heads never pass the detection threshold
    revision: ClassVar[int] = 1

    threshold: float = setting(DEFAULT_THRESHOLD, "Induction-score threshold for detection.")
    prev_threshold: float = setting(
        DEFAULT_PREV_THRESHOLD, "Previous-token score a partner head needs."
    )
    ablation_draws: int = setting(5, "Random-head draws for the ablation control.")
    top_tokens: int = setting(
        500, "Most frequent training tokens the copying score is restricted to."
    )

    def check(self) -> None:
        self.require(0 < self.threshold < 1, "threshold", "must lie in (0, 1)")
        self.require(0 <= self.prev_threshold < 1, "prev_threshold", "must lie in [0, 1)")
        self.require(self.ablation_draws >= 1, "ablation_draws", "must be >= 1")
        self.require(self.top_tokens >= 2, "top_tokens", "must be >= 2")


class Induction(Family):
    name = "induction"
    circuit_spec = "induction"
    gives_formation = True
    report_order = 10
    settings = InductionSettings
    summary_metrics = ("best_induction_score",)

    def prepare(self, run, settings: InductionSettings) -> InductionSettings:
        if run.config.model.n_layers < 2:
            raise MeasureError(
                f"induction heads need two layers (a previous-token head feeding a later head); {run.path} has {run.config.model.n_layers}"
            )
        return settings

    def circuit_of(self, run, seed: int, settings: InductionSettings, step: int | None = None):
        return induction_circuit(run, seed, settings, step)

    def start_seed(self, run, settings: InductionSettings, seed: int):
        return frequent_tokens(run.train_tokens(), run.d_vocab, settings.top_tokens)

    def checkpoint(self, ctx: Checkpoint, settings: InductionSettings, tokens) -> pd.DataFrame:
        scores = head_scores(ctx.model, repeated_probe(ctx.run), tokens)
        model_level = model_scores(ctx.model, repeated_probe(ctx.run), heldout_probe(ctx.run))
        model_level["best_induction_score"] = best_induction_score(scores)
        extra = pd.DataFrame(
            [{"metric": k, "component": "", "value": v} for k, v in model_level.items()]
        )
        return pd.concat([scores, extra], ignore_index=True)

    def finish_seed(
        self, run, settings: InductionSettings, seed: int, rows: pd.DataFrame
    ) -> pd.DataFrame:
        rows = rows[rows.step >= 0]
        best = rows[rows.metric == "best_induction_score"].sort_values("step")
        last = int(best.step.max())
        final = rows[rows.step == last][["metric", "component", "value"]]
        heads = detect_induction_heads(final, settings.threshold)
        partners = previous_token_partners(final, heads, settings.prev_threshold)
        abl = ablation_check(
            run.model(seed, last),
            repeated_probe(run),
            heads,
            n_random=settings.ablation_draws,
            exclude=heads + partners,
        )
        cfg = run.config.model
        out = [
            {
                "step": -1,
                "metric": "formation_step",
                "component": "",
                # the steepest rise of a score that never passes the threshold is noise, not formation
                "value": formation_step(best.step.to_numpy(), best.value.to_numpy())
                if heads
                else math.nan,
            },
            {"step": -1, "metric": "formed", "component": "", "value": float(bool(heads))},
            {
                "step": last,
                "metric": "k_composition_baseline",
                "component": "",
                "value": composition_baseline(cfg.d_model, cfg.d_head),
            },
            *(
                {"step": last, "metric": "ablation_loss_increase", "component": c, "value": abl[c]}
                for c in ("detected", "random")
            ),
            {
                "step": last,
                "metric": "ablation_random_size",
                "component": "",
                "value": float(abl["random_size"]),
            },
        ]
        out += [
            {"step": last, "metric": "detected_induction_head", "component": h, "value": 1.0}
            for h in heads
        ]
        out += [
            {"step": last, "metric": "detected_prev_token_head", "component": p, "value": 1.0}
            for p in partners
        ]
        return pd.DataFrame(out)

    def finish(self, run, settings: InductionSettings, rows: pd.DataFrame) -> pd.DataFrame:
        forms = (
            rows[(rows.metric == "formation_step") & (rows.seed >= 0)]
            .sort_values("seed")
            .value.to_numpy()
        )
        mean, lo, hi, n = t_interval(forms)  # over the seeds that formed (NaN elsewhere)
        names = (
            "formation_step/seed_mean",
            "formation_step/seed_lo",
            "formation_step/seed_hi",
            "formation_step/seed_n",
        )
        formed = rows[(rows.metric == "formed") & (rows.seed >= 0)].value
        values = (mean, lo, hi, n, float(formed.sum()), float(len(formed)))
        return pd.DataFrame(
            [
                {"step": -1, "metric": m, "component": "", "value": v}
                for m, v in zip((*names, "formed/seeds", "formed/seed_n"), values)
            ]
        )

    def describe(self, rows: pd.DataFrame) -> list[str]:
        lines = []
        for seed in sorted(s for s in rows.seed.unique() if s >= 0):
            d = rows[rows.seed == seed]
            best = d[d.metric == "best_induction_score"].sort_values("step")
            heads = d[d.metric == "detected_induction_head"].component.tolist()
            prev = d[d.metric == "detected_prev_token_head"].component.tolist()
            form = d[d.metric == "formation_step"].value
            abl = d[d.metric == "ablation_loss_increase"].set_index("component").value
            lines.append(
                f"seed {seed}: best induction score {best.value.iloc[0]:.2f} (step {best.step.iloc[0]}) -> {best.value.iloc[-1]:.2f} (step {best.step.iloc[-1]}); "
                f"induction heads {heads or 'none'}, previous-token heads {prev or 'none'}; formation step {f'~{form.iloc[0]:.0f}' if len(form) and math.isfinite(form.iloc[0]) else 'none (never passed the threshold)'}; "
                f"ablation loss increase {abl.get('detected', float('nan')):.3f} vs random {abl.get('random', float('nan')):.3f}"
            )
        m = rows[rows.metric.str.startswith("formation_step/")].set_index("metric").value
        if len(m):
            lines.append(
                f"formation step over the seeds that formed: {m['formation_step/seed_mean']:.0f} (95% t-interval over {int(m['formation_step/seed_n'])} seeds {m['formation_step/seed_lo']:.0f} .. {m['formation_step/seed_hi']:.0f})"
            )
        return lines

    def report(self, page) -> list[str]:
        from interp_ext.families.induction.report import section

        return section(page)

    def context(self, rows) -> dict:
        from interp_ext.report.draw import one

        form = one(rows, family="induction", metric="formation_step/seed_mean")
        return {"marks": {"induction formation (seed mean)": form}}


def circuit_at(rows: pd.DataFrame, seed: int, step: int, settings: InductionSettings) -> Circuit:
    """The induction circuit of one seed from its head scores at ``step`` (``circuits.induction.circuit_from_scores``)."""
    scores = rows[(rows.step == step) & (rows.seed == seed)][["metric", "component", "value"]]
    return circuit_from_scores(
        scores, f"induction-seed{seed}", settings.threshold, settings.prev_threshold
    )


def induction_circuit(
    run, seed: int, settings: InductionSettings | None = None, step: int | None = None
) -> Circuit:
    """The induction circuit of one seed at ``step`` (default: its last checkpoint).

    From the run's induction rows of ``settings`` (default: the latest) when they hold
    that checkpoint; otherwise the head scores are computed now (nothing is written).
    """
    step = run.steps_for(seed)[-1] if step is None else step
    rows = run.metrics("induction", settings=settings.id if settings else "latest", seeds=[seed])
    if settings is None:
        ids = rows.settings.unique()
        settings = (
            InductionSettings.from_dict(_recorded(run, ids[0]))
            if len(ids) and ids[0] != "legacy"
            else InductionSettings()
        )
    at = rows[(rows.seed == seed) & (rows.step == step)]
    if "k_composition" not in set(at.metric):
        scores = head_scores(
            run.model(seed, step),
            repeated_probe(run),
            frequent_tokens(run.train_tokens(), run.d_vocab, settings.top_tokens),
        )
        at = scores.assign(seed=seed, step=step)
    return circuit_at(at, seed, step, settings)


def _recorded(run, settings_id: str) -> dict:
    rec = run.measurements()
    return rec[rec.id == settings_id].settings.iloc[0]


__all__ = ["Induction", "InductionSettings", "induction_circuit"]
