"""The exact Stream 3 ledger: Gauss-Legendre work against the reference toy (a logistic regression
with no circuit in it), closure on a replayed run, exact splits, the shadow moment, scaled replays."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from interp_ext import measure
from interp_ext.adamw import momentum_split, update_from_moment
from interp_ext.families.work import WorkSettings, momentum_horizon
from interp_ext.stream3.energy import EnergyProbe
from interp_ext.stream3.line_integrals import RULES, line_integrands, work_of
from interp_ext.training import train
from interp_ext.trajectory import Replay, walk
from tests.conftest import micro_config

TOY = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ledger_toy.py"
CIRCUIT = "L1H0,L0H1"
# a short span of the micro run, every step measured: the arm tests' settings
ARM_SPAN = dict(window="4:8", every=1, detail_every=2, drift_batches=2, circuit=CIRCUIT)


@pytest.fixture(scope="module")
def toy():
    if not TOY.exists():
        pytest.skip(f"the reference toy {TOY} is not here")
    return runpy.run_path(str(TOY), run_name="toy")  # runs the toy once (about a second)


def test_gauss_legendre_work_equals_the_reference_toys(toy):
    """On the toy's own model, probe batches and a real AdamW step, the work computed by this
    package (torch.func HVPs through EnergyProbe) equals the toy's numpy 2-point Gauss-Legendre
    attribution, and closes dE to the toy's 1e-7."""
    X, y, probe, C = (
        torch.tensor(toy[k]) if k != "probe" else toy[k] for k in ("X", "y", "probe", "C")
    )
    batches = torch.tensor(np.stack(probe))

    def loss_fn(params, idx):
        z = y[idx] * (X[idx] @ params["w"])
        return torch.nn.functional.softplus(-z).mean()

    def probe_at(theta):
        return EnergyProbe(loss_fn, {"w": theta["w"].double()}, batches, chunk=4)

    rng = np.random.default_rng(1)
    for _ in range(5):
        w = rng.normal(size=X.shape[1]) * 0.3
        step = rng.normal(size=X.shape[1]) * 0.01  # the size of one of the toy's AdamW steps
        (s1, _), (s2, _) = RULES["gl2"]
        expected = 0.5 * (toy["gradE"](w + s1 * step) + toy["gradE"](w + s2 * step)) @ step
        midpoint = toy["gradE"](w + 0.5 * step) @ step
        theta, d = {"w": torch.tensor(w)}, {"w": torch.tensor(step)}
        mask = C.bool()
        for rule, reference in (("gl2", expected), ("midpoint", midpoint)):
            shared = {"real": d["w"].double()}
            grads, c = line_integrands(theta, d, {"C": mask}, shared, probe_at, rule)
            by_gradient = float(grads["C"] @ d["w"].double())  # I_C . d
            by_symmetry = work_of(c["real"], mask)  # (2/B) sum_b (P_C g_b) . H_b d
            assert by_gradient == pytest.approx(reference, rel=1e-9, abs=1e-14), rule
            assert by_symmetry == pytest.approx(reference, rel=1e-9, abs=1e-14), rule
        d_e = toy["E"](w + step) - toy["E"](w)
        assert abs(d_e - expected) < 1e-8
        assert abs(d_e - midpoint) < 1e-2 * abs(d_e) + 1e-9  # third order: looser per step
    # and the reference's own closure over its 2,500 steps
    sums = toy["S"]
    assert abs(sums[0] - sums[5]) < 1e-6


def test_the_momentum_horizon():
    assert momentum_horizon(0.9) == 67 and 0.9**66 < 1e-3 < 0.9**64


