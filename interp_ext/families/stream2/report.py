"""The ``stream2`` family's section of the report: Stream 2: cross-seed alignment with its nulls.

Drawn from the family's rows (and the summaries over seeds it wrote); nothing is computed here.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from interp_ext.figures import PALETTE, Figure, Panel, Trace, save
from interp_ext.report.draw import (
    image,
    one,
    select,
)


def section(page) -> list[str]:
    """``report.md`` lines of this section (its figures written into ``page.out``)."""
    return stream2_section(page.rows, page.out)


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
        "| group | CKA (basis-free) | shuffled-batch null | untrained null (mean +- sd) | unbiased CKA | its shuffled null | its untrained null | raw cosine (basis-dependent) | permutation-matched cosine (basis-dependent) |",
        "|---|---|---|---|---|---|---|---|---|",
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
                "cka_unbiased",
                "cka_null_shuffled_unbiased",
            )
        ]
        null_u = one(s2, metric="cka_unbiased_null_untrained", component=g)
        lines.append(
            f"| {g} | {cells[0]:.3f} | {cells[1]:.3f} | {null:.3f} +- {sd:.3f} | {cells[4]:.3f} | {cells[5]:.3f} | {null_u:.3f} | {cells[2]:.3f} | {cells[3]:.3f} |"
        )
    return (
        lines
        + seed_level_cka(s2, groups)
        + [
            "",
            "Reading: CKA asks whether the same probe batches push two seeds' group alike, whatever the coordinates; it means something only above both nulls. "
            "The unbiased CKA (zero-diagonal HSIC) does not read each batch's own gradient norm, which lifts the biased estimator's floors when per-batch gradients are nearly orthogonal. "
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


def unbiased_traces(s2: pd.DataFrame, group: str) -> list[Trace]:
    """The unbiased CKA (mean over pairs) and its shuffled-batch null, when measured."""
    unbiased = select(s2, metric="cka_unbiased", component=group).sort_values("step")
    null = select(s2, metric="cka_null_shuffled_unbiased", component=group).sort_values("step")
    if unbiased.empty:
        return []
    return [
        Trace(unbiased.step.tolist(), unbiased.value.tolist(), "unbiased CKA", "#2ca02c", 2.0),
        Trace(null.step.tolist(), null.value.tolist(), "its shuffled-batch null", "#98df8a", 1.2),
    ]


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
    traces += unbiased_traces(s2, group)
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
