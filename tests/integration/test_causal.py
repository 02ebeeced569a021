"""The causal test's units: arms parsed, branches made, resumed and read; paired tests by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from scipy import stats

from interp_ext.branch import BranchError
from interp_ext.causal import (
    Unit,
    all_tests,
    arm_interventions,
    paired_tests,
    parse_arm,
    run_unit,
    unit_row,
)
from interp_ext.run.checkpoints import load_checkpoint
from tests.conftest import micro_config

ROLES = {"prev": ["L0H1"], "ind": ["L1H0"], "ctrl": ["L0H0"], "ictrl": []}


@pytest.fixture(scope="module")
def parent(tmp_path_factory, cache_dir):
    from interp_ext.training import train

    cfg = micro_config(steps=8, checkpoint_every=4, n_seeds=1)
    return train(
        cfg, tmp_path_factory.mktemp("causal") / "run", progress=False, cache_dir=cache_dir
    )


def unit(arm: str) -> Unit:
    iv, targets = arm_interventions(arm, ROLES)
    return Unit(0, 4, arm, 4, 8.0, iv, targets, ("L0H1",))


def test_arms_are_parsed_and_bad_ones_named():
    assert parse_arm("prev*0.25") == ("scale", "prev", 0.25)
    assert parse_arm("ablate:ctrl") == ("ablate", "ctrl", "mean")
    assert parse_arm("none") == ("none", "", 1.0)
    assert parse_arm("ictrl*0") == ("scale", "ictrl", 0.0)
    assert parse_arm("prevlayer*0") == ("scale", "prevlayer", 0.0)
    assert parse_arm("proj:prev>ind") == ("project", "prev", ("ind", "signal"))
    assert parse_arm("projrand:prev>ind") == ("project", "prev", ("ind", "random"))
    iv, targets = arm_interventions("projrand:prev>ind", ROLES)
    assert iv.project_out == {"L0H1": "L1H0"} and iv.project_control == "random"
    assert targets == ("L0H1",)
    for bad in ("prev*x", "prev*-1", "partner*0", "ablate:all", "freeze", "proj:prev", "proj:a>b"):
        with pytest.raises(BranchError, match=bad.replace("*", r"\*")):
            parse_arm(bad)
    iv, targets = arm_interventions("ind*0", ROLES)
    assert iv.lr_scale == {"L1H0": 0.0} and targets == ("L1H0",)
    iv, _ = arm_interventions("ablate:prev", ROLES)
    assert iv.ablate == {"L0H1": "mean"}
    with pytest.raises(BranchError, match="no ind heads"):
        arm_interventions("ind*0", {**ROLES, "ind": []})
    with pytest.raises(BranchError, match="no ictrl heads"):
        arm_interventions("ictrl*0", ROLES)


def test_a_unit_branches_freezes_only_its_target_and_resumes(parent, tmp_path):
    frozen = run_unit(parent, unit("prev*0"), tmp_path, 4, 1, progress=False)
    assert frozen.steps_for(0) == [4, 5, 6, 7, 8]
    start = load_checkpoint(frozen.layout.checkpoint(0, 4))["params"]
    end = load_checkpoint(frozen.layout.checkpoint(0, 8))["params"]
    q0, q1 = end["blocks.0.attn.W_Q"], start["blocks.0.attn.W_Q"]
    assert torch.equal(q0[1], q1[1])  # L0H1 frozen
    assert not torch.equal(q0[0], q1[0])  # L0H0 moved
    plain = run_unit(parent, unit("none"), tmp_path, 4, 1, progress=False)
    theirs = load_checkpoint(parent.layout.checkpoint(0, 8))["params"]
    mine = load_checkpoint(plain.layout.checkpoint(0, 8))["params"]
    assert all(torch.equal(mine[n], t) for n, t in theirs.items())
    # a unit cut short continues where it stopped and ends where the whole one ended
    cut = tmp_path / "cut"
    run_unit(parent, unit("prev*0"), cut, 4, 1, progress=False)
    last = cut / unit("prev*0").name / "checkpoints" / "seed=0"
    for step in (7, 8):
        (last / f"step={step}.safetensors").unlink()
    again = run_unit(parent, unit("prev*0"), cut, 4, 1, progress=False)
    redone = load_checkpoint(again.layout.checkpoint(0, 8))["params"]
    assert all(torch.equal(redone[n], t) for n, t in end.items())
    row = unit_row(again, unit("prev*0"), 4)
    assert row["arm"] == "prev*0" and row["targets"] == "L0H1" and row["start"] == 4
    if not row["formed"]:
        assert row["time"] == 4  # censored at the branch's end
    assert all(
        math.isfinite(row[k])
        for k in (
            "best_induction_end",
            "prev_token_start",
            "prev_token_end",
            "other_prev_token_start",
            "other_prev_token_end",
        )
    )


def test_the_tables_hold_every_finished_unit_made_alike(parent, tmp_path, monkeypatch, caplog):
    """Arms added by a later call join the earlier ones in arms.csv; a unit made with another
    checkpoint spacing is named and left out, never read as one of them."""
    import interp_ext.causal as causal

    monkeypatch.setattr(
        causal, "plan", lambda run, arms, leads, seeds=None: [unit(a) for a in arms]
    )
    first = causal.run_experiment(parent, tmp_path, ["none"], [4], 4, 1, progress=False)
    assert list(first.arm) == ["none"]
    run_unit(parent, unit("ctrl*0"), tmp_path, 4, 2, progress=False)  # another spacing
    with caplog.at_level("WARNING", logger="interp_ext"):
        both = causal.run_experiment(parent, tmp_path, ["prev*0"], [4], 4, 1, progress=False)
    assert sorted(both.arm) == ["none", "prev*0"]
    assert "arm=ctrl*0: not made with 4 steps, a checkpoint every 1" in caplog.text
    saved = pd.read_csv(tmp_path / "arms.csv")
    assert sorted(saved.arm) == ["none", "prev*0"]
    assert first.iloc[0].to_dict() == both[both.arm == "none"].iloc[0].to_dict()


def test_paired_tests_count_orders_as_by_hand():
    rows = []
    # seeds 0-4: none forms at 100; the arm later on 0-2, censored (1000) on 3, earlier on 4;
    # seed 5: both censored (unordered)
    for seed, (t, f) in enumerate([(300, 1), (200, 1), (150, 1), (1000, 0), (50, 1), (1000, 0)]):
        gain = {"prev_token_start": 0.1, "prev_token_end": 0.2 if seed < 4 else 0.5}
        rows.append(
            {"seed": seed, "lead": 500, "arm": "prev*0", "time": t, "formed": bool(f), **gain}
        )
        ref = (1000, False) if seed == 5 else (100, True)
        rows.append(
            {
                "seed": seed,
                "lead": 500,
                "arm": "none",
                "time": ref[0],
                "formed": ref[1],
                "prev_token_start": 0.1,
                "prev_token_end": 0.4,
            }
        )
    out = paired_tests(pd.DataFrame(rows)).iloc[0]
    assert (out.later, out.earlier, out.ordered, out.seeds) == (4, 1, 5, 6)
    assert out.p_later == pytest.approx(stats.binomtest(4, 5, 0.5, alternative="greater").pvalue)
    assert out.floor == pytest.approx(1 / 32) and out.floor_design == pytest.approx(1 / 64)
    # magnitudes: seed 5 (both censored) drops out, seed 3's censored 1000 enters at its bound
    wilcoxon = stats.wilcoxon([200, 100, 50, 900, -50], alternative="greater", method="exact")
    assert out.p_later_signed_rank == pytest.approx(wilcoxon.pvalue)
    assert out.km_median_reference == "100" and out.km_median == "200"
    # the partner gained 0.1 against 0.3 on seeds 0-3, 0.4 against 0.3 on 4-5
    assert (out.prev_gain_lower, out.prev_gain_n) == (4, 6)
    assert out.p_prev_gain_lower == pytest.approx(
        stats.binomtest(4, 6, alternative="greater").pvalue
    )


def test_each_arm_is_also_tested_against_its_matched_control():
    rows = []
    for seed in range(4):
        for arm, t in (("none", 600), ("ablate:prev", 700), ("ablate:ctrl", 500)):
            rows.append(
                {
                    "seed": seed,
                    "lead": 500,
                    "arm": arm,
                    "time": t + seed,
                    "formed": True,
                    "prev_token_start": 0.0,
                    "prev_token_end": 0.1,
                }
            )
    out = all_tests(pd.DataFrame(rows)).set_index(["arm", "against"])
    assert out.loc[("ablate:prev", "none"), "later"] == 4
    assert out.loc[("ablate:ctrl", "none"), "earlier"] == 4
    assert out.loc[("ablate:prev", "ablate:ctrl"), "later"] == 4
    assert ("ablate:ctrl", "ablate:prev") not in out.index
