"""docs/findings.md: every claim the project makes about the paper's account, one row each, made
from the measurements' rows.

Two steps, so that the page can be checked without the runs:

1. :func:`collect` reads the per-seed values each claim rests on from the runs' rows (the study
   run's ``induction`` and ``members`` families, the causal test's ``arms.csv``) and writes them,
   with the settings ids they came from, to a snapshot (``docs/findings.json``);
2. :func:`render` makes the page from the snapshot alone: every effect size, interval, count and
   p-value on it is computed here, by :mod:`interp_ext.stats`, from the per-seed values.

The test suite renders the committed snapshot and compares it with the committed page, so a
number on the page that no per-seed value gives fails the tests; ``interp-ext findings --check``
re-reads the runs and fails when their rows no longer give the snapshot. Claims whose runs are
not kept (or that were withdrawn) carry no number of their own; their row says so and links the
log (docs/results.md).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from interp_ext import stats
from interp_ext.errors import MeasureError

HEADER = """# Findings

What this project's measurements say about the paper's account of how circuits form (gradient
descent internalising structure through self-reinforcing circuits), one row per claim. Each row
gives the effect with its interval, the number of seeds, the exact test that fits the design
(paired units paired, formed against never-formed by permuting seed labels) with its p-value and
the smallest p the design allows, the null the effect was read against, and what would overturn
it. The log behind every row, with the commands, tables and caveats, is
[docs/results.md](results.md).

This page is generated (`interp-ext findings --study runs/study --causal runs/causal`) from the
per-seed values in [findings.json](findings.json), which are read from the runs' rows; the tests
re-render the page from that file.

Models: the `tiny` preset (two attention-only layers x 4 heads, d_model 64), 16 seeds, WikiText-2
raw with copied random spans; 2-core CPU. Statuses: **holds** (the test beat its null at the
stated level), **null** (a sign the construction or the noise forces, not a finding about
circuits), **undecided** (the design cannot tell), **not read** (a pattern whose negative control
fails), **withdrawn** (an earlier reading that did not survive).
"""


@dataclass(frozen=True)
class Claim:
    """One row: ``collect`` reads its per-seed values from the runs (None: no number on the
    page), ``summarize`` turns them into the row's effect, n and test."""

    key: str
    section: str
    claim: str
    status: str
    null: str
    overturn: str
    collect: Callable | None = None
    summarize: Callable | None = None


# --------------------------------------------------------------------------- reading the rows


def settings_with(run, family: str, **want) -> str:
    """The most recently created settings id of ``family`` in ``run`` whose settings hold every
    ``want`` value; a one-line error naming them when none does."""
    table = run.measurements()
    table = table[table.family == family].sort_values("created")
    hits = [
        r.id for r in table.itertuples() if all(r.settings.get(k, "") == v for k, v in want.items())
    ]
    if not hits:
        raise MeasureError(f"{run.path}: no {family} measurement with {want}; measure it first")
    return hits[-1]


def formations(run) -> dict[int, tuple[float, bool]]:
    """Per seed: (its formation step, True), or for a never-formed seed (its own steepest rise,
    False)."""
    from interp_ext.families.members.decision import seed_formation

    return {int(s): seed_formation(run, s) for s in run.seeds}


def _seeds_json(forms: dict) -> dict:
    return {str(s): {"formation": f, "formed": formed} for s, (f, formed) in forms.items()}


def collect_formation(study, causal) -> dict:
    forms = formations(study)
    return {"settings": [study.metrics("induction").settings.iloc[0]], "seeds": _seeds_json(forms)}


def _entries(study, at: str, **want) -> dict:
    from interp_ext.families.members.decision import seed_entries

    sid = settings_with(study, "members", matrix=True, **want)
    rows = study.metrics("members", settings=sid)
    forms = formations(study)
    out = []
    for seed, (f, formed) in forms.items():
        for row in seed_entries(rows, seed, f, at, "8"):
            if row["phase"] == "before":
                out.append({**row, "formed": formed})
    return {"settings": [sid], "rows": out}


def collect_slow(study, causal) -> dict:
    return _entries(study, "polyak200", weights="raw,polyak50,polyak200", near="before")


def collect_raw(study, causal) -> dict:
    return _entries(study, "raw", weights="raw,polyak50,polyak200", near="before")


