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
