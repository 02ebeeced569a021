"""The ``work`` family's section of the report: the exact work of each part of the step on E_C, per
seed over its window, the seed-level window sums with sign tests, and the lr -> 0 replays side by side.

Drawn from the family's rows (and the summaries over seeds it wrote); nothing is computed here but
running sums of the rows for the figure.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from interp_ext.figures import PALETTE, Figure, Panel, Trace, save
from interp_ext.report.draw import image, one, select
from interp_ext.stats import sampled_sum

NAN = float("nan")

PARTS = ("work", "work/drift", "work/noise", "work/inherited", "work/fresh")
SUMMARY = ("work", "work/drift", "work/noise", "curv_noise", "curv_drift", "work_remainder")


def section(page) -> list[str]:
    """``report.md`` lines of this section (its figures written into ``page.out``)."""
    rows = real_scale_rows(page)
    if rows.empty:
        return []
    lines = ["## Stream 3, exactly: the work of each part of the step on E_C", ""]
    lines += cumulative_figure(rows, page.out)
    lines += seed_table(rows)
    lines += phase_table(rows)
    lines += scale_table(page.run, page.out)
    lines += arm_table(page.run)
    return lines


def real_scale_rows(page) -> pd.DataFrame:
    """The rows of the measurement of the real steps (:func:`real_id`); the replays at lr / k and
    the arms only feed their own tables."""
    rows = select(page.rows, family="work")
    chosen = real_id(page.run)
    if rows.empty or chosen is None or set(rows.settings) == {chosen}:
        return rows
    return real_rows_of(page.run)


def real_id(run) -> str | None:
    """The id of a run's measurement of the real steps: scale 1, no arm, over the whole window
    (``until`` window, not a flow set's span to the rise's end) where there is one, the latest
    used; None without any at scale 1."""
    found = run.measurements()
    found = found[found.family == "work"]
    real = found[[int(s.get("scale", 1)) == 1 and not s.get("arm") for s in found.settings]]
    if real.empty:
        return None
    whole = real[[s.get("until", "window") == "window" for s in real.settings]]
    return str((whole if len(whole) else real).sort_values("used").id.iloc[-1])


def cumulative_figure(rows: pd.DataFrame, out) -> list[str]:
    steps = rows[(rows.step >= 0) & (rows.component == "C") & rows.metric.isin(PARTS)]
    if steps.empty:
        return []
    panels = []
    for i, (seed, g) in enumerate(steps.groupby("seed")):
        traces = []
        for j, (metric, h) in enumerate(g.sort_values("step").groupby("metric", sort=False)):
            traces.append(
                Trace(
                    h.step.tolist(),
                    h.value.cumsum().tolist(),
                    metric,
                    PALETTE[j % 10],
                    1.4,
                    legend=i == 0,
                )
            )
        form = one(rows, seed=seed, metric="formation_step")
        panels.append(
            Panel(
                f"seed {seed}",
                traces,
                ylabel="running sum (sampled steps)",
                marks={"formation": form},
            )
        )
    files = save(
        Figure("Work on E_C by part of the step, running sums over the sampled steps", panels),
        out,
        "work_cumulative",
    )
    return [image(files, "work"), ""]


OVER_SEEDS = (
    "seed_n",
    "seed_mean",
    "seed_lo",
    "seed_hi",
    "seeds_positive",
    "p_positive",
    "p_negative",
)


def over_seeds(rows: pd.DataFrame, term: str, component: str) -> dict | None:
    """A term's summary over seeds (``<term>/sum/<stat>`` rows of ``component``); None without one."""
    n = one(rows, metric=f"{term}/sum/seed_n", component=component)
    if not n or n != n:
        return None
    return {
        stat: one(rows, metric=f"{term}/sum/{stat}", component=component) for stat in OVER_SEEDS
    }