def collect_rho(study, causal) -> dict:
    """rho_C at the checkpoints before formation (the phases run) and, where measured, at the
    replayed steps between them (the window run), per seed."""
    forms = formations(study)
    ids = [settings_with(study, "members", near="phases", modes=3, matrix=False)]
    try:
        ids.append(settings_with(study, "members", window="auto", modes=3, matrix=False))
    except MeasureError:  # the window run is optional
        pass
    out = []
    for sid in ids:
        rows = study.metrics("members", settings=sid)
        rho = rows[(rows.metric == "rho") & (rows.component == "C")]
        for r in rho.itertuples():
            f, formed = forms[int(r.seed)]
            out.append(
                {
                    "seed": int(r.seed),
                    "from_formation": r.step - f,
                    "rho": r.value,
                    "formed": formed,
                }
            )
    uniq = pd.DataFrame(out).drop_duplicates(["seed", "from_formation"]) if out else pd.DataFrame()
    return {"settings": ids, "rows": uniq.to_dict("records")}


def collect_growth(study, causal) -> dict:
    from interp_ext.families.members.report import growth_table

    forms = formations(study)
    out = {"settings": [], "rows": []}
    for weights, want in (("raw", {"weights": "raw"}), ("polyak200", {"weights": "polyak200"})):
        try:
            sid = settings_with(study, "members", matrix=False, near="all", modes=0, **want)
        except MeasureError:  # the slow series is optional
            continue
        out["settings"].append(sid)
        rows = study.metrics("members", settings=sid)
        for metric in ("S", "N"):
            table = growth_table(rows, forms, weights=weights, metric=metric)
            for r in table.to_dict("records"):
                out["rows"].append({**r, "weights": weights, "metric": metric})
    return out


CAUSAL_ARMS = ("none", "prev*0", "ctrl*0", "ind*0", "ictrl*0", "ablate:prev", "ablate:ctrl")


def collect_causal(study, causal) -> dict:
    if causal is None:
        return {}
    table = pd.read_csv(Path(causal) / "arms.csv")
    table = table[table.arm.isin(CAUSAL_ARMS)]
    keep = ["seed", "lead", "arm", "formed", "time", "prev_token_start", "prev_token_end"]
    return {"settings": ["arms.csv"], "rows": table[keep].to_dict("records")}


def _latest_rows(run, family: str) -> tuple[str, pd.DataFrame]:
    rows = run.metrics(family)
    if rows.empty:
        raise MeasureError(f"{run.path}: no {family} rows; run `interp-ext measure {family}` first")
    return str(rows.settings.iloc[0]), rows


def collect_dashboard(study, causal) -> dict:
    """Per seed, each dashboard series (its own, not the seed mean) with its steps."""
    from interp_ext.families.beta import TRANSITION_METRICS

    sid, rows = _latest_rows(study, "geometry")
    rows = rows[rows.metric.isin(TRANSITION_METRICS) & (rows.seed >= 0)]
    forms = formations(study)
    series = [
        {"seed": int(s), "metric": m, "steps": g.step.tolist(), "values": g.value.tolist()}
        for (s, m), g in rows.sort_values("step").groupby(["seed", "metric"])
    ]
    return {"settings": [sid], "seeds": _seeds_json(forms), "series": series}


CKA_GROUPS = ("attn_qkv", "attn_out", "embed")
CKA_STEPS = (500, 2000, 2750, 4000)


def collect_cka(study, causal) -> dict:
    """Unbiased CKA of every seed pair (``cka_unbiased_pair``) at the steps the log reads."""
    sid, rows = _latest_rows(study, "stream2")
    rows = rows[
        (rows.metric == "cka_unbiased_pair")
        & rows.component.isin(CKA_GROUPS)
        & rows.step.isin(CKA_STEPS)
    ]
    pairs = [
        {
            "a": int(r.seed),
            "b": int(r.partner),
            "group": r.component,
            "step": int(r.step),
            "value": float(r.value),
        }
        for r in rows.itertuples()
        if int(r.seed) < int(r.partner)
    ]
    return {"settings": [sid], "seeds": _seeds_json(formations(study)), "pairs": pairs}


