"""Figures and ``report.md`` for a run (SPEC section 10).

The report draws; it never computes. Every number it prints and every band it
shades is a metric row: per-seed values as the families wrote them, and the
summaries over seeds (``<metric>/seed_mean``, ``/seed_lo``, ``/seed_hi``,
``/seed_n``: t-intervals over per-seed values, :mod:`interp_ext.stats`) that the
families emit. Each figure is one :class:`interp_ext.figures.Figure`, saved as
PNG and interactive HTML; ``report.md`` lists each with the numbers behind it and
a one-line reading. Rows of the latest settings of each family are used.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from circuits.circuit import Head
from interp_ext.figures import PALETTE, Figure, Heatmap, Panel, Trace, save
from interp_ext.geometry.dashboard import DASHBOARD

BAND = "seed mean, 95% t-interval over seeds"
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


# --------------------------------------------------------------------------- reading rows


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


def context_of(m: pd.DataFrame) -> dict:
    """The transition window and the formation step (both rows) that every time-series figure marks."""
    tr = select(m, family="transition")
    window = (one(tr, metric="start"), one(tr, metric="end")) if len(tr) else None
    form = one(m, family="induction", metric="formation_step/seed_mean")
    return {"window": window, "marks": {"induction formation (seed mean)": form}}


def image(files: list[str], alt: str) -> str:
    return f"![{alt}]({files[0]}) ([interactive]({files[1]}))"


# --------------------------------------------------------------------------- sections


def loss_section(m: pd.DataFrame, out: Path, ctx: dict) -> list[str]:
    loss = select(m, family="train", metric="loss")
    if loss.empty:
        return []
    fig = Figure(
        "Training loss (mean over each checkpoint interval)",
        [metric_panel(loss, "loss", "cross-entropy (nats/token)", ctx)],
    )
    files = save(fig, out, "train_loss")
    last = loss[loss.step == loss.step.max()].sort_values("seed")
    per_seed = ", ".join(f"seed {int(r.seed)} {r.value:.3f}" for r in last.itertuples())
    return [
        "## Training loss",
        "",
        image(files, "loss"),
        "",
        f"Loss at the last checkpoint: {per_seed} nats/token. Reading: a plateau followed by a drop marks the induction transition.",
        "",
    ]


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


def seeds_of(rows: pd.DataFrame) -> list[int]:
    return sorted(int(s) for s in rows.seed.unique() if s >= 0)


def induction_section(m: pd.DataFrame, out: Path, ctx: dict) -> list[str]:
    ind = select(m, family="induction")
    if ind.empty:
        return []
    best = metric_panel(ind, "best_induction_score", "attention to induction target", ctx)
    files = save(
        Figure("Best induction score (layer >= 1) over training", [best]),
        out,
        "induction_formation",
    )
    last = int(ind[ind.metric == "induction_score"].step.max())
    scores = ["induction_score", "prev_token_score", "duplicate_score", "copying_score"]
    panels = []
    for seed in seeds_of(ind)[:4]:
        final = ind[(ind.seed == seed) & (ind.step == last) & ind.metric.isin(scores)]
        piv = final.pivot_table(index="metric", columns="component", values="value")
        panels.append(
            (
                f"seed {seed}",
                Heatmap(
                    piv.to_numpy(), list(piv.columns), list(piv.index), "score", centered=False
                ),
            )
        )
    files2 = heatmap_figure(out, "head_scores", f"Head scores at step {last}", panels, "head", "")
    lines = [
        "## Induction heads",
        "",
        image(files, "induction"),
        "",
        image(files2, "head scores"),
        "",
    ]
    return lines + induction_table(ind)


def induction_table(ind: pd.DataFrame) -> list[str]:
    lines = [
        "| seed | formation step | induction heads | previous-token heads | ablation: detected | ablation: random |",
        "|---|---|---|---|---|---|",
    ]
    for seed in seeds_of(ind):
        d = ind[ind.seed == seed]
        heads = ", ".join(d[d.metric == "detected_induction_head"].component) or "none"
        prev = ", ".join(d[d.metric == "detected_prev_token_head"].component) or "none"
        detected = one(d, metric="ablation_loss_increase", component="detected")
        random = one(d, metric="ablation_loss_increase", component="random")
        lines.append(
            f"| {seed} | {one(d, metric='formation_step'):.0f} | {heads} | {prev} | {detected:+.3f} | {random:+.3f} |"
        )
    mean, lo, hi, n = (
        one(ind, metric=f"formation_step/seed_{s}") for s in ("mean", "lo", "hi", "n")
    )
    return lines + [
        "",
        f"Formation step over seeds: {mean:.0f} (95% t-interval over {n:.0f} seeds: {lo:.0f} .. {hi:.0f}). "
        "Ablation: loss increase (nats) on the second copy when the detected heads, or as many random heads outside the circuit, are mean-ablated.",
        "Reading: an induction head forms when the best score jumps; the ablation gap says the detected heads carry the copying.",
        "",
    ]


def circuit_section(m: pd.DataFrame) -> list[str]:
    """The circuit each seed is followed with, found by cause, and what its members restore."""
    circ = select(m, family="circuit")
    if circ.empty:
        return []
    lines = [
        "## Circuits found by cause",
        "",
        "Induction heads by score; earlier heads by the share of an induction head's attention to its targets that their key-path patch restores "
        "(receiver-attention metric, best over the induction heads); the set is the smallest that restores the bar together.",
        "",
        "| seed | step | induction heads | earlier heads (key-path share, how chosen) | set restores | all earlier heads restore |",
        "|---|---|---|---|---|---|",
    ]
    for (seed, step), d in circ[circ.seed >= 0].groupby(["seed", "step"]):
        members = d[d.metric == "member"]
        share = d[d.metric == "key_path_share_best"].set_index("component").value
        heads = ", ".join(members[members.role == "induction"].component)
        earlier = ", ".join(
            f"{r.component} ({share.get(r.component, math.nan):.2f}, {r.method})"
            for r in members[members.role == "prev_token"].itertuples()
        )
        restored = one(d, metric="set_restoration", component="")
        everything = one(d, metric="earlier_restoration", component="")
        lines.append(
            f"| {seed} | {step} | {heads} | {earlier} | {restored:.2f} | {everything:.2f} |"
        )
    return lines + [
        "",
        "Reading: an earlier head outside the set with a large share means the previous-token function is spread; Stream 3 follows this circuit.",
        "",
    ]


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


GROUPS = ("ln", "attn_qkv", "attn_out", "mlp_in", "mlp_out", "embed", "unembed")


def stream2_section(m: pd.DataFrame, out: Path) -> list[str]:
    s2 = select(m, family="stream2")
    if s2.empty:
        return []
    groups = [g for g in GROUPS if g in set(s2.component)]
    panels = [cka_panel(s2, g) for g in groups] + cka_heads_panels(s2)
    files = save(
        Figure(
            "Stream 2: basis-free cross-seed alignment (CKA of per-batch gradient Grams), with nulls and the basis-dependent cosine",
            panels,
            ncols=3,
        ),
        out,
        "stream2_alignment",
    )
    last = s2[s2.step == s2.step.max()]
    lines = [
        "## Stream 2: cross-seed alignment",
        "",
        image(files, "stream2"),
        "",
        "At the last checkpoint, mean over seed pairs:",
        "",
        "| group | CKA (basis-free) | shuffled-batch null | untrained null (mean +- sd) | raw cosine (basis-dependent) | permutation-matched cosine (basis-dependent) |",
        "|---|---|---|---|---|---|",
    ]
    for g in groups:
        null, sd = (
            one(s2, metric="cka_null_untrained", component=g),
            one(s2, metric="cka_null_untrained_sd", component=g),
        )
        cells = [
            one(last, metric=x, component=g)
            for x in (
                "cka",
                "cka_null_shuffled",
                "cross_seed_alignment",
                "cross_seed_alignment_perm",
            )
        ]
        lines.append(
            f"| {g} | {cells[0]:.3f} | {cells[1]:.3f} | {null:.3f} +- {sd:.3f} | {cells[2]:.3f} | {cells[3]:.3f} |"
        )
    return (
        lines
        + seed_level_cka(s2, groups)
        + [
            "",
            "Reading: CKA asks whether the same probe batches push two seeds' group alike, whatever the coordinates; it means something only above both nulls. "
            "The cosines compare raw coordinates, which differ between seeds by head rotations, permutations and the residual basis.",
            "",
        ]
    )


def cka_heads_panels(s2: pd.DataFrame) -> list[Panel]:
    """The per-layer CKA of heads matched by attention pattern (none without head rows)."""
    heads = sorted(c for c in set(s2[s2.metric == "cka_heads"].component))
    if not heads:
        return []
    traces = [
        Trace(r.step.tolist(), r.value.tolist(), layer, PALETTE[i % 10], 1.6)
        for i, layer in enumerate(heads)
        for r in [select(s2, metric="cka_heads", component=layer).sort_values("step")]
    ]
    return [Panel("heads matched by attention pattern, per layer", traces, ylabel="CKA")]


def seed_level_cka(s2: pd.DataFrame, groups: list[str]) -> list[str]:
    """Per group, at every checkpoint: how many seeds' mean CKA over their pairs exceeds their own
    shuffled-batch null, and the range of that excess over seeds."""
    cka = s2[s2.metric == "cka_seed"]
    if cka.empty:
        return []
    null = s2[s2.metric == "cka_null_shuffled_seed"]
    both = cka.merge(null, on=["step", "seed", "component"], suffixes=("", "_null"))
    both = both.assign(excess=both.value - both.value_null)
    steps = sorted(set(both.step))
    lines = [
        "",
        "Seed level: seeds whose CKA (mean over the pairs they are in) exceeds their shuffled-batch null, "
        "k of n, and the excess over seeds (min .. max):",
        "",
        "| step | " + " | ".join(groups) + " |",
        "|---|" + "---|" * len(groups),
    ]
    for t in steps:
        cells = []
        for g in groups:
            e = both[(both.component == g) & (both.step == t)].excess
            cells.append(
                f"{int((e > 0).sum())}/{len(e)} ({e.min():+.3f} .. {e.max():+.3f})"
                if len(e)
                else ""
            )
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines


def cka_panel(s2: pd.DataFrame, group: str) -> Panel:
    cka = select(s2, metric="cka", component=group).sort_values("step")
    shuffled = select(s2, metric="cka_null_shuffled", component=group).sort_values("step")
    raw = select(s2, metric="cross_seed_alignment", component=group).sort_values("step")
    per_seed = select(s2, metric="cka_seed", component=group).sort_values("step")
    traces = [
        Trace(
            r.step.tolist(),
            r.value.tolist(),
            "each seed, mean over its pairs" if i == 0 else "",
            "#1f77b4",
            0.8,
            0.35,
            legend=i == 0,
        )
        for i, (_, r) in enumerate(per_seed.groupby("seed"))
    ]
    traces += [
        Trace(cka.step.tolist(), cka.value.tolist(), "CKA, mean over pairs", "#1f77b4", 2.2),
        Trace(
            shuffled.step.tolist(), shuffled.value.tolist(), "shuffled-batch null", "#7f7f7f", 1.2
        ),
    ]
    null, sd = (
        one(s2, metric="cka_null_untrained", component=group),
        one(s2, metric="cka_null_untrained_sd", component=group),
    )
    if math.isfinite(null) and len(cka):
        x = [float(cka.step.min()), float(cka.step.max())]
        traces.append(
            Trace(
                x,
                [null, null],
                "untrained null (+- 2 sd)",
                "#bcbd22",
                1.2,
                lo=[null - 2 * sd] * 2,
                hi=[null + 2 * sd] * 2,
            )
        )
    traces.append(
        Trace(
            raw.step.tolist(),
            raw.value.tolist(),
            "raw cosine (basis-dependent)",
            "#d62728",
            1.0,
            0.7,
        )
    )
    return Panel(group, traces, ylabel="mean over seed pairs", zero=True)


def beta_section(m: pd.DataFrame) -> list[str]:
    beta = select(m, family="beta")
    if beta.empty:
        return []
    lines = [
        "## Beta fit of subspace similarity",
        "",
        "| parameter | estimate | 95% interval (bootstrap over seeds) |",
        "|---|---|---|",
    ]
    lines += [
        f"| {p} | {one(beta, metric=p):.4g} | {one(beta, metric=p + '_lo'):.4g} .. {one(beta, metric=p + '_hi'):.4g} |"
        for p in ("sim_star", "gamma", "t0")
    ]
    return lines + [""]


CIRCUIT, CONTROL = "#1f77b4", "#7f7f7f"


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


LEDGER_TERMS = {
    "dE": ("dE (exact per step)", "#000000"),
    "L1_drift": ("drift: grad E . expected AdamW step", "#2ca02c"),
    "L1_noise": ("first-order noise", "#d62728"),
    "L1_inherited": ("momentum carried in", "#9467bd"),
    "L1_fresh": ("this step's gradient", "#ff7f0e"),
    "L2": ("second and higher order", "#1f77b4"),
}


def ledger_section(m: pd.DataFrame, out: Path) -> list[str]:
    led = select(m, family="ledger")
    if led.empty:
        return []
    unformed = sorted(int(s) for s in led[(led.metric == "formed") & (led.value == 0)].seed)
    note = (
        [
            f"Seeds whose induction heads never passed the detection threshold (no formation step, no ledger window): {unformed}.",
            "",
        ]
        if unformed
        else []
    )
    seeds = seeds_of(led[led.metric == "dE/cumulative"])
    if not seeds:
        return ["## Stream 3 ledger: the energy of the circuit, step by step", "", *note]
    forms = {
        int(r.seed): r.value
        for r in led[(led.metric == "formation_step") & (led.seed >= 0)].itertuples()
    }
    panels = [ledger_panel(led[led.seed == seed], seed, seed == seeds[0], forms) for seed in seeds]
    files = save(
        Figure(
            "Stream 3 ledger: where the circuit's gradient energy E_C comes from (running sums over the window)",
            panels,
            ncols=min(4, len(panels)),
        ),
        out,
        "ledger_cumulative",
    )
    lines = [
        "## Stream 3 ledger: the energy of the circuit, step by step",
        "",
        image(files, "ledger"),
        "",
        *note,
    ]
    lines += ledger_dense_k(led, out, forms)
    return lines + ledger_tables(led)


def ledger_panel(d: pd.DataFrame, seed: int, legend: bool, forms: dict) -> Panel:
    """One seed's running sums of the ledger terms."""
    traces = [
        Trace(
            g.step.tolist(),
            g.value.tolist(),
            label,
            color,
            2.2 if term == "dE" else 1.2,
            legend=legend,
        )
        for term, (label, color) in LEDGER_TERMS.items()
        for g in [select(d, metric=f"{term}/cumulative").sort_values("step")]
        if len(g)
    ]
    return Panel(
        f"seed {seed}",
        traces,
        ylabel="cumulative change of E_C",
        marks={"formation": forms.get(seed, math.nan)},
        zero=True,
    )