def seed_table(rows: pd.DataFrame) -> list[str]:
    lines = [
        "Window sums over each seed's window (`C@window`), over seeds: mean [95% t-interval], k of n seeds",
        "positive, one-sided sign-test p for positive and for negative. Formed seeds and, as the null,",
        "seeds that never formed, over the median window of the formed ones.",
        "",
        "| term | seeds | mean [interval] | k of n > 0 | p (> 0) | p (< 0) |",
        "|---|---|---|---|---|---|",
    ]
    for term in SUMMARY:
        for group in ("formed", "unformed"):
            where = f"C@window#{group}"
            o = over_seeds(rows, term, where)
            if o is None:
                continue
            lines.append(
                f"| {term} | {group} | {o['seed_mean']:+.4g} [{o['seed_lo']:+.4g}, {o['seed_hi']:+.4g}] "
                f"| {int(o['seeds_positive'])} of {int(o['seed_n'])} | {o['p_positive']:.3g} | {o['p_negative']:.3g} |"
            )
    return lines + [""]


# the decision rule's terms (docs/results.md section 3.0): set, metric, label
DECISION = (
    ("C|C", "work_drift_by", "K[C,C] exact: the circuit block's drift on E_C"),
    ("C|C", "work_drift_by_random", "its null: a random direction of the same norm there"),
    ("C|C", "work_by", "the circuit block's real update on E_C"),
    ("C", "work/drift", "the whole drift on E_C"),
    ("C", "work/noise", "the noise on E_C"),
    ("C", "curv_noise", "the noise's own curvature term"),
    ("C", "dE", "E_C's change (sampled)"),
)


def phase_table(rows: pd.DataFrame) -> list[str]:
    """The decision rule's terms per phase: per-seed sums, k of n seeds positive and the one-sided
    sign-test p-values, formed seeds beside the unformed ones (the null)."""
    per = rows[(rows.seed >= 0) & (rows.step == -1) & rows.metric.str.endswith("/sum")]
    if per.empty:
        return []
    formed = rows[(rows.seed >= 0) & (rows.metric == "formed")].groupby("seed").value.first()
    lines = [
        "Per phase (before: window start to formation - rise; rise: formation +- rise), per seed:",
        "sums over the phase's steps; then k of n seeds positive with the one-sided sign-test p.",
        "",
    ]
    for phase in ("before", "rise"):
        seeds = sorted(per.seed.unique())
        head = " | ".join(f"{s}{'' if formed.get(s, 0) > 0 else ' (unformed)'}" for s in seeds)
        lines += [
            f"**{phase}**",
            "",
            f"| term | {head} | formed: k of n > 0, p (> 0), p (< 0) | unformed: k of n > 0 |",
            "|---|" + "---|" * len(seeds) + "---|---|",
        ]
        for where, term, label in DECISION:
            sel = per[(per.metric == f"{term}/sum") & (per.component == f"{where}@{phase}")]
            if sel.empty:
                continue
            values = sel.set_index("seed").value
            cells = " | ".join(f"{values[s]:+.3g}" if s in values else "" for s in seeds)
            summary = []
            for group in ("formed", "unformed"):
                o = over_seeds(rows, term, f"{where}@{phase}#{group}")
                if o is None:
                    summary.append("")
                    continue
                text = f"{int(o['seeds_positive'])} of {int(o['seed_n'])}"
                if group == "formed":
                    text += f", {o['p_positive']:.3g}, {o['p_negative']:.3g}"
                summary.append(text)
            lines.append(f"| {label} | {cells} | {summary[0]} | {summary[1]} |")
        lines.append("")
    return lines


def scale_replays(run) -> dict[str, int]:
    """The replays the table toward the gradient flow reads: measurement id -> scale, for the
    latest set of measurements that differ in ``scale`` alone (at least two scales; a replay
    turns one knob). Rows whose id their settings no longer give (made before a revision of the
    scaled sums) are never read."""
    from interp_ext.measurement.runner import MeasureError, get_family

    settings_of = get_family("work").settings

    found = run.measurements()
    found = found[found.family == "work"].sort_values("used")
    groups: dict[str, dict[str, int]] = {}
    used: dict[str, float] = {}
    for r in found.itertuples():
        if r.settings.get("arm"):
            continue
        try:
            current = settings_of.from_saved(r.settings, r.id).id == r.id
        except (MeasureError, TypeError, ValueError):
            current = False
        if not current:
            continue
        rest = {k: v for k, v in r.settings.items() if k not in ("scale", "chunk")}
        key = json.dumps(rest, sort_keys=True, default=str)
        groups.setdefault(key, {})[r.id] = int(r.settings.get("scale", 1))
        used[key] = r.used
    wide = [k for k, g in groups.items() if len(set(g.values())) >= 2]
    return groups[max(wide, key=used.get)] if wide else {}


