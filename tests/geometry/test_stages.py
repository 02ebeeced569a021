"""Essential dynamics and progress measures against references: scipy's eigendecomposition for the
PCA, TransformerLens' per-token loss, analytic curves for the turning points, exact enumeration
for the chance of matching formation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from interp_ext.geometry.essential_dynamics import (
    boundary_match,
    essential_dynamics,
    poisson_binomial_tail,
    turning_points,
)


def test_essential_dynamics_is_the_pca_of_the_centred_features():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 40)) @ np.diag(np.linspace(3, 0.1, 40))
    scores, explained = essential_dynamics(x, 3)
    c = x - x.mean(0)
    vals, vecs = scipy.linalg.eigh(c.T @ c)
    order = np.argsort(vals)[::-1][:3]
    ref = c @ vecs[:, order]
    for k in range(3):  # equal up to the sign the function fixes (rising from first to last)
        sign = 1.0 if ref[-1, k] >= ref[0, k] else -1.0
        np.testing.assert_allclose(scores[:, k], sign * ref[:, k], atol=1e-9)
        assert scores[-1, k] >= scores[0, k]
    np.testing.assert_allclose(explained, vals[order] / vals.sum(), rtol=1e-9)


def test_turning_points_of_known_curves():
    steps = np.arange(0, 2100, 100)
    parabola = -((steps - 1200.0) ** 2)
    assert turning_points(steps, parabola, width=1) == [1200.0]
    up, down, back = np.linspace(0, 1, 8), np.linspace(1, 0.2, 8)[1:], np.linspace(0.2, 0.9, 7)[1:]
    zigzag = np.concatenate([up, down, back])  # peak at index 7, trough at 14
    got = turning_points(steps, zigzag, width=1)
    assert got == [float(steps[7]), float(steps[14])]
    assert turning_points(steps, steps * 2.0) == []  # monotone: no stage boundary
    noisy = steps + np.where(np.arange(len(steps)) % 2, 1e-3, -1e-3)
    assert turning_points(steps, noisy, width=1, min_share=0.05) == []  # wiggles below the share


def test_chance_of_a_match_and_its_tail():
    steps = np.arange(0, 1001, 100)
    hit, chance = boundary_match([500.0], 450.0, steps, 100.0)
    assert hit and chance == pytest.approx(0.2, abs=1e-3)  # [400, 600] of [0, 1000]
    hit, _ = boundary_match([500.0], 700.0, steps, 100.0)
    assert not hit
    probs = [0.2, 0.5, 0.3, 0.1]
    for k in range(5):  # exact enumeration of the 16 outcomes
        total = sum(
            math.prod(p if o else 1 - p for p, o in zip(probs, out))
            for out in itertools.product([0, 1], repeat=4)
            if sum(out) >= k
        )
        assert poisson_binomial_tail(k, probs) == pytest.approx(total, abs=1e-12)


def test_stages_rows_on_a_run(micro_run):
    from interp_ext import measure
    from interp_ext.families.stages import StagesSettings
    from interp_ext.measurement.probes import heldout_probe
    from interp_ext.measurement.runner import MeasureError

    rows = measure(micro_run, StagesSettings(top_tokens=20), progress=False)
    steps = micro_run.steps
    # the loss by position is TransformerLens' per-token loss, averaged over the probe
    held = heldout_probe(micro_run)
    model = micro_run.model(0, steps[-1])
    with torch.no_grad():
        ref = model(held, return_type="loss", loss_per_token=True).mean(0).numpy()
    got = rows[(rows.seed == 0) & (rows.step == steps[-1]) & (rows.metric == "loss_by_position")]
    np.testing.assert_allclose(
        got.sort_values("component", key=lambda c: c.astype(int)).value, ref, rtol=1e-5
    )
    ed = rows[(rows.seed == 0) & (rows.metric == "ed_score")]
    assert set(ed.component) == {"PC1", "PC2", "PC3"}
    assert sorted(ed[ed.component == "PC1"].step) == steps
    explained = (
        rows[(rows.seed == 0) & (rows.metric == "ed_explained")].sort_values("component").value
    )
    assert (np.diff(explained.to_numpy()) <= 1e-12).all() and explained.sum() <= 1 + 1e-9
    bounds = rows[(rows.metric == "stage_boundary") & (rows.seed >= 0)].value
    assert ((bounds > steps[0]) & (bounds < steps[-1])).all()
    with pytest.raises(MeasureError, match="smooth"):
        StagesSettings(smooth=2)


def test_the_permuted_formation_null_counts_every_permutation():
    """``p_permuted``: the formed seeds' formation steps permuted across them, every permutation
    listed here by brute force; boundaries shared by every seed give a p near 1 however many
    seeds match."""
    import pandas as pd

    from interp_ext.families.stages import permuted_formation_rows

    forms = {0: 1000.0, 1: 1500.0, 2: 2000.0, 3: 3000.0}
    bounds = {0: [1000.0, 2600.0], 1: [1400.0], 2: [2100.0, 500.0], 3: [1000.0]}
    per = pd.DataFrame(
        [{"seed": s, "step": -1, "metric": "formation_step", "value": f} for s, f in forms.items()]
        + [
            {"seed": s, "step": -1, "metric": "stage_boundary", "value": b}
            for s, bs in bounds.items()
            for b in bs
        ]
    )
    rows = pd.DataFrame({"seed": [0, 0, 0], "step": [0, 100, 200]})  # one interval: 100 steps
    got = {
        r["metric"].split("/")[1]: r["value"]
        for r in permuted_formation_rows(per, list(forms), rows)
    }

    def count(assign):
        return sum(any(abs(b - assign[s]) <= 100 for b in bounds[s]) for s in forms)

    seeds = list(forms)
    observed = count(forms)
    counts = [count(dict(zip(seeds, perm))) for perm in itertools.permutations(forms.values())]
    assert observed == 3
    assert got["p_permuted"] == pytest.approx(np.mean([c >= observed for c in counts]))
    assert got["floor_permuted"] == pytest.approx(np.mean([c == max(counts) for c in counts]))
    # every seed turning at the same step: any formation assignment matches as often
    same = per[per.metric == "formation_step"].copy()
    shared = pd.concat(
        [same]
        + [
            pd.DataFrame([{"seed": s, "step": -1, "metric": "stage_boundary", "value": f}])
            for s in forms
            for f in forms.values()
        ]
    )
    got = {
        r["metric"].split("/")[1]: r["value"] for r in permuted_formation_rows(shared, seeds, rows)
    }
    assert got["p_permuted"] == 1.0