@pytest.fixture(scope="module")
def work_run(tmp_path_factory, cache_dir):
    cfg = micro_config(steps=8, checkpoint_every=4)
    return train(cfg, tmp_path_factory.mktemp("work") / "run", progress=False, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def every_step(work_run):
    settings = WorkSettings(
        window="4:8",
        every=1,
        detail_every=2,
        drift_batches=2,
        circuit=CIRCUIT,
        controls=1,
        rule="gl2",
    )
    return measure(work_run, settings, progress=False)


def window_of(rows, metric, component="C", seed=0):
    sel = rows[(rows.seed == seed) & (rows.metric == metric) & (rows.component == component)]
    return sel[sel.step >= 0].sort_values("step")


def test_the_work_of_every_step_closes_the_telescoped_change(every_step):
    for seed in (0, 1):
        work = window_of(every_step, "work", seed=seed)
        assert work.step.tolist() == [4, 5, 6, 7]
        per = every_step[(every_step.seed == seed) & (every_step.step == -1)]
        exact = per[(per.metric == "dE/exact") & (per.component == "C@window")].value.item()
        assert work.value.sum() == pytest.approx(exact, rel=1e-2)
        remainder = window_of(every_step, "work_remainder", seed=seed).value.abs()
        assert (remainder <= 1e-3 * work.value.abs().max() + 1e-12).all()


def test_every_split_adds_up_to_the_work(every_step):
    """drift + noise = work for every set and step measured; the circuit's blocks add up to its
    work; and the two routes to the integrand agree: E_C is the sum of its members' energies, so
    the circuit's work by grad E_C . d equals the sum of its members' works by the symmetric
    contributions (2/B) sum (P_m g_b) . (H_b d)."""
    rows = every_step[(every_step.seed == 0) & (every_step.step >= 0)]
    by = rows.pivot_table(index=["step", "component"], columns="metric", values="value")
    split = by.dropna(subset=["work/drift"])
    np.testing.assert_allclose(
        split["work/drift"] + split["work/noise"], split["work"], rtol=1e-9, atol=1e-15
    )
    detail = sorted(rows[rows.metric == "curv_noise"].step.unique())
    every_set = {"C", "L1H0", "L0H1", "rest", "EMBED"}
    for step in rows[rows.metric == "work"].step.unique():
        have = set(split.loc[step].index) if step in split.index.get_level_values(0) else set()
        assert have >= (every_set if step in detail else {"C"}), step
        assert by.loc[step].dE.notna().sum() >= len(every_set)  # every set's change, every step
        if step not in detail:
            assert have == {"C"}
            continue
        members = by.loc[(step, "L1H0"), "work"] + by.loc[(step, "L0H1"), "work"]
        assert members == pytest.approx(by.loc[(step, "C"), "work"], rel=1e-5)  # float32 HVPs
    blocks = rows[(rows.metric == "work_by") & (rows.component != "C|C")]
    for step, g in blocks.groupby("step"):
        assert g.value.sum() == pytest.approx(by.loc[(step, "C"), "work"], rel=1e-9)
        own = g[g.component.isin(["C|L1H0", "C|L0H1"])].value.sum()
        cc = rows[(rows.step == step) & (rows.metric == "work_by") & (rows.component == "C|C")]
        assert own == pytest.approx(cc.value.item(), rel=1e-9)


def test_detail_steps_carry_the_nulls_and_curvature(every_step):
    rows = every_step[(every_step.seed == 0) & (every_step.step >= 0)]
    detail = sorted(rows[rows.metric == "curv_noise"].step.unique())
    assert detail == [4, 6]
    assert set(rows[rows.metric == "work_drift_by_random"].component) == {"C|C"}


def test_the_replay_is_verified_and_a_tampered_checkpoint_refused(work_run, tmp_path):
    import shutil

    from interp_ext import open_run
    from interp_ext.errors import MeasureError
    from interp_ext.run.checkpoints import load_checkpoint, save_checkpoint

    copy = tmp_path / "copy"
    shutil.copytree(work_run.path, copy, ignore=shutil.ignore_patterns("metrics", "measurements"))
    path = copy / "checkpoints" / "seed=0" / "step=8.safetensors"
    ck = load_checkpoint(path)
    ck["params"]["embed.W_E"][0, 0] += 1e-3
    save_checkpoint(path, ck["params"], 0, 8, ck["exp_avg"], ck["exp_avg_sq"], ck["adam_step"])
    with pytest.raises(MeasureError, match="does not reproduce"):
        measure(
            open_run(copy),
            WorkSettings(window="4:8", every=4, detail_every=4, drift_batches=1, circuit=CIRCUIT),
            seeds=[0],
            progress=False,
        )


def test_the_drift_built_from_the_real_moment_is_the_real_update(work_run):
    """update_from_moment with the real m_tau reproduces the real AdamW step to rounding (the real
    update is a difference of float32 parameters computed in float32: within a few ulps of the
    tensor's largest parameter), and
    the momentum split adds up to it: the drift / noise split differs from it only in the moment."""
    replay = Replay(work_run, 0, 4)
    step = replay.take()
    b1 = work_run.config.train.betas[0]
    m_tau = {n: b1 * step.exp_avg[n] + (1 - b1) * step.grad[n] for n in step.theta}
    rebuilt = update_from_moment(step, m_tau, work_run.config.train)
    parts = momentum_split(step, work_run.config.train)
    for n in step.theta:
        real = step.update[n].double()
        ulp = 2 * torch.finfo(torch.float32).eps * float(step.theta[n].abs().max())
        assert ((rebuilt[n] - real).abs() <= ulp + 1e-9).all(), n
        total = parts["inherited"][n] + parts["fresh"][n] + parts["decay"][n]
        assert ((total.double() - real).abs() <= ulp + 1e-9).all(), n


def test_a_scaled_replay_covers_the_same_span_at_finer_steps(work_run):
    """At scale 2 the same real steps are measured, each row holding both of its steps at lr / 2
    (a ``substeps`` row says so), and the work still closes each measured step's change."""
    settings = WorkSettings(
        window="4:8", every=2, detail_every=2, drift_batches=2, circuit=CIRCUIT, controls=0, scale=2
    )
    rows = measure(work_run, settings, seeds=[0], progress=False)
    work = window_of(rows, "work")
    assert work.step.tolist() == [4, 6]
    assert window_of(rows, "substeps", component="").value.tolist() == [2.0, 2.0]
    remainder = window_of(rows, "work_remainder").value.abs()
    assert (remainder <= 1e-3 * work.value.abs().max() + 1e-12).all()
    real = measure(
        work_run,
        WorkSettings(
            window="4:8", every=2, detail_every=2, drift_batches=2, circuit=CIRCUIT, controls=0
        ),
        seeds=[0],
        progress=False,
    )
    assert window_of(real, "substeps", component="").empty  # the real steps: one per row
    # two steps at lr / 2 make a path about as long as one real step
    norms = rows[(rows.metric == "update_norm") & (rows.component == "real")].value.to_numpy()
    full = real[(real.metric == "update_norm") & (real.component == "real")].value.to_numpy()
    assert np.all((norms / full > 0.8) & (norms / full < 1.25))


def window_sum(rows, metric, component="C", seed=0) -> tuple[float, float]:
    per = rows[(rows.seed == seed) & (rows.step == -1) & (rows.component == f"{component}@window")]
    per = per.set_index("metric").value
    return float(per[f"{metric}/sum"]), float(per[f"{metric}/sum_se"])


@pytest.fixture(scope="module")
def scaled_sums(work_run):
    """Seed 0's window 4:8 at scales 1, 2, 4, with every step (and sub-step) measured and with
    every second step."""
    out = {}
    for k in (1, 2, 4):
        for every in (1, 2):
            settings = WorkSettings(
                window="4:8",
                every=every,
                detail_every=2,
                drift_batches=4,
                circuit=CIRCUIT,
                controls=0,
                scale=k,
            )
            out[k, every] = measure(work_run, settings, seeds=[0], progress=False)
    return out


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_the_window_sums_of_a_scaled_replay_close_the_exact_change(scaled_sums, scale):
    """The window's sums of dE and of the work on C equal the exact telescoped change of E_C: to
    1% of the summed |work| with every step measured, at every scale (a replay at lr / k that
    summed one sub-step in k would miss (k - 1) / k of it); with every second step measured,
    within the sampling error the rows report, and exactly ``every`` x the every-step rows at the
    sampled steps (the replay is the same trajectory whatever is measured)."""
    full, half = scaled_sums[scale, 1], scaled_sums[scale, 2]
    per = full[(full.seed == 0) & (full.step == -1)]
    exact = per[(per.metric == "dE/exact") & (per.component == "C@window")].value.item()
    scale_of_work = per[(per.metric == "abs_work/sum") & (per.component == "C@window")].value.item()
    assert abs(exact) > 0.05 * scale_of_work  # the change is no small difference of large terms
    for metric in ("dE", "work"):
        total, se = window_sum(full, metric)
        assert se == 0.0
        assert abs(total - exact) <= 0.01 * scale_of_work, (metric, total, exact)
        sampled, sampled_se = window_sum(half, metric)
        steps = window_of(half, metric).step.tolist()
        assert steps == [4, 6]
        every_step = window_of(full, metric).set_index("step").value
        assert sampled == pytest.approx(2 * every_step[steps].sum(), rel=1e-9)
        assert abs(sampled - exact) <= 3 * sampled_se + 0.01 * scale_of_work, (metric, scale)
    # the same real steps hold the same values whatever else is sampled
    np.testing.assert_allclose(
        window_of(half, "E").value, window_of(full, "E").set_index("step").value[[4, 6]]
    )


def test_each_replayed_step_draws_its_own_fresh_batches(work_run, monkeypatch):
    """At scale k a real step's M fresh batches are shared out over its k sub-steps (M / k each,
    independent draws, together the M batches the real-lr measurement draws at that step), not
    the same batches reused k times."""
    from interp_ext.families import work as family

    seen = []
    real_mean_gradient = family.mean_gradient

    def spy(run, seed, step, theta, loss_fn, m, chunk=4, first=0):
        seen.append((step, first, m))
        return real_mean_gradient(run, seed, step, theta, loss_fn, m, chunk=chunk, first=first)

    monkeypatch.setattr(family, "mean_gradient", spy)
    for k in (1, 2, 4):
        seen.clear()
        settings = WorkSettings(
            window="4:8",
            every=4,
            detail_every=4,
            drift_batches=8,
            circuit=CIRCUIT,
            controls=0,
            scale=k,
        )
        measure(work_run, settings, seeds=[0], progress=False)
        draws = {}
        for step, first, m in seen:
            draws.setdefault(step, []).append(set(range(first, first + m)))
        for step, sets in draws.items():
            assert len(sets) == 2 * k  # two halves per sub-step
            assert set().union(*sets) == set(range(8)), (k, step)  # the M draws, each once
            assert sum(len(d) for d in sets) == 8


def test_drift_batches_must_share_out_over_the_sub_steps():
    from interp_ext.measurement.runner import MeasureError

    with pytest.raises(MeasureError, match="drift_batches=6.*multiple of scale=4"):
        WorkSettings(scale=4, drift_batches=6, circuit=CIRCUIT)


def test_rows_of_a_scaled_replay_have_their_own_id_and_the_real_steps_keep_theirs():
    """A scaled replay's rows are keyed by the revision of their sums, so rows made when they held
    one sub-step in k are never returned; the real steps' rows did not change, nor did their id."""
    assert "scaled_sums" not in WorkSettings().keyed()
    assert WorkSettings().id == "work-e1f8401d8c"  # the id its rows had before the revision
    assert WorkSettings(scale=2).keyed()["scaled_sums"] == 2


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_the_reference_toy_through_the_familys_sampling_and_sums(scale):
    """The toy with no circuit (every sub-step built by the toy's own loop, so its totals are
    known), its k sub-steps summed by the family's ``sum_substeps`` and its rows sampled and
    summed by the family's own ``sampled`` and ``window_sums``: with every step measured the
    family's sums are the toy's every-sub-step totals; at every = 5 they are within their
    standard errors of them; and per unit of lr x steps the drift's, the noise's and K[C,C]'s
    work are the same at every k within their errors, while the noise's curvature term falls
    like 1 / k. (The family's own replay loop, where the one-sub-step-in-k error lived, is
    checked on the micro run by the closure test above.)"""
    from interp_ext.stream3.toy import family_sums, run_toy

    window = (500, 700)
    kwargs = dict(steps=800, window=window, drift_batches=8)
    base = run_toy(1, scale=1, **kwargs)
    toy = run_toy(1, scale=scale, **kwargs)
    every_step = family_sums(toy["rows"], window, every=1)
    sampled = family_sums(toy["rows"], window, every=5, detail_every=10)
    for term, (value, se) in every_step.items():
        assert se == 0.0
        assert value == pytest.approx(toy[f"{term}/per_lr_step"], rel=1e-9, abs=1e-15), term
    for term in ("dE", "work", "work/drift", "work/noise", "K_CC/drift", "curv_noise"):
        value, se = sampled[term]
        assert abs(value - toy[f"{term}/per_lr_step"]) <= 3 * se + 1e-12, term
    for term in ("work/drift", "work/noise", "K_CC/drift"):
        assert toy[f"{term}/per_lr_step"] == pytest.approx(base[f"{term}/per_lr_step"], rel=0.05)
    ratio = toy["curv_noise/per_lr_step"] / base["curv_noise/per_lr_step"]
    assert ratio == pytest.approx(1 / scale, rel=0.25)


def test_seeds_that_never_formed_have_no_window_without_formed_seeds(work_run):
    from interp_ext.families import InductionSettings

    measure(work_run, InductionSettings(), progress=False)
    rows = measure(work_run, WorkSettings(circuit=CIRCUIT, drift_batches=1), progress=False)
    per = rows[(rows.step == -1) & (rows.metric == "measured")]
    assert per.value.tolist() == [0.0, 0.0]
    assert not math.isnan(per.seed.min())


def test_the_toy_null_replays_the_reference_toy(toy):
    """The package's no-circuit toy draws the reference toy's data, probe and batches for seed 0,
    so its real trajectory and its telescoped E_C change are the reference's, and its
    Gauss-Legendre work closes them the same way."""
    from interp_ext.stream3.toy import Toy, run_toy

    mine = Toy(0)
    assert np.array_equal(mine.X, toy["X"]) and np.array_equal(mine.y, toy["y"])
    sums = run_toy(0, steps=3000, window=(501, 3001))
    assert sums["dE"] == pytest.approx(toy["S"][0], rel=1e-9)
    assert sums["work"] == pytest.approx(toy["S"][5], rel=1e-9)


@pytest.mark.parametrize("scale", [1, 2])
def test_the_toy_nulls_splits_add_up(scale):
    from interp_ext.stream3.toy import run_toy

    s = run_toy(1, window=(200, 260), scale=scale, drift_batches=4, horizon=20)
    assert abs(s["work_remainder"]) < 1e-6 * max(abs(s["work/drift"]), 1e-12)
    assert s["work/drift"] + s["work/noise"] == pytest.approx(s["work"], abs=1e-12)
    parts = s["work/inherited"] + s["work/fresh"] + s["work/decay"]
    assert parts == pytest.approx(s["work"], abs=1e-12)
    assert s["dE/per_lr_step"] == pytest.approx(s["dE"] / (0.05 * 60))


def test_the_report_reads_the_real_steps_beside_the_replays_at_lower_lr(work_run, tmp_path):
    """With a replay at lr / 2 measured after the real steps, the report's tables still come from
    the real steps (scale 1), and the replay feeds only the comparison across scales."""
    from interp_ext.families.work.report import real_scale_rows
    from interp_ext.report.draw import Page

    common = dict(window="4:8", every=2, detail_every=2, drift_batches=2, circuit=CIRCUIT)
    real = WorkSettings(controls=0, **common)
    measure(work_run, real, seeds=[0], progress=False)
    measure(work_run, WorkSettings(controls=0, scale=2, **common), seeds=[0], progress=False)
    latest = work_run.metrics("work")  # the latest measurement: the replay at lr / 2
    page = Page(work_run, latest, tmp_path, {})
    chosen = real_scale_rows(page)
    ids = work_run.measurements()
    scale_one = {
        i
        for i, f, s in zip(ids.id, ids.family, ids.settings)
        if f == "work" and s.get("scale", 1) == 1 and s.get("every") == 2
    }
    assert set(chosen.settings) <= scale_one and len(chosen)


def test_the_ledger_of_an_arm_closes_and_is_keyed_apart_from_the_real_steps(work_run):
    """An arm of the noise family (mean of M batches + c xi): it starts at the window's
    checkpoint, the measured steps begin a horizon later, its work closes the telescoped change
    of E_C along the arm's own trajectory, and its rows are never the real steps'."""
    common = dict(ARM_SPAN, controls=0)
    real = WorkSettings(**common, horizon=1)
    arm = WorkSettings(**common, horizon=1, arm="csqrt2/own", arm_batches=2)
    assert real.id != arm.id
    rows = measure(work_run, arm, seeds=[0], progress=False)
    work = window_of(rows, "work")
    assert work.step.tolist() == [5, 6, 7]  # the arm starts at 4; one step of horizon
    per = rows[(rows.seed == 0) & (rows.step == -1)]
    exact = per[(per.metric == "dE/exact") & (per.component == "C@window")].value.item()
    assert work.value.sum() == pytest.approx(exact, rel=1e-2)
    split = rows[(rows.step >= 0) & (rows.component == "C")].pivot_table(
        index="step", columns="metric", values="value"
    )
    np.testing.assert_allclose(
        split["work/drift"] + split["work/noise"], split["work"], rtol=1e-9, atol=1e-15
    )
    plan = per[per.metric == "plan"].set_index("component").value
    assert plan["replay_from"] == 4 and plan["start"] == 5
    # the real steps over the same span are another trajectory: another E_C change
    real_rows = measure(work_run, real, seeds=[0], progress=False)
    real_per = real_rows[(real_rows.seed == 0) & (real_rows.step == -1)]
    real_exact = real_per[
        (real_per.metric == "dE/exact") & (real_per.component == "C@window")
    ].value.item()
    assert real_exact != exact
    # the report sets the arm beside the real steps measured with the same settings, over the
    # arm's sampled steps: its own sums, and the real steps' restricted to those steps
    from interp_ext.families.work.report import arm_table

    body = [
        line for line in arm_table(work_run) if line.startswith("| ") and "| seed |" not in line
    ]
    table = {line.split("|")[2].strip(): line.split("|") for line in body}
    assert set(table) == {"real", "csqrt2/own"}
    assert float(table["csqrt2/own"][7].split("±")[0]) == pytest.approx(work.value.sum(), rel=1e-2)
    assert float(table["csqrt2/own"][7].split("±")[1]) == 0  # every step measured
    real_work = window_of(real_rows, "work")
    assert float(table["real"][7].split("±")[0]) == pytest.approx(
        real_work[real_work.step >= 5].value.sum(), rel=1e-2
    )
    assert float(table["csqrt2/own"][8]) == pytest.approx(exact, rel=1e-2)


def test_an_arms_sampled_sums_are_every_times_its_sampled_steps(work_run):
    """A noise arm measured every second step: its window sums are 2 x its every-step rows at the
    sampled steps (the arm's trajectory does not depend on what is measured), within their
    standard error of the exact change."""
    common = dict(window="4:8", detail_every=2, drift_batches=2, circuit=CIRCUIT, controls=0)
    arm = dict(horizon=1, arm="csqrt2/own", arm_batches=2)
    full = measure(work_run, WorkSettings(every=1, **common, **arm), seeds=[0], progress=False)
    # horizon 1 at every 2: the arm starts at 4, its first measured step is 6
    half = measure(work_run, WorkSettings(every=2, **common, **arm), seeds=[0], progress=False)
    sampled = window_of(half, "work")
    assert sampled.step.tolist() == [6]
    each = window_of(full, "work").set_index("step").value
    total, se = window_sum(half, "work")
    assert total == pytest.approx(2 * each[6], rel=1e-6)  # float32 products batched apart
    per = half[(half.seed == 0) & (half.step == -1)]
    exact = per[(per.metric == "dE/exact") & (per.component == "C@window")].value.item()
    # one sampled step: no standard error, but the exact change spans the same two steps
    assert math.isnan(se)
    assert exact == pytest.approx(each[6] + each[7], rel=1e-2)


def test_an_arm_is_measured_on_its_sampling_grid_with_its_detail_steps(work_run):
    """With a horizon that is not a multiple of ``every``, the arm's first measured step is the
    next step of its grid, and the detail steps (nulls, curvature) fall on that grid."""
    settings = WorkSettings(
        window="4:8",
        every=2,
        detail_every=2,
        drift_batches=2,
        circuit=CIRCUIT,
        controls=0,
        horizon=1,
        arm="c0/own",
        arm_batches=2,
    )
    rows = measure(work_run, settings, seeds=[0], progress=False)
    assert window_of(rows, "work").step.tolist() == [6]
    assert window_of(rows, "curv_noise").step.tolist() == [6]
    per = rows[(rows.seed == 0) & (rows.step == -1)]
    assert per[(per.metric == "dE/exact") & (per.component == "C@window")].value.notna().all()
    assert len(per[(per.metric == "dE/exact") & (per.component == "C@window")]) == 1


def test_a_bad_arm_is_named(work_run):
    from interp_ext.measurement.runner import MeasureError

    with pytest.raises((MeasureError, ValueError), match="arm"):
        WorkSettings(arm="c1", circuit=CIRCUIT).check()
    with pytest.raises((MeasureError, ValueError), match="arm"):
        WorkSettings(arm="c1/own", scale=2, circuit=CIRCUIT).check()


def test_ledgers_of_two_runs_side_by_side_read_only_the_real_steps(work_run, tmp_path):
    from interp_ext.families.work.report import real_rows_of, work_comparison

    real = WorkSettings(**ARM_SPAN, controls=0, horizon=1)
    measured = measure(work_run, real, seeds=[0, 1], progress=False)
    measure(
        work_run,
        WorkSettings(**ARM_SPAN, controls=0, horizon=1, arm="c0/own", arm_batches=2),
        seeds=[0],
        progress=False,
    )
    # the arm, measured last, is not read
    assert set(real_rows_of(work_run).settings) == set(measured.settings)
    lines = work_comparison({"one": work_run, "two": work_run}, tmp_path)
    assert (tmp_path / "work_comparison.png").exists()
    rows = [line for line in lines if line.startswith("| window | K[C,C]")]  # no formation here
    assert len(rows) == 2 and rows[0].split("|")[4] == rows[1].split("|")[4]
    assert work_comparison({"one": work_run}, tmp_path) == []  # nothing to compare


class WithFormation:
    """A run, with noise rows giving formation steps for the real steps and an arm (seed 0)."""

    def __init__(self, run, steps):
        self.run, self.steps = run, steps

    def measurements(self):
        return self.run.measurements()

    def metrics(self, family, settings=None):
        if family != "noise":
            return self.run.metrics(family, settings=settings)
        return pd.DataFrame(
            [
                {"seed": 0, "variant": v, "metric": "formation_step", "value": float(f)}
                for v, f in self.steps.items()
            ]
        )


def _arm_and_its_twin(work_run) -> None:
    for arm in ("", "csqrt2/own"):
        settings = WorkSettings(**ARM_SPAN, controls=0, horizon=1, arm=arm, arm_batches=2)
        measure(work_run, settings, seeds=[0], progress=False)


def test_arms_are_also_compared_around_their_own_formation(work_run, monkeypatch):
    """With each replay's formation step (the noise family's rows), the arm table adds the span
    around it; a span reaching outside the arm's measured steps is left out."""
    from interp_ext.families.work import report

    _arm_and_its_twin(work_run)
    monkeypatch.setattr(report, "AROUND", ((-1, 2),))
    lines = report.arm_table(WithFormation(work_run, {"real": 6, "csqrt2/own": 6}))
    cut = next(i for i, line in enumerate(lines) if line.startswith("The same over"))
    ours = ("| 0 | real |", "| 0 | csqrt2/own |")  # other tests may have measured other arms
    same = [line for line in lines[:cut] if line.startswith(ours)]
    around = [line for line in lines[cut:] if line.startswith(ours)]
    assert len(same) == 2 and same == around  # [5, 8) is the arm's whole span
    lines = report.arm_table(WithFormation(work_run, {"real": 6, "csqrt2/own": 7}))
    around = [line for line in lines if line.startswith("| 0 | csqrt2/own |")]
    assert len(around) == 1  # [6, 9) reaches past the arm's last step: only the span table


def test_each_span_around_formation_gets_its_own_table_only_where_the_arm_covers_it(
    work_run, monkeypatch
):
    """Two spans around formation: [F - 1, F + 2) lies inside the arm's steps, [F - 3, F + 2)
    begins before its first measured step, so only the first is tabled."""
    from interp_ext.families.work import report

    _arm_and_its_twin(work_run)
    monkeypatch.setattr(report, "AROUND", ((-1, 2), (-3, 2)))
    lines = report.arm_table(WithFormation(work_run, {"real": 6, "csqrt2/own": 6}))
    heads = [line for line in lines if line.startswith("The same over")]
    assert heads == ["The same over [F -1, F +2) around each replay's own formation step F"]


def test_the_flow_table_reads_one_set_of_replays_that_differ_in_scale_alone(work_run, scaled_sums):
    """The table toward the gradient flow reads the latest set of measurements whose settings
    differ only in scale (never a mix of settings), and never rows whose id their settings no
    longer give (a scaled replay made before its sums were revised)."""
    import json

    from interp_ext import diskio
    from interp_ext.families.work.report import scale_replays

    chosen = scale_replays(work_run)
    found = work_run.measurements().set_index("id")
    assert len(set(chosen.values())) >= 2 and 1 in chosen.values()
    settings = [found.settings[i] for i in chosen]
    bare = {
        json.dumps({k: v for k, v in s.items() if k != "scale"}, sort_keys=True) for s in settings
    }
    assert len(bare) == 1
    # a stale record: the same settings as a current scaled replay under another id
    some = next(i for i, k in chosen.items() if k == 2)
    stale = dict(found.loc[some].to_dict(), id="work-0000000000", used=1e12)
    diskio.write_json(work_run.layout.measurement("work-0000000000"), stale)
    try:
        assert scale_replays(work_run) == chosen
    finally:
        work_run.layout.measurement("work-0000000000").unlink()


def test_the_flow_table_gives_each_seeds_limit_and_the_sign_count(monkeypatch, tmp_path):
    """Per seed the sums per unit of lr x steps at each scale with their errors and the
    Richardson limit 2 X(lr/4) - X(lr/2) with its error; per term k of n seeds negative with the
    one-sided sign test; and the figure against the step size."""
    from interp_ext.families.work import report

    rows = []
    for seed, (x1, x2, x4) in {0: (-0.4, -0.5, -0.5), 1: (-0.2, -0.3, -0.2)}.items():
        for scale, x in ((1, x1), (2, x2), (4, x4)):
            length, lr = 375, 2e-3
            total = x * lr * length
            where = "C|C@before"
            rows += [
                {
                    "seed": seed,
                    "scale": scale,
                    "component": where,
                    "term": "work_drift_by",
                    "metric": "work_drift_by/per_lr_step",
                    "value": x,
                },
                {
                    "seed": seed,
                    "scale": scale,
                    "component": where,
                    "term": "work_drift_by",
                    "metric": "work_drift_by/sum",
                    "value": total,
                },
                {
                    "seed": seed,
                    "scale": scale,
                    "component": where,
                    "term": "work_drift_by",
                    "metric": "work_drift_by/sum_se",
                    "value": abs(total) / 10,
                },
            ]
    monkeypatch.setattr(report, "scale_rows", lambda run: pd.DataFrame(rows))
    lines = report.scale_table(None, tmp_path)
    table = [line.replace("\\|", "/").split("|") for line in lines if line.startswith("| C\\|C@")]
    body = {cells[3].strip(): cells[4:-1] for cells in table}
    limit0 = body["0"][3].split("±")
    assert float(limit0[0]) == pytest.approx(2 * -0.5 - -0.5)
    assert float(limit0[1]) == pytest.approx((4 * 0.05**2 + 0.05**2) ** 0.5, rel=0.05)
    assert float(body["1"][1].split("±")[1]) == pytest.approx(0.03, rel=1e-2)
    assert body["all"][0].strip() == "2 of 2 < 0, p = 0.25"
    assert (tmp_path / "work_flow.png").exists() and (tmp_path / "work_flow.html").exists()


def test_polyak_weights_are_the_mean_of_the_replayed_trajectory(work_run):
    """The slow weights at a checkpoint: the mean of theta over the last W steps, each replayed bit
    for bit (the replay is verified against the checkpoint); W = 1 is the checkpoint itself."""
    from interp_ext.errors import ReplayError
    from interp_ext.measurement.windows import polyak_average

    ckpt = work_run.checkpoint(0, 8)["params"]
    one = polyak_average(work_run, 0, 8, 1)
    assert all(torch.equal(one[n].float(), ckpt[n]) for n in ckpt)
    replay = Replay(work_run, 0, 4)
    taken: list = []
    walk(replay, 8, taken.append)
    thetas = [s.theta for s in taken][1:]  # theta_5 .. theta_7
    want = {n: (sum(t[n].double() for t in thetas) + ckpt[n].double()) / 4 for n in ckpt}
    got = polyak_average(work_run, 0, 8, 4)
    for n in ckpt:
        torch.testing.assert_close(got[n], want[n], rtol=1e-12, atol=1e-15)
    with pytest.raises(ReplayError, match="no checkpoint at or before step"):
        polyak_average(work_run, 0, 8, 20)
    with pytest.raises(ReplayError):
        polyak_average(work_run, 0, 7, 2)  # not a checkpoint


def test_the_real_steps_tables_read_the_whole_window_not_a_flow_sets_lr_1(work_run):
    """A flow set's lr / 1 replay (scale 1, to the rise's end) measured after the real steps is
    not what the real-step tables read: they read the measurement over the whole window."""
    from interp_ext.families.work.report import real_id, real_rows_of

    common = dict(window="4:8", every=2, detail_every=2, drift_batches=2, circuit=CIRCUIT)
    whole = WorkSettings(controls=0, **common)
    measure(work_run, whole, seeds=[0], progress=False)
    flow = WorkSettings(controls=0, until="rise", nulls=False, **common)
    measure(work_run, flow, seeds=[0], progress=False)
    assert real_id(work_run) != flow.id
    chosen = work_run.measurements().set_index("id").settings[real_id(work_run)]
    assert chosen.get("until", "window") == "window" and chosen.get("scale", 1) == 1
    assert set(real_rows_of(work_run).settings) == {real_id(work_run)}


def test_the_toy_runs_through_the_member_matrix_code():
    """The no-circuit null of the member matrix: the toy's coordinate pairs as members, through
    interp_ext.stream3.reinforcement; its circuit row is its members' rows summed, and every entry
    carries a standard error over the groups."""
    from interp_ext.stream3.toy import toy_members

    f = toy_members(0, steps=250, every=250)
    s = f[f.part == "S"].set_index(["A", "B"])
    assert s.loc[("C", "B"), "value"] == pytest.approx(
        s.loc[("A", "B"), "value"] + s.loc[("B", "B"), "value"], rel=1e-9
    )
    assert (f[f.B != ""].se > 0).all() and set(f.step) == {250}
