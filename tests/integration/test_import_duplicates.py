"""Importing checkpoints of which two consecutive ones hold the same weights: named in a
warning, recorded with the run, and left out of the step-to-step measurements: Stream 1's
drift, geometry's comparisons with the previous checkpoint, the SAE lineage and the real
update."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from interp_ext import measure
from interp_ext.importing import import_checkpoints
from tests.integration.test_import import SEQ, VOCAB, tokenizer


@pytest.fixture(scope="module")
def folder(tmp_path_factory, cache_dir):
    """Trainer-style checkpoints of a tiny GPT-2 at steps 0, 10, 20, 30 and 31, where
    checkpoint-20 is a byte-identical copy of checkpoint-10 and checkpoint-31 of checkpoint-30."""
    from transformers import GPT2Config, GPT2LMHeadModel

    out = tmp_path_factory.mktemp("hf") / "trainer"
    tok = tokenizer(cache_dir)
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=SEQ, n_embd=32, n_layer=2, n_head=2, bos_token_id=0
    )
    config.bos_token_id = config.eos_token_id = tok.eos_token_id
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    for step in (0, 10, 30):
        if step:
            with torch.no_grad():  # stand-in for training: move every weight
                for p in model.parameters():
                    p.add_(0.02 * torch.randn_like(p))
        model.save_pretrained(out / f"checkpoint-{step}")
        tok.save_pretrained(out / f"checkpoint-{step}")
    shutil.copytree(out / "checkpoint-10", out / "checkpoint-20")
    shutil.copytree(out / "checkpoint-30", out / "checkpoint-31")
    return out


@pytest.fixture(scope="module")
def imported(folder, tmp_path_factory):
    from interp_ext.data import synthetic_corpus

    text = tmp_path_factory.mktemp("probe") / "probe.txt"
    text.write_text(synthetic_corpus(30_000, seed=1).train_text)
    logger = logging.getLogger("interp_ext")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        run = import_checkpoints(
            folder,
            tmp_path_factory.mktemp("imp") / "run",
            probe_text=text,
            probe_batches=4,
            probe_batch_size=4,
        )
    finally:
        logger.removeHandler(handler)
    return run, [r.getMessage() for r in records]


def test_the_copy_is_named_in_a_warning_and_recorded(imported):
    run, warnings = imported
    named = [w for w in warnings if "hold the same weights" in w]
    assert len(named) == 1
    assert named[0].startswith("steps [20, 31] of seed 0 hold the same weights as the checkpoint")
    assert run.steps == [0, 10, 20, 30, 31]  # still imported: other measurements see every step
    assert run.duplicate_steps(0) == [20, 31] and run.duplicate_steps(1) == []
    index = json.loads((run.path / "import.json").read_text())
    assert index["duplicates"] == {"0": [20, 31]}


def test_stream1_and_previous_checkpoint_comparisons_leave_the_copy_out(imported):
    from interp_ext.families import GeometrySettings

    run, _ = imported
    measure(run, GeometrySettings(k=2, lag=1, drift_delta=10), progress=False)
    drift = run.metrics("stream1")
    assert sorted(drift[drift.metric == "drift_rate"].step.unique()) == [10, 30]
    geo = run.metrics("geometry")
    assert sorted(geo[geo.metric == "overlap_prev"].step.unique()) == [10, 30]
    assert sorted(geo[geo.metric == "effective_rank"].step.unique()) == [0, 10, 20, 30, 31]


def test_the_sae_lineage_skips_the_copy_and_matches_the_last_distinct_checkpoint(imported):
    import pandas as pd

    from interp_ext.families import SAETrackingSettings

    run, _ = imported
    settings = SAETrackingSettings(hook="blocks.0.hook_resid_post", width=16, k=2, n_tokens=1024)
    rows = measure(run, settings, steps=[0, 10, 20, 30], progress=False)
    persisted = rows[(rows.metric == "n_persisted") & (rows.seed == 0)]
    assert sorted(persisted.step) == [10, 30]  # none at the copy
    assert set(rows[(rows.metric == "l0") & (rows.seed == 0)].step) == {0, 10, 20, 30}
    lineage = pd.read_parquet(run.path / "saes" / settings.id / "seed=0" / "lineage.parquet")
    assert sorted(set(zip(lineage.step_from, lineage.step_to))) == [(0, 10), (10, 30)]


def test_the_real_update_is_refused_where_the_next_checkpoint_is_a_copy(imported):
    from interp_ext.api import real_update
    from interp_ext.run import RunError

    run, _ = imported
    with pytest.raises(RunError, match="step 31 .* same weights as step 30"):
        real_update(run, 0, 30)


def test_a_native_run_has_no_duplicates(micro_run):
    assert micro_run.duplicate_steps(0) == []