def collect_sharpness(study, causal) -> dict:
    """Per seed, the model's lambda_1(P^-1 H) / edge at every checkpoint (the run measured at the
    same steps on every seed, no window)."""
    sid = settings_with(study, "sharpness", circuit="", window="")
    rows = study.metrics("sharpness", settings=sid)
    rows = rows[(rows.metric == "precond_edge_ratio") & (rows.component == "") & (rows.step >= 0)]
    series = {
        str(int(s)): {"steps": g.step.tolist(), "values": g.value.tolist()}
        for s, g in rows.sort_values("step").groupby("seed")
    }
    return {"settings": [sid], "seeds": _seeds_json(formations(study)), "series": series}


def collect_stages(study, causal) -> dict:
    sid, rows = _latest_rows(study, "stages")
    b = rows[(rows.metric == "stage_boundary") & (rows.seed >= 0)]
    steps = sorted(int(x) for x in rows[rows.step >= 0].step.unique())
    return {
        "settings": [sid],
        "seeds": _seeds_json(formations(study)),
        "interval": float(np.median(np.diff(steps))),
        "boundaries": {str(int(s)): sorted(g.value.tolist()) for s, g in b.groupby("seed")},
    }


# --------------------------------------------------------------------------- the numbers


def _f(x: float, digits: int = 2) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}g}" if abs(x) < 1e-2 and x != 0 else f"{x:.{digits}f}"


def _p(p: float, floor: float) -> str:
    return f"p = {p:.2g} (floor {floor:.2g})"


def _sign(k: int, n: int) -> str:
    """The one-sided exact sign test of k of n, with its floor."""
    return _p(stats.sign_test(k, n), stats.sign_test_floor(n))


def _t(values) -> str:
    mean, lo, hi, n = stats.t_interval(values)
    return f"{_f(mean, 3)} [{_f(lo, 3)}, {_f(hi, 3)}]"


def summarize_formation(data: dict) -> dict:
    seeds = data["seeds"]
    steps = [v["formation"] for v in seeds.values() if v["formed"]]
    return {
        "effect": f"{len(steps)} of {len(seeds)} seeds; formation at step {int(np.median(steps))} "
        f"(median; {int(min(steps))}-{int(max(steps))})",
        "n": len(seeds),
        "test": "a count (no test)",
    }


def _entry_tests(data: dict, direction: str) -> dict:
    table = pd.DataFrame(data["rows"])
    table = table[table.formed & table.value.notna()]
    parts, ps = [], []
    for entry, g in table.groupby("entry", sort=True):
        v = g.value.to_numpy()
        k = int((v > 0).sum()) if direction == "positive" else int((v < 0).sum())
        resolved = int((np.abs(v) > 2 * g.value_se.to_numpy()).sum())
        ps.append(f"{entry}: {_sign(k, len(v))}")
        parts.append(
            f"{entry} {direction} on {k} of {len(v)} formed seeds, mean {_t(v)}, "
            f"beyond 2 s.e. on {resolved}"
        )
    return {
        "effect": "; ".join(parts),
        "n": int(table.seed.nunique()),
        "test": f"exact one-sided sign test for {direction}, per seed: " + "; ".join(ps),
    }


def summarize_slow(data: dict) -> dict:
    return _entry_tests(data, "positive")


def summarize_raw(data: dict) -> dict:
    out = _entry_tests(data, "negative")
    table = pd.DataFrame(data["rows"])
    table = table[table.formed & table.null.notna()]
    neg = int((table.null < 0).sum())
    out["effect"] += f"; their control-head nulls negative on {neg} of {len(table)}"
    return out


def _rho_before(data: dict) -> pd.DataFrame:
    table = pd.DataFrame(data["rows"])
    return table[table.formed & (table.from_formation < 0)]


def summarize_rho(data: dict) -> dict:
    before = _rho_before(data)
    per_seed = before.groupby("seed").rho
    all_pos = int((per_seed.min() > 0).sum())
    n = per_seed.ngroups
    median_neg = int((per_seed.median() < 0).sum())
    return {
        "effect": f"rho_C > 0 at every point before formation on {all_pos} of {n} formed seeds "
        f"({len(before)} points, {_f(before.rho.min(), 2)} to {_f(before.rho.max(), 2)})",
        "n": n,
        "test": "exact one-sided sign test for rho_C < 0 (seed medians): " + _sign(median_neg, n),
    }


