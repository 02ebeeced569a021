"""The LLC family: devinterp's estimator on models whose learning coefficient is known, then on a run."""

from __future__ import annotations

import math
from dataclasses import replace

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
    return float(toy_sample(degenerate).llc_mean)


def toy_sample(
    degenerate: bool,
    lr: float = 2e-4,
    burnin: int = 200,
    seed: int = 0,
    draws: int = 600,
    batch_size: int = 512,
    n: int = N,
):
    """devinterp's ``llc`` on the toy (4 chains, ``n`` samples): its result, loss trace included."""
    from datasets import Dataset
    from devinterp.slt.llc import llc

    gen = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(n, 2, generator=gen),
        torch.randn(n, generator=gen),
    )  # y is pure noise: w = 0 is true
    y = y - x @ torch.linalg.lstsq(x, y).solution  # and the sample's exact minimum

    def loss_fn(model, input_ids):
        idx = input_ids[:, 0]
        return (0.5 * (y[idx] - model.predict(x[idx])) ** 2)[
            :, None
        ]  # Gaussian negative log-likelihood per sample

    data = Dataset.from_dict({"input_ids": [[i, i] for i in range(n)]}).with_format("torch")
    res = llc(
        Toy(degenerate),
        data,
        {},
        lr=lr,
        n_beta=n / math.log(n),
        localization=1.0,
        loss_fn=loss_fn,
        num_chains=4,
        num_draws=draws,
        num_burnin_steps=burnin,
        batch_size=batch_size,
        init_seed=seed,
        device="cpu",
    )
    return res


def test_estimator_recovers_known_learning_coefficients():
    regular, degenerate = toy_llc(False), toy_llc(True)
    assert regular == pytest.approx(1.0, abs=0.25), regular  # d / 2 for d = 2
    assert degenerate == pytest.approx(0.75, abs=0.15), degenerate
    assert degenerate < regular


def test_the_draws_estimate_and_its_standard_error_on_a_known_coefficient():
    """Full-batch chains on the regular toy (lambda = 1) at a step size where leaving the
    checkpoint takes a good part of the burn-in: devinterp's estimate (every step averaged,
    burn-in included) reads low; the draws after burn-in read 1 within their standard error, and
    that standard error matches how far independent runs' estimates actually spread."""
    from interp_ext.geometry.learning_coefficient import drawn_estimate

    n, burnin = 1000, 150
    steps, drawn, se = [], [], []
    for seed in range(0, 600, 100):  # devinterp seeds chain c with seed + c: keep runs apart
        res = toy_sample(False, lr=1.4e-4, burnin=burnin, seed=seed, draws=450, batch_size=n, n=n)
        rise = np.asarray(res.loss_trace.values) - float(res.init_loss)
        out = drawn_estimate(rise[:, burnin:], n / math.log(n))
        steps.append(float(res.llc_mean))
        drawn.append(out["llc_draws"])
        se.append(out["llc_draws_se"])
        assert 0 < out["llc_draws_ess"] < rise[:, burnin:].size  # the draws are correlated
    steps, drawn, se = map(np.array, (steps, drawn, se))
    assert abs(drawn.mean() - 1.0) < 3 * se.mean() / math.sqrt(len(drawn)), (drawn, se)
    assert steps.mean() < drawn.mean() - 0.03, (steps, drawn)  # the approach from the checkpoint
    # the reported standard error against the spread of six independent estimates
    assert 0.4 < drawn.std(ddof=1) / se.mean() < 2.5, (drawn, se)


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
    assert {
        "llc",
        "llc_std",
        "llc_draws",
        "llc_draws_se",
        "llc_draws_ess",
        "trace_drift",
        "diverged",
        "init_loss",
        "llc_chain",
    } <= set(per.metric)
    # a Hutchinson estimate of each component's Hessian trace beside its LLC
    trace = per[per.metric == "hessian_trace"].set_index(["step", "component"]).value
    assert set(trace.index.get_level_values(1)) == set(per[per.metric == "llc"].component)
    assert (per[per.metric == "hessian_trace_se"].value > 0).all()
    assert (per[per.metric == "diverged"].value.isin([0.0, 1.0])).all()
    assert np.isfinite(per[(per.metric == "llc") & (per.component == "model")].value).all()
    with pytest.raises(MeasureError, match="components"):
        LLCSettings(components="model,nothing")
    with pytest.raises(MeasureError, match="localization=-1.0"):
        LLCSettings(localization=-1.0)
    with pytest.raises(MeasureError, match="layers 0..1"):
        measure(micro_run, LLCSettings(circuit="L5H0", components="circuit"), progress=False)
    # a single head is its own component, with the same estimate as among all heads
    one = measure(micro_run, replace(settings, components="L1H1"), steps=[6], progress=False)
    one = one[(one.seed >= 0) & (one.metric == "llc")]
    assert set(one.component) == {"L1H1"}
    among = per[(per.metric == "llc") & (per.component == "L1H1") & (per.step == 6)]
    assert sorted(one.value) == sorted(among.value)
    with pytest.raises(MeasureError, match="head L2H0 does not exist"):
        measure(micro_run, LLCSettings(components="L2H0"), progress=False)


