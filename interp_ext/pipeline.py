"""``interp-ext reproduce``: the autocatalysis experiment end to end.

Stages, each skipped when its rows are already in the run (and each resumable
per checkpoint), so a killed reproduction continues with ``--resume``:

1. train (with recording of the hooks SAE tracking needs),
2. induction scores, detection, formation step, ablation,
3. activation and path patching at the last checkpoint,
4. gradient geometry: dashboard, Stream 1, Stream 2, beta fit, transition,
5. Stream 3 on each seed's detected circuit, with controls,
6. SAE feature tracking,
7. the report.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from interp_ext.config import RunConfig, get_preset, override

log = logging.getLogger("interp_ext")


@dataclass
class ReproduceSettings:
    """Measurement settings per preset (training settings live in the preset)."""

    geometry_k: int = 4
    geometry_lag: int = 10
    stream3_rows: int = 32
    stream3_controls: int = 3
    stream3_every: int = 1  # measure Stream 3 at every n-th checkpoint
    sae_hook: str = "blocks.0.hook_resid_post"
    sae_width: int = 256
    sae_every: int = 1


def settings_for(preset: str) -> ReproduceSettings:
    if preset == "tiny":
        return ReproduceSettings(geometry_k=4, geometry_lag=4, stream3_rows=8, stream3_controls=2, stream3_every=2, sae_hook="blocks.0.hook_resid_post", sae_width=128, sae_every=2)
    return ReproduceSettings(sae_hook="blocks.1.hook_resid_post", sae_width=512, stream3_every=5, sae_every=10)


def _has(run, family: str) -> bool:
    """Whether a stage's rows exist; under torchrun every rank decides before any rank writes."""
    from interp_ext import distributed

    has = bool(len(run.metrics(family)))
    distributed.barrier()
    return has


def reproduce(
    out: str | Path,
    preset: str = "tiny",
    data_dir: str | None = None,
    seeds: int | None = None,
    steps: int | None = None,
    device: str | None = None,
    resume: bool = False,
    progress: bool = True,
    skip: tuple[str, ...] = (),
    checkpoint_every: int | None = None,
):
    """Run every stage on ``out`` and return (run, report path, stage timings).

    Under ``torchrun`` every rank trains and measures its share of the seeds;
    cross-seed measurements gather through the run directory and rank 0 writes
    the report.
    """
    from circuits.induction import measure_run as measure_induction
    from interp_ext import distributed
    from circuits.patching import measure_patching
    from interp_ext import autocatalysis
    from interp_ext.geometry import measure_beta_and_transition, measure_run as measure_geometry, measure_stream2
    from interp_ext.report import write_report
    from interp_ext.store import open_run
    from interp_ext.training import train

    out = Path(out)
    s = settings_for(preset)
    distributed.init(device or get_preset(preset).train.device)
    existed = (out / "config.json").exists()
    distributed.barrier()  # every rank sees the same starting state
    if existed and not resume:
        log.warning("%s exists: continuing it (finished stages are skipped)", out)
    if existed:
        cfg = override(RunConfig.load(out / "config.json"), train__steps=steps)
    else:
        cfg = override(
            get_preset(preset), train__n_seeds=seeds, train__steps=steps, train__device=device,
            train__checkpoint_every=checkpoint_every, data__data_dir=data_dir, record__hooks=[s.sae_hook],
        )
    stages = ["train", "induction", "patching", "geometry", "stream3", "sae", "report"]
    stages = [st for st in stages if st not in skip]
    progress = progress and distributed.world()[0] == 0
    bar = tqdm(stages, desc="reproduce", unit="stage", disable=not progress, position=0, dynamic_ncols=True)
    timings: dict[str, float] = {}
    run = None
    for stage in bar:
        bar.set_postfix(stage=stage)
        t0 = time.perf_counter()
        if stage == "train":
            from interp_ext.training import last_complete_step

            done = existed and last_complete_step(out, cfg.train.seeds) == cfg.train.steps
            distributed.barrier()
            run = open_run(out) if done else train(cfg, out, resume=existed, progress=progress)
        elif stage == "induction" and not _has(run, "induction"):
            measure_induction(run, progress=progress)
        elif stage == "patching" and not _has(run, "patching"):
            for seed in distributed.shard(run.seeds, run.device):
                log.info(measure_patching(run, seed, run.steps[-1]))
            distributed.barrier()
        elif stage == "geometry":
            measure_geometry(run, k=s.geometry_k, lag=s.geometry_lag, progress=progress)
            if len(run.seeds) >= 2 and not _has(run, "stream2"):
                measure_stream2(run, progress=progress)
            measure_beta_and_transition(run)
        elif stage == "stream3":
            steps3 = run.steps[:: s.stream3_every]
            if run.steps[-1] not in steps3:
                steps3.append(run.steps[-1])
            autocatalysis.measure_run(run, "induction", ("sgd", "optimizer"), steps=steps3, rows=s.stream3_rows, n_random=s.stream3_controls, progress=progress)
        elif stage == "sae" and not _has(run, "sae"):
            try:
                from interp_ext.sae_tracking import track_run
            except ImportError as err:  # pragma: no cover - optional stage
                log.warning("SAE tracking unavailable: %s", err)
            else:
                steps_sae = run.steps[:: s.sae_every]
                track_run(run, hook=s.sae_hook, steps=steps_sae, width=s.sae_width, progress=progress)
        elif stage == "report":
            with distributed.on_rank_zero() as zero:
                if zero:
                    write_report(run)
        timings[stage] = time.perf_counter() - t0
    bar.close()
    log.info("stage timings (s): %s", {k: round(v, 1) for k, v in timings.items()})
    return run, (run.path / "report" / "report.md"), timings
