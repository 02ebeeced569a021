"""The Stream 3 ledger: bit-exact replay, closure of its terms, finite differences, refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from interp_ext import measure, open_run
from interp_ext.families import InductionSettings
from interp_ext.families.ledger import LedgerSettings
from interp_ext.measurement.runner import MeasureError
from interp_ext.replay import Replay, adamw_update, momentum_split
from interp_ext.run import parts
from interp_ext.training import train
from tests.conftest import micro_config

CIRCUIT = "L1H0,L0H1"


@pytest.fixture(scope="module")
def ledger_run(tmp_path_factory, cache_dir):
    cfg = micro_config(steps=8, checkpoint_every=4)
    return train(
        cfg, tmp_path_factory.mktemp("ledger") / "run", progress=False, cache_dir=cache_dir
    )


@pytest.fixture(scope="module")
def every_step(ledger_run):
    settings = LedgerSettings(
        window="4:8", every=1, detail_every=1, drift_batches=3, circuit=CIRCUIT, controls=1
    )
    return measure(ledger_run, settings, progress=False)


def test_replay_reproduces_the_saved_checkpoint_bit_for_bit(ledger_run):
    replay = Replay(ledger_run, 1, 0)
    steps = list(replay.steps(8))
    replay.verify()
    assert [s.step for s in steps] == list(range(8))
    last = steps[-1]
    # AdamW from the same state with the real gradient is the real update; the momentum split sums to it
    same = adamw_update(last, last.grad, ledger_run.config.train)
    assert all(torch.equal(same[n], last.update[n]) for n in same)
    parts = momentum_split(last, ledger_run.config.train)
    for n in last.update:
        total = parts["inherited"][n] + parts["fresh"][n] + parts["decay"][n]
        # the real update is a difference of float32 parameters: exact to a few ulp of theta
        ulp = torch.finfo(torch.float32).eps * (
            last.theta[n].abs() + (last.theta[n] + last.update[n]).abs()
        )
        assert ((total - last.update[n]).abs() <= 2 * ulp + 1e-12).all(), n


def test_a_tampered_checkpoint_is_refused_naming_seed_and_step(ledger_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(ledger_run.path, copy)
    run = open_run(copy)
    ckpt = run.checkpoint(0, 8)
    from interp_ext.run.checkpoints import save_checkpoint

    params = dict(ckpt["params"])
    params["unembed.b_U"] = params["unembed.b_U"] + 1e-7
    save_checkpoint(
        run.checkpoint_path(0, 8),
        params,
        0,
        8,
        ckpt["exp_avg"],
        ckpt["exp_avg_sq"],
        ckpt["adam_step"],
    )
    parts = sorted((copy / "metrics").rglob("*.parquet"))
    with pytest.raises(
        MeasureError, match=r"seed 0 from step 4 does not reproduce its checkpoint at step 8"
    ):
        measure(
            run, LedgerSettings(window="4:8", every=2, circuit=CIRCUIT), seeds=[0], progress=False
        )
    assert sorted((copy / "metrics").rglob("*.parquet")) == parts  # nothing written


def test_closure_with_every_step_measured(every_step):
    rows = every_step[every_step.seed == 0]
    per_step = rows[(rows.metric == "dE") & (rows.component == "C")].sort_values("step")
    assert per_step.step.tolist() == [4, 5, 6, 7]
    exact = float(rows[(rows.metric == "dE/exact") & (rows.component == "C@window")].value.iloc[0])
    assert per_step.value.sum() == pytest.approx(exact, rel=1e-6, abs=1e-9)
    window = rows[rows.component == "C@window"].set_index("metric").value
    assert (
        window["dE/sum"] == pytest.approx(exact, rel=1e-6, abs=1e-9) and window["dE/sum_se"] == 0.0
    )
    for _step, g in rows[rows.step.isin(per_step.step)].groupby("step"):
        v = g[g.component == "C"].set_index("metric").value
        assert v["L1"] + v["L2"] == pytest.approx(v["dE"], rel=1e-9, abs=1e-12)
        assert v["L1_inherited"] + v["L1_fresh"] + v["L1_decay"] == pytest.approx(
            v["L1"], rel=1e-4, abs=1e-9
        )
        assert v["L1_drift"] + v["L1_noise"] == pytest.approx(v["L1"], rel=1e-9, abs=1e-12)
        assert v["L1_mean"] + v["L1_fluct"] == pytest.approx(v["L1"], rel=1e-9, abs=1e-12)
        assert v["E_mean"] + v["E_fluct"] == pytest.approx(v["E"], rel=1e-9)
        by = g[(g.metric == "L1_by") & g.component.str.startswith("C|") & (g.component != "C|C")]
        assert by.value.sum() == pytest.approx(
            v["L1"], rel=1e-6, abs=1e-10
        )  # the split by component closes


def test_sampled_window_sums_are_every_times_the_sampled_steps_and_close_within_their_error(
    ledger_run, every_step, tmp_path
):
    """Measured every second step, the window's sum of a term is 2 x the every-step rows at the
    sampled steps (the replay is the same trajectory whatever is measured), and dE's sum is the
    exact telescoped change within the standard error the rows report."""
    settings = LedgerSettings(
        window="4:8", every=2, detail_every=2, drift_batches=3, circuit=CIRCUIT, controls=1
    )
    # on a copy: the run's latest ledger stays the every-step one other tests read
    copy = tmp_path / "copy"
    shutil.copytree(ledger_run.path, copy, ignore=shutil.ignore_patterns("metrics", "measurements"))
    half = measure(open_run(copy), settings, seeds=[0], progress=False)
    full = every_step[every_step.seed == 0]
    rows = half[half.seed == 0]
    window = rows[rows.component == "C@window"].set_index("metric").value
    exact = window["dE/exact"]
    for metric in ("dE", "L1", "L1_drift", "L1_noise", "L2"):
        sampled = rows[(rows.metric == metric) & (rows.component == "C") & (rows.step >= 0)]
        assert sampled.step.tolist() == [4, 6]
        each = full[(full.metric == metric) & (full.component == "C") & (full.step >= 0)]
        each = each.set_index("step").value
        # float32 products batched differently at every = 1: equal to rounding, not bit for bit
        assert window[f"{metric}/sum"] == pytest.approx(2 * each[[4, 6]].sum(), rel=1e-4)
    assert abs(window["dE/sum"] - exact) <= 3 * window["dE/sum_se"] + 1e-12


def test_k_cc_along_the_drift_update_is_the_members_share_of_it(every_step):
    """K[C,C] along the drift update (the circuit's own part) plus its `rest` part is the whole
    first-order drift term: members and rest partition the parameters."""
    from interp_ext.families.ledger import drift_k_cc

    rows = every_step[every_step.seed == 0]
    k_cc = drift_k_cc(rows)
    assert k_cc.index.tolist() == [4, 5, 6, 7]
    drift = rows[(rows.metric == "L1_drift") & (rows.component == "C")].set_index("step").value
    rest = rows[(rows.metric == "L1_drift_by") & (rows.component == "C|rest")]
    rest = rest.set_index("step").value
    np.testing.assert_allclose(k_cc + rest, drift.loc[k_cc.index], rtol=1e-6, atol=1e-10)
    assert (k_cc != drift.loc[k_cc.index]).all()  # the rest's part is not zero here


def test_first_order_term_equals_finite_differences(ledger_run, every_step):
    """L1 = grad E_C . dtheta from HVPs == (E(theta + e dtheta) - E(theta - e dtheta)) / (2 e)."""
    from circuits import Circuit
    from interp_ext.stream3.energy import model_probe

    replay = Replay(ledger_run, 0, 4)
    step = replay.take()
    model = ledger_run.model(0, 4)
    mask = torch.stack(list(Circuit("c", CIRCUIT.split(",")).flat_masks(model).values())).any(0)
    lm = ledger_run.probe_set()["lm"]

    def energy(scale: float) -> float:
        moved = ledger_run.model(0, 4)
        with torch.no_grad():
            for n, p in moved.named_parameters():
                p.add_(scale * step.update[n])
        return model_probe(moved.double(), lm).energy(mask)

    eps = 0.5
    expected = (energy(eps) - energy(-eps)) / (2 * eps)
    rows = (
        every_step[(every_step.seed == 0) & (every_step.step == 4) & (every_step.component == "C")]
        .set_index("metric")
        .value
    )
    assert rows["L1"] == pytest.approx(expected, rel=2e-3)
    second = (energy(1.0) + energy(-1.0) - 2 * energy(0.0)) / 2
    assert rows["second_order_cd"] == pytest.approx(second, rel=1e-3, abs=1e-9)


def test_drift_term_equals_finite_differences_along_a_hand_made_adamw_step(ledger_run, every_step):
    """L1_drift against an update written out from AdamW's formula (no torch optimizer), with the mean
    gradient of the same fresh batches from a plain backward pass."""
    from circuits import Circuit
    from interp_ext.optim_step import step_batch
    from interp_ext.stream3.energy import model_probe

    cfg = ledger_run.config.train
    step = Replay(ledger_run, 0, 4).take()
    model = ledger_run.model(0, 4)
    batches = torch.cat([step_batch(ledger_run, 0, 4, draw=j) for j in range(3)])
    model(batches, return_type="loss").backward()
    (b1, b2), t = cfg.betas, step.count + 1
    update = {}
    for n, p in model.named_parameters():
        m = b1 * step.exp_avg[n] + (1 - b1) * p.grad
        v = b2 * step.exp_avg_sq[n] + (1 - b2) * p.grad**2
        denom = (v / (1 - b2**t)).sqrt() + 1e-8
        update[n] = -cfg.lr * cfg.weight_decay * step.theta[n] - cfg.lr * m / (1 - b1**t) / denom
    mask = torch.stack(list(Circuit("c", CIRCUIT.split(",")).flat_masks(model).values())).any(0)
    lm = ledger_run.probe_set()["lm"]

    def energy(scale: float) -> float:
        moved = ledger_run.model(0, 4).double()
        with torch.no_grad():
            for n, p in moved.named_parameters():
                p.add_(scale * update[n].double())
        return model_probe(moved, lm).energy(mask)

    eps = 0.05
    expected = (energy(eps) - energy(-eps)) / (2 * eps)
    rows = (
        every_step[(every_step.seed == 0) & (every_step.step == 4) & (every_step.component == "C")]
        .set_index("metric")
        .value
    )
    assert rows["L1_drift"] == pytest.approx(expected, rel=2e-3)


def test_adamw_update_reads_gradients_in_any_layout(ledger_run):
    """torch's fused CPU AdamW misreads a gradient whose strides differ from its parameter's;
    gradients from torch.func come in transposed layouts and must give the same update."""
    last = Replay(ledger_run, 1, 0).take()
    assert ledger_run.config.train.fused_adamw
    transposed = {n: g.t().contiguous().t() if g.dim() == 2 else g for n, g in last.grad.items()}
    assert any(not g.is_contiguous() for g in transposed.values())
    same = adamw_update(last, transposed, ledger_run.config.train)
    assert all(torch.equal(same[n], last.update[n]) for n in same)


def test_seed_level_summaries_count_seeds(every_step):
    cross = (
        every_step[(every_step.seed < 0) & (every_step.component == "C@window")]
        .set_index("metric")
        .value
    )
    assert cross["dE/exact/seed_n"] == 2 and 0 <= cross["dE/exact/seeds_positive"] <= 2
    assert {"L1_drift/sum/seed_mean", "L1_noise/sum/seed_lo", "L2/sum/seed_hi"} <= set(cross.index)


def test_ledgers_side_by_side_draw_each_seeds_window_sums(ledger_run, every_step, monkeypatch):
    """The report's comparison of runs: one panel per term, each seed's window sum a point, and the
    mean with its interval over seeds beside them, all read from the ledger's rows."""
    from interp_ext.families.ledger import report

    figures = []
    monkeypatch.setattr(report, "save", lambda fig, out, name: figures.append(fig) or {})
    monkeypatch.setattr(report, "image", lambda files, alt: alt)
    lines = report.ledger_comparison({"a": ledger_run, "b": ledger_run}, Path("."))
    assert lines[0] == "## Ledgers side by side"
    (fig,) = figures
    assert [p.title for p in fig.panels][0] == "dE/exact"
    window = every_step[every_step.component == "C@window"]
    exact = window[(window.metric == "dE/exact") & (window.seed >= 0)].sort_values("seed")
    points, mean, points_b, _ = fig.panels[0].traces
    assert points.mode == "points" and list(points.y) == exact.value.tolist()
    assert list(points_b.y) == exact.value.tolist() and min(points_b.x) > max(points.x)
    cross = window[window.seed < 0].set_index("metric").value
    assert mean.y == [cross["dE/exact/seed_mean"]] and mean.lo == [cross["dE/exact/seed_lo"]]


def test_bad_windows_and_missing_data_are_refused(ledger_run, tmp_path):
    with pytest.raises(
        MeasureError, match=r"no checkpoint at step\(s\) \[5\]; checkpoints: \[0, 4, 8\]"
    ):
        measure(ledger_run, LedgerSettings(window="5:8", circuit=CIRCUIT), progress=False)
    with pytest.raises(MeasureError, match=r"no checkpoint at step\(s\) \[12\]"):
        measure(ledger_run, LedgerSettings(window="4:12", circuit=CIRCUIT), progress=False)
    with pytest.raises(MeasureError, match="START < END"):
        LedgerSettings(window="8:4")
    with pytest.raises(MeasureError, match="detail_every"):
        LedgerSettings(every=5, detail_every=12)
    copy = tmp_path / "nodata"
    shutil.copytree(
        ledger_run.path, copy, ignore=shutil.ignore_patterns("train.npy", "metrics", "measurements")
    )
    with pytest.raises(MeasureError, match="training data"):
        measure(open_run(copy), LedgerSettings(window="4:8", circuit=CIRCUIT), progress=False)
    assert "ledger" not in parts.families(copy / "metrics")


def test_auto_window_needs_formation_steps(ledger_run, tmp_path):
    copy = tmp_path / "auto"
    shutil.copytree(ledger_run.path, copy)
    run = open_run(copy)
    with pytest.raises(MeasureError, match="measure induction"):
        measure(run, LedgerSettings(circuit=CIRCUIT), progress=False)
    measure(run, InductionSettings(), progress=False)
    rows = measure(
        run,
        LedgerSettings(circuit=CIRCUIT, every=2, detail_every=2, drift_batches=2),
        progress=False,
    )
    # the micro model forms no induction head: the ledger says so for each seed instead of inventing a window
    formed = rows[rows.metric == "formed"]
    assert len(formed) == 2 and (formed.value == 0).all()
    assert (
        np.isnan(rows[rows.metric == "dE"].value).all() if len(rows[rows.metric == "dE"]) else True
    )


def test_counterfactual_replays(ledger_run):
    from interp_ext.families.counterfactual import CounterfactualSettings
    from interp_ext.stream3.energy import model_probe

    settings = CounterfactualSettings(
        window="4:8", orders=1, mean_batches=2, record_every=2, circuit=CIRCUIT
    )
    rows = measure(ledger_run, settings, seeds=[0], progress=False)
    traj = rows[(rows.seed == 0) & (rows.step >= 0)]
    assert set(traj.variant) == {"real", "order_1", "mean2", "half"}
    assert sorted(traj[traj.variant == "real"].step.unique()) == [4, 6, 8]
    # the real trajectory ends on the saved checkpoint: its E_C there is the checkpoint's
    from circuits import Circuit

    model = ledger_run.model(0, 8)
    mask = torch.stack(list(Circuit("c", CIRCUIT.split(",")).flat_masks(model).values())).any(0)
    expected = model_probe(model, ledger_run.probe_set()["lm"], chunk=4).energy(mask)
    real_end = traj[
        (traj.variant == "real") & (traj.metric == "E_C") & (traj.step == 8)
    ].value.iloc[0]
    assert real_end == pytest.approx(expected, rel=1e-6)
    start = traj[(traj.metric == "E_C") & (traj.step == 4)].value
    assert np.allclose(start, start.iloc[0])  # every variant starts from the same checkpoint
    end = traj[(traj.metric == "E_C") & (traj.step == 8)].set_index("variant").value
    assert end["mean2"] != end["real"] and end["half"] != end["real"]
    outcomes = rows[(rows.seed == 0) & (rows.step < 0)]
    assert {"formed", "formation_shift", "E_C_change"} <= set(outcomes.metric)
    assert {"formation_shift/seed_mean", "formed/seeds"} <= set(rows[rows.seed < 0].metric)


def test_counterfactuals_need_the_training_data(ledger_run, tmp_path):
    from interp_ext.families.counterfactual import CounterfactualSettings

    copy = tmp_path / "nodata"
    shutil.copytree(
        ledger_run.path, copy, ignore=shutil.ignore_patterns("train.npy", "metrics", "measurements")
    )
    with pytest.raises(MeasureError, match="training data"):
        measure(
            open_run(copy), CounterfactualSettings(window="4:8", circuit=CIRCUIT), progress=False
        )
    assert "counterfactual" not in parts.families(copy / "metrics")
