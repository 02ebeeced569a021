"""Two gloo processes under torchrun == one process, bit for bit; a dead rank resumes exactly.

Training, then every measurement of ``reproduce`` (induction, patching,
geometry and Stream 2, Stream 3, SAE tracking with cross-seed universality,
the formation-step interval over seeds, the beta fit): each rank measures its
own seeds and the cross-seed rows gather through the run directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import torch

from interp_ext.run import open_run, parts
from tests.integration.test_store_cli import runner, small_wikitext


def _torchrun(args: list[str], env: dict) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29517",
        "-m",
        "interp_ext.cli",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _same_checkpoints(a, b, step):
    for seed in b.seeds:
        x, y = a.checkpoint(seed, step), b.checkpoint(seed, step)
        for kind in ("params", "exp_avg", "exp_avg_sq"):
            for name in y[kind]:
                assert torch.equal(x[kind][name], y[kind][name]), (seed, kind, name)


def test_two_process_gloo_run_equals_single_process(tmp_path, cache_dir):
    data = small_wikitext(tmp_path)
    common = [
        "--preset",
        "tiny",
        "--seeds",
        "4",
        "--checkpoint-every",
        "2",
        "--data-dir",
        str(data),
        "--quiet",
        "--record",
        "blocks.0.attn.hook_pattern",
    ]
    # same thread count in both, so float reductions run in the same order
    env = dict(os.environ, HOME=str(cache_dir), OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "interp_ext.cli",
            "train",
            "--steps",
            "6",
            "--out",
            str(tmp_path / "single"),
            *common,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    dist = _torchrun(["train", "--steps", "6", "--out", str(tmp_path / "dist"), *common], env)
    assert dist.returncode == 0, dist.stderr[-3000:]
    a, b = open_run(tmp_path / "dist"), open_run(tmp_path / "single")
    assert a.seeds == [0, 1, 2, 3] and a.steps == [0, 2, 4, 6]
    assert (
        len(
            [
                p
                for p in parts.part_files(tmp_path / "dist" / "metrics", "train", "train")
                if p.stem.startswith("seed") and "-step" in p.stem
            ]
        )
        == 4 * 3
    )
    _same_checkpoints(a, b, 6)
    for seed in b.seeds:
        torch.testing.assert_close(
            a.activations(seed, 6)["blocks.0.attn.hook_pattern"],
            b.activations(seed, 6)["blocks.0.attn.hook_pattern"],
            rtol=0,
            atol=0,
        )
    la, lb = (
        a.metrics("train").sort_values(["seed", "step"]),
        b.metrics("train").sort_values(["seed", "step"]),
    )
    assert la.value.tolist() == lb.value.tolist()
    # rank 1 (seeds 1 and 3) "died" before writing step 6: restarting the job continues it from step 4
    for seed in (1, 3):
        (tmp_path / "dist" / "checkpoints" / f"seed={seed}" / "step=6.safetensors").unlink()
    again = _torchrun(
        ["train", "--steps", "6", "--out", str(tmp_path / "dist"), "--resume", "--quiet"], env
    )
    assert again.returncode == 0, again.stderr[-3000:]
    _same_checkpoints(open_run(tmp_path / "dist"), b, 6)


def _table(run) -> pd.DataFrame:
    m = run.metrics(settings="all").drop(columns=["run"])
    key = [c for c in m.columns if c != "value"]
    return m.sort_values(key).reset_index(drop=True)


def test_two_process_measurements_equal_single_process(tmp_path, cache_dir):
    from interp_ext.cli import app
    from tests.integration import measure_all

    data = small_wikitext(tmp_path)
    trained = runner.invoke(
        app,
        [
            "train",
            "--preset",
            "tiny",
            "--seeds",
            "4",
            "--steps",
            "6",
            "--checkpoint-every",
            "1",
            "--data-dir",
            str(data),
            "--quiet",
            "--out",
            str(tmp_path / "single"),
        ],
    )
    assert trained.exit_code == 0, trained.output
    shutil.copytree(tmp_path / "single", tmp_path / "dist")
    # same thread count in both, so float reductions run in the same order
    env = dict(os.environ, HOME=str(cache_dir), OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    alone = subprocess.run(
        [sys.executable, measure_all.__file__, str(tmp_path / "single")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert alone.returncode == 0, alone.stderr[-3000:]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29518",
        measure_all.__file__,
        str(tmp_path / "dist"),
    ]
    dist = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert dist.returncode == 0, dist.stderr[-3000:]
    a, b = open_run(tmp_path / "dist"), open_run(tmp_path / "single")
    ta, tb = _table(a), _table(b)
    families = {
        "train",
        "induction",
        "patching",
        "geometry",
        "stream1",
        "stream2",
        "beta",
        "transition",
        "autocatalysis",
        "sae",
    }
    assert families <= set(tb.family), set(tb.family)

    # the same immutable parts in both runs (each written by the rank that owns its seed or step)
    def parts(root):
        return sorted(str(p.relative_to(root)) for p in (root / "metrics").rglob("*.parquet"))

    assert parts(tmp_path / "dist") == parts(tmp_path / "single")
    # cross-seed rows: formation-step interval, universality per step, Stream 2
    assert {"formation_step/seed_mean", "universality", "cross_seed_alignment_perm"} <= set(
        ta[ta.seed == -1].metric
    )
    pd.testing.assert_frame_equal(ta.drop(columns="value"), tb.drop(columns="value"))
    same = (ta.value.to_numpy() == tb.value.to_numpy()) | (
        np.isnan(ta.value.to_numpy()) & np.isnan(tb.value.to_numpy())
    )
    assert same.all(), ta[~same].assign(single=tb.value[~same]).head(20).to_string()