def scale_rows(run) -> pd.DataFrame:
    """Per seed, phase and term of the decision rule: the sums per unit of lr x steps (and their
    standard errors) of every replay :func:`scale_replays` reads, with their ``scale``."""
    scales = scale_replays(run)
    if not scales:
        return pd.DataFrame()
    rows = run.metrics("work", settings="all")
    sel = rows[(rows.seed >= 0) & (rows.step == -1) & rows.settings.isin(scales)].copy()
    sel["scale"] = sel.settings.map(scales)
    sel["term"] = sel.metric.str.rsplit("/", n=1).str[0]
    keep = {(f"{where}@{phase}", term) for where, term, _ in DECISION for phase in PHASES}
    sel = sel[[(c, t) in keep for c, t in zip(sel.component, sel.term)]]
    return sel[sel.metric.str.endswith(("/per_lr_step", "/sum", "/sum_se"))]


PHASES = ("before", "rise")


def per_lr_step_with_se(sel: pd.DataFrame) -> pd.DataFrame:
    """Per (component, term, seed, scale): the sum per unit of lr x steps and its standard error
    (the sum's, in the same units)."""
    wide = sel.pivot_table(
        index=["component", "term", "seed", "scale"], columns="metric", values="value"
    ).reset_index()
    out = []
    for r in wide.to_dict("records"):
        value, total = r.get(f"{r['term']}/per_lr_step", NAN), r.get(f"{r['term']}/sum", NAN)
        se = abs(r.get(f"{r['term']}/sum_se", NAN) * value / total) if total else NAN
        out.append(
            {**{k: r[k] for k in ("component", "term", "seed", "scale")}, "value": value, "se": se}
        )
    return pd.DataFrame(out)


def cell(text: str) -> str:
    """A markdown table cell: a set pair like ``C|C`` with its bar escaped."""
    return text.replace("|", "\\|")


def richardson(values: dict[int, tuple[float, float]]) -> tuple[float, float]:
    """The flow limit from lr / 2 and lr / 4 that removes a term linear in lr: 2 X(lr/4) -
    X(lr/2), and its standard error (the two replays' errors independent); NaN without both."""
    if 2 not in values or 4 not in values:
        return NAN, NAN
    (x2, s2), (x4, s4) = values[2], values[4]
    return 2 * x4 - x2, float((4 * s4**2 + s2**2) ** 0.5)


def scale_table(run, out=None) -> list[str]:
    """Every measured scale side by side, per phase (the replays at lr / k stop at the rise's end,
    so the whole window is not comparable): sums per unit of lr x steps, per seed, +- their
    standard errors, the Richardson limit from lr / 2 and lr / 4; per term, k of n seeds
    negative with the one-sided sign test; and a figure of each term against lr / k."""
    from interp_ext.stats import sign_test

    sel = scale_rows(run)
    if sel.empty:
        return []
    per = per_lr_step_with_se(sel)
    scales = sorted(per.scale.unique())
    lines = [
        "Toward the gradient flow: sums per unit of lr x steps at lr / scale, per phase (+- standard",
        "error; each column a replay of the same span with scale steps per real batch, every other",
        "setting the same; lr / 1 is the real run), and the limit 2 X(lr / 4) - X(lr / 2). Per term:",
        "k of n seeds negative, one-sided sign test p.",
        "",
        "| set@phase | term | seed | " + " | ".join(f"lr / {c}" for c in scales) + " | limit |",
        "|---|---|---|" + "---|" * (len(scales) + 1),
    ]
    for (component, term), g in per.groupby(["component", "term"], sort=True):
        columns: dict = {k: [] for k in [*scales, "limit"]}
        for seed, h in g.groupby("seed"):
            values = {int(r.scale): (r.value, r.se) for r in h.itertuples()}
            if len(values) < 2:  # a seed replayed at one scale says nothing about the limit
                continue
            limit = richardson(values)
            cells = [values.get(k, (NAN, NAN)) for k in scales] + [limit]
            for key, (v, _) in zip(columns, cells):
                columns[key].append(v)
            text = " | ".join(f"{v:+.4g} ± {e:.2g}" if v == v else "" for v, e in cells)
            lines.append(f"| {cell(component)} | {term} | {seed} | {text} |")
        counts = []
        for values in columns.values():
            v = np.asarray([x for x in values if x == x])
            k, n = int((v < 0).sum()), len(v)
            counts.append(f"{k} of {n} < 0, p = {sign_test(k, n):.3g}" if n else "")
        lines.append(f"| {cell(component)} | {term} | all | {' | '.join(counts)} |")
    if out is not None:
        lines += ["", *scale_figure(per, out)]
    return lines + [""]


