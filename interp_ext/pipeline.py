"""``interp-ext reproduce``: the autocatalysis experiment end to end.

Training (with recording of the hooks SAE tracking needs), then every family of
the run's measurement plan (``config.measure``: induction, patching, geometry,
Stream 2, the beta fit, Stream 3, SAE tracking) through the one runner, then the
report. Every stage is resumable: training from its last checkpoint, each
measurement per unit of work (the same settings measure nothing twice), so a
killed reproduction continues with ``--resume``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tqdm.auto import tqdm

from interp_ext.config import ConfigError, MeasureConfig, RunConfig, get_preset, override
from interp_ext.errors import RunExistsError
from interp_ext.run.layout import Layout

log = logging.getLogger("interp_ext")


# families a plan saved before their retirement may still name: why each went
RETIRED = {
    "ledger": "results 3.5 withdrew its reading; the exact ledger, work, answers Stream 3",
    "counterfactual": "results 4.3 withdrew its reading; noise turns the noise alone",
}


def plan_settings(plan: MeasureConfig, which: str = "plan") -> dict:
    """family -> its settings object, built (and validated) from ``plan.plan`` (or ``plan.study_plan``)."""
    from interp_ext.measurement.runner import MeasureError, get_family

    out = {}
    for name, values in getattr(plan, which).items():
        if stage_family(name) in RETIRED:
            log.warning(
                "measure.%s[%r]: the %s family is retired (%s): skipped; its rows still read",
                which,
                name,
                stage_family(name),
                RETIRED[stage_family(name)],
            )
            continue
        try:
            out[name] = get_family(stage_family(name)).settings.from_dict(values)
        except MeasureError as err:
            raise ConfigError(f"measure.{which}[{name!r}]: {err}") from err
    return out


def stage_family(stage: str) -> str:
    """The family a plan entry measures: ``work:lr/2`` is a second entry of ``work``."""
    return stage.split(":", 1)[0]


def plan_steps(run, plan: MeasureConfig, family: str) -> list[int] | None:
    """Every ``plan.every[family]``-th checkpoint, the last one always included; None: the family's default."""
    if family not in plan.every:
        return None
    steps = run.steps[:: plan.every[family]]
    return steps if run.steps[-1] in steps else steps + run.steps[-1:]


def reproduce_config(
    out: Path, preset: str, resume: bool, study: bool = False, **changes
) -> tuple[RunConfig, bool]:
    """The run's config (saved one when resuming) and whether the run directory exists."""
    existed = Layout(out).config.exists()
    if existed and not resume:
        raise RunExistsError(
            f"{out} already holds a run; pass --resume to continue it (finished measurements are skipped) or choose another --out"
        )
    if existed:
        return override(RunConfig.load(Layout(out).config), train__steps=changes.get("steps")), True
    cfg = get_preset(preset)
    if study:
        changes["seeds"] = changes.get("seeds") or cfg.measure.study_seeds
    hooks = sorted(
        {v["hook"] for k, v in cfg.measure.plan.items() if k == "sae" and v.get("hook")}
        | set(cfg.record.hooks)
    )
    cfg = override(
        cfg,
        train__n_seeds=changes.get("seeds"),
        train__steps=changes.get("steps"),
        train__device=changes.get("device"),
        train__checkpoint_every=changes.get("checkpoint_every"),
        data__data_dir=changes.get("data_dir"),
        record__hooks=hooks,
    )
    return cfg, False


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
    """Train, measure the run's plan and write the report; returns (run, report path, stage timings).

    Under ``torchrun`` every rank trains and measures its share of the seeds;
    cross-seed measurements gather through the run directory and rank 0 writes
    the report.
    """
    from interp_ext import distributed
    from interp_ext.run import open_run

    out = Path(out)
    distributed.init(device or get_preset(preset).train.device)
    changes = dict(
        data_dir=data_dir,
        seeds=seeds,
        steps=steps,
        device=device,
        checkpoint_every=checkpoint_every,
    )
    cfg, existed = reproduce_config(out, preset, resume, **changes)
    settings = plan_settings(
        cfg.measure
    )  # every measurement's settings checked before training starts
    distributed.barrier()
    stages = [s for s in ["train", *settings, "report"] if s not in skip]
    progress = progress and distributed.world()[0] == 0
    bar = tqdm(
        stages, desc="reproduce", unit="stage", disable=not progress, position=0, dynamic_ncols=True
    )
    timings: dict[str, float] = {}
    run = open_run(out) if existed else None
    for stage in bar:
        bar.set_postfix(stage=stage)
        t0 = time.perf_counter()
        run = run_stage(stage, run, cfg, out, existed, settings, progress)
        timings[stage] = time.perf_counter() - t0
    bar.close()
    log.info("stage timings (s): %s", {k: round(v, 1) for k, v in timings.items()})
    return run, (run.path / "report" / "report.md"), timings


