"""The ``sharpness`` family's section of the report: preconditioned sharpness against the edge of stability.

Drawn from the family's rows; nothing is computed here but the log of a ratio for display.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from interp_ext.figures import PALETTE, Figure, Panel, Trace, save
from interp_ext.report.draw import image, seeds_of, select


def section(page) -> list[str]:
    """``report.md`` lines of this section (its figures written into ``page.out``)."""
    rows = select(page.rows, family="sharpness")
    rows = rows[(rows.seed >= 0) & (rows.step >= 0)]
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
    return table_lines(rows, files)


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
    per_seed = edge_summary(rows)
    lines = [
        "## Sharpness and the edge of stability",
        "",
        image(files, "sharpness"),
        "",
        "| seed | largest lambda_1(P^-1 H) / edge | at step | points within 10% of the edge | points |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {s} | {v['max_ratio']:.3g} | {v['at']} | {v['near_edge']:.0%} | {v['n']} |"
        for s, v in sorted(per_seed.items())
    ]
    at_edge = sum(v["max_ratio"] >= 0.9 for v in per_seed.values())
    return lines + [
        "",
        f"Seeds reaching 90% of the edge at some measured point: {at_edge} of {len(per_seed)}. "
        "Reading: a preconditioned sharpness that rises to the edge and stays there is AdamW at the edge of "
        "stability (Cohen et al. 2022); the per-step oscillation of the gradient is then expected, not a property "
        "of any circuit. The Hessian is that of the mean loss over the first probe batches, so it is an estimate of "
        "the training loss's curvature, not the minibatch's.",
        "",
    ]


def edge_summary(rows: pd.DataFrame) -> dict:
    """Per seed: the largest ratio, where, and the share of measured points within 10% of the edge."""
    sel = rows[(rows.metric == "precond_edge_ratio") & (rows.component == "")]
    out = {}
    for seed, g in sel.groupby("seed"):
        if seed < 0 or g.empty:
            continue
        top = g.loc[g.value.idxmax()]
        out[int(seed)] = {
            "max_ratio": float(top.value),
            "at": int(top.step),
            "near_edge": float((g.value >= 0.9).mean()),
            "n": len(g),
        }
    return out


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
