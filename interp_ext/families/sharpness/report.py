"""The ``sharpness`` family's section of the report: preconditioned sharpness against the edge of stability.

Drawn from the family's rows; nothing is computed here but the log of a ratio for display.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from interp_ext.figures import PALETTE, Figure, Heatmap, Panel, Trace, save
from interp_ext.geometry.curvature import spectral_density
from interp_ext.report.draw import formation_cells, image, one, seeds_of, select


def section(page) -> list[str]:
    """``report.md`` lines of this section (its figures written into ``page.out``)."""
    every = select(page.rows, family="sharpness")
    rows = every[(every.seed >= 0) & (every.step >= 0)]
    if rows.empty:
        return []
    edge = float(select(rows, metric="edge_of_stability").value.iloc[0])
    files = save(
        Figure(
            f"Sharpness and AdamW's edge of stability ((2 + 2 beta1) / ((1 - beta1) lr) = {edge:.4g}); one line per seed",
            panels(rows, page.ctx),
            ncols=2,
        ),
        page.out,
        "sharpness",
    )
    lines = table_lines(every, files)
    density = spectrum_panels(rows)
    if density:
        files = save(
            Figure(
                "Spectral density of the circuit block's Hessian H_CC (stochastic Lanczos quadrature), log10; one panel per seed",
                density,
                ncols=min(4, len(density)),
            ),
            page.out,
            "sharpness_spectrum",
        )
        lines += [
            "### The circuit block's spectrum",
            "",
            image(files, "sharpness_spectrum"),
            "",
            "Each column is one checkpoint's density of H_CC's eigenvalues (Lanczos nodes weighted by their share "
            "of a random start vector, smoothed as Papyan 2020), on one grid over every seed and step. Mass below "
            "zero is the block's negative curvature, the soft modes a saddle would show; one random start resolves "
            "the bulk's shape, not single eigenvalues inside it (the top and the lowest are the table's Lanczos "
            "values and the `members` family's saddle signature).",
            "",
        ]
    return lines


def spectrum_panels(rows: pd.DataFrame, bins: int = 24) -> list[Panel]:
    """A log10 density heatmap (grid value by step) per seed, from the ``spectrum_node/i`` and
    ``spectrum_weight/i`` rows, on one grid spanning every node."""
    sel = rows[rows.metric.str.startswith("spectrum_") & (rows.component == "C")]
    nodes = sel[sel.metric.str.startswith("spectrum_node/")]
    if nodes.empty:
        return []
    lo, hi = float(nodes.value.min()), float(nodes.value.max())
    pad = 0.05 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    out = []
    for seed in seeds_of(sel):
        g = sel[sel.seed == seed]
        steps = sorted(g.step.unique())
        columns = []
        for step in steps:
            at = g[g.step == step].set_index("metric").value
            n = sum(1 for m in at.index if m.startswith("spectrum_node/"))
            node = np.array([at[f"spectrum_node/{i}"] for i in range(n)])
            weight = np.array([at[f"spectrum_weight/{i}"] for i in range(n)])
            grid, density = spectral_density(node, weight, lo, hi, bins)
            columns.append(np.log10(np.clip(density, 1e-6 * density.max(), None)))
        z = np.array(columns).T[::-1]  # highest eigenvalue on top
        out.append(
            Panel(
                f"seed {seed}",
                heatmap=Heatmap(
                    z,
                    [str(int(s)) for s in steps],
                    [f"{v:.3g}" for v in grid[::-1]],
                    "log10 density",
                    False,
                ),
                ylabel="eigenvalue of H_CC",
            )
        )
    return out


def panels(rows: pd.DataFrame, ctx: dict) -> list[Panel]:
    """The whole model's ratio to the edge and lambda_1(H); the circuit block's, when measured."""
    out = [
        Panel(
            "log10 of lambda_1(P^-1 H) / edge (0: at the edge of stability)",
            seed_lines(rows, "precond_edge_ratio", "", np.log10),
            ylabel="log10 ratio",
            zero=True,
            marks=ctx["marks"],
            window=ctx["window"],
        ),
        Panel(
            "lambda_1(H)",
            seed_lines(rows, "sharpness", ""),
            ylabel="top Hessian eigenvalue",
            marks=ctx["marks"],
            window=ctx["window"],
        ),
    ]
    if len(select(rows, component="C")):
        out += [
            Panel(
                "circuit block: lambda_1(P_C^-1 H_CC) / edge, log10",
                seed_lines(rows, "precond_edge_ratio", "C", np.log10),
                ylabel="log10 ratio",
                zero=True,
                marks=ctx["marks"],
            ),
            Panel(
                "circuit block: lambda_1(H_CC)",
                seed_lines(rows, "sharpness", "C"),
                ylabel="top eigenvalue of the block",
                marks=ctx["marks"],
            ),
        ]
    return out


def table_lines(rows: pd.DataFrame, files: list[str]) -> list[str]:
    per = rows[rows.step == -1]
    lines = [
        "## Sharpness and the edge of stability",
        "",
        image(files, "sharpness"),
        "",
        "| seed | largest lambda_1(P^-1 H) / edge | at step | formation step | peak within one checkpoint interval of formation | points within 10% of the edge |",
        "|---|---|---|---|---|---|",
    ]
    for seed in seeds_of(per):
        g = per[per.seed == seed]
        shown, answer, _ = formation_cells(g, "peak_at_formation")
        lines.append(
            f"| {seed} | {one(g, metric='precond_edge_ratio/max'):.3g} | {one(g, metric='precond_edge_ratio/argmax'):.0f} | "
            f"{shown} | {answer} | {one(g, metric='near_edge_share'):.0%} |"
        )
    lines.append("")
    for prefix, who in (
        ("", "formed seeds"),
        ("null_", "never-formed seeds, at the formed seeds' median formation step"),
    ):
        k = one(rows, metric=f"{prefix}peak_at_formation/seeds")
        if math.isfinite(k):
            n = one(rows, metric=f"{prefix}peak_at_formation/seed_n")
            lines.append(
                f"Peak of the preconditioned sharpness within one checkpoint interval of formation: {k:.0f} of {n:.0f} {who}."
            )
    return lines + [
        "",
        "Reading: a preconditioned sharpness that rises to the edge and stays there is AdamW at the edge of "
        "stability (Cohen et al. 2022); the per-step oscillation of the gradient is then expected, not a property "
        "of any circuit. The Hessian is that of the mean loss over the first probe batches, so it is an estimate of "
        "the training loss's curvature, not the minibatch's. Points between checkpoints (a replayed window) are "
        "denser than the checkpoints, so a peak is likelier to be caught there.",
        "",
    ]


def seed_lines(rows: pd.DataFrame, metric: str, component: str, transform=None) -> list[Trace]:
    sel = select(rows, metric=metric, component=component)
    out = []
    for i, seed in enumerate(seeds_of(sel)):
        g = sel[sel.seed == seed].sort_values("step")
        y = g.value.to_numpy()
        if transform is not None:
            y = transform(np.clip(y, 1e-12, None))
        out.append(Trace(g.step.tolist(), y.tolist(), f"seed {seed}", PALETTE[i % 10], 1.0))
    return out