def ledger_dense_k(led: pd.DataFrame, out: Path, forms: dict) -> list[str]:
    panels = []
    for direction in ("optimizer", "sgd"):
        traces = seed_traces(
            led, "K_norm", color=CIRCUIT, legend=False, component="C|C", direction=direction
        )
        for i in range(3):
            name = f"control_random_{i}"
            traces += seed_traces(
                led,
                "K_norm",
                color=CONTROL,
                legend=False,
                component=f"{name}|{name}",
                direction=direction,
            )
        panels.append(
            Panel(
                f"K_norm[C,C], {direction} step",
                traces,
                ylabel="K / (E_C ||d_C||)",
                zero=True,
            )
        )
    files = save(
        Figure(
            "Dense Stream 3 through formation, every detail step of the ledger (circuit blue, random-head controls grey; one line per seed)",
            panels,
            ncols=2,
        ),
        out,
        "ledger_dense_K",
    )
    return [image(files, "dense K"), ""]


def ledger_tables(led: pd.DataFrame) -> list[str]:
    lines = [
        "Sums over each seed's window of the first-order terms (sampled steps scaled to the window), the higher orders and the exact change; "
        "mean over seeds with a 95% t-interval over seeds, and k = seeds where the sum is positive:",
        "",
        "| term | whole window | rise (formation +- 250 steps) |",
        "|---|---|---|",
    ]
    for term in (
        "dE/exact",
        "dE/sum",
        "L1/sum",
        "L1_drift/sum",
        "L1_noise/sum",
        "L1_inherited/sum",
        "L1_fresh/sum",
        "L1_decay/sum",
        "L1_mean/sum",
        "L1_fluct/sum",
        "L2/sum",
        "second_order_cd/sum",
    ):
        cells = []
        for phase in ("window", "rise"):
            v = {
                s: one(led, metric=f"{term}/{s}", component=f"C@{phase}")
                for s in ("seed_mean", "seed_lo", "seed_hi", "seed_n", "seeds_positive")
            }
            cells.append(
                f"{v['seed_mean']:+.4f} [{v['seed_lo']:+.4f}, {v['seed_hi']:+.4f}], k = {v['seeds_positive']:.0f} of {v['seed_n']:.0f}"
                if math.isfinite(v["seed_mean"])
                else "-"
            )
        lines.append(f"| {term} | {cells[0]} | {cells[1]} |")
    share = led[(led.metric == "K_drift_CC_positive_share") & (led.seed >= 0)]
    if len(share):
        per_seed = ", ".join(
            f"seed {int(r.seed)} {r.value:.2f}" for r in share.sort_values("seed").itertuples()
        )
        lines += [
            "",
            f"Share of sampled steps in the rise where K[C,C] along the expected (drift) step is positive: {per_seed}.",
        ]
    return lines + [
        "",
        "Reading: dE telescopes exactly; the terms say which part of each real step moved E_C. Drift is the expected AdamW step, noise the rest of the first-order change; L2 all higher orders.",
        "",
    ]


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


