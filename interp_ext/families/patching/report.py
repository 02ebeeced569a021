"""The ``patching`` family's section of the report: activation and path patching heatmaps.

Drawn from the family's rows (and the summaries over seeds it wrote); nothing is computed here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from circuits.circuit import Head
from interp_ext.figures import Heatmap
from interp_ext.report.draw import (
    heatmap_figure,
    image,
    select,
)


def section(page) -> list[str]:
    """``report.md`` lines of this section (its figures written into ``page.out``)."""
    return patching_section(page.rows, page.out, page.run)


def head_matrix(rows: pd.DataFrame, n_layers: int, n_heads: int) -> np.ndarray:
    mat = np.full((n_layers, n_heads), np.nan)
    for r in rows.itertuples():
        h = Head.parse(r.component)
        mat[h.layer, h.head] = r.value
    return mat


def resid_matrix(rows: pd.DataFrame, n_layers: int) -> np.ndarray:
    """Rows with components ``L{layer}P{pos}`` as a [layer, pos] matrix."""
    layer = rows.component.str[1:].str.split("P").str[0].astype(int).to_numpy()
    pos = rows.component.str.split("P").str[1].astype(int).to_numpy()
    mat = np.full((n_layers, int(pos.max()) + 1), np.nan)
    mat[layer, pos] = rows.value.to_numpy()
    return mat


def patching_section(m: pd.DataFrame, out: Path, run) -> list[str]:
    pat = select(m, family="patching")
    if pat.empty:
        return []
    step, seed = int(pat.step.max()), int(pat[pat.step == pat.step.max()].seed.min())
    sel = pat[(pat.step == step) & (pat.seed == seed)]
    n_l, n_h = run.config.model.n_layers, run.config.model.n_heads
    layers = [f"L{l}" for l in range(n_l)]
    heads = Heatmap(
        head_matrix(sel[sel.metric == "head_out"], n_l, n_h),
        [f"H{h}" for h in range(n_h)],
        layers,
        "normalised logit diff (0 corrupt, 1 clean)",
    )
    f1 = heatmap_figure(
        out,
        "patching_heads",
        f"Head-output patching (seed {seed}, step {step})",
        [("head outputs", heads)],
        "head",
        "layer",
    )
    rmat = resid_matrix(sel[sel.metric == "resid_pre"], n_l)
    resid = Heatmap(rmat, [str(p) for p in range(rmat.shape[1])], layers, "normalised logit diff")
    f2 = heatmap_figure(
        out,
        "patching_resid",
        f"Residual-stream patching (seed {seed}, step {step})",
        [("resid_pre", resid)],
        "position ([BOS] r r)",
        "layer",
    )
    top = sel[sel.metric == "head_out"].sort_values("value", ascending=False).head(3)
    restoring = ", ".join(f"{c} {v:.2f}" for c, v in zip(top.component, top.value))
    lines = [
        "## Activation patching",
        "",
        image(f1, "heads"),
        "",
        image(f2, "resid"),
        "",
        f"Heads restoring most of the clean logit difference: {restoring}.",
    ]
    lines += key_path_lines(sel, out, n_l, n_h)
    return lines + ["Reading: restoring the induction head's output restores the copy.", ""]


def key_path_lines(sel: pd.DataFrame, out: Path, n_l: int, n_h: int) -> list[str]:
    """The key-path matrix; measured with the receiver's attention when those rows exist."""
    att = sel[sel.metric == "path_k_attention"]
    if att.empty:
        pk = sel[sel.metric == "path_k"].sort_values("value", ascending=False).head(3)
        return [
            f"Key paths by the logit metric (path patching sender -> receiver key): {', '.join(f'{c} {v:.2f}' for c, v in zip(pk.component, pk.value)) or 'n/a'}; "
            "under this corruption a key-path patch cannot restore the logits (the values it would move are corrupted), so these read ~0 whatever the K-composition."
        ]
    senders = sorted({c.split("->")[0] for c in att.component}, key=Head.parse)
    receivers = sorted({c.split("->")[1] for c in att.component}, key=Head.parse)
    mat = att.pivot_table(
        index=att.component.str.split("->").str[0],
        columns=att.component.str.split("->").str[1],
        values="value",
    ).reindex(index=senders, columns=receivers)
    restored = Heatmap(mat.to_numpy(), receivers, senders, "restored share of target attention")
    files = heatmap_figure(
        out,
        "patching_key_paths",
        "Key-path patching, receiver-attention metric",
        [("sender -> receiver key", restored)],
        "receiver head",
        "sender head",
    )
    top = att.sort_values("value", ascending=False).head(4)
    return [
        "",
        image(files, "key paths"),
        "",
        f"Strongest key paths by the receiver's attention to its induction target (0 = corrupted, 1 = clean): {', '.join(f'{c} {v:.2f}' for c, v in zip(top.component, top.value))}.",
    ]
