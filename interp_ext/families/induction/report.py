"""The ``induction`` family's section of the report: induction formation: scores per head, formation step per seed.

Drawn from the family's rows (and the summaries over seeds it wrote); nothing is computed here.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from interp_ext.figures import Figure, Heatmap, save
from interp_ext.report.draw import (
    heatmap_figure,
    image,
    metric_panel,
    one,
    seeds_of,
    select,
)


def section(page) -> list[str]:
    """``report.md`` lines of this section (its figures written into ``page.out``)."""
    return induction_section(page.rows, page.out, page.ctx)


def induction_section(m: pd.DataFrame, out: Path, ctx: dict) -> list[str]:
    ind = select(m, family="induction")
    if ind.empty:
        return []
    best = metric_panel(ind, "best_induction_score", "attention to induction target", ctx)
    files = save(
        Figure("Best induction score (layer >= 1) over training", [best]),
        out,
        "induction_formation",
    )
    last = int(ind[ind.metric == "induction_score"].step.max())
    scores = ["induction_score", "prev_token_score", "duplicate_score", "copying_score"]
    panels = []
    for seed in seeds_of(ind)[:4]:
        final = ind[(ind.seed == seed) & (ind.step == last) & ind.metric.isin(scores)]
        piv = final.pivot_table(index="metric", columns="component", values="value")
        panels.append(
            (
                f"seed {seed}",
                Heatmap(
                    piv.to_numpy(), list(piv.columns), list(piv.index), "score", centered=False
                ),
            )
        )
    files2 = heatmap_figure(out, "head_scores", f"Head scores at step {last}", panels, "head", "")
    lines = [
        "## Induction heads",
        "",
        image(files, "induction"),
        "",
        image(files2, "head scores"),
        "",
    ]
    return lines + induction_table(ind)


def induction_table(ind: pd.DataFrame) -> list[str]:
    lines = [
        "| seed | formation step | induction heads | previous-token heads | ablation: detected | ablation: random |",
        "|---|---|---|---|---|---|",
    ]
    for seed in seeds_of(ind):
        d = ind[ind.seed == seed]
        heads = ", ".join(d[d.metric == "detected_induction_head"].component) or "none"
        prev = ", ".join(d[d.metric == "detected_prev_token_head"].component) or "none"
        detected = one(d, metric="ablation_loss_increase", component="detected")
        random = one(d, metric="ablation_loss_increase", component="random")
        lines.append(
            f"| {seed} | {one(d, metric='formation_step'):.0f} | {heads} | {prev} | {detected:+.3f} | {random:+.3f} |"
        )
    mean, lo, hi, n = (
        one(ind, metric=f"formation_step/seed_{s}") for s in ("mean", "lo", "hi", "n")
    )
    formed = ind[(ind.metric == "formed") & (ind.seed >= 0)]
    never = sorted(int(s) for s in formed[formed.value == 0].seed)
    if never:
        lines += [
            "",
            "Seeds whose induction heads never passed the detection threshold (no formation "
            f"step, so no window around it): {never}.",
        ]
    return lines + [
        "",
        f"Formation step over seeds: {mean:.0f} (95% t-interval over {n:.0f} seeds: {lo:.0f} .. {hi:.0f}). "
        "Ablation: loss increase (nats) on the second copy when the detected heads, or as many random heads outside the circuit, are mean-ablated.",
        "Reading: an induction head forms when the best score jumps; the ablation gap says the detected heads carry the copying.",
        "",
    ]
