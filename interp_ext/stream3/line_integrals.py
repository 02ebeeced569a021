"""The exact work each part of a real step does on a circuit's gradient energy.

For one step theta -> theta + d, the change of E_A (A any set of coordinates) is
the line integral of its gradient along the step,

    dE_A = W_A + R_A,   W_A = integral_0^1 grad E_A(theta + s d) . d ds,

computed by a quadrature rule: 2-point Gauss-Legendre (nodes s = 1/2 -+ 1/(2 sqrt 3),
weights 1/2; remainder fifth order in |d|) or the midpoint rule (s = 1/2; remainder
third order). R_A is the quadrature's error, not a term. The integrand is fixed once
its nodes are, so W splits *linearly and exactly* over any split of d:
W_A^u = integral grad E_A(theta + s d) . u ds for each part u of the step (drift +
noise = real; inherited + fresh + decay = real; a parameter block B of d: P_B d). No
part is defined as what is left of a squared term: unlike the first-order ledger
(L1 + L2), where the second-order part (1/B) sum_b ||delta(P_A g_b)||^2 is non-negative
by construction on any path that jitters, nothing here has a sign its construction
forces.

Two ways to the integrand, mixed in one forward-over-reverse pass per node
(:meth:`EnergyProbe.gradients_and_contributions`): grad E_A itself (one per-batch tangent
P_A g_b per set; then the work of *any* direction on E_A is a dot product), and, with H_b
symmetric, grad E_A . u = (2/B) sum_b (P_A g_b) . (H_b u) = (2/B) sum_{i in A} c_u[i] with
c_u = sum_b g_b * (H_b u) (one tangent per direction; then the work of u on *every* set's
energy is a masked sum). A direction's own second-order term, u^T Hess(E_A) u / 2, is a central
difference, exact to fourth order.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from interp_ext.stream3.energy import EnergyProbe

RULES = {
    "gl2": ((0.5 - 0.5 / math.sqrt(3.0), 0.5), (0.5 + 0.5 / math.sqrt(3.0), 0.5)),
    "midpoint": ((0.5, 1.0),),
}


def moved(theta: dict[str, torch.Tensor], d: dict[str, torch.Tensor], s: float) -> dict:
    """theta + s d, in theta's dtype."""
    return {n: theta[n] + s * d[n].to(theta[n].dtype) for n in theta}


def line_integrands(
    theta: dict[str, torch.Tensor],
    d: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    shared: dict[str, torch.Tensor],
    probe_at: Callable[[dict], EnergyProbe],
    rule: str = "midpoint",
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The line integral's integrand by the rule's nodes (weighted), flat float64:

    * for every mask A, I_A = sum_nodes w grad E_A(theta + s d): the work of *any* direction u on
      E_A is I_A . u (one per-batch tangent per set);
    * for every shared direction u, c_u = sum_nodes w (2/B) sum_b g_b * (H_b u): the work of u on
      *every* set's energy is the sum of c_u over the set's coordinates (one tangent per direction).
    """
    grads: dict[str, torch.Tensor] = {}
    contributions: dict[str, torch.Tensor] = {}
    for s, weight in RULES[rule]:
        probe = probe_at(moved(theta, d, s))
        dtype = probe.theta[probe.names[0]].dtype
        g, c = probe.gradients_and_contributions(masks, {k: u.to(dtype) for k, u in shared.items()})
        for out, part in ((grads, g), (contributions, c)):
            for k, v in part.items():
                out[k] = out[k] + weight * v if k in out else weight * v
    return grads, contributions


def on(mask: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """P_B u: the direction restricted to a block."""
    return torch.where(mask.to(u.device), u, torch.zeros_like(u))


def work_of(contribution: torch.Tensor, mask: torch.Tensor) -> float:
    """The work of one shared direction on the energy of set ``mask`` (its contribution summed
    over the set's coordinates)."""
    return float(contribution[mask.to(contribution.device)].sum())


def random_draw(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A standard Gaussian draw on the block's coordinates (float64), for :func:`random_like`."""
    return torch.randn(int(mask.sum()), generator=generator, dtype=torch.float64)


def random_like(
    u: torch.Tensor,
    mask: torch.Tensor,
    generator: torch.Generator | None = None,
    draw: torch.Tensor | None = None,
) -> torch.Tensor:
    """A Gaussian direction on the block's coordinates with the norm of u's part there: the null of
    a K-type term (a direction with no relation to E). ``draw`` (:func:`random_draw`) fixes the
    direction, e.g. over the k sub-steps of one real step; otherwise it is drawn from
    ``generator``."""
    m = mask.to(u.device)
    r = torch.zeros_like(u)
    draw = (random_draw(m, generator) if draw is None else draw).to(u.device)
    norm = float(u[m].norm())
    if norm > 0:
        r[m] = (draw * norm / draw.norm()).to(u.dtype)
    return r


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


# the rows of a measured step that are a state before it, not a change along it: a real step's
# value is its first sub-step's
STATE_METRICS = frozenset({"E"})


def sum_substeps(substeps: list[list[dict]]) -> list[dict]:
    """The rows of one real step from the rows of its k measured sub-steps (at k = 1, unchanged):
    every change along the step (dE, work and its parts, the curvature terms, the length of the
    path ``update_norm``) is the sum over the sub-steps, a state (``E``) is the first sub-step's;
    for k > 1 a ``substeps`` row says how many were summed."""
    if len(substeps) == 1:
        return substeps[0]
    out: dict[tuple[str, str], float] = {}
    for rows in substeps:
        for r in rows:
            key = (r["metric"], r["component"])
            if key not in out:
                out[key] = r["value"]
            elif r["metric"] not in STATE_METRICS:
                out[key] += r["value"]
    rows = [{"metric": m, "component": c, "value": v} for (m, c), v in out.items()]
    return rows + [{"metric": "substeps", "component": "", "value": float(len(substeps))}]
