"""Measurements on a finished micro run through the one runner: rows land in the metrics store, keyed by settings."""

from __future__ import annotations

import pytest

from circuits import Circuit
from interp_ext import measure
from interp_ext.families import (
    AutocatalysisSettings,
    BetaSettings,
    GeometrySettings,
    InductionSettings,
    SAETrackingSettings,
    Stream2Settings,
    induction_circuit,
)
from interp_ext.measurement.runner import MeasureError


def test_geometry_rows_idempotent_and_resumable(micro_run):
    run = micro_run
    first = measure(run, GeometrySettings(k=2, lag=2), progress=False)
    assert set(first.metric) >= {
        "effective_rank",
        "overlap_prev",
        "subspace_similarity",
        "grad_norm",
        "function_space_alignment_same",
    }
    assert first[first.metric == "effective_rank"].shape[0] == len(run.seeds) * len(run.steps)
    again = measure(run, GeometrySettings(k=2, lag=2), progress=False)
    assert len(again) == len(first) and sum(again.attrs["measured"].values()) == 0
    assert len(run.metrics("stream1")) > 0
    with pytest.raises(MeasureError, match="available steps"):
        measure(run, GeometrySettings(k=2, lag=2), steps=[3], progress=False)
    companions = {
        "effective_rank_centered",
        "topk_variance_centered",
        "grad_snr",
        "overlap_floor",
        "angle_floor",
    }
    assert companions <= set(first.metric) and "drift_floor" in set(run.metrics("stream1").metric)
    settings = GeometrySettings(k=2, lag=2)
    grams = run.path / "grams" / settings.id / "seed=0" / "step=4.safetensors"
    assert grams.exists()
    s2 = measure(run, Stream2Settings(null_models=2, shuffles=1), progress=False)
    assert {
        "cross_seed_alignment",
        "cross_seed_alignment_perm",
        "cka",
        "cka_head",
        "cka_heads",
        "cka_null_shuffled",
        "cka_null_untrained",
    } <= set(s2.metric)
    assert {"ln", "attn_qkv", "blocks.1.mlp_in"} <= set(s2.component)
    cka = s2[s2.metric == "cka"].value
    assert (
        (cka > -1e-9) & (cka <= 1 + 1e-9)
    ).all()  # CKA of positive semi-definite Grams lies in [0, 1]
    assert set(s2.settings) == {
        Stream2Settings(null_models=2, shuffles=1, geometry=settings.id).id
    }  # read the geometry Grams
    out = measure(run, BetaSettings(), progress=False)
    assert {"start", "end"} <= set(out[out.family == "transition"].metric)


def test_induction_rows(micro_run):
    df = measure(micro_run, InductionSettings(), progress=False)
    metrics = set(df.metric)
    assert {
        "induction_score",
        "prev_token_score",
        "duplicate_score",
        "copying_score",
        "k_composition",
        "icl_score",
        "repeat_loss_drop",
        "formation_step",
        "ablation_loss_increase",
    } <= metrics
    assert set(df[df.metric == "k_composition"].component) >= {"L0H0->L1H1"}
    circuit = induction_circuit(micro_run, 0)
    assert circuit.components and all(c.startswith("L") for c in circuit.components)


def test_stream3_rows_and_energy_budget(micro_run, tmp_path):
    run = micro_run
    circuit = Circuit("fixed", ["L1H0", "L0H1"], {"L1H0": "induction", "L0H1": "prev_token"})
    path = tmp_path / "circuit.json"
    circuit.to_json(path)
    settings = AutocatalysisSettings(circuit=str(path), rows=4, controls=1)
    rows = measure(run, settings, steps=[4], progress=False)
    assert set(rows.direction) >= {"sgd", "optimizer"}
    assert {"circuit", "control_random_0", "control_group"} <= set(rows.circuit)
    k = rows[(rows.metric == "K") & (rows.circuit == "circuit") & (rows.direction == "optimizer")]
    assert {"L1H0|L1H0", "L0H1|L1H0", "rest|rest", "C|C"} <= set(k.component)
    budget = rows[(rows.metric == "budget_error") & (rows.component == "")]
    assert len(budget) == len(run.seeds)
    # first-order prediction of one real AdamW step vs its observed effect on E_A
    assert float(budget.value.max()) < 0.2, budget
    small = rows[(rows.metric == "budget_error_eps") & (rows.component == "")]
    assert float(small.value.max()) < 0.05, small  # first order closes the budget on a small step
    n = len(rows)
    again = measure(run, settings, steps=[4], progress=False)
    assert len(again) == n and again.attrs["measured"]["checkpoints"] == 0
    entries = rows[rows.metric == "entry_frac_positive"]
    assert ((entries.value >= 0) & (entries.value <= 1)).all()
    # the circuit each seed followed is recorded with the rows
    members = rows[rows.metric == "circuit_member"]
    assert set(members.component) == {"L1H0", "L0H1"}


def test_sae_tracking_on_a_run(micro_run):
    hook = "blocks.1.hook_resid_post"  # recorded by the micro run
    settings = SAETrackingSettings(hook=hook, width=16, k=2, source="generate", n_tokens=2048)
    df = measure(micro_run, settings, steps=[0, 6], progress=False)
    assert {
        "l0",
        "explained_variance",
        "dead_fraction",
        "ce_recovered",
        "n_persisted",
        "universality",
        "induction_feature_birth_step",
    } <= set(df.metric)
    assert (micro_run.path / "saes" / settings.id / "seed=0" / "step=6" / "cfg.json").exists()
    assert (micro_run.path / "saes" / settings.id / "seed=1" / "lineage.parquet").exists()
    counts = df[df.metric.isin(["n_persisted", "n_born", "n_split"])].groupby("seed")["value"].sum()
    assert (counts > 0).all()
    with pytest.raises(MeasureError, match="recorded hooks"):
        measure(
            micro_run,
            SAETrackingSettings(hook="blocks.0.hook_resid_mid", width=16, source="recorded"),
            steps=[0],
            progress=False,
        )


def test_report_writes_figures(micro_run):
    from interp_ext.report.compose import write_report

    path = write_report(micro_run)
    text = path.read_text()
    for section in (
        "Induction heads",
        "Gradient-geometry dashboard",
        "Stream 3",
        "Next to the paper",
    ):
        assert section in text
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    assert {
        "dashboard.png",
        "induction_formation.png",
        "stream3_K.png",
        "sae_quality.png",
        "sae_lineage.png",
    } <= set(pngs)
    assert (path.parent / "sae_lineage_sankey.html").exists()
    assert all((path.parent / p.replace(".png", ".html")).exists() for p in pngs)


def test_warm_started_sae_tracking_follows_features(micro_run):
    hook = "blocks.1.hook_resid_post"
    settings = SAETrackingSettings(
        hook=hook, width=16, k=2, source="generate", n_tokens=2048, warm_start=True, epochs=2
    )
    df = measure(micro_run, settings, steps=[0, 2, 6], progress=False)
    folder = micro_run.path / "saes" / settings.id / "seed=0"
    import json

    assert json.loads((folder / "step=6" / "warm_from.json").read_text()) == {"warm_from": 2}
    assert json.loads((folder / "step=0" / "warm_from.json").read_text()) == {"warm_from": None}
    per = df[df.seed >= 0]
    share = per[per.metric == "decoder_match_share"].value
    assert len(share) == 2 * len(micro_run.seeds) and ((share >= 0) & (share <= 1)).all()
    followed = per[per.metric == "followed_feature_corr"]
    assert len(followed) >= len(micro_run.seeds)  # at least the last checkpoint of each seed
