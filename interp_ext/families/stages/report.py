"""The ``stages`` family's section of the report: essential dynamics, stage boundaries against
formation, the in-context-learning score and the loss by context position over training.

Drawn from the family's rows; nothing is computed here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from interp_ext.figures import PALETTE, Figure, Heatmap, Panel, Trace, save
from interp_ext.report.draw import (
    formation_cells,
    heatmap_figure,
    image,
    metric_panel,
    one,
    seed_traces,
    seeds_of,
    select,
)


def section(page) -> list[str]:
    """``report.md`` lines of this section (its figures written into ``page.out``)."""
    rows = select(page.rows, family="stages")
    if rows.empty:
        return []
    files = save(
        Figure(
            "Essential dynamics: PCA of the model's log-probabilities on the held-out probe over training, per seed",
            trajectory_panels(rows, page.ctx),
            ncols=2,
        ),
        page.out,
        "stages",
    )
    lines = ["## Developmental stages and progress measures", "", image(files, "stages"), ""]
    heat = loss_heatmaps(rows, page.out)
    if heat:
        lines += [image(heat, "loss by position"), ""]
    return lines + boundary_table(rows)


def trajectory_panels(rows: pd.DataFrame, ctx: dict) -> list[Panel]:
    seeds = seeds_of(select(rows, metric="ed_score"))
    path = []
    for i, seed in enumerate(seeds):
        pcs = {
            c: select(rows, metric="ed_score", component=c, seed=seed).sort_values("step")
            for c in ("PC1", "PC2")
        }
        if len(pcs["PC2"]):
            path.append(
                Trace(
                    pcs["PC1"].value.tolist(),
                    pcs["PC2"].value.tolist(),
                    f"seed {seed}",
                    PALETTE[i % 10],
                    1.2,
                    mode="markers",
                )
            )
    components = sorted(set(select(rows, metric="ed_score").component))
    panels = [Panel("trajectory in (PC1, PC2)", path, xlabel="PC1", ylabel="PC2")] if path else []
    panels += [
        Panel(
            f"{c} over training",
            seed_traces(rows, "ed_score", component=c),
            ylabel="score",
            marks=ctx["marks"],
            window=ctx["window"],
        )
        for c in components
    ]
    if len(select(rows, metric="icl_score")):
        panels.append(
            metric_panel(
                rows,
                "icl_score",
                "late minus early loss (nats)",
                ctx,
                title="in-context-learning score",
            )
        )
    return panels


def loss_heatmaps(rows: pd.DataFrame, out) -> list[str]:
    """Loss at each context position (rows) at each checkpoint (columns), for up to 4 seeds."""
    sel = select(rows, metric="loss_by_position")
    sel = sel[sel.seed >= 0]
    if sel.empty:
        return []
    panels = []
    for seed in seeds_of(sel)[:4]:
        g = sel[sel.seed == seed].assign(pos=lambda d: d.component.astype(int))
        table = g.pivot_table(index="pos", columns="step", values="value").sort_index()
        panels.append(
            (
                f"seed {seed}",
                Heatmap(
                    table.to_numpy(),
                    [str(s) for s in table.columns],
                    [str(p) if p % 8 == 0 else "" for p in table.index],
                    "loss (nats)",
                    centered=False,
                ),
            )
        )
    return heatmap_figure(
        out,
        "loss_by_position",
        "Next-token loss at each context position over training (held-out probe)",
        panels,
        "training step",
        "position",
    )


def boundary_table(rows: pd.DataFrame) -> list[str]:
    per = rows[(rows.seed >= 0) & (rows.step == -1)]
    lines = [
        "| seed | stage boundaries (turning points of PC1..PC3) | formation step | a boundary within one checkpoint interval | chance of that |",
        "|---|---|---|---|---|",
    ]
    for seed in seeds_of(per):
        g = per[per.seed == seed]
        bounds = sorted({int(v) for v in g[g.metric == "stage_boundary"].value})
        shown, answer, prefix = formation_cells(g, "boundary_at_formation")
        chance = one(g, metric=f"{prefix}boundary_chance")
        lines.append(
            f"| {seed} | {', '.join(map(str, bounds)) or 'none'} | {shown} | {answer} | {chance:.2f} |"
        )
    lines.append("")
    for prefix, who in (
        ("", "formed seeds"),
        ("null_", "seeds that never formed, at the formed seeds' median formation step (the null)"),
    ):
        k = one(rows, metric=f"{prefix}boundary_at_formation/seeds")
        if not np.isfinite(k):
            continue
        n = one(rows, metric=f"{prefix}boundary_at_formation/seed_n")
        expected = one(rows, metric=f"{prefix}boundary_at_formation/expected_by_chance")
        p = one(rows, metric=f"{prefix}boundary_at_formation/p_chance")
        perm = one(rows, metric=f"{prefix}boundary_at_formation/p_permuted")
        floor = one(rows, metric=f"{prefix}boundary_at_formation/floor_permuted")
        permuted = (
            f" With the formed seeds' formation steps permuted across them (the null that keeps every "
            f"seed's boundaries and the formation steps the seeds really have), as many or more with "
            f"p = {perm:.3g} (floor {floor:.2g})."
            if np.isfinite(perm)
            else ""
        )
        lines.append(
            f"A stage boundary within one checkpoint interval of the formation step on {k:.0f} of {n:.0f} {who}; "
            f"boundaries placed where they are would catch a formation step placed uniformly on {expected:.2f} "
            f"seeds on average, and {k:.0f} or more with probability {p:.3g}.{permuted}"
        )
    lines.append(
        "Reading: essential dynamics finds where the model's outputs change direction; it marks induction "
        "formation only if the formed seeds' match beats chance and the never-formed seeds do not match as well."
    )
    return lines + [""]
