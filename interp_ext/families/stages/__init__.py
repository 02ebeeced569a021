"""``stages``: developmental stages found automatically (essential dynamics) and progress measures.

Per checkpoint: the loss at every context position on the held-out probe
(``loss_by_position``, component = the position) and the in-context-learning score
(``icl_score``: late-context minus early-context loss, :func:`circuits.induction.icl_score`).
Per seed, over its measured checkpoints: the essential dynamics (Hoogland et al. 2024):
PCA of the log-probabilities of the run's most frequent tokens at every probe position
(``ed_score`` per step, component ``PC1``..; ``ed_explained`` at step -1), and the stage
boundaries at the turning points of the PC curves (``stage_boundary``, value = step).
Against the induction formation step (the ``induction`` family's rows, when present): per
seed, whether a boundary lies within one checkpoint interval of formation
(``boundary_at_formation``) and the chance of that for a formation step placed at random
(``boundary_chance``); over seeds, k of n with the probability chance gives k or more
(``p_chance``, formation placed uniformly) and, the null that fits the design, with the
formation steps permuted across the formed seeds (``p_permuted``, ``floor_permuted``). The
seeds that never formed are read the same way at the median formation step of the others
(``null_...``): a boundary there too means the boundary marks training, not the circuit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from circuits.induction import frequent_tokens, icl_from_loss
from interp_ext.geometry.essential_dynamics import (
    boundary_match,
    essential_dynamics,
    output_features,
    poisson_binomial_tail,
    token_losses,
    turning_points,
)
from interp_ext.measurement.probes import heldout_probe
from interp_ext.measurement.runner import Checkpoint, Family, MeasureError, Settings, setting
from interp_ext.measurement.windows import formation_or_null


@dataclass(frozen=True)
class StagesSettings(Settings):
    family = "stages"

    components: int = setting(3, "Principal components of the essential dynamics.")
    top_tokens: int = setting(
        500, "Most frequent training tokens whose log-probabilities are the features."
    )
    smooth: int = setting(3, "Checkpoints in the moving average before turning points are found.")
    min_share: float = setting(
        0.05, "A turn counts when the moves on both sides exceed this share of the curve's range."
    )

    def check(self) -> None:
        self.require(self.components >= 1, "components", "must be >= 1")
        self.require(self.top_tokens >= 2, "top_tokens", "must be >= 2")
        self.require(self.smooth >= 1 and self.smooth % 2 == 1, "smooth", "must be odd and >= 1")
        self.require(0 <= self.min_share < 1, "min_share", "must lie in [0, 1)")


class Stages(Family):
    name = "stages"
    requires = ("induction",)
    report_order = 15
    settings = StagesSettings
    summary_metrics = ("icl_score",)

    def prepare(self, run, settings: StagesSettings) -> StagesSettings:
        if len(run.steps) < 3:
            raise MeasureError(
                f"stages reads turning points along training and {run.path} has {len(run.steps)} checkpoints; it needs >= 3"
            )
        return settings

    def checkpoint(self, ctx: Checkpoint, settings: StagesSettings, state) -> pd.DataFrame:
        held = heldout_probe(ctx.run).to(ctx.run.device)
        losses = token_losses(ctx.model, held)  # one forward pass for both measures
        rows = [
            {"metric": "loss_by_position", "component": str(p), "value": float(v)}
            for p, v in enumerate(losses.mean(0))
        ]
        rows.append({"metric": "icl_score", "component": "", "value": icl_from_loss(losses)})
        return pd.DataFrame(rows)

    def finish_seed(self, run, settings: StagesSettings, seed: int, rows: pd.DataFrame):
        steps = sorted(int(s) for s in rows[rows.metric == "icl_score"].step.unique())
        if len(steps) < 3:
            return None
        held = heldout_probe(run).to(run.device)
        ids = frequent_tokens(run.train_tokens(), run.d_vocab, settings.top_tokens)
        feats = np.stack([output_features(run.model(seed, s), held, ids).numpy() for s in steps])
        scores, explained = essential_dynamics(feats, settings.components)
        out = []
        for k in range(scores.shape[1]):
            pc = f"PC{k + 1}"
            out += [
                {"step": s, "metric": "ed_score", "component": pc, "value": float(v)}
                for s, v in zip(steps, scores[:, k])
            ]
            out.append(
                {
                    "step": -1,
                    "metric": "ed_explained",
                    "component": pc,
                    "value": float(explained[k]),
                }
            )
            out += [
                {"step": -1, "metric": "stage_boundary", "component": pc, "value": b}
                for b in turning_points(
                    np.array(steps), scores[:, k], settings.smooth, settings.min_share
                )
            ]
        out += formation_rows(
            run, seed, steps, [r["value"] for r in out if r["metric"] == "stage_boundary"]
        )
        return pd.DataFrame(out)

    def finish(self, run, settings: StagesSettings, rows: pd.DataFrame) -> pd.DataFrame | None:
        """k of n seeds with a boundary at formation and how often chance gives as many; the same
        for the seeds that never formed, at the median formation step (the null)."""
        per = rows[(rows.seed >= 0) & (rows.step == -1)]
        out = []
        for prefix in ("", "null_"):
            hit = per[per.metric == f"{prefix}boundary_at_formation"].set_index("seed").value
            chance = per[per.metric == f"{prefix}boundary_chance"].set_index("seed").value
            seeds = [s for s in hit.index if math.isfinite(chance.get(s, math.nan))]
            if not seeds:
                continue
            k = int(sum(hit[s] > 0 for s in seeds))
            probs = [float(chance[s]) for s in seeds]
            if not prefix:
                out += permuted_formation_rows(per, seeds, rows)
            out += [
                {
                    "step": -1,
                    "metric": f"{prefix}boundary_at_formation/{m}",
                    "component": "",
                    "value": float(v),
                }
                for m, v in (
                    ("seeds", k),
                    ("seed_n", len(seeds)),
                    ("expected_by_chance", sum(probs)),
                    ("p_chance", poisson_binomial_tail(k, probs)),
                )
            ]
        return pd.DataFrame(out) if out else None

    def inputs(self, run, settings: StagesSettings) -> list:
        ind = run.metrics("induction")
        return [("induction", str(ind.settings.iloc[0]))] if len(ind) else []

    def describe(self, rows: pd.DataFrame) -> list[str]:
        b = rows[(rows.metric == "stage_boundary") & (rows.seed >= 0)]
        lines = [
            f"seed {int(s)}: stage boundaries at steps {sorted({int(v) for v in g.value})}"
            for s, g in b.groupby("seed")
        ]
        for prefix, who in (
            ("", "formed seeds"),
            ("null_", "never-formed seeds, at the median formation step"),
        ):
            top = rows[rows.metric == f"{prefix}boundary_at_formation/seeds"]
            if len(top):
                n = rows[rows.metric == f"{prefix}boundary_at_formation/seed_n"].value.iloc[0]
                p = rows[rows.metric == f"{prefix}boundary_at_formation/p_chance"].value.iloc[0]
                perm = rows[rows.metric == f"{prefix}boundary_at_formation/p_permuted"]
                permuted = (
                    f"; formation steps permuted across the seeds give as many with p = "
                    f"{perm.value.iloc[0]:.3g}"
                    if len(perm)
                    else ""
                )
                lines.append(
                    f"a boundary within one checkpoint interval of formation: {int(top.value.iloc[0])} of {int(n)} {who} (formation placed uniformly gives as many with p = {p:.3g}{permuted})"
                )
        return lines

    def report(self, page) -> list[str]:
        from interp_ext.families.stages.report import section

        return section(page)


def permuted_formation_rows(per: pd.DataFrame, seeds: list, rows: pd.DataFrame) -> list[dict]:
    """The formed seeds' count against the null that fits the design: formation steps permuted
    across the formed seeds (:func:`interp_ext.stats.event_near_formation_p`), so boundaries that
    every seed has in the same stretch of training are not read as marking its own formation
    (``p_permuted`` with its ``floor_permuted``; the tolerance is one checkpoint interval)."""
    from interp_ext.stats import event_near_formation_p

    steps = sorted(int(x) for x in rows[(rows.seed >= 0) & (rows.step >= 0)].step.unique())
    form = per[per.metric == "formation_step"].set_index("seed").value
    events = {
        s: g.value.tolist()
        for s, g in per[per.metric == "stage_boundary"].groupby("seed")
        if s in seeds and s in form.index
    }
    if len(events) < 2 or len(steps) < 2:
        return []
    within = float(np.median(np.diff(steps)))
    k, p, floor = event_near_formation_p(events, {s: float(form[s]) for s in events}, within)
    return [
        {"step": -1, "metric": f"boundary_at_formation/{m}", "component": "", "value": float(v)}
        for m, v in (("p_permuted", p), ("floor_permuted", floor))
    ]


def formation_rows(run, seed: int, steps: list[int], boundaries: list[float]) -> list[dict]:
    """Whether a boundary lies within one checkpoint interval of the seed's formation step, and
    the chance of that for a random formation step. A seed that never formed is read the same
    way at the median formation step of those that did (the null, metrics ``null_...``);
    nothing when no seed's formation is known."""
    form, prefix = formation_or_null(run, seed)
    if not math.isfinite(form):
        return []
    tolerance = float(np.median(np.diff(steps)))
    hit, chance = boundary_match(sorted(set(boundaries)), form, np.array(steps), tolerance)
    return [
        {
            "step": -1,
            "metric": f"{prefix}boundary_at_formation",
            "component": "",
            "value": float(hit),
        },
        {"step": -1, "metric": f"{prefix}boundary_chance", "component": "", "value": chance},
        {"step": -1, "metric": f"{prefix}formation_step", "component": "", "value": form},
    ]


__all__ = ["Stages", "StagesSettings"]