def test_the_preconditioned_sampler_is_devinterps_rmsprop_sgld(micro_run, monkeypatch):
    """sampler='rmsprop' runs devinterp's RMSProp-preconditioned SGLD (its sampling method named
    through), keyed apart from plain SGLD, and gives a finite estimate."""
    import devinterp.slt.sampling as devinterp_sampling

    from interp_ext.families.llc import LLCSettings, llc_data
    from interp_ext.geometry.learning_coefficient import estimate
    from interp_ext.measurement.runner import MeasureError

    seen = []
    real = devinterp_sampling.sample

    def spy(**kwargs):
        seen.append(kwargs["sampling_method"])
        return real(**kwargs)

    monkeypatch.setattr(devinterp_sampling, "sample", spy)
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
    from interp_ext.geometry.learning_coefficient import trace_drift

    trace = np.asarray(trace, dtype=float)
    return {
        "trace": trace.tolist(),
        "init_loss": init,
        "llc": llc,
        "diverged": diverged,
        "trace_drift": trace_drift(trace, init, 4),
        "llc_draws_se": 0.01 * llc,
        "trace_drift_se": 0.02,
    }


def test_calibration_criteria_on_known_traces():
    """Flat and near the checkpoint's loss: stable. Still climbing, or wandered most of the way to chance
    loss (the model forgotten), or a negative estimate: not."""
    from interp_ext.geometry.learning_coefficient import locality, stable

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


def test_plateau_needs_every_probe_stable_and_within_tolerance():
    from interp_ext.families.llc import LRS
    from interp_ext.geometry.learning_coefficient import plateau, window_size

    assert window_size(LRS, 3.0) == 3  # quarter decades: three in a row span 3.16x
    assert window_size((1e-3, 1e-4), 3.0) == 2
    flat = [{"stable": True, "llc": [100.0, 50.0]}, {"stable": True, "llc": [105.0, 52.0]}]
    assert plateau(flat, 0.1)
    assert not plateau(flat + [{"stable": True, "llc": [100.0, 60.0]}], 0.1)  # 60 / 50 - 1 = 0.2
    assert not plateau(flat + [{"stable": False, "llc": [100.0]}], 0.1)
    assert not plateau([], 0.1)


