"""The member matrix read against the decision rule of docs/results.md 3.6.

Per seed, one number per entry and phase: the entry averaged over the phase's checkpoints
(*before* = checkpoints in [f - 750, f - 250], *rise* = (f - 250, f + 250], f the seed's formation
step; a seed that never formed is read at its own steepest rise, :func:`own_rise`), averaged over
the seed's (induction member, previous-token member) pairs. The entries: R^S[ind, prev] (the
induction head's signal energy as its partner moves), R^S[prev, ind] (the reverse), each beside
its null with the moving partner replaced by its layer-matched control head. Across seeds only
exact tests at the design's resolution (:mod:`interp_ext.stats`): the sign test over formed
seeds, the signed-rank test of entry minus null paired by seed, and the permutation test of
formed against never-formed seed labels, each with its floor.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from interp_ext.stats import permutation_p, sign_test, sign_test_floor, signed_rank_p

PHASES = {"before": (-750, -250), "rise": (-250, 250)}
# (label, row member, moving member, row member of the null, moving member of the null)
ENTRIES = (
    ("R[ind, prev]", "ind", "prev", "ind", "ctrl(prev)"),
    ("R[prev, ind]", "prev", "ind", "prev", "ctrl(ind)"),
)


def phase_steps(steps, formation: float, phase: str) -> list[int]:
    """The checkpoints of a phase around ``formation`` (before: closed at both ends; rise:
    open at its start)."""
    lo, hi = PHASES[phase]
    if phase == "before":
        return [s for s in steps if formation + lo <= s <= formation + hi]
    return [s for s in steps if formation + lo < s <= formation + hi]


def own_rise(scores: pd.Series) -> float:
    """A seed's own steepest rise: the later checkpoint of the largest increase of its best
    induction score between consecutive checkpoints (``scores`` indexed by step); NaN for fewer
    than two checkpoints."""
    s = scores.sort_index()
    if len(s) < 2:
        return math.nan
    rise = s.diff().iloc[1:]
    return float(rise.idxmax())


def seed_formation(run, seed: int) -> tuple[float, bool]:
    """(the step a seed's phases are read around, whether it formed): its formation step, or for
    a seed that never formed its own steepest rise of the best induction score."""
    from interp_ext.measurement.windows import formation_of

    form = formation_of(run, "", seed)
    if math.isfinite(form):
        return form, True
    rows = run.metrics("induction", seeds=[seed])
    best = rows[(rows.seed == seed) & (rows.metric == "best_induction_score")]
    return own_rise(best.set_index("step").value), False


def pairs_of(rows: pd.DataFrame, seed: int) -> list[tuple[str, str]]:
    """The seed's (induction member, previous-token member) pairs, from its ``member`` rows."""
    members = rows[(rows.seed == seed) & (rows.metric == "member")]
    roles = dict(zip(members.component, members.probe))
    ind = [m for m, r in roles.items() if r == "induction"]
    prev = [m for m, r in roles.items() if r == "prev_token"]
    return [(i, p) for i in ind for p in prev]


def controls_of(rows: pd.DataFrame, seed: int) -> dict[str, str]:
    sel = rows[(rows.seed == seed) & (rows.metric == "control")]
    return dict(c.split("|") for c in sel.component)


def seed_entries(
    rows: pd.DataFrame, seed: int, formation: float, weights: str, probe: str, part: str = "S"
) -> list[dict]:
    """Per phase and entry of :data:`ENTRIES`: the seed's value, its null and their standard
    errors (the groups' errors of the checkpoints and pairs averaged, independent)."""
    pairs = pairs_of(rows, seed)
    ctrl = controls_of(rows, seed)
    sel = rows[
        (rows.seed == seed)
        & (rows.weights == weights)
        & (rows.probe == probe)
        & rows.metric.isin([f"R_{part}", f"R_{part}/se"])
    ]
    table = sel.pivot_table(index=["step", "component"], columns="metric", values="value")
    out = []
    for phase in PHASES:
        steps = phase_steps(sorted(sel.step.unique()), formation, phase)
        for label, a, b, null_a, null_b in ENTRIES:
            cells: dict[str, list[tuple[float, float]]] = {"value": [], "null": []}
            for ind, prev in pairs:
                names = {
                    "ind": ind,
                    "prev": prev,
                    "ctrl(prev)": ctrl.get(prev),
                    "ctrl(ind)": ctrl.get(ind),
                }
                for key, (x, y) in (("value", (a, b)), ("null", (null_a, null_b))):
                    if names[x] is None or names[y] is None:
                        continue
                    for step in steps:
                        at = (step, f"{names[x]}|{names[y]}")
                        if at in table.index:
                            cells[key].append(
                                (table.loc[at, f"R_{part}"], table.loc[at, f"R_{part}/se"])
                            )
            row = {"seed": seed, "phase": phase, "entry": label, "checkpoints": len(steps)}
            for key, items in cells.items():
                v = np.array([x for x, _ in items], float)
                e = np.array([s for _, s in items], float)
                row[key] = float(v.mean()) if len(v) else math.nan
                row[f"{key}_se"] = float(np.sqrt((e**2).sum()) / len(e)) if len(e) else math.nan
            out.append(row)
    return out


def sign_disagreements(per_seed: pd.DataFrame, check: pd.DataFrame) -> int:
    """Formed seeds, phases and entries where the value is beyond two standard errors of 0 and
    ``check`` (the same table at another Polyak width) has the other sign."""
    both = per_seed.merge(check, on=["seed", "phase", "entry"], suffixes=("", "_check"))
    both = both[both.formed & (both.value.abs() > 2 * both.value_se)]
    return int((np.sign(both.value) != np.sign(both.value_check)).sum())


def decide(
    per_seed: pd.DataFrame,
    check: pd.DataFrame | None = None,
    alpha: float = 0.01,
    alpha_groups: float = 0.05,
) -> dict:
    """The rule of docs/results.md 3.6 on the per-seed values (``formed`` a column of bools;
    ``check`` the same table at W = 50): ``reading`` (self-reinforcing / not self-reinforcing /
    undecided) and, per phase and entry, the tests it read: k of n formed seeds positive, the
    one-sided sign-test p for positive and for negative (with the floor), the signed-rank p of
    value minus null, the permutation p of formed against never-formed; ``disagreements`` with
    ``check``."""
    tests = []
    for (phase, entry), g in per_seed.groupby(["phase", "entry"], sort=False):
        formed = g[g.formed & g.value.notna()]
        other = g[~g.formed & g.value.notna()]
        k, n = int((formed.value > 0).sum()), len(formed)
        below = int((formed.value < 0).sum())
        paired = (formed.value - formed.null).dropna()
        p_null, floor_null = signed_rank_p(paired.to_numpy())
        p_groups, floor_groups = permutation_p(formed.value.to_numpy(), other.value.to_numpy())
        resolved = int((formed.value.abs() > 2 * formed.value_se).sum())
        tests.append(
            {
                "phase": phase,
                "entry": entry,
                "positive": k,
                "n": n,
                "p_positive": sign_test(k, n),
                "p_negative": sign_test(below, n),
                "floor": sign_test_floor(n),
                "p_above_null": p_null,
                "floor_above_null": floor_null,
                "p_formed_above_unformed": p_groups,
                "floor_formed_above_unformed": floor_groups,
                "resolved": resolved,
            }
        )
    table = pd.DataFrame(tests)
    before = table[table.phase == "before"]
    if before.empty:
        return {"reading": "undecided", "tests": table, "disagreements": 0}
    unresolved = (before.resolved <= before.n / 2).any()
    positive = (
        (before.p_positive < alpha).all()
        and (before.p_above_null < alpha).all()
        and (before.p_formed_above_unformed < alpha_groups).all()
    )
    negative = (before.p_negative < alpha).all()
    flips = sign_disagreements(per_seed, check) if check is not None else 0
    positive = positive and flips == 0
    if unresolved:
        reading = "undecided"
    elif positive:
        reading = "self-reinforcing"
    elif negative:
        reading = "not self-reinforcing"
    else:
        reading = "undecided"
    return {"reading": reading, "tests": table, "disagreements": flips}


__all__ = [
    "ENTRIES",
    "PHASES",
    "decide",
    "own_rise",
    "phase_steps",
    "seed_entries",
    "seed_formation",
]