def term_panel(term: str, ledgers: dict[str, pd.DataFrame], legend: bool) -> Panel:
    """One ledger term's window sum: each run's seeds as points, their mean and 95% t-interval beside."""
    traces = []
    for i, (label, led) in enumerate(ledgers.items()):
        per_seed = select(led, metric=term, component="C@window")
        per_seed = per_seed[per_seed.seed >= 0].sort_values("seed")
        n = len(per_seed)
        offsets = np.linspace(-0.15, 0.15, n) if n > 1 else np.zeros(n)
        traces.append(
            Trace(
                list(i + offsets),
                per_seed.value.tolist(),
                f"{label}: each seed",
                PALETTE[i % 10],
                0.5,
                0.7,
                mode="points",
                legend=legend,
            )
        )
        mean, lo, hi = (
            one(led, metric=f"{term}/{s}", component="C@window")
            for s in ("seed_mean", "seed_lo", "seed_hi")
        )
        traces.append(
            Trace(
                [i + 0.3],
                [mean],
                f"{label}: mean, 95% t over seeds",
                PALETTE[i % 10],
                1.5,
                lo=[lo],
                hi=[hi],
                mode="points",
                legend=legend,
            )
        )
    return Panel(
        term.replace("/sum", " (window sum)"),
        traces,
        xlabel=" | ".join(f"{i}: {label}" for i, label in enumerate(ledgers)),
        ylabel="change of E_C",
        zero=True,
    )