def run_stage(
    stage: str,
    run,
    cfg: RunConfig,
    out: Path,
    existed: bool,
    settings: dict,
    progress: bool,
    every: bool = True,
):
    """One stage of :func:`reproduce` (``every``: measure at the plan's every-n-th checkpoints); returns the run."""
    from interp_ext import distributed
    from interp_ext.measurement.runner import measure
    from interp_ext.report.compose import write_report
    from interp_ext.run import open_run
    from interp_ext.training import last_complete_step, train

    if stage == "train":
        done = existed and last_complete_step(out, cfg.train.seeds) == cfg.train.steps
        distributed.barrier()
        return open_run(out) if done else train(cfg, out, resume=existed, progress=progress)
    if stage == "report":
        with distributed.on_rank_zero() as zero:
            if zero:
                write_report(run)
    elif get_min_seeds(stage) > len(run.seeds):
        log.warning(
            "%s compares seeds and needs >= %d; the run has %s: skipped",
            stage,
            get_min_seeds(stage),
            run.seeds,
        )
    else:
        steps = plan_steps(run, cfg.measure, stage) if every else None
        first = None if every else cfg.measure.study_family_seeds.get(stage)
        seeds = first_formed_seeds(run, first, stage) if first else None
        if seeds == []:
            log.warning("%s skipped: no seed's induction heads formed", stage)
            return run
        measure(run, settings[stage], seeds=seeds, steps=steps, progress=progress)
    return run


def first_formed_seeds(run, n: int, stage: str) -> list[int]:
    """The first ``n`` seeds whose induction heads formed (a study family measured on some seeds only)."""
    from interp_ext.measurement.windows import formed_seeds

    formed = formed_seeds(run)
    if len(formed) < n:
        log.warning(
            "%s asks for %d seeds whose induction heads formed; only %s of %s did",
            stage,
            n,
            formed,
            run.seeds,
        )
    log.info("%s on seeds %s (the first %d whose heads formed)", stage, formed[:n], n)
    return formed[:n]


def get_min_seeds(stage: str) -> int:
    from interp_ext.measurement.runner import get_family

    return get_family(stage_family(stage)).min_seeds


def study(
    out: str | Path,
    preset: str = "tiny",
    data_dir: str | None = None,
    seeds: int | None = None,
    steps: int | None = None,
    device: str | None = None,
    resume: bool = False,
    progress: bool = True,
):
    """``interp-ext study``: train ``measure.study_seeds`` seeds, then the study plan (induction, the
    circuit by cause, the Stream 3 ledger through each seed's formation) and the report.

    Returns (run, report path, stage timings in seconds).
    """
    from interp_ext import distributed
    from interp_ext.run import open_run

    out = Path(out)
    distributed.init(device or get_preset(preset).train.device)
    changes = dict(data_dir=data_dir, seeds=seeds, steps=steps, device=device)
    cfg, existed = reproduce_config(out, preset, resume, study=True, **changes)
    settings = plan_settings(cfg.measure, "study_plan")
    distributed.barrier()
    progress = progress and distributed.world()[0] == 0
    run = open_run(out) if existed else None
    timings: dict[str, float] = {}
    for stage in ["train", *settings, "report"]:
        t0 = time.perf_counter()
        run = run_stage(stage, run, cfg, out, existed, settings, progress, every=False)
        timings[stage] = time.perf_counter() - t0
        log.info("study stage %s: %.0f s", stage, timings[stage])
    return run, (run.path / "report" / "report.md"), timings
