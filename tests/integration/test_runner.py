"""The measurement runner: settings kept and keyed, resume after SIGKILL, bad input, the append-only store."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from interp_ext import measure, open_run
from interp_ext.cli import app
from interp_ext.families import GeometrySettings, InductionSettings
from interp_ext.measurement.runner import MeasureError
from interp_ext.run import parts
from interp_ext.training import train
from tests.conftest import micro_config

runner = CliRunner()


def snapshot(root) -> dict:
    """Every file under a run directory with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    key = ["family", "seed", "step", "metric", "component"]
    a = a.drop(columns=["run"]).sort_values(key).reset_index(drop=True)
    b = b.drop(columns=["run"]).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a.drop(columns="value"), b.drop(columns="value"))
    x, y = a.value.to_numpy(), b.value.to_numpy()
    assert ((x == y) | (np.isnan(x) & np.isnan(y))).all(), a[
        ~((x == y) | (np.isnan(x) & np.isnan(y)))
    ].head()


@pytest.fixture()
def fresh_run(micro_run, tmp_path):
    """A copy of the micro run's checkpoints with no measurement yet."""
    copy = tmp_path / "fresh"
    shutil.copytree(
        micro_run.path, copy, ignore=shutil.ignore_patterns("measurements", "saes", "report")
    )
    for family in (copy / "metrics").iterdir():
        if family.name.removeprefix("family=") != "train":
            shutil.rmtree(family)
    return open_run(copy)


def test_other_settings_make_new_rows_beside_the_old(fresh_run, tmp_path):
    run = fresh_run
    pristine = tmp_path / "pristine"
    shutil.copytree(run.path, pristine)
    for k in (2, 3):
        result = runner.invoke(
            app, ["measure", "geometry", str(run.path), "--k", str(k), "--lag", "2", "--quiet"]
        )
        assert result.exit_code == 0, result.output
    every = run.metrics("geometry", settings="all")
    ids = sorted(every.settings.unique())
    assert ids == sorted({GeometrySettings(k=2, lag=2).id, GeometrySettings(k=3, lag=2).id})
    # the default is the latest settings: k = 3, equal to a fresh measurement with k = 3
    latest = run.metrics("geometry")
    assert set(latest.settings) == {GeometrySettings(k=3, lag=2).id}
    fresh = measure(open_run(pristine), GeometrySettings(k=3, lag=2), progress=False)
    same_rows(latest, fresh[fresh.family == "geometry"])
    # the k = 2 rows are kept, distinguishable, and not the k = 3 values
    old = run.metrics("geometry", settings=GeometrySettings(k=2, lag=2))
    assert len(old) == len(latest) and not np.allclose(
        old[old.metric == "topk_variance"].value, latest[latest.metric == "topk_variance"].value
    )
    recorded = run.measurements()
    assert set(recorded.id) == set(ids) and {s["k"] for s in recorded.settings} == {2, 3}


def test_a_revised_family_keys_its_rows_apart_from_the_old_code(fresh_run, monkeypatch):
    """A fix that changes a family's values raises its revision: same fields, new id, so rows the
    old code made are never returned as the new code's."""
    before = InductionSettings()
    before_id = before.id
    monkeypatch.setattr(InductionSettings, "revision", InductionSettings.revision + 1)
    after = InductionSettings()
    assert before.keyed() == after.keyed() and before_id != after.id
    assert after.id != InductionSettings(threshold=0.3).id


def test_same_settings_again_measure_nothing(fresh_run):
    first = measure(fresh_run, InductionSettings(), progress=False)
    assert first.attrs["measured"]["checkpoints"] == len(fresh_run.seeds) * len(fresh_run.steps)
    parts = snapshot(fresh_run.path / "metrics")
    again = measure(fresh_run, InductionSettings(), progress=False)
    assert again.attrs["measured"] == {
        "checkpoints": 0,
        "seeds": 0,
        "cross_seed_steps": 0,
        "summaries": 0,
    }
    assert snapshot(fresh_run.path / "metrics") == parts  # nothing rewritten
    same_rows(first, again)
    # more checkpoints later: only the new ones are measured
    more = measure(fresh_run, InductionSettings(threshold=0.3), steps=[0, 2], progress=False)
    assert more.attrs["measured"]["checkpoints"] == 2 * len(fresh_run.seeds)
    assert snapshot(fresh_run.path / "metrics").items() >= parts.items()  # old parts untouched


