"""The ``work`` family's section of the report: the exact work of each part of the step on E_C, per
seed over its window, the seed-level window sums with sign tests, and the lr -> 0 replays side by side.

Drawn from the family's rows (and the summaries over seeds it wrote); nothing is computed here but
running sums of the rows for the figure.
"""

from __future__ import annotations

import pandas as pd

from interp_ext.figures import PALETTE, Figure, Panel, Trace, save
from interp_ext.report.draw import image, one, select

PARTS = ("work", "work/drift", "work/noise", "work/inherited", "work/fresh")
SUMMARY = ("work", "work/drift", "work/noise", "curv_noise", "curv_drift", "work_remainder")


def section(page) -> list[str]:
    """``report.md`` lines of this section (its figures written into ``page.out``)."""
    rows = select(page.rows, family="work")
    if rows.empty:
        return []
    lines = ["## Stream 3, exactly: the work of each part of the step on E_C", ""]
    lines += cumulative_figure(rows, page.out)
    lines += seed_table(rows)
    lines += scale_table(page.run)
    return lines


def cumulative_figure(rows: pd.DataFrame, out) -> list[str]:
    steps = rows[(rows.step >= 0) & (rows.component == "C") & rows.metric.isin(PARTS)]
    if steps.empty:
        return []
    panels = []
    for i, (seed, g) in enumerate(steps.groupby("seed")):
        traces = []
        for j, (metric, h) in enumerate(g.sort_values("step").groupby("metric", sort=False)):
            traces.append(
                Trace(
                    h.step.tolist(),
                    h.value.cumsum().tolist(),
                    metric,
                    PALETTE[j % 10],
                    1.4,
                    legend=i == 0,
                )
            )
        form = one(rows, seed=seed, metric="formation_step")
        panels.append(
            Panel(
                f"seed {seed}",
                traces,
                ylabel="running sum (sampled steps)",
                marks={"formation": form},
            )
        )
    files = save(
        Figure("Work on E_C by part of the step, running sums over the sampled steps", panels),
        out,
        "work_cumulative",
    )
    return [image(files, "work"), ""]


def seed_table(rows: pd.DataFrame) -> list[str]:
    lines = [
        "Window sums over each seed's window (`C@window`), over seeds: mean [95% t-interval], k of n seeds",
        "positive, one-sided sign-test p for positive and for negative. Formed seeds and, as the null,",
        "seeds that never formed, over the median window of the formed ones.",
        "",
        "| term | seeds | mean [interval] | k of n > 0 | p (> 0) | p (< 0) |",
        "|---|---|---|---|---|---|",
    ]
    for term in SUMMARY:
        for group in ("formed", "unformed"):
            where = f"C@window#{group}"
            n = one(rows, metric=f"{term}/sum/seed_n", component=where)
            if not n or n != n:
                continue
            mean = one(rows, metric=f"{term}/sum/seed_mean", component=where)
            lo = one(rows, metric=f"{term}/sum/seed_lo", component=where)
            hi = one(rows, metric=f"{term}/sum/seed_hi", component=where)
            k = one(rows, metric=f"{term}/sum/seeds_positive", component=where)
            p_pos = one(rows, metric=f"{term}/sum/p_positive", component=where)
            p_neg = one(rows, metric=f"{term}/sum/p_negative", component=where)
            lines.append(
                f"| {term} | {group} | {mean:+.4g} [{lo:+.4g}, {hi:+.4g}] | {int(k)} of {int(n)} | {p_pos:.3g} | {p_neg:.3g} |"
            )
    return lines + [""]


def scale_table(run) -> list[str]:
    """Every measured scale side by side: window sums per unit of lr x steps, per seed."""
    rows = run.metrics("work", settings="all")
    if rows.empty:
        return []
    scales = {
        r.id: int(r.settings.get("scale", 1))
        for r in run.measurements().itertuples()
        if r.family == "work"
    }
    sel = rows[
        (rows.seed >= 0)
        & (rows.metric.str.endswith("/per_lr_step"))
        & (rows.component == "C@window")
    ].copy()
    if sel.empty or len({scales.get(s, 1) for s in sel.settings}) < 2:
        return []
    sel["scale"] = sel.settings.map(scales)
    table = sel.pivot_table(index=["metric", "seed"], columns="scale", values="value")
    lines = [
        "Toward the gradient flow: window sums per unit of lr x steps at lr / scale (each column a replay",
        "of the same span with scale steps per real batch).",
        "",
        "| term | seed | " + " | ".join(f"lr / {c}" for c in table.columns) + " |",
        "|---|---|" + "---|" * len(table.columns),
    ]
    for (metric, seed), values in table.iterrows():
        cells = " | ".join(f"{v:+.4g}" for v in values)
        lines.append(f"| {metric.removesuffix('/per_lr_step')} | {seed} | {cells} |")
    return lines + [""]
