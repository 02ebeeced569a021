"""The ``sae`` family's section of the report: SAE quality and feature lineage across checkpoints.

Drawn from the family's rows (and the summaries over seeds it wrote); nothing is computed here.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from interp_ext.figures import PALETTE, Figure, Panel, Trace, save, save_plotly
from interp_ext.report.draw import (
    image,
    metric_panel,
    select,
)


def section(page) -> list[str]:
    """``report.md`` lines of this section (its figures written into ``page.out``)."""
    return sae_section(page.rows, page.out, page.ctx)


SAE_UNITS = {
    "l0": "active features / token",
    "explained_variance": "fraction",
    "dead_fraction": "fraction",
    "ce_recovered": "fraction",
    "induction_feature_corr": "corr. with 'token seen earlier'",
    # the last checkpoint's most induction-related feature, followed back through persisted links
    "followed_feature_corr": "its lineage: corr. with 'token seen earlier'",
}


EVENTS = ("n_persisted", "n_born", "n_died", "n_split", "n_merged")


def sae_section(m: pd.DataFrame, out: Path, ctx: dict) -> list[str]:
    sae = select(m, family="sae")
    if sae.empty:
        return []
    panels = [metric_panel(sae, q, u, ctx) for q, u in SAE_UNITS.items() if q in set(sae.metric)]
    files = save(
        Figure("SAE quality and the induction-feature timeline over training", panels, ncols=3),
        out,
        "sae_quality",
    )
    lines = ["## SAE features across checkpoints", "", image(files, "quality"), ""]
    lines += lineage_lines(sae, out)
    uni = sae[(sae.metric == "universality")].sort_values("step")
    if len(uni):
        per_step = ", ".join(f"{int(r.step)}: {r.value:.2f}" for r in uni.itertuples())
        lines.append(
            f"Feature universality across seeds (matched fraction) per checkpoint: {per_step}."
        )
    birth = sae[sae.metric == "induction_feature_birth_step"]
    if len(birth):
        per_seed = ", ".join(f"seed {int(r.seed)} {r.value:.0f}" for r in birth.itertuples())
        lines.append(f"Birth step of the most induction-related feature per seed: {per_seed}.")
    return lines + [
        "Reading: features that track 'this token appeared earlier' should be born near the induction transition.",
        "",
    ]


def lineage_lines(sae: pd.DataFrame, out: Path) -> list[str]:
    """Lineage events of the first seed as stacked bars, and the flow diagram (HTML)."""
    events = sae[sae.metric.isin(EVENTS) & (sae.seed >= 0)]
    if events.empty:
        return []
    seed0 = int(events.seed.min())
    e = (
        events[events.seed == seed0]
        .pivot_table(index="step", columns="metric", values="value")
        .fillna(0)
    )
    traces = [
        Trace(e.index.tolist(), e[c].tolist(), c[2:], PALETTE[i], mode="bar")
        for i, c in enumerate(k for k in EVENTS if k in e)
    ]
    panel = Panel(
        "events",
        traces,
        xlabel="checkpoint step (previous -> this)",
        ylabel="features",
        stacked=True,
    )
    files = save(
        Figure(f"Feature lineage between consecutive checkpoints (seed {seed0})", [panel]),
        out,
        "sae_lineage",
    )
    save_plotly(lineage_sankey(e, seed0), out, "sae_lineage_sankey")
    return [
        f"{image(files, 'lineage')}; flow diagram: [sae_lineage_sankey.html](sae_lineage_sankey.html)",
        "",
    ]


def lineage_sankey(events: pd.DataFrame, seed: int):
    """Alluvial view of feature flows between consecutive SAE checkpoints (HTML only).

    One column of nodes per checkpoint; persisted and split features flow on to
    the next checkpoint, died ones into a sink, born ones from a source.
    """
    import plotly.graph_objects as go

    steps = list(events.index)
    labels: list[str] = []
    index: dict[str, int] = {}

    def node(name: str) -> int:
        if name not in index:
            index[name] = len(labels)
            labels.append(name)
        return index[name]

    src, dst, val = [], [], []
    for prev, step in zip([None] + steps[:-1], steps):
        row = events.loc[step]
        before = f"step {prev}" if prev is not None else f"first SAE (before {step})"
        kept = row.get("n_persisted", 0) + row.get("n_split", 0)
        for a, b, v in (
            (before, f"step {step}", kept),
            (before, f"died before {step}", row.get("n_died", 0)),
            (f"born at {step}", f"step {step}", row.get("n_born", 0)),
        ):
            if v > 0:
                src.append(node(a))
                dst.append(node(b))
                val.append(float(v))
    fig = go.Figure(
        go.Sankey(node=dict(label=labels, pad=12), link=dict(source=src, target=dst, value=val))
    )
    fig.update_layout(
        title=f"SAE feature lineage, seed {seed}: persisted + split flow on, died and born branch off"
    )
    return fig
