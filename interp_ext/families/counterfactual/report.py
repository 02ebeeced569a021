"""The ``counterfactual`` family's section of the report: counterfactual replays: trajectories and formation per variant.

Drawn from the family's rows (and the summaries over seeds it wrote); nothing is computed here.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from interp_ext.figures import PALETTE, Figure, Panel, Trace, save
from interp_ext.report.draw import (
    image,
    one,
    seeds_of,
    select,
)


def section(page) -> list[str]:
    """``report.md`` lines of this section (its figures written into ``page.out``)."""
    return counterfactual_section(page.rows, page.out)


VARIANT_COLORS = {"real": "#000000", "half": "#d62728"}


def counterfactual_section(m: pd.DataFrame, out: Path) -> list[str]:
    cf = select(m, family="counterfactual")
    if cf.empty:
        return []
    seeds = seeds_of(cf[cf.step >= 0])
    variants = sorted(set(cf.variant) - {""}, key=lambda v: (v != "real", v))
    panels = []
    for metric, ylabel in (
        ("induction_score", "best induction score"),
        ("E_C", "E_C on the probe set"),
    ):
        for seed in seeds:
            traces = []
            for i, v in enumerate(variants):
                g = select(cf, metric=metric, seed=seed, variant=v).sort_values("step")
                color = VARIANT_COLORS.get(
                    v, "#2ca02c" if v.startswith("mean") else PALETTE[(i + 2) % 10]
                )
                traces.append(
                    Trace(
                        g.step.tolist(),
                        g.value.tolist(),
                        v,
                        color,
                        2.6 if v == "real" else 1.2,
                        1.0 if v == "real" else 0.8,
                        legend=seed == seeds[0],
                    )
                )
            panels.append(Panel(f"seed {seed}: {metric}", traces, ylabel=ylabel))
    title = "Counterfactual replays from each seed's pre-formation checkpoint (real run bold; other data orders, noise cut by a batch mean, noise doubled by half batches)"
    files = save(Figure(title, panels, ncols=len(seeds)), out, "counterfactual_trajectories")
    lines = [
        "## Counterfactuals: is gradient noise needed for formation?",
        "",
        image(files, "counterfactuals"),
        "",
        "| variant | seeds formed | formation shift vs the real run (steps; mean over seeds, 95% t-interval) | seeds earlier / later | E_C change over the window |",
        "|---|---|---|---|---|",
    ]
    for v in variants:
        g = cf[(cf.variant == v) & (cf.seed < 0)]
        shift = [one(g, metric=f"formation_shift/seed_{s}") for s in ("mean", "lo", "hi")]
        change = [one(g, metric=f"E_C_change/seed_{s}") for s in ("mean", "lo", "hi")]
        lines.append(
            f"| {v} | {one(g, metric='formed/seeds'):.0f} of {one(g, metric='formed/seed_n'):.0f} | {shift[0]:+.0f} [{shift[1]:+.0f}, {shift[2]:+.0f}] | "
            f"{one(g, metric='formation_shift/seeds_earlier'):.0f} / {one(g, metric='formation_shift/seeds_later'):.0f} | {change[0]:+.3f} [{change[1]:+.3f}, {change[2]:+.3f}] |"
        )
    return lines + [
        "",
        "Reading: formation is the steepest rise of the induction score on the 50-step grid; a shift outside the spread of the other data orders is an effect of the noise.",
        "",
    ]
