"""The member matrix's decision rule (docs/results.md 3.6) on rows whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from interp_ext.families.members.decision import decide, own_rise, phase_steps, seed_entries

STEPS = list(range(250, 4001, 250))


def member_rows(seed, cross, null, se=0.01, weights="polyak200"):
    """One seed's rows: circuit L1H3 (induction) + L0H1 (prev_token), controls L1H0 and L0H2,
    R_S of every pair at every checkpoint: ``cross`` on the two cross entries, ``null`` where a
    control moves, 0 elsewhere."""
    rows = [
        {"seed": seed, "step": -1, "metric": "member", "component": "L1H3", "probe": "induction"},
        {"seed": seed, "step": -1, "metric": "member", "component": "L0H1", "probe": "prev_token"},
        {"seed": seed, "step": -1, "metric": "control", "component": "L1H3|L1H0", "probe": ""},
        {"seed": seed, "step": -1, "metric": "control", "component": "L0H1|L0H2", "probe": ""},
    ]
    rows = [{**r, "value": 1.0, "weights": ""} for r in rows]
    sets = ["L1H3", "L0H1", "L1H0", "L0H2"]
    for step in STEPS:
        for a in sets:
            for b in sets:
                pair = f"{a}|{b}"
                value = cross if pair in ("L1H3|L0H1", "L0H1|L1H3") else 0.0
                value = null if pair in ("L1H3|L0H2", "L0H1|L1H0") else value
                for metric, v in (("R_S", value), ("R_S/se", se)):
                    rows.append(
                        {
                            "seed": seed,
                            "step": step,
                            "metric": metric,
                            "component": pair,
                            "value": v,
                            "probe": "32",
                            "weights": weights,
                        }
                    )
    return rows


def per_seed_table(values, formed):
    rows = []
    for seed, (cross, null) in enumerate(values):
        rows += member_rows(seed, cross, null)
    frame = pd.DataFrame(rows)
    out = []
    for seed in range(len(values)):
        entries = seed_entries(frame, seed, 2375.0, "polyak200", "32")
        out += [{**e, "formed": formed[seed]} for e in entries]
    return pd.DataFrame(out)


def test_phases_and_own_rise():
    assert phase_steps(STEPS, 2375, "before") == [1750, 2000]
    assert phase_steps(STEPS, 2375, "rise") == [2250, 2500]
    scores = pd.Series([0.02, 0.03, 0.5, 0.9], index=[1000, 1250, 1500, 1750])
    assert own_rise(scores) == 1500


def test_seed_entries_average_the_phase_and_carry_the_null():
    table = per_seed_table([(0.3, 0.05)], [True])
    before = table[(table.phase == "before")].set_index("entry")
    assert before.loc["R[ind, prev]", "value"] == pytest.approx(0.3)
    assert before.loc["R[ind, prev]", "null"] == pytest.approx(0.05)
    assert before.loc["R[prev, ind]", "null"] == pytest.approx(0.05)
    assert before.loc["R[ind, prev]", "value_se"] == pytest.approx(0.01 / np.sqrt(2))
    assert (before.checkpoints == 2).all()


def test_the_rule_reads_each_outcome():
    formed = [True] * 9 + [False] * 3
    rng = np.random.default_rng(0)
    up = [(0.3 + 0.01 * rng.random(), 0.01) for _ in range(9)] + [(0.0, 0.0)] * 3
    result = decide(per_seed_table(up, formed))
    assert result["reading"] == "self-reinforcing"
    tests = result["tests"].set_index(["phase", "entry"])
    assert tests.loc[("before", "R[ind, prev]"), "p_positive"] == pytest.approx(1 / 512)
    assert tests.loc[("before", "R[ind, prev]"), "floor"] == pytest.approx(1 / 512)
    down = [(-0.3, 0.0)] * 9 + [(0.0, 0.0)] * 3
    assert decide(per_seed_table(down, formed))["reading"] == "not self-reinforcing"
    # values within their errors of 0: a null that cannot come out either way
    flat = [(0.001, 0.0)] * 9 + [(0.0, 0.0)] * 3
    assert decide(per_seed_table(flat, formed))["reading"] == "undecided"
    # positive but not above the control's null: undecided
    same = [(0.3, 0.3 + 0.001 * i) for i in range(9)] + [(0.0, 0.0)] * 3
    assert decide(per_seed_table(same, formed))["reading"] == "undecided"
    # too few formed seeds: the sign test's floor is above the rule's level
    few = decide(per_seed_table(up[:4] + up[9:], [True] * 4 + [False] * 3))
    assert few["reading"] == "undecided"
    # a sign that flips at the other Polyak width
    check = per_seed_table(down, formed)
    assert decide(per_seed_table(up, formed), check)["reading"] == "undecided"


def test_the_report_draws_the_role_matrix_and_reads_the_rule(monkeypatch, tmp_path):
    from interp_ext.families.members import report
    from interp_ext.report.draw import Page

    rows = []
    for seed in range(12):
        cross = 0.3 if seed < 9 else 0.0
        rows += member_rows(seed, cross, 0.01)
    frame = pd.DataFrame(rows).assign(family="members")
    forms = {s: (2375.0, s < 9) for s in range(12)}
    monkeypatch.setattr(report, "seed_formation", lambda run, seed: forms[seed])
    lines = report.section(Page(None, frame, tmp_path, {}))
    assert "**Reading by the rule of results 3.6: self-reinforcing.**" in lines
    assert (tmp_path / "member_matrix.png").exists() and (tmp_path / "member_matrix.html").exists()
    z = report.role_matrix(frame, 0, [1750, 2000])
    assert z[0, 1] == pytest.approx(0.3) and z[1, 0] == pytest.approx(0.3)
    assert z[0, 3] == pytest.approx(0.01) and z[2, 2] == 0.0


def test_the_report_draws_the_saddle_signature_by_role(monkeypatch, tmp_path):
    """rho of the circuit and of each member against steps from formation, one line per seed,
    and the caption counts the values a log scale cannot draw."""
    from interp_ext.families.members import report

    rows = []
    for seed in range(3):
        rows += member_rows(seed, 0.0, 0.0)
        for step in (1750, 2000, 2100, 2250):
            for comp, value in (("C", 0.2 + step / 1e4), ("L1H3", 0.04), ("L0H1", 0.3)):
                rows.append(
                    {
                        "seed": seed,
                        "step": step,
                        "metric": "rho",
                        "component": comp,
                        "probe": "",
                        "weights": "raw",
                        "value": value,
                    }
                )
    rows.append(
        {
            "seed": 0,
            "step": 2300,
            "metric": "rho",
            "component": "C",
            "probe": "",
            "weights": "raw",
            "value": -0.1,
        }
    )
    frame = pd.DataFrame(rows).assign(family="members")
    forms = {0: (2375.0, True), 1: (2375.0, True), 2: (2000.0, False)}
    monkeypatch.setattr(report, "seed_formation", lambda run, seed: forms[seed])
    lines = report.saddle_lines(frame, tmp_path, forms)
    assert (tmp_path / "members_saddle.png").exists()
    assert (tmp_path / "members_saddle.html").exists()
    assert any("the 1 of 37 values at or below 0" in line for line in lines)
