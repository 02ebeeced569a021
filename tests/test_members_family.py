"""The ``members`` family on a micro run: the signal and noise split of every set's energy at two
probe batch sizes, the member matrix with its standard errors, and bad settings named."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from interp_ext import measure
from interp_ext.families.members import MembersSettings
from interp_ext.measurement.runner import MeasureError

CIRCUIT = "L1H0,L0H1"
SMALL = dict(
    circuit=CIRCUIT,
    probe_sizes="2,4",
    sequences=16,
    saddle_sequences=8,
    fresh=2,
    groups=2,
    weights="raw,polyak2",
    modes=2,
)


@pytest.fixture(scope="module")
def members(micro_run):
    return measure(micro_run, MembersSettings(**SMALL), seeds=[0], progress=False)


def test_every_set_splits_into_signal_and_noise_at_each_probe_size(members, micro_run):
    rows = members[(members.seed == 0) & (members.step >= 0) & (members.weights == "raw")]
    assert sorted(rows.step.unique()) == [s for s in micro_run.steps_for(0) if s > 0]
    assert set(rows.probe) == {"2", "4", ""}  # "": the saddle signature, on all the sequences
    levels = rows[rows.metric.isin(["S", "N", "E"])].pivot_table(
        index=["step", "probe", "component"], columns="metric", values="value"
    )
    assert set(levels.index.get_level_values("component")) >= {"L1H0", "L0H1", "C", "rest"}
    np.testing.assert_allclose(levels.S + levels.N, levels.E, rtol=1e-9, atol=1e-15)
    # C is the union of its members
    for _key, g in levels.groupby(level=["step", "probe"]):
        g = g.droplevel(["step", "probe"])
        assert g.loc["C", "E"] == pytest.approx(g.loc["L1H0", "E"] + g.loc["L0H1", "E"], rel=1e-9)


def test_the_member_matrix_has_every_pair_with_its_error(members):
    rows = members[
        (members.seed == 0)
        & (members.step >= 0)
        & (members.probe == "4")
        & (members.weights == "raw")
    ]
    controls = members[(members.seed == 0) & (members.metric == "control")].component.tolist()
    assert [c.split("|")[0] for c in controls] == ["L1H0", "L0H1"]  # one per member head
    sets = ["L1H0", "L0H1", *(c.split("|")[1] for c in controls), "C", "CTRL"]
    pairs = set(rows[rows.metric == "R_S"].component)
    assert pairs == {f"{a}|{b}" for a in sets for b in sets}
    se = rows[rows.metric == "R_S/se"]
    assert len(se) == len(pairs) * rows.step.nunique() and (se.value >= 0).all()
    step = rows.step.max()
    at = rows[rows.step == step].set_index(["metric", "component"]).value
    for x in ("S", "N", "E"):  # the circuit's row is its members' rows summed
        assert at[(f"R_{x}", "C|L0H1")] == pytest.approx(
            at[(f"R_{x}", "L1H0|L0H1")] + at[(f"R_{x}", "L0H1|L0H1")], rel=1e-9, abs=1e-15
        )
        assert (
            at[(f"R_{x}", "L1H0|L0H1")]
            == pytest.approx(
                at[("R_S", "L1H0|L0H1")] + at[("R_N", "L1H0|L0H1")], rel=1e-9, abs=1e-15
            )
            if x == "E"
            else True
        )


def test_the_family_reads_the_same_matrix_as_the_model_level_function(members, micro_run):
    """One entry recomputed through interp_ext.stream3.reinforcement.member_matrix from the checkpoint's
    own state and the family's documented batches."""
    import torch

    from interp_ext.adamw import denominators
    from interp_ext.data import FRESH_DRAWS, PROBE_DRAWS
    from interp_ext.families.members import probe_sequences
    from interp_ext.stream3.reinforcement import member_matrix

    step = max(micro_run.steps_for(0))
    ckpt = micro_run.checkpoint(0, step)
    train = micro_run.config.train
    d = denominators(ckpt["exp_avg_sq"], float(ckpt["adam_step"]), train.betas[1])
    seqs = probe_sequences(micro_run, 0, step, 16, PROBE_DRAWS)
    fresh = torch.stack([micro_run.batch(0, step, draw=FRESH_DRAWS + j) for j in range(2)])
    frame = member_matrix(
        micro_run.model(0, step),
        seqs.reshape(-1, 4, seqs.shape[-1]),
        fresh,
        {"L1H0": ["L1H0"], "L0H1": ["L0H1"]},
        d,
        train.weight_decay,
        groups=2,
    )
    want = frame[(frame.part == "N") & (frame.A == "L0H1") & (frame.B == "L1H0")].value.item()
    rows = members[(members.step == step) & (members.probe == "4") & (members.weights == "raw")]
    got = rows[(rows.metric == "R_N") & (rows.component == "L0H1|L1H0")].value.item()
    assert got == pytest.approx(want, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(probe_sizes="0"), "probe_sizes"),
        (dict(probe_sizes="8,x"), "probe_sizes"),
        (dict(sequences=10), "sequences"),
        (dict(fresh=1), "fresh"),
        (dict(weights="raw,slow"), "weights"),
        (dict(weights="polyak0"), "weights"),
        (dict(modes=-1), "modes"),
        (dict(saddle_sequences=20), "saddle_sequences"),
    ],
)
def test_bad_settings_are_named(change, name):
    with pytest.raises(MeasureError, match=name):
        MembersSettings(**{**SMALL, **change})