def ledger_comparison(runs: dict, out: Path) -> list[str]:
    """The ledgers of several runs (e.g. presets) side by side: seed-level window sums of each term."""
    terms = (
        "dE/exact",
        "L1_drift/sum",
        "L1_noise/sum",
        "L1_inherited/sum",
        "L1_fresh/sum",
        "L2/sum",
    )
    ledgers = {label: run.metrics("ledger") for label, run in runs.items()}
    panels = [term_panel(term, ledgers, legend=k == 4) for k, term in enumerate(terms)]
    files = save(
        Figure(
            "Stream 3 ledgers side by side: each term's window sum per seed (points) and over seeds",
            panels,
            ncols=3,
        ),
        out,
        "ledger_comparison",
    )
    return ["## Ledgers side by side", "", image(files, "ledger comparison"), ""]


def llc_section(m: pd.DataFrame, out: Path, ctx: dict, run) -> list[str]:
    llc = select(m, family="llc")
    if llc.empty:
        return []
    components = [
        c for c in ("model", "circuit", "rest") if c in set(llc[llc.metric == "llc"].component)
    ]
    panels = [
        metric_panel(llc, "llc", "LLC estimate", ctx, title=f"LLC: {c}", component=c)
        for c in components
    ]
    panels += llc_head_panels(llc, m, ctx)
    files = save(
        Figure(
            "Local learning coefficient over training (devinterp; seeds thin, seed mean bold with its 95% t-interval over seeds)",
            panels,
            ncols=2,
        ),
        out,
        "llc",
    )
    lines = ["## Local learning coefficient", "", image(files, "llc"), ""]
    lines += calibration_lines(llc, out, run)
    diverged = llc[(llc.metric == "diverged") & (llc.value > 0)]
    if len(diverged):
        lines.append(
            f"Diverged estimates (NaN rows): {len(diverged)} of {len(llc[llc.metric == 'diverged'])}."
        )
    drift = llc[(llc.metric == "trace_drift") & (llc.seed >= 0)].value
    if len(drift):
        lines.append(
            f"Trace drift (last quarter of draws vs the third, relative to the rise over the initial loss): median {drift.median():.3f}, largest {drift.abs().max():.3f}."
        )
    return lines + [
        "Reading: the LLC counts effective parameters; a stage boundary shows as a change of slope or level where the dashboard and the induction score change.",
        "",
    ]


