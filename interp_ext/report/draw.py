"""Reading rows and drawing them: the pieces every report section is made of.

The report draws; it never computes. Every number it prints and every band it
shades is a metric row: per-seed values as the families wrote them, and the
summaries over seeds (``<metric>/seed_mean``, ``/seed_lo``, ``/seed_hi``,
``/seed_n``: t-intervals over per-seed values, :mod:`interp_ext.stats`) that the
families emit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from interp_ext.figures import PALETTE, Figure, Heatmap, Panel, Trace, save


@dataclass
class Page:
    """What a family's report section is given: the run, the rows of every family (latest
    settings of each), the folder figures go to and the marks every time-series figure shows."""

    run: object
    rows: pd.DataFrame
    out: Path
    ctx: dict


BAND = "seed mean, 95% t-interval over seeds"
CIRCUIT, CONTROL = "#1f77b4", "#7f7f7f"


def select(rows: pd.DataFrame, **where) -> pd.DataFrame:
    """Rows whose columns equal the given values."""
    keep = np.ones(len(rows), dtype=bool)
    for col, value in where.items():
        keep &= (rows[col] == value).to_numpy()
    return rows[keep]


def one(rows: pd.DataFrame, default: float = math.nan, **where) -> float:
    sel = select(rows, **where)
    return float(sel.value.iloc[-1]) if len(sel) else default


def summary(rows: pd.DataFrame, metric: str, **where) -> pd.DataFrame:
    """The seed_mean / seed_lo / seed_hi rows of a metric as columns by step."""
    parts = {
        s: select(rows, metric=f"{metric}/seed_{s}", seed=-1, **where).set_index("step").value
        for s in ("mean", "lo", "hi")
    }
    frame = pd.DataFrame(parts).sort_index()
    return frame[frame.index >= 0]


def seed_traces(
    rows: pd.DataFrame, metric: str, legend: bool = True, color: str | None = None, **where
) -> list[Trace]:
    """One thin line per seed."""
    sel = select(rows, metric=metric, **where)
    sel = sel[(sel.seed >= 0) & (sel.step >= 0)]
    out = []
    for i, (seed, g) in enumerate(sel.groupby("seed")):
        g = g.sort_values("step")
        out.append(
            Trace(
                g.step.tolist(),
                g.value.tolist(),
                f"seed {seed}",
                color or PALETTE[i % 10],
                0.8,
                0.6,
                legend=legend,
            )
        )
    return out


def band_trace(
    rows: pd.DataFrame, metric: str, label: str = BAND, color: str = "#000000", **where
) -> list[Trace]:
    s = summary(rows, metric, **where)
    if s.empty:
        return []
    return [
        Trace(
            s.index.tolist(),
            s["mean"].tolist(),
            label,
            color,
            2.4,
            lo=s["lo"].tolist(),
            hi=s["hi"].tolist(),
        )
    ]


def metric_panel(
    rows: pd.DataFrame, metric: str, ylabel: str, context: dict, title: str | None = None, **where
) -> Panel:
    traces = seed_traces(rows, metric, **where) + band_trace(rows, metric, **where)
    return Panel(
        title or metric, traces, ylabel=ylabel, window=context["window"], marks=context["marks"]
    )


def context_of(m: pd.DataFrame, families) -> dict:
    """What every time-series figure marks: a shaded window and dashed vertical lines, as the
    families with rows contribute them (:meth:`Family.context`: the transition window, the
    formation step)."""
    ctx: dict = {"window": None, "marks": {}}
    for fam in families:
        extra = fam.context(m)
        ctx["window"] = extra.get("window") or ctx["window"]
        ctx["marks"].update(extra.get("marks", {}))
    return ctx


def image(files: list[str], alt: str) -> str:
    return f"![{alt}]({files[0]}) ([interactive]({files[1]}))"


def heatmap_figure(
    out: Path, name: str, title: str, panels: list[tuple[str, Heatmap]], xlabel: str, ylabel: str
) -> list[str]:
    """One figure of heatmap panels (title, heatmap), two per row."""
    figure = Figure(
        title,
        [Panel(t, heatmap=h, xlabel=xlabel, ylabel=ylabel) for t, h in panels],
        ncols=min(2, len(panels)),
    )
    return save(figure, out, name)


def formation_cells(seed_rows: pd.DataFrame, hit_metric: str) -> tuple[str, str, str]:
    """(formation step as shown, "yes"/"no"/"" for ``hit_metric``, the rows' prefix) for one seed's
    step -1 rows, where a seed that never formed carries ``null_``-prefixed rows read at the formed
    seeds' median formation step."""
    null = math.isfinite(one(seed_rows, metric="null_formation_step"))
    prefix = "null_" if null else ""
    form = one(seed_rows, metric=f"{prefix}formation_step")
    hit = one(seed_rows, metric=f"{prefix}{hit_metric}")
    shown = f"never formed (median {form:.0f})" if null else f"{form:.0f}"
    return shown, "yes" if hit > 0 else ("no" if hit == 0 else ""), prefix


def seeds_of(rows: pd.DataFrame) -> list[int]:
    return sorted(int(s) for s in rows.seed.unique() if s >= 0)


def default_section(fam, page: Page) -> list[str]:
    """A family with no section of its own: each of its ``summary_metrics`` per step, every seed's
    line and the seed mean with its 95% t-interval over seeds, with the values at the last step."""
    rows = page.rows[page.rows.family.isin(fam.families())]
    lines = [f"## {fam.name}", ""]
    for metric in fam.summary_metrics:
        if select(rows, metric=metric).empty:
            continue
        components = sorted(set(select(rows, metric=metric).component))
        for component in components:
            label = f"{metric} ({component})" if component else metric
            fig = Figure(
                f"{fam.name}: {label}",
                [metric_panel(rows, metric, metric, page.ctx, title=label, component=component)],
            )
            name = f"{fam.name}_{metric}_{component}".strip("_").replace("/", "_")
            files = save(fig, page.out, name)
            s = summary(rows, metric, component=component)
            last = (
                f"{s['mean'].iloc[-1]:.4g} [{s['lo'].iloc[-1]:.4g}, {s['hi'].iloc[-1]:.4g}] at step {s.index[-1]}"
                if len(s)
                else "no summary over seeds"
            )
            lines += [image(files, label), "", f"{label}: seed mean {last} ({BAND}).", ""]
    if len(lines) == 2:
        lines += [f"{len(rows)} rows; no summary metric to draw.", ""]
    return lines
