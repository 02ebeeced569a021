"""The ``llc`` family's section of the report: the local learning coefficient over training, per component and by circuit role.

Drawn from the family's rows (and the summaries over seeds it wrote); nothing is computed here.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from circuits.circuit import Head
from interp_ext import diskio
from interp_ext.figures import PALETTE, Figure, Panel, Trace, save
from interp_ext.measurement.selection import circuit_from_rows
from interp_ext.report.draw import (
    image,
    metric_panel,
    select,
    summary,
)


def section(page) -> list[str]:
    """``report.md`` lines of this section (its figures written into ``page.out``)."""
    return llc_section(page.rows, page.out, page.ctx, page.run)


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
    if len(llc[(llc.metric == "hessian_trace") & (llc.component == "model")]):
        panels.append(
            metric_panel(
                llc,
                "hessian_trace",
                "Hutchinson estimate",
                ctx,
                title="Hessian trace beside the LLC: model",
                component="model",
            )
        )
    panels += llc_head_panels(llc, m, ctx)
    if not panels:
        lost = sorted(set(llc[(llc.metric == "calibrated") & (llc.value == 0)].component))
        return [
            "## Local learning coefficient",
            "",
            f"No estimate: the calibration found no plateau for {', '.join(lost) or 'any component'}, "
            "so none was estimated (its sweep below).",
            "",
            *calibration_lines(llc, out, run),
        ]
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
    lines += standard_error_lines(llc)
    lines += quadratic_lines(llc)
    return lines + [
        "Reading: the LLC counts effective parameters; a stage boundary shows as a change of slope or level where the dashboard and the induction score change.",
        "",
    ]


def standard_error_lines(llc: pd.DataFrame) -> list[str]:
    """The chains' own uncertainty: the draws' estimate's Monte Carlo standard error relative to
    it, and the effective draws behind it (rows written before these existed have neither)."""
    per = llc[llc.seed >= 0].pivot_table(
        index=["settings", "seed", "step", "component"], columns="metric", values="value"
    )
    if "llc_draws_se" not in per:
        return []
    per = per.dropna(subset=["llc_draws_se", "llc_draws"])
    per = per[per.llc_draws > 0]
    if per.empty:
        return []
    rel = per.llc_draws_se / per.llc_draws
    return [
        f"Monte Carlo standard error of the estimate from the draws after burn-in (ArviZ, over "
        f"chains and draws): median {rel.median():.1%} of it, largest {rel.max():.1%}; effective "
        f"draws median {per.llc_draws_ess.median():.0f} (of {len(per)} estimates).",
    ]


def quadratic_lines(llc: pd.DataFrame) -> list[str]:
    """With ``--quadratic``: how much of each estimate the loss's second-order model puts in its
    curvature count and how much in the pull of the checkpoint's gradient."""
    per = llc[llc.seed >= 0].pivot_table(
        index=["settings", "seed", "step", "component"], columns="metric", values="value"
    )
    if "llc_quadratic_gradient" not in per:
        return []
    per = per.dropna(subset=["llc_quadratic_gradient"], how="all")
    lines = []
    dense = per.dropna(subset=["llc_quadratic_count"]) if "llc_quadratic_count" in per else per[:0]
    if len(dense):
        pull = (-dense.llc_quadratic_gradient / dense.llc_quadratic_count).dropna()
        lines.append(
            f"Second-order model of the loss at the checkpoint ({len(dense)} head estimates): the "
            f"gradient's pull takes {pull.median():.0%} of the curvature count at the median "
            f"(range {pull.min():.0%} to {pull.max():.0%}); the quadratic posterior does not exist "
            f"for {int((dense.improper_directions > 0).sum())} of them. An estimate that is mostly "
            "count minus pull reads the checkpoint's slope, not its basin."
        )
    wide = per.dropna(subset=["quadratic_proper"]) if "quadratic_proper" in per else per[:0]
    if len(wide):
        share = (wide.llc_quadratic_gradient / wide.llc).dropna()
        lines.append(
            f"Gradient term beside {len(wide)} larger components' estimates (conjugate gradients): "
            f"{share.median():+.0%} of the estimate at the median (range {share.min():+.0%} to "
            f"{share.max():+.0%}); no quadratic posterior for {int((wide.quadratic_proper == 0).sum())}."
        )
    return lines


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
    """The plateau search behind the step sizes (when ``--calibrate`` chose them): each component's
    estimate against the step size at every probed checkpoint, the plateau it kept shaded."""
    ids = set(llc.settings)
    sweeps = [
        diskio.read_json(p) for p in sorted(run.layout.artifacts("calibration").glob("*.json"))
    ]
    sweeps = [c for c in sweeps if c.get("chosen_id") in ids and c.get("rule") == "plateau"]
    sweeps = list({c["chosen_id"]: c for c in sweeps}.values())  # one per chosen settings
    lines = []
    for k, cal in enumerate(sweeps):
        panels = [calibration_panel(cal, name) for name in cal["sweep"]]
        files = save(
            Figure(
                "LLC calibration: the estimate against the SGLD step size at each probed checkpoint "
                "(a line per probed checkpoint; a step size stops at its first unstable chain; "
                "shaded: the plateau kept, its middle step size used)",
                panels,
                ncols=min(3, len(panels)),
            ),
            out,
            f"llc_calibration_{k}" if k else "llc_calibration",
        )
        chosen = cal["chosen"]
        kept = {n: lr for n, lr in chosen.items() if lr is not None}
        lines += [
            image(files, "llc calibration"),
            "",
            f"Calibration (settings {cal['chosen_id']}) on (seed, step) {[tuple(p) for p in cal['probes']]}: "
            + ", ".join(f"{n} {lr:g}" for n, lr in kept.items())
            + (
                f"; no plateau (not estimated): {', '.join(n for n in chosen if n not in kept)}"
                if len(kept) < len(chosen)
                else ""
            )
            + ".",
            "",
        ]
    return lines


def calibration_panel(cal: dict, name: str) -> Panel:
    """One component's sweep: log10 step size against the estimate, one line per probed checkpoint."""
    import math

    trials = cal["sweep"][name]
    traces = []
    for j, (seed, step) in enumerate(cal["probes"]):
        pts = [
            (math.log10(t["lr"]), math.log10(t["llc"][j]))
            for t in trials
            if j < len(t["llc"]) and math.isfinite(t["llc"][j]) and t["llc"][j] > 0
        ]
        traces.append(
            Trace(
                [x for x, _ in pts],
                [y for _, y in pts],
                f"seed {seed}, step {step}",
                PALETTE[j % 10],
                1.2,
                mode="markers",
                legend=name == next(iter(cal["sweep"])),
            )
        )
    chosen = cal["chosen"][name]
    window = None
    if chosen is not None:
        grid = sorted(cal["grid"])
        i = grid.index(min(grid, key=lambda v: abs(v - chosen)))
        half = cal["window"] // 2
        lo, hi = grid[max(0, i - half)], grid[min(len(grid) - 1, i + half)]
        window = (math.log10(lo), math.log10(hi))
    return Panel(
        f"{name}: " + (f"step size {chosen:g}" if chosen is not None else "no plateau"),
        traces,
        xlabel="log10 SGLD step size",
        ylabel="log10 LLC estimate",
        window=window,
        window_label="plateau",
    )
