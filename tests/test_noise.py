"""Noise apart from data per step: the arms' gradient and AdamW, the lockstep replay, censoring."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from interp_ext import measure
from interp_ext.adamw import adamw_step
from interp_ext.families.noise import NoiseSettings, noise_scale_of, seed_outcomes
from interp_ext.measurement.runner import MeasureError
from interp_ext.training import train
from interp_ext.trajectory import Arm, ArmReplay, ArmState, Replay, step_tokens, walk
from tests.conftest import micro_config

CIRCUIT = "L1H0,L0H1"
# the arms most tests measure on the micro run
ARMS = dict(
    window="4:8", mean_batches=2, scales="0,1", batch_sizes="2,8", record_every=2, circuit=CIRCUIT
)


@pytest.fixture(scope="module")
def noise_run(tmp_path_factory, cache_dir):
    cfg = micro_config(steps=8, checkpoint_every=4)
    return train(cfg, tmp_path_factory.mktemp("noise") / "run", progress=False, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def noise_rows(noise_run):
    return measure(noise_run, NoiseSettings(**ARMS), seeds=[0], progress=False)


def test_adamw_written_out_is_torchs_adamw():
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(50, generator=gen)
    ref = torch.nn.Parameter(theta.clone())
    opt = torch.optim.AdamW([ref], lr=3e-3, betas=(0.9, 0.999), weight_decay=0.01, foreach=False)
    mine, m, v = theta.clone(), torch.zeros(50), torch.zeros(50)
    for count in range(5):
        g = torch.randn(50, generator=gen)
        ref.grad = g.clone()
        opt.step()
        adamw_step(mine, g, m, v, count, 3e-3, (0.9, 0.999), 0.01)
    assert torch.allclose(mine, ref.detach(), rtol=1e-6, atol=1e-9)
    assert torch.allclose(v, opt.state[ref]["exp_avg_sq"], rtol=1e-6)
    fed = torch.rand(50, generator=gen)
    adamw_step(mine, g, m, v, 5, 3e-3, (0.9, 0.999), 0.01, v_fed=fed)
    assert torch.equal(v, fed)  # a fed second moment replaces the arm's own


@pytest.mark.parametrize("c", [0.0, 1.0, math.sqrt(2)])
def test_an_arms_gradient_is_the_mean_plus_c_times_xi_by_brute_force(noise_run, c):
    state = ArmState(noise_run, 0, 4, Arm("arm", c=c))
    tokens = step_tokens(noise_run, 0, 4, 3)
    params = [p for _, p in state.model.named_parameters()]
    grad = state.gradient(tokens, 4, 3, noise_run.config, chunk=3)  # chunks cut across batches
    got = [grad[n] for n, _ in state.model.named_parameters()]

    def grad_of(rows):
        loss = state.model(rows, return_type="loss")
        return torch.autograd.grad(loss, params)

    batches = [grad_of(tokens[4 * j : 4 * (j + 1)]) for j in range(5)]
    for i, g in enumerate(got):
        mean = sum(b[i] for b in batches[:3]) / 3
        xi = (batches[3][i] - batches[4][i]) / math.sqrt(2)
        assert torch.allclose(g, mean + c * xi, rtol=1e-4, atol=1e-7)


def test_every_arm_and_the_real_run_are_recorded_and_the_real_run_is_its_checkpoint(
    noise_run, noise_rows
):
    traj = noise_rows[(noise_rows.seed == 0) & (noise_rows.step >= 0) & (noise_rows.variant != "")]
    assert set(traj.variant) == {
        "real",
        "c0/own",
        "c0/fed",
        "c1/own",
        "c1/fed",
        "batch2",
        "batch8",
    }
    grid = traj[traj.metric == "E_C"]
    assert sorted(grid.step.unique()) == [4, 6, 8]
    start = grid[grid.step == 4].value
    assert np.allclose(start, start.iloc[0])  # every arm starts from the same checkpoint
    per_step = traj[traj.metric == "update_norm"]
    assert sorted(per_step.step.unique()) == [4, 5, 6, 7]  # logged at every step
    assert (traj[traj.metric == "inv_sqrt_vhat"].value > 0).all()
    end = grid[grid.step == 8].set_index("variant").value
    assert end["c1/own"] != end["c1/fed"] and end["c0/own"] != end["c1/own"]
    b_noise = noise_rows[noise_rows.metric == "B_noise"]
    assert len(b_noise) == 1 and b_noise.step.iloc[0] == 4


def test_c0_with_its_own_v_is_torchs_adamw_on_the_mean_of_m_batches(noise_run):
    """The arm c0/own steps on g_bar_M alone: torch's AdamW (the trainer's, from the same
    checkpoint state) on the mean loss of the real batch and M - 1 fresh ones lands on the same
    weights, to float rounding."""
    from interp_ext.adamw import optimizer_for
    from interp_ext.data import MEAN_DRAWS

    arm = ArmReplay(noise_run, 0, 4, Arm.parse("c0/own"), mean_batches=2)
    walk(arm, 8)
    model = noise_run.model(0, 4)
    opt = optimizer_for(model, noise_run.config.train, noise_run.checkpoint(0, 4))
    for step in range(4, 8):
        tokens = torch.cat([noise_run.batch(0, step), noise_run.batch(0, step, draw=MEAN_DRAWS)])
        model(tokens, return_type="loss").backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    ours = dict(arm.model.named_parameters())
    for n, p in model.named_parameters():
        if n.endswith("b_K"):  # no true gradient: AdamW scales its rounding noise up to lr
            continue
        torch.testing.assert_close(ours[n], p, rtol=1e-4, atol=1e-6, msg=n)


def test_outcomes_carry_tokens_and_censoring(noise_rows):
    out = noise_rows[(noise_rows.seed == 0) & (noise_rows.step < 0)].pivot_table(
        index="variant", columns="metric", values="value"
    )
    n_ctx = 16
    assert out.loc["c1/own", "tokens_per_step"] == 2 * 4 * n_ctx  # the M mean batches
    assert out.loc["batch8", "tokens_per_step"] == 8 * n_ctx
    assert out.loc["real", "tokens_per_step"] == 4 * n_ctx
    censored = out[out.censored > 0]
    assert (censored.formation_bound == 8).all() and (censored.steps_to_formation == 4).all()
    assert np.allclose(
        out.formation_tokens, out.steps_to_formation * out.tokens_per_step, equal_nan=True
    )
    summary = noise_rows[noise_rows.seed < 0]
    assert {"steps_to_formation/km_median", "formed/seeds"} <= set(summary.metric)


def test_a_seed_that_never_forms_is_censored_not_dropped(noise_run):
    settings = NoiseSettings(window="0:200", scales="1", batch_sizes="", second_moment="own")
    steps = np.arange(0, 201, 50)
    rows = pd.DataFrame(
        [
            {"step": int(s), "metric": "induction_score", "value": v, "variant": name}
            for name, values in (("c1/own", [0.1, 0.1, 0.2, 0.6, 0.7]), ("real", [0.1] * 5))
            for s, v in zip(steps, values)
        ]
        + [
            {"step": int(s), "metric": "E_C", "value": 1.0, "variant": name}
            for name in ("c1/own", "real")
            for s in steps
        ]
    )
    out = seed_outcomes(noise_run, rows, settings).pivot_table(
        index="variant", columns="metric", values="value"
    )
    assert out.loc["real", "censored"] == 1 and out.loc["real", "formation_bound"] == 200
    assert out.loc["c1/own", "formation_step"] == 125 and out.loc["c1/own", "censored"] == 0


def test_noise_scale_recovers_a_known_covariance():
    gen = torch.Generator().manual_seed(0)
    n_params, batch, n = 200, 8, 4000
    mean = torch.full((n_params,), 0.05)
    sigma_seq = 0.2  # per-sequence variance per coordinate: tr(Sigma) = 200 x 0.2 = 40
    grads = mean + torch.randn(n, n_params, generator=gen) * math.sqrt(sigma_seq / batch)
    got = noise_scale_of(grads, batch)
    assert got["trace_sigma"] == pytest.approx(40.0, rel=0.02)
    assert got["mean_grad_sq"] == pytest.approx(0.5, rel=0.05)
    assert got["B_noise"] == pytest.approx(80.0, rel=0.06)


def test_a_batch_arm_larger_than_a_step_reads_is_refused(noise_run):
    with pytest.raises(MeasureError, match="batch_sizes"):
        measure(
            noise_run,
            NoiseSettings(window="4:8", mean_batches=2, batch_sizes="64", circuit=CIRCUIT),
            progress=False,
        )


def test_a_fed_arm_ends_with_the_real_runs_second_moment(noise_run):
    real = Replay(noise_run, 0, 4)
    arm = ArmState(noise_run, 0, 4, Arm("c1/fed", c=1.0, fed=True))
    own = ArmState(noise_run, 0, 4, Arm("c1/own", c=1.0))
    for step in range(4, 8):
        v_real = real.take().new_exp_avg_sq
        tokens = step_tokens(noise_run, 0, step, 2)
        for a in (arm, own):
            a.take(a.gradient(tokens, 4, 2, noise_run.config), v_real)
    saved = noise_run.checkpoint(0, 8)["exp_avg_sq"]
    assert all(torch.equal(arm.v[n], saved[n]) for n in arm.names)
    assert not all(torch.equal(own.v[n], saved[n]) for n in own.names)


def test_the_report_draws_the_arms_and_the_censored_table(noise_run, noise_rows, tmp_path):
    from interp_ext.families.noise.report import noise_section

    lines = noise_section(noise_rows.assign(family="noise"), tmp_path)
    text = "\n".join(lines)
    assert "## Noise apart from data per step" in text and "Kaplan-Meier" in text
    assert (tmp_path / "noise_arms.png").exists() and (tmp_path / "noise_arms.html").exists()
    assert (tmp_path / "noise_batch_sweep.png").exists()
    row = next(line for line in lines if line.startswith("| c0/own |"))
    assert " of 1 |" in row


def test_arm_names_parse_back_to_their_arms():
    assert Arm.parse("c0/own") == Arm("c0/own", c=0.0)
    assert Arm.parse("csqrt2/fed") == Arm("csqrt2/fed", c=math.sqrt(2), fed=True)
    assert Arm.parse("batch64") == Arm("batch64", rows=64)
    with pytest.raises(ValueError, match="no arm"):
        Arm.parse("c1")


def test_an_arm_replays_steps_whose_parts_add_up_to_its_update(noise_run):
    from interp_ext.adamw import momentum_split

    replay = ArmReplay(noise_run, 0, 4, Arm.parse("c1/fed"), mean_batches=2)
    steps: list = []
    walk(replay, 6, steps.append)
    assert [s.step for s in steps] == [4, 5] and replay.step == 6
    saved_v6 = Replay(noise_run, 0, 4)
    v_real = [saved_v6.take().new_exp_avg_sq for _ in range(2)]
    assert all(torch.equal(steps[1].new_exp_avg_sq[n], v_real[1][n]) for n in v_real[1])
    parts = momentum_split(steps[1], noise_run.config.train)
    last = steps[1]
    for n, u in last.update.items():
        total = parts["inherited"][n] + parts["fresh"][n] + parts["decay"][n]
        # the update is a difference of float32 parameters, rounded twice (the decay, then the
        # step): exact to a few ulp of theta
        ulp = torch.finfo(torch.float32).eps * (last.theta[n].abs() + (last.theta[n] + u).abs())
        assert ((total - u).abs() <= 4 * ulp + 1e-12).all(), n
    with pytest.raises(Exception, match="no checkpoint to reproduce"):
        replay.verify()


def test_a_batch_arms_gradient_is_the_mean_over_its_rows(noise_run):
    state = ArmState(noise_run, 0, 4, Arm.parse("batch6"))
    tokens = step_tokens(noise_run, 0, 4, 3)
    grad = state.gradient(tokens, 4, 3, noise_run.config, chunk=4)
    params = dict(state.model.named_parameters())
    loss = state.model(tokens[:6], return_type="loss")
    expected = torch.autograd.grad(loss, list(params.values()))
    for (n, _), e in zip(params.items(), expected):
        assert torch.allclose(grad[n], e, rtol=1e-4, atol=1e-7), n


def test_a_noise_arm_is_compared_with_c1_of_the_same_second_moment():
    """c0/fed against c1/fed, not against c1/own: on this hand case c0/fed forms after c1/fed on
    every seed but before c1/own."""
    from interp_ext.families.noise import across_seeds

    times = {"c1/own": 300, "c1/fed": 100, "c0/fed": 200, "c0/own": 50, "real": 400}
    rows = pd.DataFrame(
        [
            {"seed": seed, "step": -1, "metric": metric, "value": value, "variant": arm}
            for seed in range(3)
            for arm, t in times.items()
            for metric, value in (
                ("steps_to_formation", t + seed),
                ("formation_tokens", 10 * t),
                ("censored", 0.0),
            )
        ]
    )
    out = across_seeds(rows, "batch32").set_index(["variant", "metric"]).value
    assert out["c0/fed", "vs_reference/seeds_later"] == 3  # against c1/fed
    assert out["c0/own", "vs_reference/seeds_earlier"] == 3  # against c1/own
    assert ("c1/fed", "vs_reference/seeds_later") not in out.index  # the reference itself
    assert out["real", "vs_reference/seeds_later"] == 3  # the real run against c1/own


def test_the_report_draws_every_noise_measurement_of_a_run(noise_run, noise_rows, tmp_path):
    """Arms with the real run's second moment measured apart from the rest: both in the report,
    each with its own figures and its own summaries."""
    from interp_ext.families.noise import across_seeds
    from interp_ext.families.noise.report import section
    from interp_ext.report.draw import Page

    fed = NoiseSettings(
        window="4:8",
        mean_batches=2,
        scales="0,1",
        batch_sizes="",
        second_moment="fed",
        record_every=2,
        circuit=CIRCUIT,
    )
    fed_rows = measure(noise_run, fed, seeds=[0], progress=False)
    lines = section(Page(noise_run, fed_rows.assign(family="noise"), tmp_path, {}), across_seeds)
    heads = [line for line in lines if line.startswith("### `noise-")]
    assert len(heads) == 2 and any("second_moment fed" in h for h in heads)
    for settings_id in set(noise_rows.settings) | set(fed_rows.settings):
        assert (tmp_path / f"noise_arms_{settings_id}.png").exists()
    fed_start = lines.index(next(h for h in heads if "fed" in h))
    together = lines.index(next(line for line in lines if line.startswith("### Together")))
    fed_table = lines[fed_start:together]
    assert any(line.startswith("| c0/fed |") for line in fed_table)
    assert not any(line.startswith("| c0/own |") for line in fed_table)
    # read together: every arm of both, the arms measured twice agreeing
    pooled = lines[together:]
    assert all(i in pooled[0] for i in set(noise_rows.settings) | set(fed_rows.settings))
    assert any("form at the same step in both" in line for line in pooled)
    assert {"| c0/own |", "| c0/fed |", "| batch8 |"} <= {
        line[: line.find("|", 2) + 1] for line in pooled
    }


# A slow arm's curve from the study (seed 1, 16 sequences per step, every 50 steps from 2,000):
# above the threshold at 2,600, but still climbing as fast as ever to the window's end.
SLOW = [0.061, 0.057, 0.067, 0.074, 0.077, 0.082, 0.088, 0.108, 0.120, 0.143, 0.198, 0.333]
SLOW += [0.449, 0.579, 0.699, 0.838]
# the real run of the same seed: formed and levelled off
REAL = [0.061, 0.065, 0.076, 0.101, 0.103, 0.155, 0.259, 0.469, 0.693, 0.831, 0.869, 0.897]
REAL += [0.917, 0.913, 0.921, 0.932]


@pytest.mark.parametrize("after", [50, 100])
def test_an_arm_stops_only_after_its_steepest_rise_and_keeps_its_formation_step(after):
    from circuits.induction import formation_step
    from interp_ext.families.noise import has_formed

    steps = np.arange(2000, 2751, 50)
    first = next(
        k for k in range(len(steps)) if has_formed(steps[: k + 1], REAL[: k + 1], 0.4, after)
    )
    # the steepest rise is 2,350-2,400 (+0.224); at 2,450 it lies 50 steps behind but the last
    # interval still rose +0.138, more than half of it; at 2,500 +0.038
    assert steps[first] == 2500
    assert formation_step(steps[: first + 1], REAL[: first + 1]) == formation_step(steps, REAL)
    # a curve still climbing steeply is never stopped, although it passed the threshold
    assert not any(has_formed(steps[: k + 1], SLOW[: k + 1], 0.4, after) for k in range(len(steps)))
    # below the threshold nothing stops, however flat
    assert not has_formed(steps, np.full(len(steps), 0.3), 0.4, after)


def test_a_stopped_arm_leaves_the_other_arms_and_the_real_run_bit_for_bit(
    tmp_path, cache_dir, noise_rows, monkeypatch
):
    """Stop every arm after its second record (a stand-in for formation): each arm's rows end
    there, the real run goes on to the window's end, and every value recorded is the one the
    run without stopping recorded. (On a second training of the same run, so the stand-in's
    rows stay out of the shared run's reports.)"""
    import interp_ext.families.noise as noise

    noise_run = train(
        micro_config(steps=8, checkpoint_every=4),
        tmp_path / "run",
        progress=False,
        cache_dir=cache_dir,
    )

    monkeypatch.setattr(
        noise, "has_formed", lambda steps, scores, threshold, after: len(steps) >= 2
    )
    settings = NoiseSettings(**ARMS, stop_after=2)
    rows = measure(noise_run, settings, seeds=[0], progress=False)
    assert rows.settings.iloc[0] != noise_rows.settings.iloc[0]  # keyed apart
    traj = rows[(rows.step >= 0) & (rows.variant != "")]
    last = traj[traj.metric == "E_C"].groupby("variant").step.max()
    assert last["real"] == 8 and (last.drop("real") == 6).all()
    assert traj[traj.metric == "update_norm"].step.max() == 5
    cols = ["step", "metric", "variant"]
    ref = noise_rows[(noise_rows.step >= 0) & (noise_rows.variant != "")]
    merged = traj.merge(ref, on=cols, suffixes=("", "_full"))
    assert len(merged) == len(traj) and (merged.value == merged.value_full).all()
    out = rows[(rows.seed == 0) & (rows.step < 0)].pivot_table(
        index="variant", columns="metric", values="value"
    )
    assert out.loc["c1/own", "last_step"] == 6 and out.loc["real", "last_step"] == 8


def test_stopping_is_keyed_only_when_set():
    """A measurement made before ``stop_after`` existed keeps its id (the study's own arms)."""
    settings = dict(
        window="auto", margin=250, record_every=50, threshold=0.4, circuit="cause",
        n_batches=None, source="circuit-dd1d40c760", formation="induction-1ccca5f8e3",
        mean_batches=16, scales="0,1,sqrt2", second_moment="own", batch_sizes="16,32,64,128",
    )  # fmt: skip
    assert NoiseSettings(**settings).id == "noise-3c0c972aba"
    assert NoiseSettings(**settings, stop_after=50).id != "noise-3c0c972aba"


def test_pooled_measurements_name_an_arm_whose_formation_differs():
    """Measurements of the same replays are read together only where they agree: an arm
    measured twice with different outcomes is named; other settings are never pooled."""
    from interp_ext.families.noise.report import pool

    def outcome(seed, arm, steps, censored=0.0):
        return pd.DataFrame(
            [
                {"seed": seed, "step": -1, "variant": arm, "metric": m, "value": v}
                for m, v in (("steps_to_formation", steps), ("censored", censored))
            ]
        )

    base = {"window": "auto", "margin": 250, "mean_batches": 16}
    a = ("noise-a", {**base, "second_moment": "own"}, outcome(1, "c1/own", 375))
    b = ("noise-b", {**base, "second_moment": "both", "stop_after": 50}, outcome(1, "c1/own", 425))
    c = ("noise-c", {**base, "margin": 500}, outcome(1, "c1/own", 375))
    ((ids, per, disagree),) = pool([a, b, c])
    assert ids == ["noise-a", "noise-b"]
    assert disagree == ["seed 1 c1/own: 425 vs 375 (noise-a)"]
    assert one_value(per) == 425  # the newest measurement's


def one_value(per):
    return float(per[per.metric == "steps_to_formation"].value.iloc[0])


def test_the_batch_arms_give_the_critical_batch_over_seeds():
    """B_crit of the seeds' mean S(B) from the batch arms' steps to formation, with its bootstrap
    interval; a seed with a censored batch arm is left out of it."""
    from interp_ext.families.noise import across_seeds
    from interp_ext.stats import critical_batch_over_seeds

    steps = {0: [725, 375, 275, 225], 1: [675, 375, 275, 225], 2: [475, 275, 225, 225]}
    sizes = [16, 32, 64, 128]
    rows = pd.DataFrame(
        [
            {"seed": seed, "step": -1, "metric": metric, "value": value, "variant": f"batch{b}"}
            for seed, values in {**steps, 3: [750, 400, 300, 250]}.items()
            for b, t in zip(sizes, values)
            for metric, value in (
                ("steps_to_formation", t),
                ("formation_tokens", 10 * t),
                ("censored", float(seed == 3 and b == 16)),
            )
        ]
    )
    out = across_seeds(rows, "batch32").set_index(["variant", "metric"]).value
    want = critical_batch_over_seeds(pd.DataFrame(steps.values(), columns=sizes))
    assert out["batch", "B_crit/mean_curve"] == pytest.approx(want["B_crit"])
    assert out["batch", "B_crit/seed_n"] == 3 and out["batch", "B_crit/distinct"] == 10
    assert out["batch", "B_crit/lo"] <= want["B_crit"] <= out["batch", "B_crit/hi"]
