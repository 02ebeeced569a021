"""The gradient-geometry dashboard at one checkpoint and over a run (SPEC section 4).

:func:`measure_checkpoint` works on any `HookedTransformer` and token batches, for
notebooks. :func:`measure_run` walks a run's checkpoints per seed, keeps U_t of
the previous checkpoint, of step 0 and a ring buffer of the last ``lag`` ones,
and appends ``family="geometry"`` / ``"stream1"`` rows.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Int
from torch.func import functional_call, jvp
from transformer_lens import HookedTransformer

from interp_ext.geometry import spectral
from interp_ext.geometry.gradients import (
    current_params,
    group_names,
    group_slices,
    params_label,
    per_batch_gradients,
    select_params,
)

log = logging.getLogger("interp_ext")

DASHBOARD = (
    "effective_rank", "participation_ratio", "topk_variance", "top1_variance", "energy_in_subspace", "energy_outside",
    "grad_cosine", "overlap_prev", "overlap_init", "top_eigvec_prev", "top_eigvec_init", "subspace_similarity",
    "grad_alignment_prev", "function_space_alignment_same", "function_space_alignment_heldout",
)


@dataclass
class CheckpointGeometry:
    """What one checkpoint's measurement keeps for comparisons with other checkpoints."""

    metrics: dict[str, float]
    basis: torch.Tensor  # U_t [n_params, k], the gradients' dtype (float32; float64 for a float64 model)
    mean_grad: torch.Tensor  # gbar [n_params] float32
    group_norms: dict[str, float]
    group_trace: dict[str, float]


def _geometry(model, batches, k, heldout, params, centered, chunk) -> CheckpointGeometry:
    grads = per_batch_gradients(model, batches, params, chunk)
    raw = spectral.gram(grads)
    # a non-finite entry makes its row's squared norm (G's diagonal) non-finite: no elementwise pass over the gradients
    if not bool(torch.isfinite(raw.diagonal()).all()):
        warnings.warn("non-finite gradients at this checkpoint: its geometry rows are NaN", RuntimeWarning, stacklevel=3)
        nan = {m: math.nan for m in ("effective_rank", "participation_ratio", "topk_variance", "top1_variance", "energy_in_subspace", "energy_outside", "grad_cosine")}
        n = grads.shape[1]
        return CheckpointGeometry(nan, torch.full((n, k), math.nan, dtype=grads.dtype), torch.full((n,), math.nan), {}, {})
    evals, evecs = spectral.gram_eigen(grads, centered, spectral.center_gram(raw) if centered else raw)
    basis = spectral.top_eigenvectors(grads, evals, evecs, k, centered)
    metrics = spectral.spectrum_metrics(evals, k)
    if heldout is not None:
        # one held-out gradient in memory at a time
        ratios = [spectral.energy_in_subspace(basis, per_batch_gradients(model, heldout[i : i + 1], params, chunk)) for i in range(heldout.shape[0])]
        metrics["energy_in_subspace"] = float(sum(ratios) / len(ratios))
        metrics["energy_outside"] = 1.0 - metrics["energy_in_subspace"]
    metrics["grad_cosine"] = spectral.mean_pairwise_cosine(grads, raw)
    names = select_params(model, params)
    slices = group_slices(model, names)
    mean = grads.mean(0)
    # squared norm of every parameter's block of every row: contiguous dot products, no copy of gradient columns
    sq = torch.tensor([[float(grads[b, slices[n]] @ grads[b, slices[n]]) for n in names] for b in range(grads.shape[0])], dtype=torch.float64)
    column = {n: i for i, n in enumerate(names)}
    norms, trace = {}, {}
    for group, members in group_names(names, per_layer=True).items():
        norms[group] = math.sqrt(sum(float(mean[slices[n]] @ mean[slices[n]]) for n in members))
        # sum of G's diagonal over the group
        trace[group] = float(sq[:, [column[n] for n in members]].sum(1).mean())
    return CheckpointGeometry(metrics, basis, mean, norms, trace)


def measure_checkpoint(
    model: HookedTransformer,
    batches: Int[torch.Tensor, "B batch pos"],
    k: int = 4,
    heldout: Int[torch.Tensor, "H batch pos"] | None = None,
    params: str | Sequence[str] = "all",
    centered: bool = False,
    chunk: int | None = None,
) -> dict[str, float]:
    """Every dashboard metric that needs no other checkpoint.

    Args:
        model: any `HookedTransformer`.
        batches: probe batches [B, batch, pos] that build G.
        k: size of the top eigenspace U.
        heldout: batches not used to build G (for ``energy_in_subspace``).
        params: ``"all"``, ``"blocks"`` or a list of groups (see ``GROUPS``).
        centered: subtract the mean gradient before forming G.

    Returns:
        ``effective_rank``, ``participation_ratio``, ``topk_variance``,
        ``top1_variance``, ``grad_cosine`` and, with ``heldout``,
        ``energy_in_subspace`` and ``energy_outside``.
    """
    return dict(_geometry(model, batches, k, heldout, params, centered, chunk).metrics)


def function_space_alignment(
    model: HookedTransformer, theta: dict[str, torch.Tensor], direction: dict[str, torch.Tensor], tokens: torch.Tensor
) -> float:
    """cos(J(x) d, -dL/dlogits) on tokens x, with J the Jacobian of the logits.

    ``theta`` and ``direction`` cover every trainable parameter.
    """
    buffers = dict(model.named_buffers())
    tokens = tokens.to(model.cfg.device)

    def logits_of(p):
        return functional_call(model, (p, buffers), (tokens,), kwargs={"return_type": "logits"})

    logits, jd = jvp(logits_of, (theta,), (direction,))
    logits = logits.detach().requires_grad_(True)
    log_probs = logits[:, :-1].log_softmax(-1)
    loss = -log_probs.gather(-1, tokens[:, 1:, None]).mean()
    (dl,) = torch.autograd.grad(loss, logits)
    return spectral.cosine(jd[:, :-1], -dl[:, :-1])


