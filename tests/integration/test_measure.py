"""Measurements on a finished micro run: rows land in the metrics table, idempotently."""

from __future__ import annotations

import numpy as np
import pytest

from circuits import Circuit
from circuits.induction import induction_circuit, measure_run as measure_induction
from interp_ext import autocatalysis
from interp_ext.geometry import measure_beta_and_transition, measure_run as measure_geometry, measure_stream2
from interp_ext.store import RunError


def test_geometry_rows_idempotent_and_resumable(micro_run):
    run = micro_run
    measure_geometry(run, k=2, lag=2, progress=False)
    first = run.metrics("geometry")
    assert set(first.metric) >= {"effective_rank", "overlap_prev", "subspace_similarity", "grad_norm", "function_space_alignment_same"}
    assert first[first.metric == "effective_rank"].shape[0] == len(run.seeds) * len(run.steps)
    measure_geometry(run, k=2, lag=2, progress=False)
    assert len(run.metrics("geometry")) == len(first)
    assert len(run.metrics("stream1")) > 0
    with pytest.raises(RunError, match="available steps"):
        measure_geometry(run, steps=[3], progress=False)
    s2 = measure_stream2(run, progress=False)
    assert set(s2.metric) == {"cross_seed_alignment", "cross_seed_alignment_perm"}
    assert {"ln", "attn_qkv", "blocks.1.mlp_in"} <= set(s2.component)
    out = measure_beta_and_transition(run)
    assert {"start", "end"} <= set(out[out.family == "transition"].metric)


def test_induction_rows(micro_run):
    df = measure_induction(micro_run, progress=False)
    metrics = set(df.metric)
    assert {"induction_score", "prev_token_score", "duplicate_score", "copying_score", "k_composition", "icl_score", "repeat_loss_drop", "formation_step", "ablation_loss_increase"} <= metrics
    assert set(df[df.metric == "k_composition"].component) >= {"L0H0->L1H1"}
    circuit = induction_circuit(micro_run, 0)
    assert circuit.components and all(c.startswith("L") for c in circuit.components)


def test_stream3_rows_and_energy_budget(micro_run):
    run = micro_run
    circuit = Circuit("fixed", ["L1H0", "L0H1"], {"L1H0": "induction", "L0H1": "prev_token"})
    autocatalysis.measure_run(run, circuit=circuit, steps=[4], rows=4, n_random=1, progress=False)
    rows = run.metrics("autocatalysis")
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
    autocatalysis.measure_run(run, circuit=circuit, steps=[4], rows=4, n_random=1, progress=False)
    assert len(run.metrics("autocatalysis")) == n
    entries = rows[rows.metric == "entry_frac_positive"]
    assert ((entries.value >= 0) & (entries.value <= 1)).all()


def test_sae_tracking_on_a_run(micro_run):
    from interp_ext.sae_tracking import track_run
    from interp_ext.sae_tracking.tracking import HookNotRecordedError

    hook = "blocks.1.hook_resid_post"  # recorded by the micro run
    df = track_run(micro_run, hook, steps=[0, 6], width=16, k=2, source="generate", n_tokens=2048, progress=False)
    assert {"l0", "explained_variance", "dead_fraction", "ce_recovered", "n_persisted", "universality", "induction_feature_birth_step"} <= set(df.metric)
    assert (micro_run.path / "saes" / "seed=0" / "step=6" / hook / "cfg.json").exists()
    assert (micro_run.path / "saes" / "seed=1" / f"lineage_{hook}.parquet").exists()
    counts = df[df.metric.isin(["n_persisted", "n_born", "n_split"])].groupby("seed")["value"].sum()
    assert (counts > 0).all()
    with pytest.raises(HookNotRecordedError, match="recorded hooks"):
        track_run(micro_run, "blocks.0.hook_resid_mid", steps=[0], width=16, source="recorded", progress=False)


def test_report_writes_figures(micro_run):
    from interp_ext.report import write_report

    path = write_report(micro_run)
    text = path.read_text()
    for section in ("Induction heads", "Gradient-geometry dashboard", "Stream 3", "Next to the paper"):
        assert section in text
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    assert {"dashboard.png", "induction_formation.png", "stream3_K.png", "sae_quality.png", "sae_lineage.png"} <= set(pngs)
    assert (path.parent / "sae_lineage_sankey.html").exists()
    assert all((path.parent / p.replace(".png", ".html")).exists() for p in pngs)