def test_a_bad_probe_size_on_the_command_line_is_one_line(micro_run):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "interp_ext.cli",
            "measure",
            "members",
            str(micro_run.path),
            "--probe-sizes",
            "8,x",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "probe" in (out.stderr + out.stdout)


def test_the_slow_weights_and_the_saddle_signature(members, micro_run):
    """The same rows at the Polyak-averaged weights (other values, same sets), and at each point
    rho = flow_curvature / flow_rate for the circuit and each member, the circuit's soft modes in
    ascending order with overlaps in [0, 1]."""
    rows = members[(members.seed == 0) & (members.step >= 0)]
    assert set(rows.weights) == {"raw", "polyak2"}
    e = rows[(rows.metric == "E") & (rows.component == "C") & (rows.probe == "4")]
    by = e.pivot_table(index="step", columns="weights", values="value")
    assert (by.raw != by.polyak2).all()
    for (_step, _weights), g in rows[rows.probe == ""].groupby(["step", "weights"]):
        at = g.set_index(["metric", "component"]).value
        for a in ("C", "L1H0", "L0H1"):
            assert at[("rho", a)] == pytest.approx(at[("flow_curvature", a)] / at[("flow_rate", a)])
        eig = [at[("soft_eigenvalue", f"C#{i}")] for i in range(2)]
        assert eig == sorted(eig)
        overlaps = [at[("soft_overlap", f"C#{i}")] for i in range(2)]
        assert all(0 <= o <= 1 + 1e-9 for o in overlaps)
        assert at[("saddle_hvps", "C")] > 0


def test_near_phases_keeps_the_decisions_checkpoints(micro_run, monkeypatch):
    """``near="phases"`` measures only the checkpoints in [f - 750, f + 250] around each seed's
    formation (or own rise), the ones the decision reads."""
    from interp_ext.families import members as fam
    from interp_ext.families.members import decision

    settings = MembersSettings(**{**SMALL, "weights": "raw", "near": "phases"})
    steps = list(range(0, 4001, 250))
    monkeypatch.setattr(decision, "seed_formation", lambda run, seed: (2375.0, True))
    got = fam.Members().seed_steps(micro_run, settings, 0, steps)
    assert got == [1750, 2000, 2250, 2500]
    before = MembersSettings(**{**SMALL, "weights": "raw", "near": "before"})
    assert fam.Members().seed_steps(micro_run, before, 0, steps) == [1750, 2000]
    monkeypatch.setattr(decision, "seed_formation", lambda run, seed: (float("nan"), False))
    assert fam.Members().seed_steps(micro_run, settings, 0, steps) == []
    all_steps = fam.Members().seed_steps(micro_run, MembersSettings(**SMALL), 0, steps)
    assert all_steps == steps[1:]
    # the selection is no part of the key: 'all' later extends the same rows
    assert settings.id == MembersSettings(**{**SMALL, "weights": "raw"}).id


def test_levels_alone_equal_the_matrix_runs_levels(members, micro_run):
    """``matrix=False`` gives the same S, N, E of every set (the unions too) as the full
    measurement, from the same probe sequences, and no rates."""
    settings = MembersSettings(**{**SMALL, "weights": "raw", "matrix": False, "modes": 0})
    alone = measure(micro_run, settings, seeds=[0], steps=[4], progress=False)
    alone = alone[(alone.seed == 0) & (alone.step == 4)]
    assert not alone.metric.str.startswith("R_").any()
    full = members[(members.seed == 0) & (members.step == 4) & (members.weights == "raw")]
    key = ["metric", "component", "probe"]
    levels = full[full.metric.isin(["S", "N", "E", "S/se"])].set_index(key).value
    got = alone[alone.metric.isin(["S", "N", "E", "S/se"])].set_index(key).value
    assert set(got.index) == set(levels.index)
    np.testing.assert_allclose(got.loc[levels.index], levels, rtol=1e-9, atol=1e-15)


def test_replayed_steps_between_checkpoints_equal_a_checkpoint_there(tmp_path, cache_dir):
    """The window's rows at a replayed step are those a run checkpointing that step measures
    there (the trainer is bit for bit, so both runs hold the same weights and AdamW state)."""
    import pandas as pd

    from interp_ext.training import train
    from tests.conftest import micro_config

    sparse = train(micro_config(), tmp_path / "every2", progress=False, cache_dir=cache_dir)
    dense = train(
        micro_config(checkpoint_every=1), tmp_path / "every1", progress=False, cache_dir=cache_dir
    )
    settings = MembersSettings(**{**SMALL, "weights": "raw"})
    between = measure(
        sparse,
        MembersSettings(**{**SMALL, "weights": "raw", "window": "2:6", "window_every": 1}),
        seeds=[0],
        steps=[2, 6],
        progress=False,
    )
    at = measure(dense, settings, seeds=[0], steps=[3, 5], progress=False)
    key = ["step", "metric", "component", "probe"]
    for step in (3, 5):
        got = between[(between.seed == 0) & (between.step == step)].sort_values(key)
        want = at[(at.seed == 0) & (at.step == step)].sort_values(key)
        assert len(got) == len(want) > 0
        pd.testing.assert_frame_equal(
            got[key].reset_index(drop=True), want[key].reset_index(drop=True)
        )
        np.testing.assert_allclose(
            got.value.to_numpy(), want.value.to_numpy(), rtol=1e-9, atol=1e-12
        )
    assert not len(between[between.step == 4])  # a checkpoint: measured as one, not replayed