def llc_head_panels(llc: pd.DataFrame, m: pd.DataFrame, ctx: dict) -> list[Panel]:
    """Per-head LLC: each head's seed mean, and heads by their role in each seed's circuit."""
    heads = sorted(
        {c for c in llc[llc.metric == "llc/seed_mean"].component if Head.is_head(c)}, key=Head.parse
    )
    if not heads:
        return []
    where = dict(ylabel="LLC estimate", window=ctx["window"], marks=ctx["marks"])
    traces = [
        Trace(g.index.tolist(), g["mean"].tolist(), h, PALETTE[i % 10], 1.4)
        for i, h in enumerate(heads)
        for g in [summary(llc, "llc", component=h)]
    ]
    panels = [Panel("LLC per head (seed means)", traces, **where)]
    by_role = llc_by_role(llc, head_roles(m))
    if len(by_role):
        traces = [
            Trace(g.step.tolist(), g.value.tolist(), role, PALETTE[i % 10], 1.6)
            for i, (role, g) in enumerate(by_role.groupby("role"))
        ]
        title = "LLC per head by its role in the seed's circuit (mean over heads, then seeds)"
        panels.append(Panel(title, traces, **where))
    return panels


def head_roles(m: pd.DataFrame) -> dict[int, dict[str, str]]:
    """Per seed, head -> its role in the circuit found at the seed's last measured checkpoint."""
    from interp_ext.families.circuit import circuit_from_rows

    members = select(m, family="circuit", metric="member")
    if members.empty or "role" not in members:
        return {}
    last = members[members.step == members.groupby("seed").step.transform("max")]
    return {int(s): circuit_from_rows(g, f"seed{s}").roles for s, g in last.groupby("seed")}