def summarize_rho_rise(data: dict) -> dict:
    before = _rho_before(data)
    before = before[before.from_formation.isin([-625, -125])]
    wide = before.pivot_table(index="seed", columns="from_formation", values="rho").dropna()
    k = int((wide[-125] > wide[-625]).sum())
    n = len(wide)
    return {
        "effect": f"rho_C higher 125 steps before formation than 625 before on {k} of {n} "
        f"formed seeds (ratio median {_f(float(np.median(wide[-125] / wide[-625])), 3)})",
        "n": n,
        "test": "exact one-sided sign test, paired within seed: " + _sign(k, n),
    }


def _growth_line(table: pd.DataFrame, label: str) -> tuple[str, str]:
    table = table[table.points >= 4]
    formed, other = table[table.formed], table[~table.formed]
    p, floor = stats.permutation_p(formed.delta_aic, other.delta_aic, "less")
    k = int((formed.law == "exponential").sum())
    j = int((other.law == "exponential").sum())
    return (
        f"{label}: exponential best on {k} of {len(formed)} formed, {j} of {len(other)} "
        "never-formed",
        f"{label}: {_p(p, floor)}",
    )


def summarize_growth(data: dict) -> dict:
    table = pd.DataFrame(data["rows"])
    effects, tests = [], []
    for (weights, metric), g in table.groupby(["weights", "metric"], sort=False):
        label = f"{metric}_C ({weights})" + (" [negative control]" if metric == "N" else "")
        e, t = _growth_line(g, label)
        effects.append(e)
        tests.append(t)
    return {
        "effect": "; ".join(effects),
        "n": int(table.seed.nunique()),
        "test": "delta AIC (exponential minus best other law), formed below never-formed, exact "
        "permutation over seed labels: " + "; ".join(tests),
    }


def _causal(data: dict, arm: str, reference: str, lead: int) -> dict:
    from interp_ext.causal import paired_tests

    table = pd.DataFrame(data["rows"])
    table = table[(table.lead == lead) & table.arm.isin([arm, reference])]
    row = paired_tests(table, reference=reference).iloc[0]
    return row


def summarize_partner(data: dict) -> dict:
    lines, tests, n = [], [], 0
    for lead in (500, 250):
        row = _causal(data, "prev*0", "ctrl*0", lead)
        n = max(n, int(row.seeds))
        lines.append(
            f"{lead + 125} steps before: formed on {row.formed} of {row.seeds}; later than with a "
            f"control head frozen on {row.later}, earlier on {row.earlier}"
        )
        tests.append(f"{lead + 125}: {_p(row.p_later, row.floor)}")
    return {
        "effect": "; ".join(lines),
        "n": n,
        "test": "exact one-sided sign test for later, paired by seed (ordered pairs): "
        + "; ".join(tests),
    }


def summarize_ablate(data: dict) -> dict:
    row = _causal(data, "ablate:prev", "ablate:ctrl", 500)
    return {
        "effect": f"later than with a control head ablated on {row.later} of {row.ordered} "
        f"ordered seeds (earlier on {row.earlier}); formed on {row.formed} of {row.seeds}",
        "n": int(row.seeds),
        "test": "exact one-sided sign test for later, paired by seed: "
        + _p(row.p_later, row.floor),
    }


def summarize_induction_frozen(data: dict) -> dict:
    row = _causal(data, "ind*0", "ictrl*0", 500)
    return {
        "effect": f"formed on {row.formed} of {row.seeds} with the induction members frozen "
        f"(with a layer-1 control frozen: {row.reference_formed} of {row.seeds}); later on "
        f"{row.later} of {row.ordered} ordered",
        "n": int(row.seeds),
        "test": "exact one-sided sign test for later, paired by seed: "
        + _p(row.p_later, row.floor),
    }


def _formed_steps(data: dict) -> dict[int, float]:
    return {int(s): v["formation"] for s, v in data["seeds"].items() if v["formed"]}


def _near(events: dict, data: dict, within: float, label: str) -> tuple[str, str, int]:
    forms = _formed_steps(data)
    events = {s: e for s, e in events.items() if s in forms}
    k, p, floor = stats.event_near_formation_p(events, forms, within)
    others = {int(s): v for s, v in data["seeds"].items() if not v["formed"]}
    return (
        f"{label} within {within:.0f} steps of formation on {k} of {len(events)} formed seeds",
        f"formation steps permuted across the formed seeds (exact): {_p(p, floor)}",
        len(others),
    )


