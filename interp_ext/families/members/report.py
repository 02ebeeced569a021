"""The ``members`` family's section of the report: the member matrix by role through formation, and
the decision rule of docs/results.md 3.6 read on it.

Each seed's matrix is read by role (its first induction member ``ind``, its first previous-token
member ``prev`` and their controls), averaged over the phase's checkpoints, then over the formed
seeds; the decision reads every (induction, previous-token) pair (``decision.py``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from interp_ext.families.members.decision import (
    PHASES,
    controls_of,
    decide,
    pairs_of,
    phase_steps,
    seed_entries,
    seed_formation,
)
from interp_ext.figures import PALETTE, Figure, Heatmap, Panel, Trace, save
from interp_ext.report.draw import heatmap_figure, image, select

ROLES = ("ind", "prev", "ctrl(ind)", "ctrl(prev)")


def role_matrix(rows: pd.DataFrame, seed: int, steps: list[int], part: str = "S") -> np.ndarray:
    """The seed's R^X by role (:data:`ROLES`), averaged over ``steps``; NaN where a role is
    missing."""
    pairs = pairs_of(rows, seed)
    if not pairs:
        return np.full((len(ROLES), len(ROLES)), np.nan)
    ctrl = controls_of(rows, seed)
    ind, prev = pairs[0]
    names = [ind, prev, ctrl.get(ind), ctrl.get(prev)]
    sel = rows[(rows.seed == seed) & (rows.metric == f"R_{part}") & rows.step.isin(steps)]
    mean = sel.groupby("component").value.mean()
    z = np.full((len(ROLES), len(ROLES)), np.nan)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if a and b and f"{a}|{b}" in mean.index:
                z[i, j] = mean[f"{a}|{b}"]
    return z


def every_rows(run, latest: pd.DataFrame) -> pd.DataFrame:
    """The family's rows of every settings id measured (``latest`` when there is no run)."""
    return latest if run is None else run.metrics("members", settings="all")