def test_sigkill_mid_measurement_then_rerun_equals_uninterrupted(tmp_path, cache_dir):
    cfg = micro_config(steps=16, checkpoint_every=1)
    run = train(cfg, tmp_path / "long", progress=False, cache_dir=cache_dir)
    shutil.copytree(run.path, tmp_path / "reference")
    settings = GeometrySettings(k=2, lag=3)
    env = dict(os.environ, HOME=str(cache_dir), PYTHONPATH=os.getcwd())
    cmd = [
        sys.executable,
        "-m",
        "interp_ext.cli",
        "measure",
        "geometry",
        str(run.path),
        "--k",
        "2",
        "--lag",
        "3",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    folder = parts.settings_folder(run.path / "metrics", "geometry", settings.id)
    deadline = time.monotonic() + 300
    while (
        len(list(folder.glob("seed*-step*.parquet"))) < 6
        and proc.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done = len(list(folder.glob("seed*-step*.parquet")))
    assert 6 <= done < 2 * 17, done  # killed mid-run
    resumed = measure(open_run(run.path), settings, progress=False)
    assert resumed.attrs["measured"]["checkpoints"] == 2 * 17 - done
    uninterrupted = measure(open_run(tmp_path / "reference"), settings, progress=False)
    same_rows(resumed, uninterrupted)


def test_circuits_imports_nothing_from_interp_ext():
    code = "import circuits, circuits.induction, circuits.patching, sys; bad = [m for m in sys.modules if m.startswith('interp_ext')]; assert not bad, bad"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.getcwd()),
    )
    assert done.returncode == 0, done.stderr[-2000:]


BAD = [
    (["measure", "geometry", "{missing}"], "not a run directory"),
    (["measure", "geometry", "{run}", "--steps", "3"], "available steps: [0, 2, 4, 6]"),
    (["measure", "geometry", "{run}", "--seeds", "7"], "available seeds: [0, 1]"),
    (["measure", "geometry", "{run}", "--k", "0"], "k=0"),
    (["measure", "geometry", "{run}", "--k", "9"], "k=9"),
    (["measure", "geometry", "{run}", "--batches", "99"], "n_batches=99"),
    (["measure", "sae", "{run}", "--hook", "blocks.7.hook_nothing"], "blocks.7.hook_nothing"),
    (["measure", "autocatalysis", "{run}", "--circuit", "L9H9"], "layers 0..1 and heads 0..1"),
    (
        ["measure", "autocatalysis", "{run}", "--circuit", "no_such_circuit.json"],
        "not 'cause', 'induction', a head list",
    ),
    (["measure", "autocatalysis", "{run}", "--direction", "up"], "directions"),
    (["measure", "nothing", "{run}", "--k", "2"], "unknown measurement family 'nothing'"),
]


@pytest.mark.parametrize(
    "args, expected", BAD, ids=[" ".join(a[1:2] + a[3:]) or a[1] for a, _ in BAD]
)
def test_bad_arguments_give_one_line_and_write_nothing(fresh_run, tmp_path, args, expected):
    before = snapshot(fresh_run.path)
    result = runner.invoke(
        app, [a.format(run=fresh_run.path, missing=tmp_path / "missing") for a in args]
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (
        result.stderr
    )
    assert snapshot(fresh_run.path) == before
    assert not (tmp_path / "missing").exists()


def test_unknown_hook_lists_closest_names_first(fresh_run):
    from interp_ext.families import SAETrackingSettings

    with pytest.raises(MeasureError, match=r"closest first\): \['blocks.1.hook_resid_post'"):
        measure(fresh_run, SAETrackingSettings(hook="blocks.1.hook_resid_pots"), progress=False)


def test_reproduce_on_an_existing_run_without_resume_stops(micro_run):
    result = runner.invoke(app, ["reproduce", "--out", str(micro_run.path), "--quiet"])
    assert result.exit_code == 2 and "--resume" in result.stderr


def test_plan_settings_are_checked_by_the_families():
    from interp_ext.config import ConfigError, get_preset, override
    from interp_ext.pipeline import plan_settings

    for preset in ("tiny", "paper"):
        assert set(plan_settings(get_preset(preset).measure)) == {
            "induction",
            "circuit",
            "patching",
            "geometry",
            "stream2",
            "beta",
            "autocatalysis",
            "sae",
        }
    cfg = get_preset("tiny")
    bad = override(cfg, measure__plan={**cfg.measure.plan, "geometry": {"k": 0}})
    with pytest.raises(ConfigError, match=r"measure.plan\['geometry'\].*k=0"):
        plan_settings(bad.measure)
    with pytest.raises(ConfigError, match="measure.every"):
        override(cfg, measure__every={"nope": 2})