def scale_figure(per: pd.DataFrame, out) -> list[str]:
    """K[C,C] and the drift's and the noise's work per unit of lr x steps against 1 / k, one
    line per seed, a panel per phase and term."""
    panels = []
    for where, term, label in DECISION[:1] + DECISION[3:5]:
        for phase in PHASES:
            g = per[(per.component == f"{where}@{phase}") & (per.term == term)]
            if g.empty:
                continue
            traces = [
                Trace(
                    (1 / h.scale).tolist(),
                    h.value.tolist(),
                    f"seed {seed}",
                    PALETTE[i % 10],
                    1.4,
                    lo=(h.value - h.se).tolist(),
                    hi=(h.value + h.se).tolist(),
                    mode="markers",
                    legend=not panels,
                )
                for i, (seed, h) in enumerate(g.sort_values("scale").groupby("seed"))
            ]
            panels.append(
                Panel(
                    f"{label.split(':')[0]}, {phase}",
                    traces,
                    xlabel="step size (x lr)",
                    ylabel="per unit of lr x steps",
                )
            )
    if not panels:
        return []
    files = save(
        Figure(
            "Toward the gradient flow: each term per unit of lr x steps at lr / k", panels, ncols=2
        ),
        out,
        "work_flow",
    )
    return [image(files, "work toward the flow"), ""]


# the terms of an arm's ledger beside the real steps': set, metric, label
ARM_TERMS = (
    ("C|C", "work_drift_by", "K[C,C]"),
    ("C", "work/drift", "drift"),
    ("C", "work/noise", "noise"),
    ("C", "work", "all"),
)
# what an arm's twin may differ in: the arm, and the span (the table reads the arm's steps only)
ARM_KEYS = ("arm", "arm_batches", "window", "margin", "until", "rise", "nulls")


def arm_twins(run) -> list[tuple[str, str, str, int]]:
    """(arm, arm measurement id, id of the real steps' measurement with the same other settings,
    their ``every``) for every measured arm that has such a twin (its span may differ: only the
    arm's sampled steps are read from it); the latest twin where several exist."""
    found = run.measurements()
    found = found[found.family == "work"].sort_values("used")
    bare = lambda s: {k: v for k, v in s.items() if k not in ARM_KEYS}  # noqa: E731
    out = []
    for r in found.itertuples():
        if not r.settings.get("arm"):
            continue
        twins = [
            t.id
            for t in found.itertuples()
            if not t.settings.get("arm") and bare(t.settings) == bare(r.settings)
        ]
        if twins:
            out.append((r.settings["arm"], r.id, twins[-1], int(r.settings.get("every", 1))))
    return out


def arm_sums(rows: pd.DataFrame, steps: list[int], every: int) -> dict:
    """Sums of the ledger's terms over ``steps`` (each standing for ``every`` real steps) with
    their sampling errors, and E_C's exact change over the same span: from the first of them to
    one grid step after the last (the span's end where the measurement ended there)."""
    at = rows[rows.step.isin(steps)]
    out = {}
    for where, term, label in ARM_TERMS:
        sel = at[(at.metric == term) & (at.component == where)]
        full = len(sel) == len(steps)
        total, se = sampled_sum(sel.value.to_numpy(), len(steps), every) if full else (NAN, NAN)
        out[label], out[f"{label} se"] = total, se
    e0 = one(rows, metric="E", component="C", step=steps[0])
    e1 = one(rows, metric="E", component="C", step=steps[-1] + every)
    out["dE"] = (e1 if e1 == e1 else one(rows, metric="E_end", component="C")) - e0
    return out