def llc_by_role(llc: pd.DataFrame, roles: dict[int, dict[str, str]]) -> pd.DataFrame:
    """Per role (a circuit role, or ``other`` for heads outside the circuit) and step: the per-head
    LLC averaged over the seed's heads of that role, then over the seeds that have them."""
    per = llc[(llc.metric == "llc") & (llc.seed >= 0) & llc.component.map(Head.is_head)]
    per = per[per.seed.isin(list(roles))]
    if per.empty:
        return pd.DataFrame(columns=["role", "step", "value"])
    per = per.assign(role=[roles[int(s)].get(c, "other") for s, c in zip(per.seed, per.component)])
    by_seed = per.groupby(["role", "step", "seed"]).value.mean()
    return by_seed.groupby(["role", "step"]).mean().reset_index()


def calibration_lines(llc: pd.DataFrame, out: Path, run) -> list[str]:
    """The step-size / localisation sweep behind the settings (when ``--calibrate`` chose them)."""
    import json

    ids = sorted(set(llc.settings))
    path = run.path / "llc" / ids[-1] / "calibration.json" if ids else None
    if path is None or not path.exists():
        return []
    cal = json.loads(path.read_text())
    chosen = cal["chosen"]
    panels = []
    for trial in cal["sweep"]:
        traces = []
        for j, (trace, init) in enumerate(zip(trial["trace"], trial["init_loss"])):
            for chain in trace:
                traces.append(
                    Trace(
                        list(range(len(chain))),
                        [v - init for v in chain],
                        f"step {cal['steps'][j]}",
                        PALETTE[j % 10],
                        0.8,
                        legend=not panels,
                    )
                )
        mark = (
            " (chosen)"
            if (trial["lr"], trial["localization"]) == (chosen["lr"], chosen["localization"])
            else ("" if trial["stable"] else " (unstable)")
        )
        panels.append(
            Panel(
                f"lr {trial['lr']:g}, gamma {trial['localization']:g}{mark}",
                traces,
                xlabel="SGLD step",
                ylabel="loss - initial loss",
                zero=True,
            )
        )
    files = save(
        Figure(
            "LLC calibration: chain traces of the sweep (flat traces after burn-in are equilibrated)",
            panels,
            ncols=3,
        ),
        out,
        "llc_calibration",
    )
    return [
        image(files, "llc calibration"),
        "",
        f"Calibration on steps {cal['steps']} of seed {cal['seed']}: step size {chosen['lr']:g}, localisation {chosen['localization']:g} (the largest stable step size).",
        "",
    ]


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
    lineage_sankey(e, seed0).write_html(out / "sae_lineage_sankey.html", include_plotlyjs="cdn")
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


