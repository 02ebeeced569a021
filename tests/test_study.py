"""``interp-ext study``: the study plan end to end on a micro preset, and which seeds the partial
families run on."""

from __future__ import annotations

import logging
import math

import pytest

from interp_ext import config
from interp_ext.pipeline import first_formed_seeds, study
from tests.conftest import micro_config


def micro_study_preset():
    cfg = micro_config(steps=8, checkpoint_every=4)
    cfg.measure.study_seeds = 2
    cfg.measure.study_plan = {
        "induction": {},
        "circuit": {},
        "work": {"every": 2, "detail_every": 4, "drift_batches": 2, "controls": 1},
        "work:lr/2": {"scale": 2, "until": "rise", "drift_batches": 2},
    }
    cfg.measure.study_family_seeds = {"work:lr/2": 1}
    return cfg


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(config.PRESETS, "micro", micro_study_preset)
        out = tmp_path_factory.mktemp("study") / "run"
        return study(out, preset="micro", progress=False)


def test_study_trains_its_seeds_and_runs_the_plan(studied):
    run, report, timings = studied
    assert run.seeds == [0, 1] and run.config.train.n_seeds == 2
    assert list(timings) == [
        "train",
        "induction",
        "circuit",
        "work",
        "work:lr/2",
        "report",
    ]
    assert all(t >= 0 for t in timings.values())
    assert set(run.measurements().family) >= {"induction", "circuit", "work"}
    assert report.exists()


def test_seeds_that_never_formed_are_named_not_given_a_formation_step(studied):
    """A micro model does not form induction heads in 8 steps: every seed says so, the exact
    ledger has no window for it, the replays at lr / 2 (formed seeds only) are skipped, and the
    report names them."""
    run, report, _ = studied
    ind = run.metrics("induction")
    per_seed = ind[(ind.seed >= 0) & (ind.step == -1)]
    assert per_seed[per_seed.metric == "formed"].value.tolist() == [0.0, 0.0]
    assert per_seed[per_seed.metric == "formation_step"].value.isna().all()
    summary = ind[ind.seed < 0].set_index("metric").value
    assert summary["formed/seeds"] == 0 and summary["formed/seed_n"] == 2
    assert summary["formation_step/seed_n"] == 0
    # work:lr/2 runs on formed seeds only: skipped, so the plain work is the one work measured
    assert (run.measurements().family == "work").sum() == 1
    work = run.metrics("work")  # no seed formed: no window, and no null window without formed seeds
    assert work[work.metric == "measured"].value.tolist() == [0.0, 0.0]
    text = report.read_text()
    assert "never passed the detection threshold" in text and "[0, 1]" in text


def test_partial_families_take_the_first_formed_seeds(studied, monkeypatch, caplog):
    run, _, _ = studied
    from interp_ext.measurement import windows

    monkeypatch.setattr(
        windows, "formation_of", lambda run, formation, seed: 4.0 if seed == 1 else math.nan
    )
    assert first_formed_seeds(run, 1, "work:lr/2") == [1]
    with caplog.at_level(logging.WARNING, logger="interp_ext"):
        assert first_formed_seeds(run, 2, "work:lr/2") == [1]
    assert "only [1] of [0, 1] did" in caplog.text


def test_a_plan_saved_before_a_family_retired_still_runs(caplog):
    """A study's saved plan that names a retired family (ledger, counterfactual) resumes: the
    entry is skipped with a warning that says why, the rest is built as before."""
    from interp_ext.config import MeasureConfig
    from interp_ext.pipeline import plan_settings

    plan = MeasureConfig(study_plan={"induction": {}, "ledger": {"every": 2}, "counterfactual": {}})
    with caplog.at_level(logging.WARNING, logger="interp_ext"):
        out = plan_settings(plan, "study_plan")
    assert list(out) == ["induction"]
    assert "the ledger family is retired" in caplog.text
    assert "the counterfactual family is retired" in caplog.text
