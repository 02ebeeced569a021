"""The tiny preset on WikiText-2: induction heads form, detection and ablation hold (minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from interp_ext import get_preset, measure, override, train
from interp_ext.families import InductionSettings

WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw-v1"


@pytest.mark.slow
def test_tiny_preset_forms_induction_heads(tmp_path):
    data_dir = str(WIKITEXT) if WIKITEXT.exists() else None  # else the synthetic corpus
    cfg = override(get_preset("tiny"), data__data_dir=data_dir)
    run = train(cfg, tmp_path / "tiny", progress=False)
    rows = measure(run, InductionSettings(), progress=False)
    for seed in run.seeds:
        best = rows[(rows.seed == seed) & (rows.metric == "best_induction_score")].sort_values(
            "step"
        )
        assert best.value.iloc[0] < 0.1, best
        assert best.value.iloc[-1] > 0.5, best
        heads = rows[(rows.seed == seed) & (rows.metric == "detected_induction_head")]
        assert len(heads) >= 1
        abl = (
            rows[(rows.seed == seed) & (rows.metric == "ablation_loss_increase")]
            .set_index("component")
            .value
        )
        # with 8 heads in all, as many random heads as a 3-head induction set covers most of layer 0,
        # where the redundant previous-token heads live: the control still costs far less
        assert abl["detected"] > 0.5 and abl["detected"] > 2 * abs(abl["random"]), abl


@pytest.mark.slow
def test_the_work_ledger_closes_over_a_formation_interval_at_real_size(tmp_path):
    """On a formed seed of the tiny preset, at every step over the checkpoint interval containing
    its formation, the summed work on E_C equals E_C(t1) - E_C(t0) within 1%, and the summed
    quadrature remainder is under 1% of the summed abs(work). About 10 minutes on 2 cores."""
    from interp_ext.families import CircuitSettings
    from interp_ext.families.work import WorkSettings

    data_dir = str(WIKITEXT) if WIKITEXT.exists() else None
    cfg = override(get_preset("tiny"), data__data_dir=data_dir, train__n_seeds=1, train__steps=3000)
    run = train(cfg, tmp_path / "tiny", progress=False)
    ind = measure(run, InductionSettings(), progress=False)
    form = ind[(ind.seed == 0) & (ind.metric == "formation_step")].value.item()
    assert 0 < form < 3000, "seed 0 of the tiny preset forms within 3,000 steps"
    measure(run, CircuitSettings(), progress=False)
    t0 = max(s for s in run.steps if s <= form)
    t1 = min(s for s in run.steps if s > t0)
    rows = measure(run, WorkSettings(window=f"{t0}:{t1}", every=1, detail_every=50), progress=False)
    per = rows[(rows.seed == 0) & (rows.step == -1)].set_index(["metric", "component"]).value
    exact = per[("dE/exact", "C@window")]
    work = per[("work/sum", "C@window")]
    remainder = per[("work_remainder/sum", "C@window")]
    scale = per[("abs_work/sum", "C@window")]
    assert abs(work - exact) <= 0.01 * abs(exact), (work, exact)
    assert abs(remainder) <= 0.01 * scale, (remainder, scale)
