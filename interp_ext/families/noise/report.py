"""The ``noise`` family's section of the report: arms at a fixed data budget, a batch-size sweep,
censored formation.

Drawn from the family's rows (and the summaries over seeds it wrote); nothing is computed here.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from interp_ext.figures import PALETTE, Figure, Panel, Trace, save
from interp_ext.report.draw import image, one, seeds_of, select

ARM_COLORS = {"real": "#000000"}


def section(page, summarise) -> list[str]:
    """``report.md`` lines of this section (its figures written into ``page.out``): every noise
    measurement of the run, oldest first (arms with their own second moment and with the real
    run's are often measured apart), each with its own figures and summaries over its seeds, then
    those that differ only in their choice of arms read together, summarised over seeds by
    ``summarise`` (the family's :func:`interp_ext.families.noise.across_seeds`)."""
    found = page.run.measurements()
    found = found[found.family == "noise"].sort_values("used")
    if len(found) < 2:
        return noise_section(page.rows, page.out)
    lines, measured = [], []
    for r in found.itertuples():
        rows = page.run.metrics("noise", settings=r.id)
        if rows.empty:
            continue
        measured.append((r.id, r.settings, rows))
        part = noise_section(rows, page.out, suffix=f"_{r.id}")
        if not lines and part:
            lines = part[:2]
        if part:
            seeds = ", ".join(str(s) for s in seeds_of(rows[rows.seed >= 0]))
            what = ", ".join(f"{k} {r.settings[k]}" for k in SHOWN if k in r.settings)
            lines += [f"### `{r.id}`: seeds {seeds}; {what}", ""] + part[2:]
    return lines + pooled_section(measured, f"batch{page.run.config.train.batch_size}", summarise)


SHOWN = ("margin", "second_moment", "scales", "batch_sizes", "mean_batches", "stop_after")
# settings that choose which arms run and how long, not what an arm's replay is: measurements
# that differ only in these replay the same arms from the same window and are read together
ARM_CHOICE = ("scales", "second_moment", "batch_sizes", "stop_after")


def pool(
    measured: list[tuple[str, dict, pd.DataFrame]],
) -> list[tuple[list[str], pd.DataFrame, list[str]]]:
    """Per group of measurements that differ only in their choice of arms: the ids, every (seed,
    arm)'s outcome rows from the last-used measurement that has it (a seed's B_noise too), and the
    (seed, arm)s whose formation differs between measurements (none expected: the replays are
    deterministic and stopping keeps the formation step)."""
    groups: dict[str, list] = {}
    for sid, settings, rows in measured:
        key = repr(sorted((k, str(v)) for k, v in settings.items() if k not in ARM_CHOICE))
        groups.setdefault(key, []).append((sid, rows))
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        kept, disagree = {}, []
        for sid, rows in reversed(members):  # last used first
            per = rows[(rows.seed >= 0) & ((rows.step < 0) | (rows.metric == "B_noise"))]
            for (seed, arm), g in per.groupby(["seed", "variant"]):
                if (seed, arm) not in kept:
                    kept[seed, arm] = g
                    continue
                if arm and _formation(kept[seed, arm]) != _formation(g):
                    disagree.append(
                        f"seed {seed} {arm}: {_formation(kept[seed, arm])} vs {_formation(g)} ({sid})"
                    )
        ids = [sid for sid, _ in members]
        out.append((ids, pd.concat(kept.values(), ignore_index=True), disagree))
    return out


def _formation(g: pd.DataFrame) -> str:
    return _cell(g, "steps_to_formation")


def pooled_section(
    measured: list[tuple[str, dict, pd.DataFrame]], batch_reference: str, summarise
) -> list[str]:
    """Tables over every seed each arm was measured on, across measurements of the same replays
    (``summarise``: the family's summary over seeds, :func:`interp_ext.families.noise.across_seeds`)."""
    lines = []
    for ids, per, disagree in pool(measured):
        summary = summarise(per, batch_reference).assign(seed=-1)
        arms = _arms(per)
        seeds = seeds_of(per)
        lines += [
            f"### Together: {', '.join(f'`{i}`' for i in ids)}",
            "",
            "The same replays (window, grid, M, threshold) measured in parts; each seed's arm from the last-used "
            "measurement that has it. "
            + (
                "Measured twice and different: " + "; ".join(disagree) + "."
                if disagree
                else "Arms measured twice form at the same step in both."
            ),
            "",
        ]
        lines += _tables(per, summary, seeds, arms)
    return lines


def _arms(rows: pd.DataFrame) -> list[str]:
    names = sorted(set(rows.variant) - {""})
    batch = sorted(
        (v for v in names if v.startswith("batch")),
        key=lambda v: int(v[5:]) if v[5:].isdigit() else 0,
    )
    return ["real"] * ("real" in names) + [v for v in names if v.startswith("c")] + batch


def _color(i: int, name: str) -> str:
    return ARM_COLORS.get(name, PALETTE[i % 10])


def _trajectories(
    rows: pd.DataFrame, seeds: list[int], arms: list[str], out: Path, suffix: str = ""
) -> list[str]:
    panels = []
    for metric, ylabel in (
        ("induction_score", "best induction score"),
        ("E_C", "E_C on the probe set"),
        ("inv_sqrt_vhat", "mean 1/(sqrt(v_hat)+eps)"),
    ):
        for seed in seeds:
            traces = []
            for i, arm in enumerate(arms):
                g = select(rows, metric=metric, seed=seed, variant=arm).sort_values("step")
                if g.empty:
                    continue
                traces.append(
                    Trace(
                        g.step.tolist(),
                        g.value.tolist(),
                        arm,
                        _color(i, arm),
                        2.4 if arm == "real" else 1.2,
                        legend=seed == seeds[0],
                    )
                )
            panels.append(Panel(f"seed {seed}: {metric}", traces, ylabel=ylabel))
    title = "Replays at a fixed data budget: g = mean of M batches + c xi, own or fed second moment; batch-size arms"
    return save(Figure(title, panels, ncols=len(seeds)), out, f"noise_arms{suffix}")


def _batch_sweep(per: pd.DataFrame, seeds: list[int], out: Path, suffix: str = "") -> list[str]:
    """Steps and tokens to formation against sequences per step, per seed (censored as open markers)."""
    batch = per[per.variant.str.startswith("batch")]
    if batch.empty:
        return []
    panels = []
    for metric, ylabel in (
        ("steps_to_formation", "steps from the window's start"),
        ("formation_tokens", "tokens from the window's start"),
    ):
        traces = []
        for i, seed in enumerate(seeds):
            g = batch[batch.seed == seed].copy()
            g["size"] = g.variant.str[5:].astype(int)
            g = g.pivot_table(index="size", columns="metric", values="value").sort_index()
            if metric not in g:
                continue
            traces.append(
                Trace(
                    g.index.tolist(),
                    g[metric].tolist(),
                    f"seed {seed}",
                    PALETTE[i % 10],
                    1.4,
                    mode="markers",
                )
            )
            cens = g[g.censored > 0]
            if len(cens):
                traces.append(
                    Trace(
                        cens.index.tolist(),
                        cens[metric].tolist(),
                        f"seed {seed} censored (> value)",
                        PALETTE[i % 10],
                        mode="points",
                        legend=False,
                    )
                )
        panels.append(Panel(metric, traces, xlabel="sequences per step", ylabel=ylabel))
    title = "Batch-size sweep from the window's start (censored arms: the window's length, a lower bound)"
    return save(Figure(title, panels, ncols=2), out, f"noise_batch_sweep{suffix}")


def _cell(g: pd.DataFrame, metric: str) -> str:
    v = one(g, metric=metric)
    if one(g, metric="censored") > 0:
        return f"> {v:,.0f}"
    return f"{v:,.0f}" if math.isfinite(v) else "n/a"


def summary_lines(summary: pd.DataFrame, arms: list[str]) -> list[str]:
    """One table row per arm: seeds formed, Kaplan-Meier medians, the comparison with the reference."""
    lines = []
    for arm in arms:
        g = summary[summary.variant == arm]
        if g.empty:
            continue
        med = []
        for metric in ("steps_to_formation", "formation_tokens"):
            v = one(g, metric=f"{metric}/km_median")
            med.append(
                ("> " if one(g, metric=f"{metric}/km_median_censored") > 0 else "") + f"{v:,.0f}"
            )
        p_later, p_earlier = (one(g, metric=f"vs_reference/p_{w}") for w in ("later", "earlier"))
        order = (
            f"{one(g, metric='vs_reference/seeds_later'):.0f} / {one(g, metric='vs_reference/seeds_earlier'):.0f} / "
            f"{one(g, metric='vs_reference/seeds_known'):.0f}"
            if math.isfinite(one(g, metric="vs_reference/seeds_known"))
            else "reference"
        )
        lines.append(
            f"| {arm} | {one(g, metric='formed/seeds'):.0f} of {one(g, metric='formed/seed_n'):.0f} | {med[0]} | {med[1]} | "
            f"{p_later:.3g} / {p_earlier:.3g} | {order} |"
        )
    return lines


def noise_section(m: pd.DataFrame, out: Path, suffix: str = "") -> list[str]:
    rows = select(m, family="noise")
    if rows.empty:
        return []
    seeds = seeds_of(rows[rows.step >= 0])
    arms = _arms(rows[rows.seed >= 0])
    per = rows[(rows.seed >= 0) & (rows.step < 0)]
    files = _trajectories(rows, seeds, arms, out, suffix) + _batch_sweep(per, seeds, out, suffix)
    lines = [
        "## Noise apart from data per step",
        "",
        "Every noise arm follows g = (mean gradient of M real-size batches) + c xi, xi = (g_A - g_B) / sqrt(2) from two more "
        "batches: c = 1 is the real minibatch's noise, 0 none, sqrt(2) twice its variance; the same batches in every arm, "
        "with each arm's own Adam second moment (/own) or the real run's (/fed). Batch arms read B sequences per step. "
        "A replay that does not form by the window's end is censored (> that many steps).",
        "",
        image(files[:2], "noise arms") if files else "",
        "",
    ]
    if len(files) > 2:
        lines += [image(files[2:], "batch-size sweep"), ""]
    lines += _tables(per, rows[rows.seed < 0], seeds, arms, rows)
    return lines + [
        "",
        "Reading: the reference is c = 1 with the same second moment for noise arms and the run's own batch size for batch arms; the noise arms read the same data per step, "
        "so a difference among them is the noise's (and the second moment's, /own against /fed); the batch arms move data and "
        "noise together, read on a token clock beside B_noise.",
        "",
    ]


def _tables(
    per: pd.DataFrame,
    summary: pd.DataFrame,
    seeds: list[int],
    arms: list[str],
    rows: pd.DataFrame | None = None,
) -> list[str]:
    """Steps and tokens to formation per seed and arm (censored as "> bound"), then the summary
    over seeds per arm. B_noise is read from ``rows`` (default ``per``)."""
    rows = per if rows is None else rows
    header = "| seed | B_noise (sequences) | " + " | ".join(arms) + " |"
    lines = [
        "Steps from the window's start to formation (tokens in the second table):",
        "",
        header,
        "|---|---|" + "---|" * len(arms),
    ]
    token_lines = [header.replace("B_noise (sequences)", "(tokens)"), lines[-1]]
    for seed in seeds:
        s = per[per.seed == seed]
        b_noise = one(rows[rows.seed == seed], metric="B_noise")
        cells = [_cell(s[s.variant == a], "steps_to_formation") for a in arms]
        lines.append(f"| {seed} | {b_noise:,.0f} | " + " | ".join(cells) + " |")
        tok = [_cell(s[s.variant == a], "formation_tokens") for a in arms]
        token_lines.append(f"| {seed} | | " + " | ".join(tok) + " |")
    lines += (
        [""]
        + token_lines
        + [
            "",
            "| arm | seeds formed | Kaplan-Meier median steps | KM median tokens | vs reference, paired by seed: one-sided sign test p, later / earlier | seeds later / earlier / order known |",
            "|---|---|---|---|---|---|",
        ]
    )
    return lines + summary_lines(summary, arms) + critical_batch_lines(summary)


def critical_batch_lines(summary: pd.DataFrame) -> list[str]:
    """B_crit of the seeds' mean S(B) with its bootstrap interval over seeds, and its caveat."""
    point = one(summary, metric="B_crit/mean_curve")
    if not math.isfinite(point):
        return []
    n, distinct = one(summary, metric="B_crit/seed_n"), one(summary, metric="B_crit/distinct")
    lo, hi = one(summary, metric="B_crit/lo"), one(summary, metric="B_crit/hi")
    return [
        "",
        f"Critical batch size (McCandlish et al. 2018, S(B) = S_min (1 + B_crit / B) fitted to the seeds' mean steps "
        f"to formation over the batch arms): B_crit = {point:.3g} sequences, 95% bootstrap interval over seeds "
        f"{lo:.3g}-{hi:.3g} ({n:.0f} seeds, {distinct:.0f} distinct resamples). One learning rate for every batch "
        "size, while the law assumes a rate tuned per batch size: this is the critical batch of this rate.",
    ]
