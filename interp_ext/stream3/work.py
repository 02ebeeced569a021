"""The exact work each part of a real step does on a circuit's gradient energy.

For one step theta -> theta + d, the change of E_A (A any set of coordinates) is
the line integral of its gradient along the step,

    dE_A = W_A + R_A,   W_A = integral_0^1 grad E_A(theta + s d) . d ds,

computed by 2-point Gauss-Legendre (nodes s = 1/2 -+ 1/(2 sqrt 3), weights 1/2),
whose remainder R_A is fourth order in |d|: the closure dE_A - W_A is the
quadrature's error, not a term. The integrand vector
I_A = (1/2)(grad E_A(s1) + grad E_A(s2)) is fixed once computed, so W splits
*linearly and exactly* over any split of d: ``W_A^u = I_A . u`` for each part u of
the step (drift + noise = real; inherited + fresh + decay = real; a parameter
block B of d: I_A . P_B d). No part is defined as what is left of another, and no
second-order term appears: unlike the first-order ledger (L1 + L2), where the
second-order part (1/B) sum_b ||delta(P_A g_b)||^2 is non-negative by construction
on any path that jitters, nothing here has a sign forced by its construction.

``grad E_A = (2/B) sum_b H_b (P_A g_b)`` comes from :class:`EnergyProbe` (one
forward-over-reverse pass per chunk of probe batches, every set's tangent vmapped
in it). A second-order check along any direction u (its own curvature term,
``u^T Hess(E_A) u / 2``) is a central difference, exact to fourth order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from interp_ext.stream3.energy import EnergyProbe

NODES = (0.5 - 0.5 / math.sqrt(3.0), 0.5 + 0.5 / math.sqrt(3.0))
PARTS = ("drift", "noise", "inherited", "fresh", "decay")


def moved(theta: dict[str, torch.Tensor], d: dict[str, torch.Tensor], s: float) -> dict:
    """theta + s d, in theta's dtype."""
    return {n: theta[n] + s * d[n].to(theta[n].dtype) for n in theta}


def integrands(
    theta: dict[str, torch.Tensor],
    d: dict[str, torch.Tensor],
    sets: dict[str, torch.Tensor],
    probe_at: Callable[[dict], EnergyProbe],
) -> dict[str, torch.Tensor]:
    """I_A = (1/2) sum over the two Gauss-Legendre nodes of grad E_A(theta + s d), flat float64."""
    total: dict[str, torch.Tensor] = {}
    for s in NODES:
        grads = probe_at(moved(theta, d, s)).energy_gradients(sets)
        for a, g in grads.items():
            total[a] = total[a] + 0.5 * g if a in total else 0.5 * g
    return total


@dataclass
class StepWork:
    """The work terms of one step for every tracked set."""

    rows: list[dict]


def work_rows(
    integrand: dict[str, torch.Tensor],
    directions: dict[str, torch.Tensor],
    d_e: dict[str, float],
    blocks: dict[str, torch.Tensor],
    split_sets: list[str],
) -> list[dict]:
    """Rows of one step: ``work`` and ``work_remainder`` (dE - work) for every set; ``work/<part>``
    for every part of the step; ``work_by`` and ``work_drift_by`` (the work of each parameter
    block of the real and the drift update) for the sets in ``split_sets``.

    ``directions``: flat float64 vectors ``real`` and the parts (:data:`PARTS`).
    """
    rows = []
    for a, vec in integrand.items():
        w = float(vec @ directions["real"])
        rows += [
            {"metric": "work", "component": a, "value": w},
            {"metric": "work_remainder", "component": a, "value": d_e[a] - w},
        ]
        rows += [
            {"metric": f"work/{part}", "component": a, "value": float(vec @ directions[part])}
            for part in PARTS
            if part in directions
        ]
        if a not in split_sets:
            continue
        for b, mask in blocks.items():
            m = mask.to(vec.device)
            for label, key in (("work_by", "real"), ("work_drift_by", "drift")):
                value = float(vec[m] @ directions[key][m])
                rows.append({"metric": label, "component": f"{a}|{b}", "value": value})
    return rows


def random_direction_work(
    vec: torch.Tensor, u: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
) -> float:
    """The null of a K-type term: I . r on the block, r a Gaussian direction on the block's
    coordinates with the norm of the block's part of u (a direction with no relation to E)."""
    m = mask.to(vec.device)
    r = torch.randn(int(m.sum()), generator=generator, dtype=torch.float64).to(vec.device)
    norm = float(u[m].norm())
    if norm == 0.0:
        return 0.0
    return float(vec[m] @ (r * norm / r.norm()))


def own_curvature(
    energies_at: Callable[[dict], dict[str, float]],
    theta: dict[str, torch.Tensor],
    u: dict[str, torch.Tensor],
    e0: dict[str, float],
) -> dict[str, float]:
    """u^T Hess(E_A) u / 2 for every set, by central differences
    (E(theta + u) + E(theta - u) - 2 E(theta)) / 2, exact to fourth order in |u|."""
    plus, minus = energies_at(moved(theta, u, 1.0)), energies_at(moved(theta, u, -1.0))
    return {a: (plus[a] + minus[a] - 2 * e0[a]) / 2 for a in e0}
