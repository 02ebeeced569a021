"""The ``autocatalysis`` family's section of the report: Stream 3 on the checkpoints: K along both directions, circuit against controls.

Drawn from the family's rows (and the summaries over seeds it wrote); nothing is computed here.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from interp_ext.figures import Figure, Panel, Trace, save
from interp_ext.report.draw import (
    BAND,
    CIRCUIT,
    CONTROL,
    band_trace,
    image,
    one,
    seed_traces,
    select,
)


def section(page) -> list[str]:
    """``report.md`` lines of this section (its figures written into ``page.out``)."""
    return stream3_section(page.rows, page.out, page.ctx)


def circuit_vs_controls(rows: pd.DataFrame, metric: str, component: str, **where) -> list[Trace]:
    """The circuit's seeds thin, its seed band, and the controls' band (controls averaged within seed)."""
    traces = seed_traces(
        rows, metric, color=CIRCUIT, legend=False, component=component, circuit="circuit", **where
    )
    traces += band_trace(
        rows, metric, "circuit: " + BAND, CIRCUIT, component=component, circuit="circuit", **where
    )
    traces += band_trace(
        rows,
        metric,
        "controls (averaged within seed): " + BAND,
        CONTROL,
        component=component,
        circuit="controls",
        **where,
    )
    return traces


def stream3_section(m: pd.DataFrame, out: Path, ctx: dict) -> list[str]:
    auto = select(m, family="autocatalysis")
    if auto.empty:
        return []
    panels = [
        Panel(
            f"K_norm[C,C] ({d})",
            circuit_vs_controls(auto, "K_norm", "C|C", direction=d),
            ylabel="K / (E_C ||d_C||)",
            marks=ctx["marks"],
            zero=True,
        )
        for d in ("optimizer", "sgd")
        if d in set(auto.direction)
    ]
    files = save(
        Figure("Stream 3: normalised K[C,C] over training (circuit seeds thin)", panels, ncols=2),
        out,
        "stream3_K",
    )
    energy = Panel(
        "E_C", circuit_vs_controls(auto, "energy", "C"), ylabel="E_C", marks=ctx["marks"]
    )
    files2 = save(
        Figure("Gradient energy E_C = sum of G_ii over the circuit", [energy]),
        out,
        "stream3_energy",
    )
    lines = [
        "## Stream 3: the autocatalytic condition",
        "",
        image(files, "stream3"),
        "",
        image(files2, "energy"),
        "",
    ]
    return lines + stream3_tables(auto)


def stream3_tables(auto: pd.DataFrame) -> list[str]:
    lines = [
        "Mean normalised K[C,C] over checkpoints before / during / after each seed's formation step (before: more than one measured interval earlier), "
        "one value per seed, then a 95% t-interval over seeds:",
        "",
        "| direction | circuit | before | during | after |",
        "|---|---|---|---|---|",
    ]
    win = auto[auto.metric.str.startswith("K_norm_window/")]
    for (direction, circ), g in win.groupby(["direction", "circuit"]):
        cells = {}
        for w in ("before", "during", "after"):
            vals = {
                s: one(g, metric=f"K_norm_window/seed_{s}", component=f"C|C@{w}")
                for s in ("mean", "lo", "hi", "n")
            }
            cells[w] = (
                f"{vals['mean']:+.3f} [{vals['lo']:+.3f}, {vals['hi']:+.3f}] (n={vals['n']:.0f} seeds)"
                if math.isfinite(vals["mean"])
                else "-"
            )
        lines.append(
            f"| {direction} | {circ} | {cells['before']} | {cells['during']} | {cells['after']} |"
        )
    lines.append("")
    budget = select(auto, metric="budget_error/median")
    if len(budget):
        lines += [
            f"Energy budget: median relative error of sum_B K[A,B] (optimizer direction) against the observed change of E_A over one real AdamW step "
            f"{one(auto, metric='budget_error/median'):.3f}; over a tenth of that step {one(auto, metric='budget_error_eps/median'):.3f} (the gap is the step's second-order effect)."
        ]
    frac = one(auto, metric="entry_frac_positive/seed_mean")
    if math.isfinite(frac):
        lines += [
            f"Sampled entries dG_ii/dtheta_j > 0: {frac:.3f} (seed mean of per-seed means over checkpoints). Flipping the sign of one d_head coordinate leaves the function unchanged and flips those entries, so 0.5 is what symmetry alone gives."
        ]
    lines += [
        "Reading: the paper predicts K[C,C] > 0 before and during the transition, decaying after it, and above the controls.",
        "",
    ]
    return lines