def summarize_dashboard(data: dict) -> dict:
    from interp_ext.geometry.streams import change_point

    points: dict[int, list[float]] = {}
    for item in data["series"]:
        step, gain = change_point(np.array(item["steps"]), np.array(item["values"]))
        if math.isfinite(step) and gain >= 0.25:
            points.setdefault(item["seed"], []).append(step)
    effect, test, _ = _near(points, data, 250, "a change point of its own dashboard series")
    never = sorted(int(s) for s, v in data["seeds"].items() if not v["formed"])
    voted = {s: sorted({int(p) for p in points[s]}) for s in never if points.get(s)}
    tail = (
        f"; never-formed seeds with a change point: {len(voted)} of {len(never)} ("
        + ", ".join(f"seed {s} at {' and '.join(map(str, v))}" for s, v in voted.items())
        + ")"
    )
    return {"effect": effect + tail, "n": len(data["seeds"]), "test": test}


def summarize_sharpness(data: dict) -> dict:
    peaks = {int(s): [v["steps"][int(np.argmax(v["values"]))]] for s, v in data["series"].items()}
    counts = {len(v["steps"]) for v in data["series"].values()}
    effect, test, _ = _near(peaks, data, 250, "the largest lambda_1(P^-1 H)")
    never = sorted(int(s) for s, v in data["seeds"].items() if not v["formed"])
    effect += (
        f" (every seed at the same {min(counts)} checkpoints); never-formed seeds' peaks at "
        + ", ".join(str(int(peaks[s][0])) for s in never if s in peaks)
    )
    return {"effect": effect, "n": len(data["seeds"]), "test": test}


def summarize_edge(data: dict) -> dict:
    forms = _formed_steps(data)
    before, peak, other = [], [], []
    for seed, v in data["series"].items():
        steps, values = np.array(v["steps"]), np.array(v["values"])
        if int(seed) in forms:
            before.append(values[steps < forms[int(seed)]].max())
            peak.append(values.max())
        else:
            other.append(values.max())
    above = sum(max(v["values"]) >= 1 for v in data["series"].values())
    return {
        "effect": f"largest lambda_1(P^-1 H) / edge before formation {_f(min(before))}-"
        f"{_f(max(before))} on the {len(before)} formed seeds; at formation it spikes to "
        f"{_f(min(peak))}-{_f(max(peak))}, at or above the edge on {above} of "
        f"{len(data['series'])} seeds; never-formed seeds at most {_f(max(other))}",
        "n": len(data["series"]),
        "test": "a bound at every measured checkpoint (no test)",
    }


def summarize_stages(data: dict) -> dict:
    bounds = {int(s): v for s, v in data["boundaries"].items()}
    effect, test, _ = _near(bounds, data, data["interval"], "a stage boundary")
    every = [b for v in bounds.values() for b in v]
    return {
        "effect": f"{effect}; every seed's boundaries at {int(min(every))}-{int(max(every))}",
        "n": len(data["seeds"]),
        "test": test,
    }


def _cka_pairs(data: dict, group: str, step: int) -> dict[tuple[int, int], float]:
    return {
        (p["a"], p["b"]): p["value"]
        for p in data["pairs"]
        if p["group"] == group and p["step"] == step
    }


def _kind_means(values: dict, labels: dict) -> dict[str, float]:
    kinds: dict[str, list[float]] = {"FF": [], "FU": [], "UU": []}
    for (a, b), v in values.items():
        kinds["F" * (labels[a] + labels[b]) + "U" * (2 - labels[a] - labels[b])].append(v)
    return {k: float(np.mean(v)) if v else math.nan for k, v in kinds.items()}


def summarize_cka_split(data: dict) -> dict:
    """After the formed seeds' formation: never-formed pairs (UU) against the rest at 2,750,
    formed pairs (FF) against the rest at 4,000; seed labels permuted, never pairs."""
    formed = {int(s): bool(v["formed"]) for s, v in data["seeds"].items()}
    never = {s: not f for s, f in formed.items()}
    effects, tests = [], []
    for group in CKA_GROUPS[:2]:
        for step, labels, kind in ((2750, never, "UU"), (4000, formed, "FF")):
            values = _cka_pairs(data, group, step)
            _, p, floor = stats.seed_label_permutation_p(values, labels, "two-sided")
            m = _kind_means(values, formed)
            effects.append(
                f"{group} at {step}: FF {_f(m['FF'])}, FU {_f(m['FU'])}, UU {_f(m['UU'])}"
            )
            tests.append(f"{group}, {kind} at {step}: {_p(p, floor)}")
    return {
        "effect": "mean unbiased CKA over pairs of formed (F) and never-formed (U) seeds: "
        + "; ".join(effects),
        "n": len(formed),
        "test": "the pairs of one kind against the rest, seed labels permuted (two-sided, exact): "
        + "; ".join(tests),
    }


