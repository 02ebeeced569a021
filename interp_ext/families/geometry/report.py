"""The ``geometry`` family's section of the report: the gradient-geometry dashboard, Stream 1 and the comparison with the paper.

Drawn from the family's rows (and the summaries over seeds it wrote); nothing is computed here.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from interp_ext.figures import Figure, Panel, Trace, save
from interp_ext.geometry.dashboard import DASHBOARD
from interp_ext.report.draw import (
    BAND,
    band_trace,
    image,
    metric_panel,
    select,
    summary,
)


def section(page) -> list[str]:
    """``report.md`` lines of this section (its figures written into ``page.out``)."""
    return (
        dashboard_section(page.rows, page.out, page.ctx)
        + stream1_section(page.rows, page.out, page.ctx)
        + paper_section(page.rows, page.run)
    )


DASHBOARD_UNITS = {
    "effective_rank": "exp(entropy), <= B",
    "participation_ratio": "(sum l)^2 / sum l^2, <= B",
    "topk_variance": "share of trace",
    "top1_variance": "share of trace",
    "energy_in_subspace": "share of held-out norm^2",
    "energy_outside": "share of held-out norm^2",
    "grad_cosine": "mean pairwise cosine",
    "overlap_prev": "||U_t^T U_s||_F^2 / k",
    "overlap_init": "||U_t^T U_0||_F^2 / k",
    "top_eigvec_prev": "|u1(t) . u1(s)|",
    "top_eigvec_init": "|u1(t) . u1(0)|",
    "subspace_similarity": "overlap with U (lag)",
    "grad_alignment_prev": "cosine of mean grads",
    "function_space_alignment_same": "cosine in logit space",
    "function_space_alignment_heldout": "cosine in logit space",
}


FLOORS = {
    "overlap_prev": "overlap_floor",
    "subspace_similarity": "overlap_floor",
    "overlap_init": "overlap_floor",
    "top_eigvec_prev": "top_eigvec_floor",
}


FLOOR = "#8c564b"


def floor_trace(rows: pd.DataFrame, metric: str) -> list[Trace]:
    """The split-half noise floor of a subspace metric (seed mean and its interval over seeds)."""
    return band_trace(rows, metric, "split-half floor: " + BAND, FLOOR)


def dashboard_section(m: pd.DataFrame, out: Path, ctx: dict) -> list[str]:
    geo = select(m, family="geometry", component="")
    if geo.empty:
        return []
    metrics = [d for d in DASHBOARD if d in set(geo.metric)]
    panels = []
    for i, d in enumerate(metrics):
        panel = metric_panel(geo, d, DASHBOARD_UNITS.get(d, ""), ctx)
        if d in FLOORS:
            panel.traces += floor_trace(geo, FLOORS[d])
        for t in panel.traces if i else []:
            t.legend = False
        panels.append(panel)
    title = "Gradient-geometry dashboard (seeds thin, seed mean bold with its 95% t-interval over seeds; split-half noise floors brown)"
    files = save(Figure(title, panels, ncols=3), out, "dashboard")
    lines = ["## Gradient-geometry dashboard", "", image(files, "dashboard"), ""]
    lines += centred_lines(geo, out, ctx)
    lines += ["| metric | seed mean at first checkpoint | at last checkpoint |", "|---|---|---|"]
    for d in metrics + [f for f in ("overlap_floor", "grad_snr") if f in set(geo.metric)]:
        s = summary(geo, d)
        if len(s):
            lines.append(f"| {d} | {s['mean'].iloc[0]:.4g} | {s['mean'].iloc[-1]:.4g} |")
    window, points = ctx["window"], select(m, family="transition", metric="change_point")
    if window and all(math.isfinite(v) for v in window):
        changes = ", ".join(f"{r.component} {r.value:.0f}" for r in points.itertuples()) or "none"
        lines += [
            "",
            f"Transition window (change points of several seed-mean series agreeing): steps {window[0]:.0f} .. {window[1]:.0f}; change points: {changes}.",
        ]
    lines += [
        "Reading: a drop in effective rank and a rise in top-k variance mean the gradient concentrates in fewer directions. "
        "A subspace overlap near its split-half floor says no more than two draws of the probe batches at one checkpoint would.",
        "",
    ]
    return lines


def centred_lines(geo: pd.DataFrame, out: Path, ctx: dict) -> list[str]:
    """Uncentred and centred G side by side, and the gradient signal-to-noise ratio."""
    if "effective_rank_centered" not in set(geo.metric):
        return []
    panels = []
    for d in ("effective_rank", "participation_ratio", "topk_variance"):
        traces = band_trace(geo, d, "uncentred G", "#000000") + band_trace(
            geo, f"{d}_centered", "centred G (covariance)", "#9467bd"
        )
        panels.append(
            Panel(
                d,
                traces,
                ylabel=DASHBOARD_UNITS.get(d, ""),
                window=ctx["window"],
                marks=ctx["marks"],
            )
        )
    panels.append(
        metric_panel(
            geo,
            "grad_snr",
            "||gbar||^2 / tr(centred covariance)",
            ctx,
            title="gradient signal-to-noise ratio",
        )
    )
    files = save(
        Figure(
            "Uncentred vs centred G (seed means, 95% t-intervals over seeds) and the gradient SNR",
            panels,
            ncols=2,
        ),
        out,
        "dashboard_centered",
    )
    return [
        image(files, "centred vs uncentred"),
        "",
        "Reading: when the signal-to-noise ratio is high the uncentred G's top direction is mostly the mean gradient; where centred and uncentred disagree, the change is in the mean, not in the covariance.",
        "",
    ]


def stream1_section(m: pd.DataFrame, out: Path, ctx: dict) -> list[str]:
    s1 = select(m, family="stream1")
    if s1.empty:
        return []
    panel = metric_panel(s1, "drift_rate", "mean principal angle / step (rad)", ctx)
    panel.traces += floor_trace(s1, "drift_floor")
    files = save(
        Figure("Stream 1: subspace drift rate (split-half floor brown)", [panel]),
        out,
        "stream1_drift",
    )
    s, floor = summary(s1, "drift_rate"), summary(s1, "drift_floor")
    text = (
        f"Seed-mean drift peaks at step {int(s['mean'].idxmax())} ({s['mean'].max():.2e} rad/step) and ends at {s['mean'].iloc[-1]:.2e}"
        if len(s)
        else ""
    )
    if len(floor):
        text += f"; its split-half floor (the angle between two halves of the probe batches at one checkpoint, per step of Delta) is {floor['mean'].min():.2e}..{floor['mean'].max():.2e}"
    return [
        "## Stream 1: subspace drift",
        "",
        image(files, "drift"),
        "",
        text
        + ". Reading: the paper predicts a peak at the transition, then decay to a small floor; drift below its split-half floor is noise.",
        "",
    ]


PAPER = [
    (
        "effective_rank",
        "~48 early -> 40-42 after the transition",
        "B = 64 bounds it; a smaller B bounds it lower",
    ),
    ("participation_ratio", "~30-38 -> 24-29", ""),
    ("topk_variance", "~0.22 -> 0.26-0.30 (k = 4)", ""),
    ("overlap_prev", "~0.5 -> 0.85-0.90", "depends on the checkpoint spacing"),
]


def paper_section(m: pd.DataFrame, run) -> list[str]:
    geo = select(m, family="geometry", component="")
    if geo.empty:
        return []
    b = run.config.data.probe_batches
    lines = [
        "## Next to the paper (section 6 of 'Internalization of gradients')",
        "",
        f"The paper measures the paper preset (16 seeds, B = 64 probe batches, 100k-800k steps); this run is preset `{run.config.preset}` "
        f"with B = {b} and {run.config.train.steps} steps, so absolute values are comparable only where B and scale match. "
        "Effective rank and participation ratio are bounded by B: with B < 64 only their direction of change is comparable.",
        "",
        "| quantity | paper | this run (seed mean, first -> last checkpoint) | comparable here? |",
        "|---|---|---|---|",
    ]
    for name, paper, note in PAPER:
        s = summary(geo, name)
        ours = f"{s['mean'].iloc[0]:.3f} -> {s['mean'].iloc[-1]:.3f}" if len(s) else "not measured"
        comparable = (
            "direction only (B-bounded)"
            if name in ("effective_rank", "participation_ratio") and b != 64
            else ("yes" if b == 64 else "roughly (k = 4, other B)")
        )
        lines.append(f"| {name} | {paper} | {ours} | {comparable}{'; ' + note if note else ''} |")
    return lines + [""]
