"""Bit for bit at the tiny preset's real size, with the machine's default thread count.

The micro configurations of the other tests are below the size at which the
CPU's parallel embedding backward is taken; the tiny preset (512-token
vocabulary, batch 32 x 64 = 2,048 token positions) is above it. Nothing here
sets the thread count.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from interp_ext import get_preset, override
from interp_ext.run import open_run
from interp_ext.training import train

ARGS = [
    "--preset",
    "tiny",
    "--corpus",
    "synthetic",
    "--seeds",
    "2",
    "--checkpoint-every",
    "10",
    "--quiet",
]


def tiny(steps: int = 40, **changes):
    return override(
        get_preset("tiny"),
        data__corpus="synthetic",
        train__steps=steps,
        train__checkpoint_every=10,
        **changes,
    )


def differing(a, b, step: int) -> list[str]:
    """Names of checkpoint tensors (params and both AdamW moments) that are not equal bit for bit."""
    out = []
    for seed in b.seeds:
        x, y = a.checkpoint(seed, step), b.checkpoint(seed, step)
        for kind in ("params", "exp_avg", "exp_avg_sq"):
            assert x[kind], f"no {kind} at step {step}"
            out += [
                f"seed {seed} {kind} {n}"
                for n in y[kind]
                if not torch.equal(x[kind][n], y[kind][n])
            ]
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir):
    return train(
        tiny(), tmp_path_factory.mktemp("det") / "reference", progress=False, cache_dir=cache_dir
    )


def test_two_identical_runs_are_equal_bit_for_bit(reference, tmp_path, cache_dir):
    again = train(tiny(), tmp_path / "again", progress=False, cache_dir=cache_dir)
    assert differing(again, reference, 40) == []
    provenance = json.loads((again.path / "config.json").read_text())["provenance"]
    assert provenance["numerics"] == {
        "deterministic": True,
        "device_type": "cpu",
        "threads": torch.get_num_threads(),
        "seeds_per_pass": 1,
    }


@pytest.mark.skipif(
    torch.get_num_threads() < 2, reason="one thread sums in one order whatever the setting"
)
def test_without_deterministic_algorithms_repeats_differ(tmp_path, cache_dir):
    """What the setting fixes is real at this size: two plain repeats differ."""
    runs = [
        train(
            tiny(20, train__deterministic=False),
            tmp_path / f"nd{i}",
            progress=False,
            cache_dir=cache_dir,
        )
        for i in range(2)
    ]
    assert differing(runs[0], runs[1], 20)


def test_sigkill_mid_run_then_resume_equals_the_uninterrupted_run(reference, tmp_path, cache_dir):
    env = dict(os.environ, HOME=str(cache_dir), PYTHONPATH=os.getcwd())
    env.pop("OMP_NUM_THREADS", None)
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "interp_ext.cli",
        "train",
        *ARGS,
        "--steps",
        "40",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = out / "checkpoints" / "seed=1" / "step=20.safetensors"
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed_at = open_run(out).steps
    assert 20 in killed_at and 40 not in killed_at, (
        killed_at
    )  # killed mid-run, the last checkpoint intact
    resumed = subprocess.run(
        [*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = open_run(out)
    assert run.steps == [0, 10, 20, 30, 40]
    assert differing(run, reference, 40) == []
    resumes = json.loads((out / "config.json").read_text())["provenance"]["resumed"]
    assert resumes[-1]["step"] in killed_at and resumes[-1]["deterministic"] is True


def test_resume_warns_when_the_setting_changes(reference, tmp_path, cache_dir, caplog):
    copy = _resumable_copy(reference, tmp_path)
    with caplog.at_level("WARNING", logger="interp_ext"):
        train(
            tiny(train__deterministic=False), copy, resume=True, progress=False, cache_dir=cache_dir
        )
    assert "deterministic True -> False" in caplog.text and "not bit for bit" in caplog.text
    assert json.loads((Path(copy) / "config.json").read_text())["train"]["deterministic"] is False


def _resumable_copy(reference, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(reference.path, copy)
    for seed in reference.seeds:
        (copy / "checkpoints" / f"seed={seed}" / "step=40.safetensors").unlink()
    return copy


def test_resume_warns_when_the_seeds_per_pass_change(reference, tmp_path, cache_dir, caplog):
    """One vmap over the seeds and one seed at a time differ at float level (docs/benchmarks.md)."""
    copy = _resumable_copy(reference, tmp_path)
    with caplog.at_level("WARNING", logger="interp_ext"):
        train(tiny(train__seed_chunk=2), copy, resume=True, progress=False, cache_dir=cache_dir)
    assert "seeds_per_pass 1 -> 2" in caplog.text and "not bit for bit" in caplog.text


def test_a_run_saved_before_seeds_per_pass_resumes_without_a_warning(
    reference, tmp_path, cache_dir, caplog
):
    copy = _resumable_copy(reference, tmp_path)
    config = json.loads((copy / "config.json").read_text())
    del config["provenance"]["numerics"]["seeds_per_pass"]
    (copy / "config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING", logger="interp_ext"):
        train(tiny(), copy, resume=True, progress=False, cache_dir=cache_dir)
    assert "not bit for bit" not in caplog.text
    assert differing(open_run(copy), reference, 40) == []


def test_seeds_per_pass_by_device_and_setting():
    from interp_ext.training import seeds_per_pass

    train_cfg = get_preset("tiny").train
    assert seeds_per_pass(train_cfg, 8) == 1  # CPU: one seed at a time
    train_cfg.device = "cuda"
    assert seeds_per_pass(train_cfg, 8) == 8  # GPU: every seed of the process in one vmap
    train_cfg.seed_chunk = 3
    assert seeds_per_pass(train_cfg, 8) == 3 and seeds_per_pass(train_cfg, 2) == 2


def test_seeds_per_pass_is_recorded_for_every_rank(monkeypatch):
    """The numerics record describes every rank under torchrun, not only the recording one."""
    from interp_ext.config import TrainConfig
    from interp_ext.training import ranks_seeds_per_pass

    train = dataclasses.replace(TrainConfig(), n_seeds=3, seed_chunk=4)
    assert ranks_seeds_per_pass(train) == 3  # one process: its own count, as before
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("0", "1"):  # every rank records the same list: 2 seeds on rank 0, 1 on rank 1
        monkeypatch.setenv("RANK", rank)
        assert ranks_seeds_per_pass(train) == [2, 1]
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="4 processes for 3 seeds"):
        ranks_seeds_per_pass(train)


def test_deterministic_setting_is_restored_after_training(tmp_path, cache_dir):
    from tests.conftest import micro_config

    before = torch.are_deterministic_algorithms_enabled()
    train(
        micro_config(steps=2, checkpoint_every=2),
        tmp_path / "m",
        progress=False,
        cache_dir=cache_dir,
    )
    assert torch.are_deterministic_algorithms_enabled() == before


def test_seeds_added_to_a_run_train_as_they_would_alone(reference, tmp_path, cache_dir):
    """``--resume`` with more seeds adds them from step 0: the run's seeds keep their files
    untouched and the new seed equals, bit for bit, a run that trained it alone."""
    import shutil

    copy = tmp_path / "grown"
    shutil.copytree(reference.path, copy)
    before = {p: p.stat().st_mtime_ns for p in (copy / "checkpoints").rglob("*.safetensors")}
    grown = train(tiny(train__n_seeds=3), copy, resume=True, progress=False, cache_dir=cache_dir)
    assert grown.seeds == [0, 1, 2]
    assert {p: p.stat().st_mtime_ns for p in before} == before
    alone = train(
        tiny(train__n_seeds=1, train__first_seed=2),
        tmp_path / "alone",
        progress=False,
        cache_dir=cache_dir,
    )
    assert differing(grown, alone, 40) == []
    assert grown.steps_for(2) == alone.steps_for(2)


def test_a_resume_that_drops_a_seed_is_refused_in_one_line(reference, tmp_path, cache_dir):
    import shutil

    from interp_ext.errors import ConfigError

    copy = tmp_path / "fewer"
    shutil.copytree(reference.path, copy)
    with pytest.raises(ConfigError, match="seeds differ"):
        train(tiny(train__n_seeds=1), copy, resume=True, progress=False, cache_dir=cache_dir)


def test_per_rank_seeds_per_pass_that_agree_resume_without_a_warning(tmp_path, caplog):
    """A run trained under torchrun with one seed per pass on every rank ([1, 1]) sums each seed
    as one process does (1): a branch or resume in one process is not warned about."""
    from interp_ext.training import _warn_numerics_changed, numerics

    cfg = tiny()
    now = numerics(cfg)
    assert now["seeds_per_pass"] == 1
    with caplog.at_level("WARNING", logger="interp_ext"):
        _warn_numerics_changed({"numerics": {**now, "seeds_per_pass": [1, 1]}}, cfg, tmp_path, 10)
    assert "not bit for bit" not in caplog.text
    with caplog.at_level("WARNING", logger="interp_ext"):
        _warn_numerics_changed({"numerics": {**now, "seeds_per_pass": [2, 1]}}, cfg, tmp_path, 10)
    assert "seeds_per_pass [2, 1] -> 1" in caplog.text
