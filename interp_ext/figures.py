"""One definition per figure, drawn twice: a PNG (matplotlib) and an interactive HTML page (plotly).

A figure is data: :class:`Figure` holds :class:`Panel` s of :class:`Trace` s
(lines, bands, bars) or a :class:`Heatmap`, with optional vertical marks, a
shaded window and a zero line. :func:`save` renders the same definition with
both libraries, so the two files always show the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import plotly.graph_objects as go
from matplotlib.figure import Figure as MatplotlibFigure
from plotly.subplots import make_subplots

from interp_ext import diskio

# the PNGs are drawn on figures of their own (no pyplot), so a notebook's backend is left alone
PALETTE = [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab10"].colors]


@dataclass
class Trace:
    """A line (``mode="lines"``), markers on a line, points alone (``"points"``: ``lo``/``hi`` drawn as
    error bars), or a bar series; elsewhere ``lo``/``hi`` add a shaded band."""

    x: Sequence[float]
    y: Sequence[float]
    label: str = ""
    color: str = "#000000"
    width: float = 1.0
    alpha: float = 1.0
    lo: Sequence[float] | None = None
    hi: Sequence[float] | None = None
    mode: str = "lines"
    legend: bool = True


@dataclass
class Heatmap:
    z: np.ndarray
    xlabels: list[str]
    ylabels: list[str]
    colorbar: str = ""
    centered: bool = True


@dataclass
class Panel:
    title: str
    traces: list[Trace] = field(default_factory=list)
    xlabel: str = "training step"
    ylabel: str = ""
    marks: dict[str, float] = field(default_factory=dict)  # label -> x of a dashed vertical line
    window: tuple[float, float] | None = None  # shaded x range (the transition)
    window_label: str = "transition"
    zero: bool = False
    heatmap: Heatmap | None = None
    stacked: bool = False  # bars stacked


@dataclass
class Figure:
    title: str
    panels: list[Panel]
    ncols: int = 1

    @property
    def nrows(self) -> int:
        return math.ceil(len(self.panels) / self.ncols)


PLOTLY_JS = "plotly.min.js"


def save(fig: Figure, out: Path, name: str) -> list[str]:
    """Write ``name.png`` and ``name.html`` under ``out``; returns their file names."""
    mpl = to_matplotlib(fig)
    diskio.atomic(
        out / f"{name}.png",
        lambda tmp: mpl.savefig(tmp, dpi=110, bbox_inches="tight", format="png"),
    )
    save_plotly(to_plotly(fig), out, name)
    return [f"{name}.png", f"{name}.html"]


def save_plotly(fig: go.Figure, out: Path, name: str) -> str:
    """Write ``name.html`` under ``out``, loading plotly.js from one ``plotly.min.js`` beside it
    (written once), so the page draws offline."""
    from plotly.offline import get_plotlyjs

    js = out / PLOTLY_JS
    if not js.exists():
        diskio.write_text(js, get_plotlyjs())
    diskio.write_text(
        out / f"{name}.html", fig.to_html(include_plotlyjs="directory", full_html=True)
    )
    return f"{name}.html"


def _finite(window) -> bool:
    return window is not None and all(math.isfinite(v) for v in window)


def to_matplotlib(fig: Figure):
    wide = any(p.heatmap is not None and len(p.heatmap.xlabels) > 12 for p in fig.panels)
    size = (max(4.6 * fig.ncols, 9 if wide else 0), 3.4 * fig.nrows)
    figure = MatplotlibFigure(figsize=size)
    axes = figure.subplots(fig.nrows, fig.ncols, squeeze=False)
    for i, panel in enumerate(fig.panels):
        _draw_mpl(axes[i // fig.ncols][i % fig.ncols], panel, figure)
    for j in range(len(fig.panels), fig.nrows * fig.ncols):
        axes[j // fig.ncols][j % fig.ncols].axis("off")
    figure.suptitle(fig.title)
    figure.tight_layout()
    return figure


def _draw_mpl(ax, panel: Panel, figure) -> None:
    if panel.heatmap is not None:
        h = panel.heatmap
        vmax = float(np.nanmax(np.abs(h.z))) if h.centered and np.isfinite(h.z).any() else None
        im = ax.imshow(
            h.z,
            aspect="auto",
            cmap="RdBu_r" if h.centered else "viridis",
            vmin=-vmax if vmax else None,
            vmax=vmax,
        )
        ax.set_xticks(
            range(len(h.xlabels)), h.xlabels, rotation=90 if len(h.xlabels) > 8 else 0, fontsize=7
        )
        ax.set_yticks(range(len(h.ylabels)), h.ylabels, fontsize=8)
        figure.colorbar(im, ax=ax, label=h.colorbar)
    bottom = None
    for t in panel.traces:
        if t.mode == "bar":
            xs = [str(x) for x in t.x]
            ax.bar(xs, t.y, bottom=bottom, color=t.color, label=t.label or None)
            bottom = (
                np.asarray(t.y, float) + (0 if bottom is None else bottom)
                if panel.stacked
                else None
            )
            ax.tick_params(axis="x", rotation=90)
            continue
        style = {"markers": "o-", "points": "o"}.get(t.mode, "-")
        ax.plot(
            t.x,
            t.y,
            style,
            lw=t.width,
            alpha=t.alpha,
            color=t.color,
            label=t.label if t.legend and t.label else None,
            ms=3 if t.mode != "points" else 2 + 2 * t.width,
        )
        if t.mode == "points" and t.lo is not None and t.hi is not None:
            ax.vlines(t.x, t.lo, t.hi, color=t.color, lw=1.2)
        elif t.lo is not None and t.hi is not None:
            ax.fill_between(t.x, t.lo, t.hi, color=t.color, alpha=0.18)
    if _finite(panel.window):
        ax.axvspan(*panel.window, color="orange", alpha=0.15, label=panel.window_label)
    for label, x in panel.marks.items():
        if math.isfinite(x):
            ax.axvline(x, color="red", ls="--", lw=1, label=label)
    if panel.zero:
        ax.axhline(0, color="black", lw=0.6)
    ax.set_title(panel.title, fontsize=10)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    if panel.heatmap is None:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")


def to_plotly(fig: Figure) -> go.Figure:
    html = make_subplots(
        rows=fig.nrows, cols=fig.ncols, subplot_titles=[p.title for p in fig.panels]
    )
    for i, panel in enumerate(fig.panels):
        row, col = i // fig.ncols + 1, i % fig.ncols + 1
        _draw_plotly(html, panel, row, col, first=i == 0)
    html.update_layout(
        title=fig.title, height=340 * fig.nrows, width=max(520 * fig.ncols, 900), barmode="stack"
    )
    return html


def _draw_plotly(html: go.Figure, panel: Panel, row: int, col: int, first: bool) -> None:
    at = dict(row=row, col=col)
    if panel.heatmap is not None:
        html.add_trace(_plotly_heatmap(panel.heatmap), **at)
    for t in panel.traces:
        for trace in _plotly_traces(t, first):
            html.add_trace(trace, **at)
    if _finite(panel.window):
        x0, x1 = panel.window
        html.add_vrect(x0=x0, x1=x1, fillcolor="orange", opacity=0.15, line_width=0, **at)
    for label, x in panel.marks.items():
        if math.isfinite(x):
            html.add_vline(x=x, line_dash="dash", line_color="red", annotation_text=label, **at)
    if panel.zero:
        html.add_hline(y=0, line_color="black", line_width=0.6, **at)
    html.update_xaxes(title_text=panel.xlabel.replace("\n", "<br>"), **at)
    html.update_yaxes(title_text=panel.ylabel, **at)


def _plotly_heatmap(h: Heatmap) -> go.Heatmap:
    scale = (
        dict(colorscale="RdBu", reversescale=True, zmid=0)
        if h.centered
        else dict(colorscale="Viridis")
    )
    return go.Heatmap(z=h.z, x=h.xlabels, y=h.ylabels, colorbar=dict(title=h.colorbar), **scale)


def _plotly_traces(t: Trace, first: bool) -> list:
    """A bar series, or a line with its band (the band first, drawn under the line)."""
    if t.mode == "bar":
        return [
            go.Bar(
                x=list(t.x),
                y=list(t.y),
                name=t.label,
                marker_color=t.color,
                legendgroup=t.label,
                showlegend=first,
            )
        ]
    if t.mode == "points":
        return [_plotly_points(t, first)]
    out = []
    if t.lo is not None and t.hi is not None:
        band = dict(x=list(t.x) + list(t.x)[::-1], y=list(t.hi) + list(t.lo)[::-1])
        out.append(
            go.Scatter(
                **band,
                fill="toself",
                fillcolor=t.color,
                opacity=0.18,
                line=dict(width=0),
                hoverinfo="skip",
                showlegend=False,
            )
        )
    out.append(
        go.Scatter(
            x=list(t.x),
            y=list(t.y),
            mode="lines+markers" if t.mode == "markers" else "lines",
            name=t.label,
            legendgroup=t.label,
            showlegend=first and t.legend and bool(t.label),
            opacity=t.alpha,
            line=dict(width=t.width * 1.2, color=t.color),
        )
    )
    return out


def _plotly_points(t: Trace, first: bool) -> go.Scatter:
    """Points alone, ``lo``/``hi`` as asymmetric error bars."""
    spread = {}
    if t.lo is not None and t.hi is not None:
        spread["error_y"] = dict(
            type="data",
            symmetric=False,
            array=[h - y for h, y in zip(t.hi, t.y)],
            arrayminus=[y - lo for lo, y in zip(t.lo, t.y)],
        )
    return go.Scatter(
        x=list(t.x),
        y=list(t.y),
        mode="markers",
        name=t.label,
        legendgroup=t.label,
        showlegend=first and t.legend and bool(t.label),
        opacity=t.alpha,
        marker=dict(size=4 + 3 * t.width, color=t.color),
        **spread,
    )