def pick_rows(every: pd.DataFrame, latest: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the rows the matrix and decision read, the rows the growth law reads) among ``every``
    settings id measured: the latest id with rates (one with Polyak weights first), and the id
    with the most raw S_C checkpoints (a levels-only series is denser)."""
    if every.empty or "settings" not in every:
        return latest, latest
    groups = dict(list(every.groupby("settings", sort=False)))
    rated = [g for g in groups.values() if (g.metric == "R_S").any()]
    slow = [g for g in rated if g.weights.str.startswith("polyak").any()]
    matrix = (slow or rated or [latest])[-1]

    def dense(g):
        return g[(g.metric == "S") & (g.component == "C") & (g.weights == "raw")].step.nunique()

    return matrix, max(groups.values(), key=dense)


def section(page) -> list[str]:
    """The report's member-matrix section: the matrix by role, the decision, the growth law.

    Long because each weights' panels and the decision's tables read the same rows."""
    rows = select(page.rows, family="members")
    if rows.empty:
        return []
    every = every_rows(page.run, rows)
    rows, series = pick_rows(every, rows)
    if not (rows.metric == "R_S").any():
        forms = {s: seed_formation(page.run, s) for s in sorted(set(series.seed) - {-1})}
        return growth_lines(series, forms) + saddle_lines(every, page.out, forms)
    weights = (
        "polyak200" if "polyak200" in set(rows.weights) else sorted(set(rows.weights) - {""})[0]
    )
    probe = str(max(int(p) for p in set(rows.probe) if p.isdigit()))
    at = rows[(rows.weights.isin([weights, ""])) & (rows.probe.isin([probe, ""]) | (rows.step < 0))]
    lines = [
        "## Who reinforces whom: the member matrix",
        "",
        f"R^S[A, B] = grad_B S_A . u_B per unit of lr x steps at the {weights} weights, probe batches "
        f"of {probe} sequences: rows the set whose mean-gradient energy moves, columns the set that "
        "moves (docs/metrics.md).",
        "",
    ]
    seeds = sorted(s for s in at.seed.unique() if s >= 0)
    forms = {s: seed_formation(page.run, s) for s in seeds}
    panels = []
    shown = [w for w in ("raw", "polyak50", "polyak200") if w in set(rows.weights)] or [weights]
    for w in shown:
        by_w = rows[rows.weights.isin([w, ""]) & (rows.probe.isin([probe, ""]) | (rows.step < 0))]
        for phase in PHASES:
            mats = [
                role_matrix(by_w, s, phase_steps(sorted(by_w.step.unique()), f, phase))
                for s, (f, formed) in forms.items()
                if formed and math.isfinite(f)
            ]
            mats = [m for m in mats if np.isfinite(m).any()]
            if mats:
                z = np.nanmean(np.stack(mats), axis=0)
                panels.append(
                    (
                        f"{w}, {phase}, {len(mats)} formed seeds",
                        Heatmap(z, list(ROLES), list(ROLES), "R^S"),
                    )
                )
    if panels:
        files = heatmap_figure(
            page.out, "member_matrix", "The member matrix by role", panels, "moves", "energy of"
        )
        lines += [image(files, "member matrix"), ""]
    per_seed = pd.DataFrame(
        [
            {**e, "formed": formed}
            for s, (f, formed) in forms.items()
            if math.isfinite(f)
            for e in seed_entries(at, s, f, weights, probe)
        ]
    )
    if per_seed.empty:
        return lines
    check = None
    if weights == "polyak200" and "polyak50" in set(rows.weights):
        check = pd.DataFrame(
            [
                {**e, "formed": formed}
                for s, (f, formed) in forms.items()
                if math.isfinite(f)
                for e in seed_entries(rows, s, f, "polyak50", probe)
            ]
        )
    result = decide(per_seed, check)
    lines += [f"**Reading by the rule of results 3.6: {result['reading']}.**", ""]
    lines += decision_table(result["tests"]) + seed_table(per_seed)
    return lines + growth_lines(series, forms) + saddle_lines(every, page.out, forms)


def saddle_lines(every: pd.DataFrame, out, forms: dict) -> list[str]:
    """A figure of rho (the curvature each set's own AdamW flow meets) against steps from each
    seed's formation (a never-formed seed: its own steepest rise), every measured point of every
    settings id (``every``: checkpoints and replayed steps), for the circuit and its members by
    role; the figure is written into ``out``."""
    sel = every[(every.metric == "rho") & (every.seed >= 0)]
    if sel.empty or not forms:
        return []
    roles = {
        (int(s), c): r
        for s, c, r in every[every.metric == "member"][["seed", "component", "probe"]].itertuples(
            index=False
        )
    }
    panels = []
    for title, pick in (
        ("the circuit C", lambda s, c: c == "C"),
        ("induction members", lambda s, c: roles.get((s, c)) == "induction"),
        ("previous-token members", lambda s, c: roles.get((s, c)) == "prev_token"),
    ):
        traces = _rho_traces(sel, forms, pick, legend=not panels)
        if traces:
            panels.append(
                Panel(
                    title,
                    traces,
                    xlabel="steps from formation (never formed: own steepest rise)",
                    ylabel="log10 rho",
                    marks={"formation": 0.0},
                )
            )
    if not panels:
        return []
    files = save(
        Figure(
            "The saddle signature: rho, the curvature each set's own AdamW flow meets (> 0: the flow "
            "lowers the set's mean-gradient energy); checkpoints and replayed steps",
            panels,
            ncols=len(panels),
        ),
        out,
        "members_saddle",
    )
    return [
        "### The saddle signature through formation",
        "",
        image(files, "members saddle"),
        "",
        "rho = gbar' H D^-1 gbar / gbar' D^-1 gbar for each set's own block (docs/metrics.md): negative "
        "exactly when the set's own expected AdamW flow raises its mean-gradient energy, what a "
        "self-amplifying direction would show. Drawn on a log scale: the "
        f"{int((sel.value <= 0).sum())} of {len(sel)} values at or below 0 in the rows are not drawn.",
        "",
    ]


def _rho_traces(sel: pd.DataFrame, forms: dict, pick, legend: bool) -> list[Trace]:
    """One line per seed: the median rho of the sets ``pick`` keeps, positive values, against
    steps from the seed's formation (grey for a never-formed seed); each group named once."""
    traces, named = [], set()
    for i, seed in enumerate(sorted(forms)):
        f, formed = forms[seed]
        keep = (sel.seed == seed).to_numpy() & np.array([pick(seed, c) for c in sel.component])
        g = sel[keep]
        g = g[g.value > 0].groupby("step").value.median()
        if g.empty or not math.isfinite(f):
            continue
        group = "formed seeds" if formed else "never formed (own rise)"
        traces.append(
            Trace(
                (g.index - f).tolist(),
                np.log10(g.to_numpy()).tolist(),
                group,
                PALETTE[i % len(PALETTE)] if formed else "#999999",
                width=1.2 if formed else 0.8,
                legend=legend and group not in named,
            )
        )
        named.add(group)
    return traces


def growth_table(
    rows: pd.DataFrame, forms: dict, weights: str = "raw", metric: str = "S"
) -> pd.DataFrame:
    """Per seed: the growth law of S_C (``metric`` "N": of the noise energy N_C, the negative
    control) at the smallest probe size over its checkpoints up to its formation (a never-formed
    seed: its own steepest rise), ``stats.growth_law``."""
    from interp_ext.stats import LAWS, growth_law

    sel = rows[(rows.metric == metric) & (rows.component == "C") & (rows.weights == weights)]
    sizes = [p for p in set(sel.probe) if p.isdigit()]
    if sel.empty or not sizes:
        return pd.DataFrame()
    sel = sel[sel.probe == str(min(int(p) for p in sizes))]
    out = []
    for seed, (f, formed) in forms.items():
        g = sel[(sel.seed == seed) & (sel.step <= f)].sort_values("step")
        fit = growth_law(g.step.to_numpy(), g.value.to_numpy())
        best = fit.get("best", math.nan)
        out.append(
            {
                "seed": seed,
                "formed": formed,
                "points": int(fit["n"]),
                "law": LAWS[int(best)] if math.isfinite(best) else "too few points",
                "delta_aic": fit.get("delta_aic", math.nan),
                "rate": fit.get("rate", math.nan),
                "rate_lo": fit.get("rate_lo", math.nan),
                "rate_hi": fit.get("rate_hi", math.nan),
            }
        )
    return pd.DataFrame(out)


def growth_lines(rows: pd.DataFrame, forms: dict) -> list[str]:
    from interp_ext.stats import permutation_p

    table = growth_table(rows, forms)
    table = table[table.points >= 4] if len(table) else table
    if table.empty:
        return []
    formed, other = table[table.formed], table[~table.formed]
    p, floor = permutation_p(formed.delta_aic.to_numpy(), other.delta_aic.to_numpy(), "less")
    lines = [
        "The growth law of S_C up to formation (raw weights; exponential, what self-reinforcement "
        "predicts, against linear and power law by AIC; delta AIC < 0: exponential preferred): "
        f"exponential best on {int((formed.law == 'exponential').sum())} of {len(formed)} formed "
        f"seeds and {int((other.law == 'exponential').sum())} of {len(other)} never-formed; "
        f"formed more exponential than never-formed (delta AIC lower), permutation over seed "
        f"labels p = {p:.3g} (floor {floor:.3g}).",
        "",
        "| seed | formed | checkpoints | best law | delta AIC | rate per step (95%) |",
        "|---|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.seed} | {'yes' if r.formed else 'no'} | {r.points} | {r.law} | {r.delta_aic:+.1f} "
            f"| {r.rate:.2e} ({r.rate_lo:.1e} .. {r.rate_hi:.1e}) |"
        )
    return lines + [""]


def decision_table(tests: pd.DataFrame) -> list[str]:
    lines = [
        "| phase | entry | formed seeds > 0 | p (> 0) | p (< 0) | floor | p above null (signed rank) | p formed > never formed (permutation) | resolved seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in tests.itertuples():
        lines.append(
            f"| {r.phase} | {r.entry} | {r.positive} of {r.n} | {r.p_positive:.3g} | {r.p_negative:.3g} "
            f"| {r.floor:.3g} | {r.p_above_null:.3g} (floor {r.floor_above_null:.3g}) "
            f"| {r.p_formed_above_unformed:.3g} (floor {r.floor_formed_above_unformed:.3g}) | {r.resolved} |"
        )
    return lines + [""]


def seed_table(per_seed: pd.DataFrame) -> list[str]:
    lines = [
        "| seed | formed | phase | entry | value | null (control moves) |",
        "|---|---|---|---|---|---|",
    ]
    for r in per_seed.sort_values(["seed", "phase", "entry"]).itertuples():
        lines.append(
            f"| {r.seed} | {'yes' if r.formed else 'no (own rise)'} | {r.phase} | {r.entry} "
            f"| {r.value:+.3g} ± {r.value_se:.2g} | {r.null:+.3g} ± {r.null_se:.2g} |"
        )
    return lines + [""]


__all__ = ["section"]
