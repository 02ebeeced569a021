"""Susceptibilities per head and data part: the rows read devinterp's own
``compute_susceptibilities`` right on samples where chi is known in closed form, and the
family measures them on a run whose training mix has both parts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import xarray as xr
from devinterp.slt.susceptibilities import compute_susceptibilities

from interp_ext import measure
from interp_ext.families.llc import LLCSettings
from interp_ext.families.llc.susceptibility import read_rows
from interp_ext.measurement.runner import MeasureError
from tests.conftest import micro_config


def samples(phi: np.ndarray, slopes: dict[str, np.ndarray], init: float = 2.0, pos: int = 5):
    """A sampling DataTree as devinterp's ``sample`` writes it: the sampled loss init + phi at each
    (chain, draw), and each observed token's loss 1 + slope_b * phi (slope per sequence b)."""
    chains, draws = phi.shape
    data = {
        "init_loss": (("chain", "token_pos"), np.full((chains, pos), init)),
        "loss_train": (
            ("chain", "draw", "batch_train", "token_pos"),
            np.broadcast_to(init + phi[:, :, None, None], (chains, draws, 4, pos)).copy(),
        ),
    }
    for part, a in slopes.items():
        loss = 1.0 + a[None, None, :, None] * phi[:, :, None, None] * np.ones((1, 1, 1, pos))
        data[f"loss_{part}"] = (("chain", "draw", f"batch_{part}", "token_pos"), loss)
        data[f"input_ids_{part}"] = ((f"batch_{part}", "token"), np.zeros((len(a), pos + 1), int))
    return xr.DataTree(xr.Dataset(data))


def test_rows_read_devinterps_susceptibilities_on_a_known_case():
    """chi(x) = Cov(phi, L_train - l_x) = (1 - slope) Var(phi) when the head's chains and the whole
    model's see the same gaps; per part: the mean over sequences and its standard error."""
    rng = np.random.default_rng(0)
    phi = rng.normal(0.3, 0.2, size=(2, 50))
    slopes = {"random": rng.uniform(0, 1, 6), "text": rng.uniform(-1, 0.5, 6)}
    tree = samples(phi, slopes)
    control = samples(phi, {p: a / 2 for p, a in slopes.items()})
    out = compute_susceptibilities({"full": tree, "L1H0": tree, "L1H1": control}, "train")
    read = read_rows(out["susceptibilities"].dataset, {"L1H0": "L1H1"})
    rows = {r["metric"]: r["value"] for r in read if r["component"] == "L1H0"}
    var = phi.var()
    for part, a in slopes.items():
        chi = (1 - a) * var  # per sequence
        assert rows[f"susceptibility/{part}"] == pytest.approx(chi.mean(), rel=1e-9)
        assert rows[f"susceptibility_se/{part}"] == pytest.approx(
            chi.std(ddof=1) / np.sqrt(len(chi)), rel=1e-9
        )
        # the control's tokens move half as much, centred on the whole model's gap:
        # chi = (1 - slope / 2) E[phi^2] - (1 - slope) E[phi]^2, so member - control = -slope / 2 E[phi^2]
        diff = -a / 2 * (phi**2).mean()
        assert rows[f"susceptibility_vs_control/{part}"] == pytest.approx(diff.mean(), rel=1e-9)
        assert rows[f"susceptibility_vs_control_se/{part}"] == pytest.approx(
            diff.std(ddof=1) / np.sqrt(len(diff)), rel=1e-9
        )
    gap = (1 - slopes["text"]).mean() * var - (1 - slopes["random"]).mean() * var
    assert rows["susceptibility_gap"] == pytest.approx(gap, rel=1e-9)
    assert rows["susceptibility_role"] == 1.0
    assert {r["component"] for r in read if r["metric"] == "susceptibility_role"} == {
        "L1H0",
        "L1H1",
    }
    assert not [r for r in read if r["component"] == "L1H1" and "vs_control" in r["metric"]]


def test_susceptibility_rows_on_a_run_with_both_parts(tmp_path, cache_dir, micro_run):
    from interp_ext.training import train

    cfg = micro_config()
    cfg = replace(cfg, data=replace(cfg.data, random_seq_prob=0.5))
    run = train(cfg, tmp_path / "mixed", progress=False, cache_dir=cache_dir)
    settings = LLCSettings(
        num_chains=2,
        num_draws=6,
        num_burnin_steps=2,
        batch_size=4,
        n_sequences=8,
        circuit="L1H0,L0H1",
        susceptibility=True,
        observed=8,
    )
    rows = measure(run, settings, seeds=[0], steps=[6], progress=False)
    rows = rows[rows.seed >= 0]
    role = rows[rows.metric == "susceptibility_role"].set_index("component").value
    assert role.to_dict() == {"L1H0": 1.0, "L0H1": 1.0, "L1H1": 0.0, "L0H0": 0.0}
    for metric in ("susceptibility/random", "susceptibility/text", "susceptibility_gap"):
        got = rows[rows.metric == metric]
        assert len(got) == 4 and np.isfinite(got.value).all(), metric
    assert (rows[rows.metric.str.startswith("susceptibility_se/")].value > 0).all()
    paired = rows[rows.metric == "susceptibility_vs_control/text"]
    assert set(paired.component) == {"L1H0", "L0H1"} and np.isfinite(paired.value).all()
    assert "llc" not in set(rows.metric)  # susceptibilities instead of the estimates
    assert settings.id != replace(settings, susceptibility=False).id
    with pytest.raises(MeasureError, match="random_seq_prob is 0.0"):
        measure(micro_run, LLCSettings(circuit="L1H0", susceptibility=True), progress=False)
