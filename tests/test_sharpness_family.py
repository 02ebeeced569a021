"""The ``sharpness`` family end to end on the micro run: its rows are the Hessian operator's
values, and the circuit block's spectrum is a quadrature of that block (weights summing to 1,
nodes inside the dense block's spectrum)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits.circuit import Circuit
from interp_ext import measure
from interp_ext.families import SharpnessSettings
from interp_ext.families.sharpness.report import spectrum_panels
from interp_ext.geometry.curvature import model_hessian


def test_sharpness_rows_and_the_circuit_blocks_spectrum(micro_run):
    settings = SharpnessSettings(n_batches=2, circuit="L1H0,L0H1", tol=1e-6, spectrum=8)
    rows = measure(micro_run, settings, seeds=[0, 1], steps=[2, 6], progress=False)
    rows = rows[rows.step >= 0]
    model = micro_run.model(0, 6)
    op = model_hessian(model, micro_run.probe_set()["lm"][:2])
    masks = Circuit("c", ["L1H0", "L0H1"]).flat_masks(model)
    mask = torch.stack([m for c, m in masks.items() if c != "rest"]).any(0)
    block = np.linalg.eigvalsh(op.block(mask).double().numpy())

    def value(metric, component="C", seed=0, step=6):
        sel = rows[
            (rows.metric == metric)
            & (rows.component == component)
            & (rows.seed == seed)
            & (rows.step == step)
        ]
        assert len(sel) == 1, metric
        return float(sel.value.iloc[0])

    assert value("sharpness") == pytest.approx(block[-1], rel=1e-4)
    assert value("sharpness", "") == pytest.approx(op.top(tol=1e-6)[0], rel=1e-4)
    for (seed, step), g in rows[rows.metric.str.startswith("spectrum_")].groupby(["seed", "step"]):
        weights = g[g.metric.str.startswith("spectrum_weight/")].value
        nodes = g[g.metric.str.startswith("spectrum_node/")].value
        assert len(weights) == len(nodes) == 8
        assert weights.sum() == pytest.approx(1.0, rel=1e-5)
        if (seed, step) == (0, 6):  # Ritz values lie inside the block's spectrum
            scale = np.abs(block).max()
            assert nodes.min() >= block[0] - 1e-4 * scale
            assert nodes.max() <= block[-1] + 1e-4 * scale
    mass = rows[rows.metric == "spectrum_negative_mass"].value
    assert len(mass) == 4 and ((mass >= 0) & (mass <= 1)).all()
    panels = spectrum_panels(rows)
    assert [p.title for p in panels] == ["seed 0", "seed 1"]
    assert all(p.heatmap.z.shape == (24, 2) and np.isfinite(p.heatmap.z).all() for p in panels)


def test_the_peak_is_read_against_permuted_formation_steps():
    """``peak_at_formation/p_permuted``: every assignment of the formed seeds' formation steps to
    their peaks, listed here by brute force."""
    import itertools
    from types import SimpleNamespace

    import pandas as pd

    from interp_ext.families.sharpness import permuted_peak_rows

    forms = {0: 1000.0, 1: 2000.0, 2: 3000.0, 3: 2500.0}
    peaks = {0: 1250.0, 1: 2000.0, 2: 2750.0, 3: 1000.0}
    per = pd.DataFrame(
        [{"seed": s, "metric": "formation_step", "value": f} for s, f in forms.items()]
        + [{"seed": s, "metric": "precond_edge_ratio/argmax", "value": p} for s, p in peaks.items()]
    )
    run = SimpleNamespace(steps_for=lambda seed: [0, 250, 500])
    got = {r["metric"].split("/")[1]: r["value"] for r in permuted_peak_rows(run, per)}

    def hits(assign):
        return sum(abs(peaks[s] - f) <= 250 for s, f in assign.items())

    counts = [hits(dict(zip(forms, perm))) for perm in itertools.permutations(forms.values())]
    observed = hits(forms)
    assert observed == 3
    assert got["p_permuted"] == pytest.approx(sum(c >= observed for c in counts) / len(counts))
    assert got["floor_permuted"] == pytest.approx(counts.count(max(counts)) / len(counts))
