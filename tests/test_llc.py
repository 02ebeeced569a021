"""The LLC family: devinterp's estimator on models whose learning coefficient is known, then on a run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

N = 10_000


class Toy(torch.nn.Module):
    """y = w1 x1 + w2 x2 (regular: lambda = d / 2 = 1) or y = w1 x1 + w2^2 x2 (degenerate: K ~ w1^2 + w2^4,
    lambda = 1/2 + 1/4 = 3/4, multiplicity 1), the true w = 0."""

    def __init__(self, degenerate: bool):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.degenerate = degenerate

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.stack([self.w[0], self.w[1] ** 2]) if self.degenerate else self.w
        return x @ w


def toy_llc(degenerate: bool) -> float:
    from datasets import Dataset
    from devinterp.slt.llc import llc

    gen = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(N, 2, generator=gen),
        torch.randn(N, generator=gen),
    )  # y is pure noise: w = 0 is true

    def loss_fn(model, input_ids):
        idx = input_ids[:, 0]
        return (0.5 * (y[idx] - model.predict(x[idx])) ** 2)[
            :, None
        ]  # Gaussian negative log-likelihood per sample

    data = Dataset.from_dict({"input_ids": [[i, i] for i in range(N)]}).with_format("torch")
    res = llc(
        Toy(degenerate),
        data,
        {},
        lr=2e-4,
        n_beta=N / math.log(N),
        localization=1.0,
        loss_fn=loss_fn,
        num_chains=4,
        num_draws=600,
        num_burnin_steps=200,
        batch_size=512,
        init_seed=0,
        device="cpu",
    )
    return float(res.llc_mean)


def test_estimator_recovers_known_learning_coefficients():
    regular, degenerate = toy_llc(False), toy_llc(True)
    assert regular == pytest.approx(1.0, abs=0.25), regular  # d / 2 for d = 2
    assert degenerate == pytest.approx(0.75, abs=0.15), degenerate
    assert degenerate < regular


def test_llc_rows_on_a_run(micro_run):
    from interp_ext import measure
    from interp_ext.families.llc import LLCSettings
    from interp_ext.measurement.runner import MeasureError

    settings = LLCSettings(
        num_chains=2,
        num_draws=8,
        num_burnin_steps=2,
        batch_size=4,
        n_sequences=8,
        circuit="L1H0,L0H1",
        trace_probes=3,
        trace_batches=2,
    )
    rows = measure(micro_run, settings, steps=[0, 6], progress=False)
    per = rows[rows.seed >= 0]
    assert {"model", "circuit", "rest", "L0H0", "L1H1"} <= set(per[per.metric == "llc"].component)
    assert {"llc", "llc_std", "trace_drift", "diverged", "init_loss", "llc_chain"} <= set(
        per.metric
    )
    # a Hutchinson estimate of each component's Hessian trace beside its LLC
    trace = per[per.metric == "hessian_trace"].set_index(["step", "component"]).value
    assert set(trace.index.get_level_values(1)) == set(per[per.metric == "llc"].component)
    assert (per[per.metric == "hessian_trace_se"].value > 0).all()
    assert (per[per.metric == "diverged"].value.isin([0.0, 1.0])).all()
    assert np.isfinite(per[(per.metric == "llc") & (per.component == "model")].value).all()
    with pytest.raises(MeasureError, match="components"):
        LLCSettings(components="model,nothing")
    with pytest.raises(MeasureError, match="layers 0..1"):
        measure(micro_run, LLCSettings(circuit="L5H0", components="circuit"), progress=False)


def test_the_preconditioned_sampler_is_devinterps_rmsprop_sgld(micro_run, monkeypatch):
    """sampler='rmsprop' runs devinterp's RMSProp-preconditioned SGLD (its sampling method named
    through), keyed apart from plain SGLD, and gives a finite estimate."""
    import devinterp.slt.llc as devinterp_llc

    from interp_ext.families.llc import LLCSettings, estimate, llc_data
    from interp_ext.measurement.runner import MeasureError

    seen = []
    real = devinterp_llc.llc

    def spy(*args, **kwargs):
        seen.append(kwargs["sampling_method"])
        return real(*args, **kwargs)

    monkeypatch.setattr(devinterp_llc, "llc", spy)
    small = dict(num_chains=1, num_draws=8, num_burnin_steps=2, batch_size=4, n_sequences=8)
    plain, pre = LLCSettings(**small), LLCSettings(sampler="rmsprop", **small)
    assert plain.id != pre.id
    model = micro_run.model(0, 6)
    data = llc_data(micro_run, 0, pre)
    out = {s.sampler: estimate(model, data, None, s)["llc"] for s in (plain, pre)}
    assert seen == ["sgmcmc_sgld", "rmsprop_sgld"]
    assert all(np.isfinite(v) for v in out.values())
    with pytest.raises(MeasureError, match="sampler"):
        LLCSettings(sampler="adam")


def test_a_diverging_setting_is_marked_and_the_rest_continues(micro_run, caplog):
    from interp_ext import measure
    from interp_ext.families.llc import LLCSettings

    settings = LLCSettings(
        lr=1e3,
        num_chains=1,
        num_draws=6,
        num_burnin_steps=1,
        batch_size=4,
        n_sequences=8,
        components="model",
    )
    with caplog.at_level("WARNING", logger="interp_ext"):
        rows = measure(micro_run, settings, steps=[6], progress=False)
    assert "lower --lr" in caplog.text and "step 6" in caplog.text
    per = rows[(rows.seed >= 0) & (rows.component == "model")].set_index(["seed", "metric"]).value
    assert per[(0, "diverged")] == 1.0 and math.isnan(per[(0, "llc")])


def _result(trace, init=4.0, llc=10.0, diverged=0.0):
    from interp_ext.families.llc import trace_drift

    trace = np.asarray(trace, dtype=float)
    return {
        "trace": trace.tolist(),
        "init_loss": init,
        "llc": llc,
        "diverged": diverged,
        "trace_drift": trace_drift(trace, init, 4),
    }


def test_calibration_criteria_on_known_traces():
    """Flat and near the checkpoint's loss: stable. Still climbing, or wandered most of the way to chance
    loss (the model forgotten), or a negative estimate: not."""
    from interp_ext.families.llc import locality, stable

    chance = 6.0
    steps = np.arange(40)
    flat = np.stack([4.0 + 0.2 * (1 - np.exp(-steps / 2.0))] * 2)
    climbing = np.stack([4.0 + 0.02 * steps] * 2)
    forgotten = np.stack([4.0 + 1.8 * (1 - np.exp(-steps / 2.0))] * 2)
    assert locality(_result(flat), chance) == pytest.approx(0.1, abs=1e-3)
    assert stable(_result(flat), chance)
    assert not stable(_result(climbing), chance)  # trace drift 0.25
    assert locality(_result(forgotten), chance) == pytest.approx(0.9, abs=1e-3)
    assert not stable(_result(forgotten), chance)
    assert not stable(_result(flat, llc=-1.0), chance)
    assert not stable(_result(flat, diverged=1.0), chance)


def test_calibration_keeps_the_largest_stable_step_size(micro_run, monkeypatch):
    """The sweep on the run's checkpoints with a stand-in sampler whose chains are local and flat up to
    lr 1e-4 at localisation 1000 and up to 1e-5 at 100, and wander to chance beyond: the choice is
    the largest stable step size (the larger localisation among ties), its sweep saved."""
    import json

    from interp_ext.families import llc as llc_family
    from interp_ext.measurement.runner import MeasureError, settings_id

    chance = math.log(micro_run.d_vocab)
    steps = np.arange(40)
    seen = []

    def fake_estimate(model, data, masks, settings):
        seen.append(model.cfg.n_layers)
        limit = 1e-4 if settings.localization >= 1000 else 1e-5
        reach = 0.1 if settings.lr <= limit else 0.9
        init = chance - 1.0
        trace = np.stack([init + reach * (1 - np.exp(-steps / 2.0))] * 2)
        return _result(trace, init=init)

    settings = llc_family.LLCSettings(
        num_chains=2, num_draws=36, num_burnin_steps=4, calibrate=True, n_sequences=8, batch_size=4
    )
    monkeypatch.setattr(llc_family, "estimate", fake_estimate)
    monkeypatch.setattr(llc_family, "LRS", (1e-5, 1e-4, 1e-3))
    monkeypatch.setattr(llc_family, "LOCALIZATIONS", (100.0, 1000.0))
    family = llc_family.LLC()
    settings = family.prepare(micro_run, settings)
    assert family.resolve(micro_run, settings, compute=False) is None  # not yet calibrated
    assert settings_id(micro_run, settings) == ""
    chosen = family.resolve(micro_run, settings)
    assert (chosen.lr, chosen.localization) == (1e-4, 1000.0)
    cal = json.loads(micro_run.layout.calibration(settings.id).read_text())
    assert cal["chosen_id"] == chosen.id
    steps_run = micro_run.steps_for(micro_run.seeds[0])
    assert cal["steps"] == [steps_run[len(steps_run) // 2], steps_run[-1]]
    assert len(seen) == 3 * 2 * 2  # every setting at both checkpoints
    # computing the id, or resolving again, reads the saved sweep and samples nothing
    assert settings_id(micro_run, settings) == chosen.id
    assert family.resolve(micro_run, settings) == chosen
    assert len(seen) == 3 * 2 * 2
    verdicts = {(t["lr"], t["localization"]): t["stable"] for t in cal["sweep"]}
    assert verdicts == {
        (1e-5, 100.0): True,
        (1e-5, 1000.0): True,
        (1e-4, 100.0): False,
        (1e-4, 1000.0): True,
        (1e-3, 100.0): False,
        (1e-3, 1000.0): False,
    }
    monkeypatch.setattr(llc_family, "LRS", (1e-3,))
    with pytest.raises(MeasureError, match="no stable step size"):
        llc_family.calibrate(micro_run, settings)
    micro_run.layout.calibration(settings.id).unlink()


def test_llc_by_role_averages_heads_then_seeds():
    """Seed 0's induction head is L1H0, seed 1's is L1H1: each seed's own heads are averaged by role
    first, then the seeds, so a head index never stands for a role across seeds."""
    import pandas as pd

    from interp_ext.families.llc.report import head_roles, llc_by_role

    members = pd.DataFrame(
        [
            {
                "family": "circuit",
                "metric": "member",
                "seed": s,
                "step": t,
                "component": h,
                "role": r,
            }
            for s, t, h, r in [
                (0, 8, "L1H0", "induction"),
                (0, 8, "L0H1", "prev_token"),
                (1, 4, "L1H0", "induction"),  # an earlier checkpoint's circuit: not used
                (1, 8, "L1H1", "induction"),
                (1, 8, "L0H0", "prev_token"),
            ]
        ]
    )
    roles = head_roles(members)
    assert roles == {
        0: {"L1H0": "induction", "L0H1": "prev_token"},
        1: {"L1H1": "induction", "L0H0": "prev_token"},
    }
    values = {(0, "L1H0"): 10.0, (0, "L1H1"): 1.0, (0, "L0H0"): 2.0, (0, "L0H1"): 5.0}
    values |= {(1, "L1H0"): 3.0, (1, "L1H1"): 20.0, (1, "L0H0"): 7.0, (1, "L0H1"): 4.0}
    llc = pd.DataFrame(
        [
            {"metric": "llc", "seed": s, "step": 8, "component": h, "value": v}
            for (s, h), v in values.items()
        ]
        + [{"metric": "llc", "seed": 0, "step": 8, "component": "model", "value": 99.0}]
    )
    got = llc_by_role(llc, roles).set_index("role").value
    assert got["induction"] == pytest.approx((10 + 20) / 2)
    assert got["prev_token"] == pytest.approx((5 + 7) / 2)
    assert got["other"] == pytest.approx(((1 + 2) / 2 + (3 + 4) / 2) / 2)
