"""The ``ledger`` family's section of the report: the Stream 3 ledger: cumulative terms per seed, dense K, window sums over seeds.

Drawn from the family's rows (and the summaries over seeds it wrote); nothing is computed here.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from interp_ext.figures import PALETTE, Figure, Panel, Trace, save
from interp_ext.report.draw import (
    CIRCUIT,
    CONTROL,
    image,
    one,
    seed_traces,
    seeds_of,
    select,
)


def section(page) -> list[str]:
    """``report.md`` lines of this section (its figures written into ``page.out``)."""
    return ledger_section(page.rows, page.out)


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
