"""Stream 3: the autocatalytic condition dG_ii/dtheta_j > 0 on identified circuits
("Internalization of gradients", sections 9-10; SPEC section 6).

With g_b the gradient of batch b's mean loss and G_ii = (1/B) sum_b g_b,i^2, the
gradient energy of a component A (a set of coordinates) is E_A = sum_{i in A} G_ii
and

    grad E_A = (2/B) sum_b H_b (P_A g_b),

H_b the Hessian of batch b's loss. The component matrix

    K[A, B] = d/d eps E_A(theta + eps d_B) |_{eps=0} = (2/B) sum_b (P_A g_b) . H_b d_B

uses one Hessian-vector product per batch and per component B (``torch.func``:
forward-mode ``jvp`` of the reverse-mode ``grad``, vmapped over batches), never a
Jacobian and never finite differences. d_B is B's own update restricted to B:
``sgd`` (-P_B gbar) or ``optimizer`` (P_B of AdamW's actual step from the
checkpoint's state). ``K_norm = K / (E_A ||d_B||)``.

The component ``rest`` (every parameter outside the circuit) completes a
partition, so sum_B K[A, B] along the optimizer update is the derivative of E_A
along the whole step, checked against the observed change over one real step.

The ``autocatalysis`` family (:mod:`interp_ext.families.autocatalysis`) measures
these on a run's checkpoints.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from torch.func import grad, jvp, vmap
from transformer_lens import HookedTransformer

from circuits.circuit import REST, Circuit
from interp_ext.geometry.gradients import current_params, flatten, loss_function

log = logging.getLogger("interp_ext")

WHOLE = "C"


# --------------------------------------------------------------------------- generic machinery


class EnergyProbe:
    """Gradients and Hessian-vector products of a loss over probe batches.

    Args:
        loss_fn: loss(params: dict, batch) -> scalar, differentiable by torch.func.
        theta: parameters (a dict of tensors) at which everything is measured.
        batches: a tensor whose first dimension indexes probe batches.
        chunk: batches per vmap call (default: 8 on a GPU, 1 on a CPU, as for
            :func:`interp_ext.geometry.per_batch_gradients`).
    """

    def __init__(
        self,
        loss_fn: Callable,
        theta: dict[str, torch.Tensor],
        batches: torch.Tensor,
        chunk: int | None = None,
    ):
        self.loss_fn, self.theta, self.batches = loss_fn, theta, batches
        self.names = list(theta)
        on_gpu = next(iter(theta.values())).device.type == "cuda"
        self.chunk = chunk or (8 if on_gpu else 1)
        self.n_batches = batches.shape[0]
        self._grads: torch.Tensor | None = None
        self._diagonal: torch.Tensor | None = None

    def flat(self, tensors: dict[str, torch.Tensor], batch_dims: int = 0) -> torch.Tensor:
        return flatten(tensors, self.names, batch_dims)

    def unflat(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split the last dimension into the parameters (leading dimensions are kept)."""
        out, start = {}, 0
        for n in self.names:
            size = self.theta[n].numel()
            out[n] = vector[..., start : start + size].reshape(
                *vector.shape[:-1], *self.theta[n].shape
            )
            start += size
        return out

    @property
    def grads(self) -> torch.Tensor:
        """g_b flattened, [B, n_params]."""
        if self._grads is None:
            per = vmap(grad(self.loss_fn), in_dims=(None, 0))
            rows = [
                self.flat(per(self.theta, self.batches[i : i + self.chunk]), 1)
                for i in range(0, self.n_batches, self.chunk)
            ]
            self._grads = torch.cat(rows)
        return self._grads

    def hvps(self, tangent: torch.Tensor) -> torch.Tensor:
        """H_b v for every batch b, [B, n_params]."""
        v = self.unflat(tangent)

        def one(batch):
            _, hv = jvp(lambda p: grad(self.loss_fn)(p, batch), (self.theta,), (v,))
            return hv

        per = vmap(one)
        return torch.cat(
            [
                self.flat(per(self.batches[i : i + self.chunk]), 1)
                for i in range(0, self.n_batches, self.chunk)
            ]
        )

    def hvp_contributions(self, tangents: torch.Tensor) -> torch.Tensor:
        """sum_b g_b * (H_b v_m) for every tangent v_m at once: [m, n_params].

        The m tangents are vmapped inside one forward-over-reverse pass per
        batch, so the primal forward and backward are shared by all of them.
        """
        g = self.grads
        vs = self.unflat(tangents)

        def one(batch, v):
            _, hv = jvp(lambda p: grad(self.loss_fn)(p, batch), (self.theta,), (v,))
            return hv

        per = vmap(vmap(one, in_dims=(None, 0)), in_dims=(0, None))  # batches x tangents
        out = torch.zeros(tangents.shape[0], g.shape[1], dtype=torch.float64, device=g.device)
        for i in range(0, self.n_batches, self.chunk):
            hv = self.flat(per(self.batches[i : i + self.chunk], vs), 2)  # [chunk, m, n]
            out += torch.einsum("cmn,cn->mn", hv.double(), g[i : i + self.chunk].double())
        return out

    def energy_gradients(
        self, masks: dict[str, torch.Tensor], extra: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """grad E_A = (2/B) sum_b H_b (P_A g_b) for every mask A, and (2/B) sum_b H_b u for every extra vector u.

        One forward-over-reverse pass per chunk of batches, the tangents (P_A g_b
        differs from batch to batch) vmapped inside it. With u = P_A gbar the extra
        term is 2 Hbar P_A gbar, the part of grad E_A that comes from the mean gradient.
        Returns flat float64 vectors.
        """
        out, _ = self._tangent_pass(masks, extra or {}, {})
        return out

    def gradients_and_contributions(
        self, masks: dict[str, torch.Tensor], shared: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """In one pass: grad E_A for every mask (as :meth:`energy_gradients`) and, for every shared
        direction u, (2/B) sum_b g_b * (H_b u), whose sum over a set's coordinates is grad E_A . u
        for that set (H_b symmetric): the work of u on every set's energy."""
        return self._tangent_pass(masks, {}, shared)

    def _tangent_pass(self, masks: dict, extra: dict, shared: dict) -> tuple[dict, dict]:
        g = self.grads
        names = list(masks) + list(extra) + list(shared)
        summed = torch.zeros(
            len(masks) + len(extra), g.shape[1], dtype=torch.float64, device=g.device
        )
        weighted = torch.zeros(len(shared), g.shape[1], dtype=torch.float64, device=g.device)

        def one(batch, v):
            _, hv = jvp(lambda p: grad(self.loss_fn)(p, batch), (self.theta,), (v,))
            return hv

        per = vmap(vmap(one, in_dims=(None, 0)), in_dims=(0, 0))  # batches x their own tangents
        for i in range(0, self.n_batches, self.chunk):
            rows = g[i : i + self.chunk]  # [chunk, n]
            tangents = [
                torch.where(m.to(rows.device), rows, torch.zeros_like(rows)) for m in masks.values()
            ]
            tangents += [
                u.to(rows.dtype).expand_as(rows) for u in (*extra.values(), *shared.values())
            ]
            stacked = torch.stack(tangents, dim=1)  # [chunk, T, n]
            hv = self.flat(per(self.batches[i : i + self.chunk], self.unflat(stacked)), 2).double()
            k = len(masks) + len(extra)
            summed += hv[:, :k].sum(0)
            weighted += torch.einsum("ctn,cn->tn", hv[:, k:], rows.double())
        summed *= 2.0 / self.n_batches
        weighted *= 2.0 / self.n_batches
        first = dict(zip(names[: len(masks) + len(extra)], summed))
        return first, dict(zip(names[len(masks) + len(extra) :], weighted))

    @property
    def diagonal(self) -> torch.Tensor:
        """G's diagonal, G_ii = (1/B) sum_b g_b,i^2 (float64), formed once."""
        if self._diagonal is None:
            self._diagonal = self.grads.double().pow(2).mean(0)
        return self._diagonal

    def energy(self, mask: torch.Tensor) -> float:
        """E_A = (1/B) sum_b ||P_A g_b||^2 = sum of G_ii over A."""
        return float(self.diagonal[mask.to(self.diagonal.device)].sum())


def component_matrix_flat(
    probe: EnergyProbe, masks: dict[str, torch.Tensor], direction: torch.Tensor
) -> tuple[pd.DataFrame, dict[str, float]]:
    """K[A, B] for flattened component masks and a full update direction d.

    d_B = P_B d. Returns (DataFrame A, B, K, K_norm, E_A, d_norm, energies).
    """
    energies = {a: probe.energy(m) for a, m in masks.items()}
    names = list(masks)
    tangents = torch.stack(
        [torch.where(masks[b], direction, torch.zeros_like(direction)) for b in names]
    )
    contribs = probe.hvp_contributions(tangents) * (
        2.0 / probe.n_batches
    )  # (2/B) sum_b g_b * H_b d_B
    rows = []
    for j, b in enumerate(names):
        d_norm = float(tangents[j].double().norm())
        contrib = contribs[j]
        for a, ma in masks.items():
            k = float(contrib[ma].sum())
            denom = energies[a] * d_norm
            rows.append(
                {
                    "A": a,
                    "B": b,
                    "K": k,
                    "K_norm": k / denom if denom > 0 else math.nan,
                    "E_A": energies[a],
                    "d_norm": d_norm,
                }
            )
    return pd.DataFrame(rows), energies


def sgd_direction(probe: EnergyProbe) -> torch.Tensor:
    """-gbar, the mean gradient over the probe batches, negated."""
    return -probe.grads.mean(0)


def entry_terms(
    probe: EnergyProbe, rows: Sequence[int], circuit_mask: torch.Tensor
) -> torch.Tensor:
    """Per-batch terms 2 g_b,i (H_b e_i)_j for rows i and circuit columns j: [m, B, |C|].

    Their mean over batches is the entry dG_ii/dtheta_j.
    """
    g = probe.grads
    out = []
    for i in rows:
        e = torch.zeros(g.shape[1], dtype=g.dtype, device=g.device)
        e[i] = 1.0
        hv = probe.hvps(e)[:, circuit_mask.to(g.device)]
        out.append(2.0 * g[:, i, None].double() * hv.double())
    return torch.stack(out).cpu()


def sample_entries(
    probe: EnergyProbe,
    circuit_mask: torch.Tensor,
    m: int = 32,
    seed: int = 0,
    n_boot: int = 500,
    level: float = 0.95,
) -> dict[str, float]:
    """m sampled rows of dG_ii/dtheta_j (i, j in the circuit) with bootstrap CIs over batches.

    Row i: dG_ii/dtheta = (2/B) sum_b g_b,i H_b e_i, one HVP per batch. The per-batch
    terms r_b = 2 g_b,i (H_b e_i) restricted to the circuit average to the row, so
    resampling batches gives the intervals of the fraction of positive entries and
    their mean.
    """
    idx = torch.nonzero(circuit_mask).flatten()
    gen = torch.Generator().manual_seed(seed)
    picks = idx[torch.randperm(len(idx), generator=gen)[: min(m, len(idx))]]
    terms = entry_terms(probe, picks.tolist(), circuit_mask)

    def stats(t: torch.Tensor) -> tuple[float, float]:
        rows = t.mean(1)
        return float((rows > 0).double().mean()), float(rows.mean())

    frac, mean = stats(terms)
    rng = np.random.default_rng(seed)
    boots = np.array(
        [
            stats(terms[:, torch.as_tensor(rng.integers(0, terms.shape[1], terms.shape[1]))])
            for _ in range(n_boot)
        ]
    )
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return {
        "entry_frac_positive": frac,
        "entry_frac_positive_lo": float(lo[0]),
        "entry_frac_positive_hi": float(hi[0]),
        "entry_mean": mean,
        "entry_mean_lo": float(lo[1]),
        "entry_mean_hi": float(hi[1]),
        "entry_rows": float(len(picks)),
    }


# --------------------------------------------------------------------------- HookedTransformer API


def model_probe(
    model: HookedTransformer, batches: torch.Tensor, chunk: int | None = None
) -> EnergyProbe:
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    theta = current_params(model, names)
    return EnergyProbe(loss_function(model, names), theta, batches.to(model.cfg.device), chunk)


def _circuit_of(components: Circuit | Sequence[str]) -> Circuit:
    return components if isinstance(components, Circuit) else Circuit("custom", list(components))


def component_matrix(
    model: HookedTransformer,
    batches: Int[torch.Tensor, "n_batches batch pos"],
    components: Circuit | Sequence[str],
    direction: str = "sgd",
    update: dict[str, torch.Tensor] | None = None,
    include_rest: bool = False,
    chunk: int | None = None,
) -> pd.DataFrame:
    """K[A, B] for the components of a circuit on a plain `HookedTransformer`.

    G is the uncentered mean over the given batches, each batch's loss the mean
    LM loss.

    Args:
        components: a `circuits.Circuit` or a list of its component names.
        direction: ``"sgd"`` (d = -gbar) or ``"optimizer"`` (needs ``update``,
            the optimizer's step theta_{t+1} - theta_t as a parameter dict).
        include_rest: add the ``rest`` component (every other parameter).

    Returns:
        DataFrame with columns ``A``, ``B``, ``K``, ``K_norm`` (and ``E_A``, ``d_norm``).
    """
    if batches.ndim != 3:
        raise ValueError(
            f"batches must be a token tensor [n_batches, batch, pos]; got shape {tuple(batches.shape)}"
        )
    circuit = _circuit_of(components)
    if include_rest:
        circuit = circuit.with_rest()
    probe = model_probe(model, batches, chunk)
    masks = circuit.flat_masks(model)
    if direction == "sgd":
        d = sgd_direction(probe)
    elif direction == "optimizer":
        if update is None:
            raise ValueError(
                "direction='optimizer' needs update= (theta_{t+1} - theta_t per parameter); from a run use interp_ext.api.real_update"
            )
        d = probe.flat({n: update[n].to(probe.theta[n].dtype) for n in probe.names})
    else:
        raise ValueError(f"direction={direction!r}: choose 'sgd' or 'optimizer'")
    frame, _ = component_matrix_flat(probe, masks, d)
    return frame


def union_mask(masks: Iterable[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The coordinates in any of the components (the circuit as a whole); none for no components."""
    return functools.reduce(torch.logical_or, masks, torch.zeros_like(like, dtype=torch.bool))


def whole_circuit_terms(
    frame: pd.DataFrame,
    energies: dict[str, float],
    direction: torch.Tensor,
    masks: dict[str, torch.Tensor],
) -> dict[str, float]:
    """K[C, C] of the circuit as a whole (rest excluded): bilinear, so a sum of entries."""
    inside = [c for c in masks if c != REST]
    sel = frame[frame.A.isin(inside) & frame.B.isin(inside)]
    k = float(sel.K.sum())
    e = sum(energies[c] for c in inside)
    union = union_mask((masks[c] for c in inside), like=direction)
    d_norm = float(torch.where(union, direction, torch.zeros_like(direction)).double().norm())
    return {"K": k, "K_norm": k / (e * d_norm) if e * d_norm > 0 else math.nan, "E": e}
