"""The gradient-geometry dashboard at one checkpoint (SPEC section 4).

:func:`measure_checkpoint` works on any `HookedTransformer` and token batches, for
notebooks; :func:`checkpoint_geometry` also returns what comparisons with other
checkpoints need (U_t, the mean gradient). The ``geometry`` family
(:mod:`interp_ext.families.geometry`) walks a run's checkpoints with them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Int
from torch.func import functional_call, jvp
from transformer_lens import HookedTransformer

from interp_ext.geometry import spectral
from interp_ext.geometry.gradients import (
    group_names,
    group_slices,
    per_batch_gradients,
    select_params,
)

DASHBOARD = (
    "effective_rank",
    "participation_ratio",
    "topk_variance",
    "top1_variance",
    "energy_in_subspace",
    "energy_outside",
    "grad_cosine",
    "overlap_prev",
    "overlap_init",
    "top_eigvec_prev",
    "top_eigvec_init",
    "subspace_similarity",
    "grad_alignment_prev",
    "function_space_alignment_same",
    "function_space_alignment_heldout",
)


@dataclass
class CheckpointGeometry:
    """What one checkpoint's measurement keeps for comparisons with other checkpoints."""

    metrics: dict[str, float]
    basis: (
        torch.Tensor
    )  # U_t [n_params, k], the gradients' dtype (float32; float64 for a float64 model)
    mean_grad: torch.Tensor  # gbar [n_params] float32
    group_norms: dict[str, float]
    group_trace: dict[str, float]
    grams: dict[str, torch.Tensor] = field(
        default_factory=dict
    )  # block -> B x B Gram (groups, layers, heads)


SPECTRUM = ("effective_rank", "participation_ratio", "topk_variance", "top1_variance")
COMPANIONS = tuple(f"{m}_centered" for m in SPECTRUM) + (
    "grad_snr",
    "overlap_floor",
    "top_eigvec_floor",
    "angle_floor",
)
SINGLE = SPECTRUM + ("energy_in_subspace", "energy_outside", "grad_cosine")


def checkpoint_geometry(
    model, batches, k, heldout=None, params="all", centered=False, chunk=None
) -> CheckpointGeometry:
    """The dashboard metrics of one checkpoint with its U_t, mean gradient and per-group statistics."""
    grads = per_batch_gradients(model, batches, params, chunk)
    raw = spectral.gram(grads)
    # a non-finite entry makes its row's squared norm (G's diagonal) non-finite: no elementwise pass
    if not bool(torch.isfinite(raw.diagonal()).all()):
        warnings.warn(
            "non-finite gradients at this checkpoint: its geometry rows are NaN",
            RuntimeWarning,
            stacklevel=3,
        )
        n = grads.shape[1]
        nan_basis = torch.full((n, k), math.nan, dtype=grads.dtype)
        return CheckpointGeometry(
            dict.fromkeys(SINGLE + COMPANIONS, math.nan),
            nan_basis,
            torch.full((n,), math.nan),
            {},
            {},
        )
    evals, evecs = spectral.gram_eigen(
        grads, centered, spectral.center_gram(raw) if centered else raw
    )
    basis = spectral.top_eigenvectors(grads, evals, evecs, k, centered)
    metrics = spectral.spectrum_metrics(evals, k)
    if heldout is not None:
        metrics["energy_in_subspace"] = heldout_energy(model, basis, heldout, params, chunk)
        metrics["energy_outside"] = 1.0 - metrics["energy_in_subspace"]
    metrics["grad_cosine"] = spectral.mean_pairwise_cosine(grads, raw)
    metrics.update(companion_metrics(grads, raw, evals if centered else None, k, centered))
    norms, trace = group_statistics(model, grads, params)
    grams = spectral.block_grams(grads, gram_blocks(model, select_params(model, params)))
    return CheckpointGeometry(metrics, basis, grads.mean(0), norms, trace, grams)


def companion_metrics(
    grads: torch.Tensor,
    raw: torch.Tensor,
    centered_evals: torch.Tensor | None,
    k: int,
    centered: bool,
) -> dict[str, float]:
    """What reads the dashboard next to it: the spectrum metrics of the centred G (``*_centered``; the
    uncentred G's top direction is roughly the mean gradient when the signal-to-noise ratio is high), the
    gradient signal-to-noise ratio, and the split-half noise floor of the subspace metrics."""
    if centered_evals is None:
        centered_evals, _ = spectral.gram_eigen(grads, True, spectral.center_gram(raw))
    out = {f"{m}_centered": v for m, v in spectral.spectrum_metrics(centered_evals, k).items()}
    out["grad_snr"] = spectral.gradient_snr(grads, raw)
    out.update(spectral.split_half_floor(grads, k, centered, raw))
    return out


def gram_blocks(model, names: list[str]) -> dict[str, list[slice]]:
    """Coordinate blocks whose Gram matrices cross-seed CKA compares: every parameter group (``attn_qkv``,
    ``blocks.1.mlp_in``, ...) and every attention head (``L1H2``: its W_Q, W_K, W_V, W_O, b_Q, b_K, b_V)."""
    slices = group_slices(model, names)
    blocks = {
        g: [slices[n] for n in members] for g, members in group_names(names, per_layer=True).items()
    }
    n_heads = model.cfg.n_heads
    for name in names:
        parts = name.split(".")
        if parts[0] == "blocks" and parts[-1] in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V"):
            sl = slices[name]
            per = (
                sl.stop - sl.start
            ) // n_heads  # heads are the leading dimension of these parameters
            for h in range(n_heads):
                blocks.setdefault(f"L{parts[1]}H{h}", []).append(
                    slice(sl.start + h * per, sl.start + (h + 1) * per)
                )
    return blocks


def heldout_energy(model, basis: torch.Tensor, heldout: torch.Tensor, params, chunk) -> float:
    """Mean over held-out batches of ||U^T g_h||^2 / ||g_h||^2, one held-out gradient in memory at a time."""
    ratios = [
        spectral.energy_in_subspace(
            basis, per_batch_gradients(model, heldout[i : i + 1], params, chunk)
        )
        for i in range(heldout.shape[0])
    ]
    return float(sum(ratios) / len(ratios))


def group_statistics(
    model, grads: torch.Tensor, params
) -> tuple[dict[str, float], dict[str, float]]:
    """Per parameter group (and per layer): the mean gradient's norm and the trace of G (sum of G_ii)."""
    names = select_params(model, params)
    slices = group_slices(model, names)
    mean = grads.mean(0)
    # squared norm of every parameter's block of every row: contiguous dot products, no column copies
    sq = torch.tensor(
        [
            [float(grads[b, slices[n]] @ grads[b, slices[n]]) for n in names]
            for b in range(grads.shape[0])
        ],
        dtype=torch.float64,
    )
    column = {n: i for i, n in enumerate(names)}
    norms, trace = {}, {}
    for group, members in group_names(names, per_layer=True).items():
        norms[group] = math.sqrt(sum(float(mean[slices[n]] @ mean[slices[n]]) for n in members))
        trace[group] = float(sq[:, [column[n] for n in members]].sum(1).mean())
    return norms, trace


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
    return dict(checkpoint_geometry(model, batches, k, heldout, params, centered, chunk).metrics)


def function_space_alignment(
    model: HookedTransformer,
    theta: dict[str, torch.Tensor],
    direction: dict[str, torch.Tensor],
    tokens: torch.Tensor,
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