# the spans around a replay's own formation step over which the arms are also compared: the rise,
# where the ledger's terms are largest, falls at different steps in different arms. The second,
# shorter before formation, covers arms that form soon after the window's start (their ledger
# begins a shadow-moment horizon in).
AROUND = ((-150, 75), (-100, 75))
ARM_HEAD = [
    "| seed | replay | formation (its own) | K[C,C] | drift | noise | all | E_C change | noise / -drift |",
    "|---|---|---|---|---|---|---|---|---|",
]


def arm_table(run) -> list[str]:
    """Each measured arm of the noise family (``measure work --arm``) beside the real steps measured
    with the same settings, per seed: over the same sampled steps (the arm's: it starts at the
    window's checkpoint and measures after the shadow moment's horizon), and over the same span
    around each replay's own formation step (from the noise family's rows), where the arms form
    at different steps."""
    twins = arm_twins(run)
    if not twins:
        return []
    rows = run.metrics("work", settings="all")
    noise = run.metrics("noise", settings="all")
    noise = (
        noise if not noise.empty else pd.DataFrame(columns=["seed", "variant", "metric", "value"])
    )
    same, around = _arm_lines(twins, rows, noise)
    if not same:
        return []
    lines = [
        "Arms of the noise family through the exact ledger, beside the real steps over the same",
        "sampled steps (sums x every, +- the sampling error of the steps not measured; E_C's change",
        "exact, from the first of them to one grid step after the last).",
        "",
        *ARM_HEAD,
        *same,
        "",
    ]
    for (lo, hi), part in around.items():
        if part:
            lines += [
                f"The same over [F {lo:+d}, F {hi:+d}) around each replay's own formation step F",
                "(where that span lies inside the arm's):",
                "",
                *ARM_HEAD,
                *part,
                "",
            ]
    return lines


def _arm_lines(twins, rows, noise) -> tuple[list[str], dict[tuple[int, int], list[str]]]:
    """The table lines of each arm and its real twin, per seed: over the arm's sampled steps, and
    over each span around each replay's own formation step (where it lies inside the arm's)."""
    same, around, done = [], {span: [] for span in AROUND}, set()
    for arm, arm_id, real_id, every in twins:
        arm_rows = rows[(rows.settings == arm_id) & (rows.seed >= 0)]
        for seed in sorted(arm_rows.seed.unique()):
            mine = arm_rows[arm_rows.seed == seed]
            steps = sorted(s for s in mine[(mine.metric == "work") & (mine.component == "C")].step)
            steps = [s for s in steps if s >= 0]
            real = rows[(rows.settings == real_id) & (rows.seed == seed)]
            real_steps = set(real[(real.metric == "work") & (real.component == "C")].step)
            if not steps or not set(steps) <= real_steps:
                continue  # the twin did not measure every step of the arm's span
            for name, part in (("real", real), (arm, mine)):
                if (seed, name, steps[0]) in done:
                    continue
                done.add((seed, name, steps[0]))
                form = one(noise, seed=seed, variant=name, metric="formation_step")
                same.append(_arm_line(seed, name, form, arm_sums(part, steps, every)))
                if form != form:
                    continue
                for lo, hi in AROUND:
                    near = [s for s in steps if form + lo <= s < form + hi]
                    if (
                        near and near[0] - every < form + lo and near[-1] + every >= form + hi
                    ):  # the whole span inside the arm's
                        sums = arm_sums(part, near, every)
                        around[lo, hi].append(_arm_line(seed, name, form, sums))
    return same, around


def _arm_line(seed: int, name: str, form: float, sums: dict) -> str:
    ratio = sums["noise"] / -sums["drift"] if sums["drift"] else NAN
    cells = " | ".join(
        f"{sums[k]:+.3g} ± {sums[k + ' se']:.2g}" for k in ("K[C,C]", "drift", "noise", "all")
    )
    form_text = f"{form:,.0f}" if form == form else ""
    return f"| {seed} | {name} | {form_text} | {cells} | {sums['dE']:+.3g} | {ratio:.2f} |"