def _rows(seed, step, family, values: dict[str, float], component: str = "", **extra) -> list[dict]:
    return [{"seed": seed, "step": step, "family": family, "metric": m, "component": component, "value": float(v), **extra} for m, v in values.items()]


def measure_run(
    run,
    seeds: list[int] | None = None,
    steps: list[int] | None = None,
    n_batches: int | None = None,
    k: int = 4,
    params: str | Sequence[str] = "all",
    centered: bool = False,
    lag: int = 10,
    drift_delta: int | None = None,
    progress: bool = True,
    chunk: int | None = None,
):
    """Dashboard and Stream 1 rows for every (seed, checkpoint); idempotent and resumable.

    Rows for one (seed, step) are appended as soon as it is measured, so an
    interrupted measurement continues where it stopped (checkpoints whose rows
    exist are re-measured only to rebuild the state the next one needs).

    Args:
        n_batches: probe batches B (default: all of ``probe_set()["lm"]``).
        lag: checkpoints between U_t and U_{t-lag} for ``subspace_similarity``.
        drift_delta: Stream 1 Delta in steps (default: ``lag`` checkpoint intervals).
    """
    from tqdm.auto import tqdm

    from interp_ext import distributed
    from interp_ext.optim_step import optimizer_step_direction

    seeds = run.seeds if seeds is None else seeds
    all_steps = run.steps
    steps = all_steps if steps is None else sorted(steps)
    missing = [s for s in steps if s not in all_steps]
    if missing:
        from interp_ext.store import RunError

        raise RunError(f"no checkpoint at step(s) {missing}; available steps: {all_steps}")
    probe = run.probe_set()
    lm = probe["lm"][:n_batches] if n_batches else probe["lm"]
    heldout = probe["heldout"]
    label = params_label(params)
    interval = run.config.train.checkpoint_every
    drift_delta = drift_delta or lag * interval
    existing = run.metrics("geometry")
    done = set(zip(existing.seed, existing.step)) if len(existing) else set()
    if len(existing) and "params" in existing:
        done = set(zip(existing[existing.params == label].seed, existing[existing.params == label].step))
    # under torchrun each rank measures its share of the seeds
    mine = distributed.shard(seeds, run.device)
    bar = tqdm(total=len(mine) * len(steps), desc="geometry", disable=not progress, dynamic_ncols=True)
    for seed in mine:
        history: deque[tuple[int, torch.Tensor]] = deque(maxlen=max(lag, 1) + 1)
        by_step: dict[int, torch.Tensor] = {}
        init_basis, prev = None, None
        todo = [i for i, st in enumerate(steps) if (seed, st) not in done]
        if not todo:
            bar.update(len(steps))
            continue
        first = todo[0]
        # resuming: checkpoints measured before only rebuild the state later ones compare with
        needed = {steps[0]} | set(steps[max(0, first - lag) :]) | {st for st in steps if st >= steps[first] - drift_delta}
        for step in steps:
            if step not in needed:
                bar.update(1)
                continue
            model = run.model(seed, step)
            geo = _geometry(model, lm, k, heldout, params, centered, chunk)
            m = dict(geo.metrics)
            if init_basis is None:
                init_basis = geo.basis
            if prev is not None:
                m["overlap_prev"] = spectral.subspace_overlap(geo.basis, prev.basis)
                m["top_eigvec_prev"] = spectral.top_vector_similarity(geo.basis, prev.basis)
                m["grad_alignment_prev"] = spectral.cosine(geo.mean_grad, prev.mean_grad)
            m["overlap_init"] = spectral.subspace_overlap(geo.basis, init_basis)
            m["top_eigvec_init"] = spectral.top_vector_similarity(geo.basis, init_basis)
            if len(history) >= lag:
                m["subspace_similarity"] = spectral.subspace_overlap(geo.basis, history[-lag][1])
            by_step[step] = geo.basis
            if (step - drift_delta) in by_step:
                drift = spectral.drift_rate(geo.basis, by_step[step - drift_delta], drift_delta)
            else:
                drift = None
            # keep only the bases Stream 1 can still need
            for old in [s for s in by_step if s < step - drift_delta]:
                del by_step[old]
            history.append((step, geo.basis))
            prev = geo
            if (seed, step) in done:
                bar.update(1)
                continue
            if step < run.config.train.steps:
                try:
                    theta, direction, batch = optimizer_step_direction(run, seed, step)
                    m["function_space_alignment_same"] = function_space_alignment(model, theta, direction, batch)
                    m["function_space_alignment_heldout"] = function_space_alignment(model, theta, direction, heldout[0])
                except Exception as err:  # a checkpoint without optimizer state (step 0 has none)
                    log.info("function-space alignment skipped at seed %d step %d: %s", seed, step, err)
            rows = _rows(seed, step, "geometry", m, params=label)
            rows += [{"seed": seed, "step": step, "family": "geometry", "metric": "grad_norm", "component": g, "value": v, "params": label} for g, v in geo.group_norms.items()]
            rows += [{"seed": seed, "step": step, "family": "geometry", "metric": "g_trace", "component": g, "value": v, "params": label} for g, v in geo.group_trace.items()]
            if drift is not None:
                rows += _rows(seed, step, "stream1", {"drift_rate": drift}, params=label, delta=str(drift_delta))
            run.append_metrics(rows)
            bar.update(1)
    bar.close()
    distributed.barrier()
    return run.metrics("geometry")