def test_calibration_finds_each_components_plateau(micro_run, monkeypatch):
    """A stand-in sampler whose whole-model chains wander to chance above lr 4e-4 and give 100 (105 at
    one step size) below; every head's estimate grows with the step size (no plateau) except L0H0's,
    constant at 7. From the largest step size down the whole model's first 3x window is 3.16e-4 ..
    1e-4 (its middle, 1.78e-4, is chosen); L0H0 plateaus at once; the other heads never do and are not
    estimated; the sweep is saved, computing the id reads it and samples nothing."""
    import json

    from interp_ext.families import llc as llc_family
    from interp_ext.measurement.runner import MeasureError, settings_id

    chance = math.log(micro_run.d_vocab)
    steps = np.arange(40)
    seen = []
    model_masks = {}

    def fake_estimate(model, data, masks, settings):
        seen.append(settings.lr)
        name = "model" if masks is None else model_masks.get(id(masks), "head")
        init = chance - 1.0
        reach = 0.9 if (name == "model" and settings.lr > 4e-4) else 0.1
        trace = np.stack([init + reach * (1 - np.exp(-steps / 2.0))] * 2)
        value = {"model": 105.0 if settings.lr == 1.78e-4 else 100.0, "L0H0": 7.0}.get(
            name, 1e6 * settings.lr
        )
        return {**_result(trace, init=init, llc=value), "chains": [value, value]}

    real_masks = llc_family.component_masks

    def tagged_masks(model, circuit, settings):
        out = real_masks(model, circuit, settings)
        for name, m in out.items():
            if m is not None:
                model_masks[id(m)] = name
        return out

    monkeypatch.setattr(llc_family, "estimate", fake_estimate)
    monkeypatch.setattr(llc_family, "component_masks", tagged_masks)
    settings = llc_family.LLCSettings(
        num_chains=2,
        num_draws=36,
        num_burnin_steps=4,
        calibrate=True,
        n_sequences=8,
        batch_size=4,
        components="model,heads",
        trace_probes=0,
        calibration_seeds="0",
    )
    family = llc_family.LLC()
    settings = family.prepare(micro_run, settings)
    assert family.resolve(micro_run, settings, compute=False) is None  # not yet calibrated
    assert settings_id(micro_run, settings) == ""
    chosen = family.resolve(micro_run, settings)
    lrs = chosen.component_lrs()
    assert lrs["model"] == 1.78e-4 and chosen.lr == lrs["model"]
    assert lrs["L0H0"] == 5.62e-4  # 1e-3, 5.6e-4, 3.2e-4: its middle
    assert all(lrs[h] is None for h in lrs if h not in ("model", "L0H0"))
    cal = json.loads(llc_family.calibration_path(micro_run, settings.id).read_text())
    assert cal["chosen_id"] == chosen.id and cal["rule"] == "plateau"
    steps_run = micro_run.steps_for(0)
    assert cal["probes"] == [[0, steps_run[len(steps_run) // 2]], [0, steps_run[-1]]]
    # the model: 1e-3 and 5.6e-4 stop at their first (unstable) probe, then 3 step sizes at 2 probes
    assert [t["stable"] for t in cal["sweep"]["model"]] == [False, False, True, True, True]
    # each trial keeps its estimates' and drifts' own errors beside them, probe by probe
    for t in cal["sweep"]["model"]:
        assert t["llc_se"] == pytest.approx([0.01 * v for v in t["llc"]])
        assert t["trace_drift_se"] == [0.02] * len(t["llc"])
    n = len(seen)
    assert settings_id(micro_run, settings) == chosen.id
    assert family.resolve(micro_run, settings) == chosen
    assert len(seen) == n
    # the calibrated settings estimate each component at its own step size, and skip the ones without
    seen.clear()
    seed = micro_run.seeds[0]
    state = family.start_seed(micro_run, chosen, seed)
    from interp_ext.measurement.runner import Checkpoint

    ctx = Checkpoint(run=micro_run, seed=seed, step=steps_run[-1])
    rows = family.checkpoint(ctx, chosen, state)
    cal_rows = rows[rows.metric == "calibrated"].set_index("component").value
    assert (
        cal_rows["model"] == 1
        and cal_rows["L0H0"] == 1
        and (cal_rows.drop(["model", "L0H0"]) == 0).all()
    )
    assert sorted(seen) == sorted([lrs["model"], lrs["L0H0"]])
    # no plateau for the whole model: an error, the sweep kept, and asking again repeats nothing
    llc_family.calibration_path(micro_run, settings.id).unlink()
    monkeypatch.setattr(llc_family, "LRS", (1e-3, 5e-4))
    with pytest.raises(MeasureError, match="no plateau of the whole model"):
        family.resolve(micro_run, settings)
    failed = json.loads(llc_family.calibration_path(micro_run, settings.id).read_text())
    assert [t["lr"] for t in failed["sweep"]["model"]] == [1e-3, 5e-4]
    n = len(seen)
    with pytest.raises(MeasureError, match="the sweep is saved"):
        family.resolve(micro_run, settings)
    assert len(seen) == n
    llc_family.calibration_path(micro_run, settings.id).unlink()
    # the walk stops where chains of equal SGLD time would need more than max_draws
    capped = family.prepare(micro_run, replace(settings, sampling_time=0.01, max_draws=50))
    monkeypatch.setattr(llc_family, "LRS", (1e-3, 5.62e-4, 3.16e-4, 1.78e-4, 1e-4))
    seen.clear()
    with pytest.raises(MeasureError, match="more than --max-draws 50"):
        family.resolve(micro_run, capped)
    assert max(seen) == 1e-3 and min(seen) == 3.16e-4  # 0.01 / 1.78e-4 = 56 draws > 50
    llc_family.calibration_path(micro_run, capped.id).unlink()


def test_calibration_settings_key_the_request_not_the_result():
    """The calibration's fields key settings that ask for a calibration; once resolved (calibrate off)
    only the step sizes do, and fields added later leave old ids alone."""
    from interp_ext.families.llc import CALIBRATION_FIELDS, LLCSettings

    plain = LLCSettings(lr=3e-4, localization=1000.0)
    assert plain.id == LLCSettings(lr=3e-4, localization=1000.0, calibration_seeds="0,1,3").id
    assert not set(CALIBRATION_FIELDS) & set(plain.keyed())
    assert "max_draws" in CALIBRATION_FIELDS
    # settings rows were made under before the plateau calibration's fields existed keep their id
    before = LLCSettings(lr=3e-4, localization=1000.0, components="model", trace_probes=16)
    assert before.id == "llc-756a8f1a8e"
    assert "data" not in plain.keyed() and "component_lr" not in plain.keyed()
    assert LLCSettings(data="text").id != LLCSettings().id
    ask = LLCSettings(calibrate=True)
    assert ask.keyed()["calibration"] == "plateau"
    assert ask.id != LLCSettings(calibrate=True, calibration_steps="2000,4000").id


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


def test_a_circuit_with_an_mlp_is_restricted_to_its_heads_and_mlp_parameters():
    from circuits.circuit import Circuit
    from interp_ext.families.llc import LLCSettings
    from interp_ext.geometry.learning_coefficient import component_masks, flat_mask
    from tests.circuits.conftest import build_hand_built_mlp

    model = build_hand_built_mlp()
    circuit = Circuit("c", ["L1H0", "L0MLP"])
    masks = component_masks(model, circuit, LLCSettings(components="circuit"))
    expected = sum(circuit.n_params(model).values())
    assert int(flat_mask(model, masks["circuit"]).sum()) == expected


def test_rmsprop_eps_and_accumulation_reach_devinterp_and_key_only_when_set(monkeypatch):
    import devinterp.slt.sampling as devinterp_sampling

    from interp_ext.families.llc import LLCSettings
    from interp_ext.geometry.learning_coefficient import estimate
    from tests.circuits.conftest import build_hand_built_mlp

    seen = {}

    def fake_sample(**kwargs):
        seen.update(kwargs)
        raise RuntimeError("stand-in")

    monkeypatch.setattr(devinterp_sampling, "sample", fake_sample)
    data = [{"input_ids": torch.arange(8)}] * 4
    settings = LLCSettings(sampler="rmsprop", rmsprop_eps=1e-4, accumulation=3)
    out = estimate(build_hand_built_mlp(), data, None, settings)
    assert out["diverged"] == 1.0  # the stand-in's failure is reported as a failed chain
    assert seen["rmsprop_eps"] == 1e-4 and seen["gradient_accumulation_steps"] == 3
    assert LLCSettings().id == LLCSettings(rmsprop_eps=0.1, accumulation=1).id
    assert settings.id != LLCSettings(sampler="rmsprop").id
    with pytest.raises(Exception, match="rmsprop only"):
        LLCSettings(rmsprop_eps=1e-3).check()


def _paired(micro_run, **kw):
    """Small paired-trace settings, and the micro run's last checkpoint of seed 0 with their data."""
    from interp_ext.families.llc import LLCSettings, llc_data

    settings = LLCSettings(num_chains=2, batch_size=4, n_sequences=16, drift_trace="paired", **kw)
    return settings, micro_run.model(0, 6), llc_data(micro_run, 0, settings)


def test_the_paired_trace_pairs_each_sequence_with_itself(micro_run):
    """At a step size too small to move the parameters, each step's minibatch loss equals the same
    sequences' loss at the checkpoint: the paired trace is zero while devinterp's own trace still
    moves by the minibatches' spread (a wrong pairing would keep that spread). The samples'
    temporary directory is removed."""
    import glob
    import tempfile

    from devinterp.slt.sampling import sample

    from interp_ext.geometry.learning_coefficient import estimate, paired_trace

    settings, model, data = _paired(micro_run, lr=1e-14, num_draws=24, num_burnin_steps=4)
    with tempfile.TemporaryDirectory() as tmp:
        samples = sample(
            model=model,
            dataset=data,
            observables={},
            lr=settings.lr,
            n_beta=100.0,
            num_chains=2,
            num_draws=24,
            batch_size=4,
            device="cpu",
            output_path=f"{tmp}/s.zarr",
        )
        paired = paired_trace(model, data, samples)
        raw = samples.dataset.sampling_loss_micro.values.mean((-1, -2))
    assert paired.shape == raw.shape == (2, 24)
    assert np.abs(paired).max() < 1e-5
    assert raw.std() > 1e-3
    before = len(glob.glob(f"{tempfile.gettempdir()}/interp-ext-llc-*"))
    out = estimate(model, data, None, settings)
    assert abs(out["llc_paired"]) < 1e-3
    assert len(glob.glob(f"{tempfile.gettempdir()}/interp-ext-llc-*")) == before


def test_the_paired_drift_reads_the_chain_and_keys_only_when_set(micro_run):
    """At a sampling step size the paired trace's estimate agrees with devinterp's (the same
    expectation, the minibatch noise removed); the setting keys only when set; a bad value is named."""
    from interp_ext.families.llc import LLCSettings
    from interp_ext.geometry.learning_coefficient import estimate
    from interp_ext.measurement.runner import MeasureError

    settings, model, data = _paired(
        micro_run, lr=1e-4, localization=100.0, num_draws=60, num_burnin_steps=20
    )
    out = estimate(model, data, None, settings)
    assert out["llc"] > 0 and np.isfinite(out["trace_drift"])
    assert out["llc_paired"] == pytest.approx(out["llc"], rel=0.25)
    assert LLCSettings().id == LLCSettings(drift_trace="batch").id != settings.id
    with pytest.raises(MeasureError, match="drift_trace"):
        LLCSettings(drift_trace="minibatch")


def test_estimate_from_draws_makes_the_draws_estimate_the_llc(micro_run):
    """``--estimate-from draws``: ``llc`` and its chains are read from the draws after burn-in of the
    trace the criterion reads (by default devinterp's, every step averaged, stays ``llc`` and the
    draws' estimate is written beside it); the setting keys only when set; a bad value is named."""
    from interp_ext.families.llc import LLCSettings
    from interp_ext.geometry.learning_coefficient import estimate
    from interp_ext.measurement.runner import MeasureError

    settings, model, data = _paired(micro_run, lr=1e-4, localization=100.0, num_draws=40)
    default = estimate(model, data, None, settings)
    drawn = estimate(model, data, None, replace(settings, estimate_from="draws"))
    assert default["llc_draws"] == drawn["llc_draws"] == drawn["llc"] != default["llc"]
    assert np.mean(drawn["chains"]) == pytest.approx(drawn["llc"], rel=1e-9)
    assert drawn["llc_draws_se"] > 0 and drawn["llc_draws_ess"] > 0
    assert LLCSettings().id == LLCSettings(estimate_from="steps").id
    assert LLCSettings().id != LLCSettings(estimate_from="draws").id
    with pytest.raises(MeasureError, match="estimate_from"):
        LLCSettings(estimate_from="burnin")


def test_the_report_says_when_no_component_was_estimated(micro_run, tmp_path):
    """A measurement whose calibration found no plateau for any component has only ``calibrated`` 0
    rows: the section says so instead of drawing an empty figure."""
    import pandas as pd

    from interp_ext.families.llc.report import llc_section

    rows = pd.DataFrame(
        {
            "family": "llc",
            "metric": "calibrated",
            "component": "circuit",
            "seed": [0, 1],
            "step": 6,
            "value": 0.0,
            "settings": "llc-0000000000",
        }
    )
    lines = llc_section(rows, tmp_path, {}, micro_run)
    assert any("no plateau for circuit" in line for line in lines)
    assert not list(tmp_path.glob("llc.png"))


def test_the_report_states_the_chains_standard_error_when_rows_have_it():
    import pandas as pd

    from interp_ext.families.llc.report import standard_error_lines

    def rows(metrics: dict) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {"metric": k, "component": "model", "seed": s, "step": 6, "value": v * (1 + s)}
                for s in (0, 1)
                for k, v in metrics.items()
            ]
        ).assign(settings="llc-0000000000", family="llc")

    assert standard_error_lines(rows({"llc": 10.0})) == []  # rows from before the standard error
    (line,) = standard_error_lines(
        rows({"llc": 10.0, "llc_draws": 10.0, "llc_draws_se": 0.5, "llc_draws_ess": 40.0})
    )
    assert "median 5.0% of it" in line and "effective draws median 60" in line


def test_the_drift_standard_error_matches_the_spread_of_flat_traces():
    """On stationary AR(1) traces (no trend; correlated like a chain) the drift divided by its
    standard error spreads like a standard normal, and a trace with a trend stands out of it."""
    from interp_ext.geometry.learning_coefficient import trace_drift, trace_drift_se

    rng = np.random.default_rng(0)

    def ar1(n: int, rho: float = 0.9) -> np.ndarray:
        e = rng.normal(size=(2, n))
        x = np.zeros((2, n))
        for i in range(1, n):
            x[:, i] = rho * x[:, i - 1] + e[:, i]
        return 20.0 + x  # a rise of 20 with unit-scale noise

    z = []
    for _ in range(60):
        rise = ar1(1200)
        z.append(trace_drift(rise, 0.0, 200) / trace_drift_se(rise, 200))
    assert abs(np.mean(z)) < 0.45 and 0.7 < np.std(z) < 1.4, (np.mean(z), np.std(z))
    rise = ar1(1200)
    trend = rise + np.linspace(0, 20.0, 1200)  # the rise doubles along the chain
    assert trace_drift(trend, 0.0, 200) / trace_drift_se(trend, 200) > 3


def test_quadratic_rows_are_the_closed_form_on_the_heads_dense_autograd_hessian(
    micro_run, monkeypatch
):
    """``quadratic``: each head's Hessian block and gradient on the estimate's own data, against
    torch.autograd's dense Hessian of the same loss over the head's coordinates."""
    from interp_ext import measure
    from interp_ext.families.llc import LLCSettings, llc_data
    from interp_ext.geometry.learning_coefficient import component_masks, quadratic_llc

    settings = LLCSettings(
        num_chains=1,
        num_draws=4,
        num_burnin_steps=0,
        batch_size=4,
        n_sequences=8,
        components="L1H1",
        trace_probes=0,
        localization=300.0,
        quadratic=True,
    )
    rows = measure(micro_run, settings, seeds=[1], steps=[6], progress=False)
    got = rows[rows.seed == 1].set_index("metric").value
    run = micro_run
    model = run.model(1, 6)
    tokens = torch.as_tensor(np.asarray(llc_data(run, 1, settings)["input_ids"]))
    masks = component_masks(model, None, settings)["L1H1"]
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    where = {n: m.bool() for n, m in masks.items()}
    x0 = torch.cat([params[n][where[n]] for n in where]).double()

    def loss(x):
        full, start = dict(params), 0
        for n, w in where.items():
            k = int(w.sum())
            t = params[n].double().clone()
            t[w] = x[start : start + k]
            full[n] = t.to(params[n].dtype)
            start += k
        return torch.func.functional_call(model, full, (tokens,), {"return_type": "loss"})

    dense = torch.autograd.functional.hessian(loss, x0).numpy()
    g = torch.autograd.functional.jacobian(loss, x0).numpy()
    n = tokens.shape[0] * (tokens.shape[1] - 1)
    want = quadratic_llc((dense + dense.T) / 2, g, n / math.log(n), 300.0)
    assert got["improper_directions"] == want["improper"]
    for metric, key in [
        ("llc_quadratic_count", "count"),
        ("llc_quadratic_gradient", "gradient_term"),
        ("hessian_min", "hessian_min"),
        ("hessian_max", "hessian_max"),
        ("gradient_norm", "gradient_norm"),
    ]:
        assert got[metric] == pytest.approx(want[key], rel=1e-3, abs=1e-6), metric
    assert "llc" in got.index  # the SGLD estimate beside it
    assert settings.id != replace(settings, quadratic=False).id
    # above the dense limit (here set below a head's size) the gradient term alone, by CG
    monkeypatch.setattr("interp_ext.geometry.learning_coefficient.DENSE_LIMIT", 10)
    wide = measure(micro_run, replace(settings, seed=101), seeds=[1], steps=[6], progress=False)
    wide = wide[wide.seed == 1].set_index("metric").value
    assert "llc_quadratic_count" not in wide.index
    assert want["improper"] == 0  # localisation 300 holds this head's negative curvature
    assert wide["quadratic_proper"] == 1
    assert wide["llc_quadratic_gradient"] == pytest.approx(want["gradient_term"], rel=1e-3)


def test_the_report_states_the_gradients_pull_beside_quadratic_rows():
    import pandas as pd

    from interp_ext.families.llc.report import quadratic_lines

    def rows(component: str, metrics: dict) -> list[dict]:
        return [
            {"metric": k, "component": component, "seed": 0, "step": 6, "value": v}
            for k, v in metrics.items()
        ]

    head = {"llc": 5.0, "llc_quadratic_count": 10.0, "llc_quadratic_gradient": -8.0}
    other = {**head, "llc_quadratic_gradient": -2.0, "improper_directions": 3.0}
    circuit = {"llc": 40.0, "llc_quadratic_gradient": -4.0, "quadratic_proper": 1.0}
    m = pd.DataFrame(
        rows("L1H3", {**head, "improper_directions": 0.0})
        + rows("L1H1", other)
        + rows("circuit", circuit)
    ).assign(settings="llc-0000000000", family="llc")
    assert quadratic_lines(m[~m.metric.str.contains("quadratic")]) == []
    heads, wide = quadratic_lines(m)
    assert "2 head estimates" in heads and "50% of the curvature count" in heads
    assert "20% to 80%" in heads and "does not exist for 1 of them" in heads
    assert "1 larger components" in wide and "-10% of the estimate" in wide