BESIDE = (
    ("C|C", "work_drift_by", "K[C,C]: the circuit block's drift"),
    ("C", "work/drift", "the whole drift"),
    ("C", "work/noise", "the noise"),
    ("C", "curv_noise", "the noise's curvature term"),
)


def real_rows_of(run) -> pd.DataFrame:
    """A run's rows of the real steps (:func:`real_id`)."""
    chosen = real_id(run)
    if chosen is None:
        return pd.DataFrame()
    rows = run.metrics("work", settings="all")
    return rows[rows.settings == chosen]


def _one_run_beside(i, name, rows, phase, where, term, legend) -> tuple[list[Trace], dict]:
    """One run's traces in a side-by-side panel (its formed seeds' values per unit lr x steps and
    their mean with the 95% t-interval) and the summary over its formed seeds."""
    formed = rows[(rows.seed >= 0) & (rows.metric == "formed")].groupby("seed").value.first()
    seeds = [s for s, v in formed.items() if v > 0]
    sel = rows[
        (rows.metric == f"{term}/per_lr_step")
        & (rows.component == f"{where}@{phase}")
        & rows.seed.isin(seeds)
    ]
    if sel.empty:
        return [], {}
    stats = {
        s: one(rows, metric=f"{term}/per_lr_step/{s}", component=f"{where}@{phase}#formed")
        for s in ("seed_mean", "seed_lo", "seed_hi", "seeds_positive", "seed_n")
    }
    color = PALETTE[i % 10]
    values = sel.value.tolist()
    traces = [
        Trace(
            [i] * len(values),
            values,
            f"{name}: each formed seed",
            color,
            0.5,
            0.7,
            mode="points",
            legend=legend,
        ),
        Trace(
            [i + 0.3],
            [stats["seed_mean"]],
            f"{name}: mean, 95% t",
            color,
            1.5,
            lo=[stats["seed_lo"]],
            hi=[stats["seed_hi"]],
            mode="points",
            legend=False,
        ),
    ]
    return traces, stats


def work_comparison(runs: dict, out) -> list[str]:
    """The exact ledgers of several runs side by side (e.g. the attention-only and the MLP preset):
    each decision term per phase, per unit of lr x steps (the presets differ in lr and phase
    lengths), per formed seed and over formed seeds (mean, 95% t), with k of n seeds positive."""
    ledgers = {label: real_rows_of(run) for label, run in runs.items()}
    ledgers = {label: rows for label, rows in ledgers.items() if not rows.empty}
    if len(ledgers) < 2:
        return []
    panels, table = [], []
    found = {c.rsplit("@", 1)[-1] for rows in ledgers.values() for c in rows.component.unique()}
    phases = [p for p in ("before", "rise") if p in found] or ["window"]
    xlabel = " | ".join(f"{i}: {n}" for i, n in enumerate(ledgers))
    for phase in phases:
        for k, (where, term, label) in enumerate(BESIDE):
            traces = []
            for i, (name, rows) in enumerate(ledgers.items()):
                legend = k == 0 and phase == phases[0]
                part, stats = _one_run_beside(i, name, rows, phase, where, term, legend)
                traces += part
                if stats:
                    table.append(
                        f"| {phase} | {label} | {name} | {stats['seed_mean']:+.3g} [{stats['seed_lo']:+.3g}, "
                        f"{stats['seed_hi']:+.3g}] | {stats['seeds_positive']:.0f} of {stats['seed_n']:.0f} |"
                    )
            panels.append(
                Panel(
                    f"{phase}: {label}",
                    traces,
                    xlabel=xlabel,
                    ylabel="per unit lr x steps",
                    zero=True,
                )
            )
    title = "Exact ledgers side by side: per formed seed (points) and over formed seeds"
    files = save(Figure(title, panels, ncols=4), out, "work_comparison")
    return [
        "## Exact ledgers side by side",
        "",
        image(files, "exact ledgers side by side"),
        "",
        "| phase | term | run | formed seeds: mean [95% t] per unit lr x steps | k of n > 0 |",
        "|---|---|---|---|---|",
        *table,
        "",
    ]