def summarize_cka_peak(data: dict) -> dict:
    labels = {int(s): bool(v["formed"]) for s, v in data["seeds"].items()}
    parts = []
    for group in CKA_GROUPS:
        means = {
            step: float(np.mean(list(_cka_pairs(data, group, step).values())))
            for step in (500, 2000)
        }
        parts.append(f"{group}: {_f(means[500])} at 500, {_f(means[2000])} at 2000")
    return {
        "effect": "mean unbiased CKA over all pairs: " + "; ".join(parts),
        "n": len(labels),
        "test": "-",
    }


# --------------------------------------------------------------------------- the claims

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "formation",
        "1",
        "Induction heads form on most seeds of the tiny preset, at different steps.",
        "holds",
        "-",
        "A detection rule that moves the count (the steepest rise with a head past the "
        "threshold at the end is the rule).",
        collect_formation,
        summarize_formation,
    ),
    Claim(
        "reinforce_slow",
        "3.7",
        "Who reinforces whom: before formation, on the slow weights (Polyak average over 200 "
        "steps), the induction head and its previous-token partner raise each other's "
        "mean-gradient energy (R^S cross entries > 0).",
        "undecided",
        "the no-circuit toy through the same code (cross entries of either sign); layer-matched "
        "control heads",
        "Cross entries positive on the formed seeds at p < 0.01 above their control-head "
        "nulls (the rule of results 3.6), with per-seed errors small enough to resolve them.",
        collect_slow,
        summarize_slow,
    ),
    Claim(
        "reinforce_raw",
        "3.7",
        "On the raw checkpoint weights every (induction, previous-token) cross entry is "
        "negative, control pairs too: the relaxation of the noise displacement, not a "
        "statement about the circuit.",
        "null",
        "the control-head pairs, negative alike",
        "Raw cross entries of the circuit's pairs differing in sign from their control pairs.",
        collect_raw,
        summarize_raw,
    ),
    Claim(
        "saddle",
        "3.9",
        "No saddle signature shown: in the last 625 steps before formation the circuit block's "
        "own expected AdamW flow lowers its mean-gradient energy (rho_C > 0) at every checkpoint "
        "and replayed step measured, and carries little of the block's negative modes.",
        "holds",
        "rho_C < 0, what a flow that raises its own mean-gradient energy gives (the true "
        "Hessian: it does go negative, at step 1,000); its power against a known saddle escape "
        "was not shown",
        "rho_C < 0 over a stretch before formation on most formed seeds, on the raw or the slow "
        "weights, or a toy with a known saddle escape where rho_C stays positive.",
        collect_rho,
        summarize_rho,
    ),
    Claim(
        "rho_rise",
        "3.9",
        "rho_C rises in the last 500 steps before formation.",
        "not read",
        "rho_C also grows with the training step and sits as high on the never-formed seeds "
        "around their own steepest rise",
        "The rise persisting against step-matched never-formed seeds.",
        collect_rho,
        summarize_rho_rise,
    ),
    Claim(
        "growth",
        "3.7",
        "The circuit's mean-gradient energy S_C grows exponentially before formation (what "
        "self-reinforcement predicts).",
        "not read",
        "the noise energy N_C as negative control, which comes out as exponential or more",
        "S_C exponential on the formed seeds and not on the never-formed, with N_C not so.",
        collect_growth,
        summarize_growth,
    ),
    Claim(
        "partner_frozen",
        "3.8",
        "The previous-token partner's learning is not needed for the induction heads to form: "
        "frozen 625 or 375 steps before formation, they form, not detectably later than with a "
        "control head frozen.",
        "holds",
        "a layer-matched control head frozen in the same branch (paired by seed)",
        "Freezing the partner delaying formation against the control freeze on most seeds.",
        collect_causal,
        summarize_partner,
    ),
    Claim(
        "partner_ablated",
        "3.8",
        "The partner's output helps: mean-ablated in training, the heads form later than with a "
        "control head ablated.",
        "holds",
        "a layer-matched control head ablated in the same branch (paired by seed)",
        "No delay against the control ablation at more seeds.",
        collect_causal,
        summarize_ablate,
    ),
    Claim(
        "induction_frozen",
        "3.8",
        "Positive control of the causal test: freezing the induction members stops formation.",
        "holds",
        "a layer-1 control head frozen (paired by seed)",
        "Frozen induction members forming on time.",
        collect_causal,
        summarize_induction_frozen,
    ),
    Claim(
        "ledger_sign",
        "3.4, 3.5",
        "Withdrawn: the circuit block's summed gradient-energy rate K[C,C] < 0 before formation "
        "read as the autocatalytic condition failing or holding.",
        "withdrawn",
        "the no-circuit toy and the never-formed seeds, which have the same negative sign",
        "-",
    ),
    Claim(
        "flow_limit",
        "3.3",
        "Withdrawn: the replays at lr / k approaching a flow limit of 0.",
        "withdrawn",
        "the replays at lr / k summed one step in k; corrected sums do not give it",
        "-",
    ),
    Claim(
        "noise_arms",
        "4.1",
        "At a fixed data budget the noise level, not the data per step, sets when the heads form.",
        "undecided",
        "paired arms per seed; 4 seeds, whose exact paired test cannot go below p = 0.0625",
        "The same order on more seeds (p < 0.05 needs 5 of 5).",
    ),
    Claim(
        "noiseless_ledger",
        "4.2",
        "Withdrawn: without noise the circuit's gradient energy rises as fast and the drift's "
        "work moves up.",
        "withdrawn",
        "4 seeds, per-seed differences within 2 standard errors, the c = 0 split dominated by the "
        "shadow moment's own error",
        "-",
    ),
    Claim(
        "counterfactual",
        "4.3",
        "Withdrawn: the first counterfactual replays' reading, where noise and data per step "
        "moved together.",
        "withdrawn",
        "a replay that turns two knobs at once",
        "-",
    ),
    Claim(
        "mlp_relay",
        "5",
        "Withdrawn: MLP0 relays the previous-token signal in the MLP preset.",
        "withdrawn",
        "it rests on one seed",
        "-",
    ),
    Claim(
        "dashboard",
        "6",
        "Each seed's own gradient-geometry dashboard changes regime at its own formation (a "
        "change point of its series within one checkpoint interval of its formation step).",
        "holds",
        "the formation steps permuted across the formed seeds, which keeps the stretch of "
        "training where every seed changes",
        "No excess over the permuted formation steps on more seeds; the never-formed seeds "
        "also change, later, so what it marks is each seed's transition, not the induction "
        "circuit as such.",
        collect_dashboard,
        summarize_dashboard,
    ),
    Claim(
        "cka_split",
        "6",
        "Cross-seed alignment (unbiased CKA of the per-batch gradient Grams) follows formation: "
        "the never-formed seeds stay aligned with each other through the formed seeds' "
        "transition, and afterwards the formed seeds align with each other more than with the "
        "never-formed.",
        "holds",
        "the pairs of the other kinds at the same step, seed labels permuted (pairs that share "
        "a seed are never treated as independent); a shuffled batch order reads about 0",
        "The same contrasts at other probe batches, or without a seed-label separation.",
        collect_cka,
        summarize_cka_split,
    ),
    Claim(
        "cka_before",
        "6",
        "Withdrawn: seeds align most before formation.",
        "withdrawn",
        "on the 16 seeds the pairs are as aligned early in training as before formation, "
        "formed and never-formed alike; its first tests averaged seed pairs that share seeds",
        "-",
        collect_cka,
        summarize_cka_peak,
    ),
    Claim(
        "llc_rise",
        "7",
        "Withdrawn: the whole-model LLC rises 2-3x at formation and the never-formed seeds end "
        "higher.",
        "withdrawn",
        "read at mid-descent checkpoints whose pull was never computed for the whole model; "
        "p = 0.018 is the design's floor",
        "-",
    ),
    Claim(
        "stages",
        "9.1",
        "Withdrawn: a stage boundary (essential dynamics) marks formation.",
        "withdrawn",
        "against formation steps permuted across the formed seeds the match is chance: every "
        "seed's boundaries cluster in the same stretch of training (the uniform null the log "
        "first used made it look significant)",
        "-",
        collect_stages,
        summarize_stages,
    ),
    Claim(
        "edge",
        "9.2",
        "AdamW is not at its edge of stability before formation: the preconditioned sharpness "
        "of the probe loss stays well below the edge; at formation it spikes toward it.",
        "holds",
        "Cohen et al.'s edge for beta1 = 0.9, (2 + 2 beta1) / ((1 - beta1) lr)",
        "A point at or above the edge before formation; the minibatch loss's Hessian, not the "
        "probe batches', could differ.",
        collect_sharpness,
        summarize_edge,
    ),
    Claim(
        "curvature_peak",
        "9.2",
        "The preconditioned curvature peaks at each seed's own formation (every seed sampled at "
        "the same checkpoints).",
        "holds",
        "formation steps permuted across the formed seeds, each seed's peak kept; the "
        "never-formed seeds peak later, at their own transition",
        "No excess over the permuted formation steps at a finer equal sampling.",
        collect_sharpness,
        summarize_sharpness,
    ),
)


