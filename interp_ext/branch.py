"""Branches: continue a run's seeds from a checkpoint, with or without an intervention.

A branch is a run directory of its own (every family measures it unchanged) whose seeds start
from the parent's checkpoint at ``start`` -- parameters, AdamW moments, step count -- and train
on the same data order (a batch is a pure function of seed and step), so a branch without an
intervention equals the parent bit for bit at every later checkpoint, given the same numerics
(device type, threads, seeds per pass; README "Bit for bit"). ``branch.json`` names the parent,
the seeds, the step and the interventions; a resumed branch (``interp-ext train --resume``) reads
its interventions from there.

Interventions, each on components as the circuit code names them (``L0H1``, ``L1MLP``,
``EMBED``, ...; a set as ``L0H1,L0H2``):

* ``lr_scale``: {component set: multiplier}. The AdamW update of the component's parameters (its
  weight-decay part included) is multiplied: theta <- theta_before + s (theta_adamw -
  theta_before) on its coordinates (0 freezes it). ``moments="run"``: AdamW's moments of those
  coordinates keep running on their gradients as without the intervention; ``"freeze"``: they
  are held at their values at each step's start too (a frozen component then resumes, when
  the branch ends, from the state it had at the branch point).
* ``ablate``: {component: "mean" | "zero"}: the head's output (``hook_z``) or the MLP's
  (``hook_mlp_out``) replaced in every training forward pass by its mean over the batch's
  sequences (per position) or by zero, from the branch point on. Checkpoints hold the trained
  weights; measurements see the model without the hook.
* ``project_out``: {block: members}: at every step the part of the block's update that raises
  the members' signal energy (grad_block S_members) is removed, or, with
  ``project_control="random"``, a vector of the same norm is subtracted along a random
  direction of the block (:class:`interp_ext.interventions.Projection`).
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

from circuits.circuit import Circuit, CircuitError, Head
from interp_ext import diskio
from interp_ext.config import ConfigError, RunConfig
from interp_ext.interventions import ABLATIONS, MOMENTS, PROJECTIONS, BranchError, Interventions
from interp_ext.run.layout import Layout

log = logging.getLogger("interp_ext")


def parse_assignments(items: list[str] | None, what: str) -> dict[str, str]:
    """``["L0H1=0", "L1H2,L1H3=0.5"]`` -> {"L0H1": "0", "L1H2,L1H3": "0.5"}."""
    out = {}
    for item in items or []:
        spec, sep, value = str(item).rpartition("=")
        if not sep or not spec.strip() or not value.strip():
            raise BranchError(
                f"{what} {item!r} is not COMPONENTS=VALUE; e.g. L0H1=0 or L0H1,L0H2=0.5"
            )
        out[spec.replace(" ", "")] = value.strip()
    return out


def parse_lr_scale(items: list[str] | None) -> dict[str, float]:
    out = {}
    for spec, value in parse_assignments(items, "--lr-scale").items():
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number < 0:
            raise BranchError(
                f"--lr-scale {spec}={value}: the multiplier must be a number >= 0 (0 freezes)"
            )
        out[spec] = number
    return out


def parse_ablate(items: list[str] | None) -> dict[str, str]:
    out = parse_assignments(items, "--ablate")
    for spec, mode in out.items():
        if mode not in ABLATIONS:
            raise BranchError(f"--ablate {spec}={mode}: choose {' or '.join(ABLATIONS)}")
    return out


def parse_project(item: str | None) -> dict[str, str]:
    """``"L0H1=L1H3"`` -> {"L0H1": "L1H3"} (the block whose update is projected, the members
    whose signal energy it must not raise); empty -> no projection."""
    if not item:
        return {}
    block, sep, members = item.replace(" ", "").partition("=")
    if not sep or not block or not members or "=" in members:
        raise BranchError(
            f"--project-out {item!r} is not BLOCK=MEMBERS; e.g. L0H1=L1H3 or L0H1,L0H3=L1H3"
        )
    return {block: members}


def check_interventions(iv: Interventions, model) -> None:
    """Every component exists in the model; ablations name heads or MLPs; one line otherwise."""
    if iv.moments not in MOMENTS:
        raise BranchError(f"moments={iv.moments!r}: choose {' or '.join(MOMENTS)}")
    if iv.project_control not in PROJECTIONS:
        raise BranchError(
            f"--project-control {iv.project_control}: choose {' or '.join(PROJECTIONS)}"
        )
    for spec in [*iv.lr_scale, *iv.ablate, *iv.project_out, *iv.project_out.values()]:
        try:
            Circuit("intervention", spec.split(",")).validate(model)
        except CircuitError as err:
            raise BranchError(f"{spec}: {err}") from err
    for spec in iv.ablate:
        for comp in spec.split(","):
            if not (Head.is_head(comp) or comp.endswith("MLP")):
                raise BranchError(
                    f"--ablate {comp}: only a head (L1H2) or an MLP (L0MLP) has an output to ablate"
                )


def branch(
    run,
    seeds: list[int],
    start: int,
    steps: int,
    out: str | Path,
    interventions: Interventions | None = None,
    progress: bool = True,
    checkpoint_every: int | None = None,
):
    """Continue ``seeds`` of ``run`` from checkpoint ``start`` for ``steps`` steps into a new run
    directory ``out`` (see the module docstring), checkpointing every ``checkpoint_every`` steps
    (default: the parent's; finer checkpoints time formation finer and change no step); returns
    the opened branch."""
    from interp_ext.training import train

    iv = interventions or Interventions()
    out = Path(out)
    prepare_branch(run, seeds, start, steps, out, iv, checkpoint_every)
    cfg = RunConfig.load(Layout(out).config)
    return train(cfg, out, resume=True, progress=progress)


def prepare_branch(
    run,
    seeds: list[int],
    start: int,
    steps: int,
    out: Path,
    iv: Interventions,
    checkpoint_every: int | None = None,
) -> None:
    """Check everything, then write the branch directory: the parent's config (steps to
    ``start + steps``, the branch's seeds), data, tokenizer and probe set, each seed's checkpoint
    at ``start``, and ``branch.json``.

    Long because every check of the input comes before the first file is written."""
    if out.exists() and any(out.iterdir()):
        raise BranchError(f"{out} exists and is not empty; choose another --out for the branch")
    missing = [s for s in seeds if s not in run.seeds]
    if not seeds or missing:
        raise BranchError(f"seed(s) {missing or seeds} not in {run.path} (its seeds: {run.seeds})")
    for s in seeds:
        if start not in run.steps_for(s):
            raise BranchError(
                f"seed {s} has no checkpoint at step {start} in {run.path}; its checkpoints: {run.steps_for(s)}"
            )
    if start > 0 and not run.checkpoint(seeds[0], start)["exp_avg"]:
        raise BranchError(
            f"the checkpoint at step {start} holds no AdamW moments: it cannot be continued"
        )
    if steps < 1:
        raise BranchError(f"--steps {steps}: a branch trains at least one step")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise BranchError(f"--checkpoint-every {checkpoint_every}: give a positive number of steps")
    check_interventions(iv, run.model(seeds[0], start))
    cfg = run.config
    cfg.train.steps = start + steps
    cfg.train.seed_list = tuple(seeds)
    cfg.train.n_seeds = len(seeds)
    cfg.train.first_seed = min(seeds)
    if checkpoint_every:
        cfg.train.checkpoint_every = checkpoint_every
    if cfg.train.checkpoint_every > cfg.train.steps:
        cfg.train.checkpoint_every = cfg.train.steps
    parent, layout = Layout(run.path), Layout(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(parent.tokenizer, layout.tokenizer)
    shutil.copytree(parent.data, layout.data)
    shutil.copy2(parent.probe_set, layout.probe_set)
    shutil.copy2(parent.run_info, layout.run_info)
    for s in seeds:
        target = layout.checkpoint(s, start)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(parent.checkpoint(s, start), target)
    diskio.write_json(
        layout.branch,
        {
            "parent": str(Path(run.path).resolve()),
            "seeds": list(seeds),
            "from": start,
            "steps": steps,
            "interventions": iv.to_dict(),
        },
    )
    provenance = diskio.read_json(parent.config).get("provenance") or {}
    provenance["branched_from"] = {"parent": str(Path(run.path).resolve()), "step": start}
    try:
        diskio.write_json(
            layout.config, cfg.payload(provenance)
        )  # last: a run exists once it has a config
    except ConfigError as err:
        raise BranchError(str(err)) from err


__all__ = [
    "BranchError",
    "Interventions",
    "branch",
    "check_interventions",
    "parse_ablate",
    "parse_lr_scale",
    "parse_project",
]