def write_report(run, out: Path | None = None, beside: tuple = ()) -> Path:
    """Write every figure the run's rows allow and ``report.md``; returns its path.

    ``beside``: other runs whose Stream 3 ledgers are drawn next to this one's.
    """
    out = Path(out or run.path / "report")
    out.mkdir(parents=True, exist_ok=True)
    m = run.metrics()
    ctx = context_of(m)
    lines = [
        f"# Report: {run.name}",
        "",
        f"Preset `{run.config.preset}`, seeds {run.seeds}, checkpoints {run.steps[:1]}..{run.steps[-1:]} "
        f"(every {run.config.train.checkpoint_every} steps). Corpus: {run.info()['corpus']}. Settings of each family: its latest measurement (`{run.path.name}/measurements/`).",
        "",
    ]
    lines += loss_section(m, out, ctx)
    lines += induction_section(m, out, ctx)
    lines += circuit_section(m)
    lines += patching_section(m, out, run)
    lines += dashboard_section(m, out, ctx)
    lines += stream1_section(m, out, ctx)
    lines += stream2_section(m, out)
    lines += llc_section(m, out, ctx, run)
    lines += beta_section(m)
    lines += stream3_section(m, out, ctx)
    lines += ledger_section(m, out)
    lines += counterfactual_section(m, out)
    lines += sae_section(m, out, ctx)
    lines += paper_section(m, run)
    if beside:
        lines += ledger_comparison(
            {
                f"{run.name} ({run.config.preset})": run,
                **{f"{r.name} ({r.config.preset})": r for r in beside},
            },
            out,
        )
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