CLAIMS_BY_KEY = {c.key: c for c in CLAIMS}


def collect(study_dir, causal_dir=None) -> dict:
    """The snapshot: for every claim with a ``collect``, the per-seed values and the settings
    ids (or files) they were read from."""
    from interp_ext.run.reader import open_run

    study = open_run(study_dir)
    out = {"study": Path(study_dir).name, "claims": {}}
    for claim in CLAIMS:
        if claim.collect is not None:
            out["claims"][claim.key] = claim.collect(study, causal_dir)
    return json.loads(json.dumps(out, default=_plain))


def _plain(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    raise TypeError(f"not JSON: {type(x)}")


def _cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def render(snapshot: dict) -> str:
    """The page, from the snapshot alone."""
    lines = [
        HEADER,
        "| # | claim | status | effect (95% t-interval) | n seeds | test and p | null it was read "
        "against (withdrawn: why) | what would overturn it | log |",
    ]
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for i, claim in enumerate(CLAIMS, 1):
        data = snapshot["claims"].get(claim.key)
        if claim.summarize is not None and data:
            s = claim.summarize(data)
            effect, n, test = s["effect"], str(s["n"]), s["test"]
        else:
            effect, n, test = "see the log", "-", "-"
        anchor = claim.section.split(",")[0].strip()
        link = f"[{claim.section}](results.md#{section_anchor(anchor)})"
        cells = [
            str(i),
            claim.claim,
            f"**{claim.status}**",
            effect,
            n,
            test,
            claim.null,
            claim.overturn,
            link,
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def section_anchor(number: str) -> str:
    """The GitHub anchor of docs/results.md's heading numbered ``number`` ("3.7", "5")."""
    for head in _log_headings():
        if head.startswith(number + " ") or head.startswith(number + ". "):
            return github_anchor(head)
    return ""


@functools.cache
def _log_headings() -> tuple[str, ...]:
    """docs/results.md's headings, read once (none when the package runs without its docs)."""
    text = Path(__file__).resolve().parents[1].joinpath("docs", "results.md")
    lines = text.read_text().splitlines() if text.exists() else []
    return tuple(line.lstrip("#").strip() for line in lines if line.startswith("#"))


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    keep = "".join(c for c in heading.lower() if c.isalnum() or c in " -_")
    return keep.replace(" ", "-")


def write(snapshot: dict, out: Path) -> tuple[Path, Path]:
    """Write ``out``/findings.json and ``out``/findings.md."""
    out.mkdir(parents=True, exist_ok=True)
    data, page = out / "findings.json", out / "findings.md"
    data.write_text(json.dumps(snapshot, sort_keys=True, separators=(",", ":")) + "\n")
    page.write_text(render(snapshot))
    return data, page


def differences(old: dict, new: dict, tol: float = 1e-9) -> list[str]:
    """The claims whose per-seed values differ between two snapshots (relative ``tol``)."""
    out = []
    for key in sorted(set(old.get("claims", {})) | set(new.get("claims", {}))):
        a, b = old["claims"].get(key), new["claims"].get(key)
        if not _same(a, b, tol):
            out.append(key)
    return out


def _same(a, b, tol: float) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        fa, fb = float(a), float(b)
        if math.isnan(fa) or math.isnan(fb):
            return math.isnan(fa) and math.isnan(fb)
        return abs(fa - fb) <= tol * max(1.0, abs(fa), abs(fb))
    return a == b


__all__ = ["CLAIMS", "Claim", "collect", "differences", "render", "settings_with", "write"]
