"""The Stream 3 energy ledger: where a circuit's gradient energy comes from, step by step.

On the fixed probe set, a circuit's gradient energy E_C(theta) = (1/B) sum_b ||P_C g_b||^2
is a function of the parameters alone, so its change over a window of training
telescopes over the real steps: E_C(t1) - E_C(t0) = sum_tau dE_tau with
dE_tau = E_C(theta_tau + dtheta_tau) - E_C(theta_tau). Each step splits as

    dE_tau = L1_tau + L2_tau,   L1_tau = grad E_C . dtheta_tau,   L2 = dE - L1 (all higher orders),

and the first-order term splits further, every part exactly (dot products with
grad E_C, computed once per step by Hessian-vector products):

* by component B of the circuit and ``rest``: grad E_C . P_B dtheta (the K matrix along the real step);
* drift vs noise: ``L1_drift`` along the update AdamW would make from the same state
  with the minibatch gradient replaced by the mean over M fresh training batches,
  and ``L1_noise = L1 - L1_drift``;
* momentum: with this step's AdamW denominator fixed, along the part inherited
  from beta1 m_{tau-1}, the part from (1 - beta1) g_tau, and the weight decay
  (:func:`interp_ext.replay.momentum_split`);
* mean vs fluctuation (at detail steps): E_C = ||P_C gbar||^2 + (1/B) sum_b ||P_C delta_b||^2
  with g_b = gbar + delta_b, and grad E_C = 2 Hbar P_C gbar + (2/B) sum_b H_b P_C delta_b:
  ``L1_mean`` and ``L1_fluct``.

At detail steps also the same first-order terms for every component, ``rest``, the
controls and the embedding, the dense Stream 3 K matrix along both directions, and
a check on L2: 1/2 dtheta^T Hess(E) dtheta by central differences,
(E(theta + dtheta) + E(theta - dtheta) - 2 E(theta)) / 2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from interp_ext.replay import Step, adamw_update, momentum_split
from interp_ext.stream3.energy import EnergyProbe

WHOLE = "C"


@dataclass
class LedgerSpec:
    """What the ledger follows: energy masks over the flattened parameters.

    ``partition``: the circuit's components and ``rest`` (disjoint, covering theta):
    the columns B of the split by component. ``energies``: every set whose energy is
    tracked (the circuit ``C``, its components, ``rest``, the controls, ``EMBED``).
    ``rows``: the sets whose first-order terms are computed at every measured
    step (default: the circuit); ``detail_rows`` at detail steps.
    """

    partition: dict[str, torch.Tensor]
    energies: dict[str, torch.Tensor]
    rows: list[str] = field(default_factory=lambda: [WHOLE])
    detail_rows: list[str] = field(default_factory=list)


def flat(tensors: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([tensors[n].reshape(-1).double() for n in names])


@dataclass
class StepInputs:
    """One real step and what the ledger compares it with."""

    step: Step
    drift_grad: dict[
        str, torch.Tensor
    ]  # mean minibatch gradient over M fresh training batches at theta_tau
    train_cfg: object


def directions(inputs: StepInputs, names: list[str], gbar: torch.Tensor) -> dict[str, torch.Tensor]:
    """The update directions of one step, flat float64: the real one and its parts."""
    step = inputs.step
    parts = momentum_split(step, inputs.train_cfg)
    drift = adamw_update(step, inputs.drift_grad, inputs.train_cfg)
    out = {"real": flat(step.update, names), "drift": flat(drift, names), "sgd": -gbar.double()}
    out.update({k: flat(v, names) for k, v in parts.items()})
    return out


def measure_step(
    inputs: StepInputs,
    spec: LedgerSpec,
    probe_at: Callable[[dict], EnergyProbe],
    before: EnergyProbe | None = None,
    detail: bool = False,
) -> tuple[list[dict], EnergyProbe]:
    """Every ledger row of one real step; returns them and the probe at theta_{tau+1} (reusable as the next ``before``).

    Args:
        probe_at: builds an :class:`EnergyProbe` (per-batch gradients) at a parameter dict.
        before: the probe at theta_tau if already built.
        detail: also the terms of every tracked set, the dense K matrix and the central-difference check.
    """
    step = inputs.step
    p0 = before or probe_at(step.theta)
    names = p0.names
    gbar = p0.grads.mean(0)
    dirs = directions(inputs, names, gbar)
    e0 = {a: p0.energy(m) for a, m in spec.energies.items()}
    after = {n: step.theta[n] + step.update[n] for n in names}
    p1 = probe_at(after)
    e1 = {a: p1.energy(m) for a, m in spec.energies.items()}
    rows = [{"metric": "E", "component": a, "value": e0[a]} for a in spec.energies]
    rows += [{"metric": "dE", "component": a, "value": e1[a] - e0[a]} for a in spec.energies]
    row_names = list(dict.fromkeys(spec.rows + (spec.detail_rows if detail else [])))
    c_mean = torch.where(spec.energies[WHOLE], gbar, torch.zeros_like(gbar))
    extra = {"C_mean": c_mean} if detail else {}  # the mean / fluctuation split at detail steps
    grads_e = p0.energy_gradients({a: spec.energies[a] for a in row_names}, extra=extra)
    for a in row_names:
        rows += first_order_rows(a, grads_e[a], dirs, spec.partition, e1[a] - e0[a])
    if detail:
        rows += split_rows(
            grads_e[WHOLE], grads_e["C_mean"], dirs, e0[WHOLE], float(c_mean.double().pow(2).sum())
        )
        minus = probe_at({n: step.theta[n] - step.update[n] for n in names})
        rows += [
            {
                "metric": "second_order_cd",
                "component": a,
                "value": (e1[a] + minus.energy(m) - 2 * e0[a]) / 2,
            }
            for a, m in spec.energies.items()
        ]
        rows += dense_k_rows(grads_e, dirs, spec, e0, row_names)
    return rows, p1


def first_order_rows(
    a: str,
    grad_e: torch.Tensor,
    dirs: dict[str, torch.Tensor],
    partition: dict[str, torch.Tensor],
    d_e: float,
) -> list[dict]:
    """L1 along the real step and each of its parts; its split by component; L2 = dE - L1."""
    dot = {k: float(grad_e @ v) for k, v in dirs.items()}
    rows = [
        {"metric": "L1", "component": a, "value": dot["real"]},
        {"metric": "L1_drift", "component": a, "value": dot["drift"]},
        {"metric": "L1_noise", "component": a, "value": dot["real"] - dot["drift"]},
        {"metric": "L1_inherited", "component": a, "value": dot["inherited"]},
        {"metric": "L1_fresh", "component": a, "value": dot["fresh"]},
        {"metric": "L1_decay", "component": a, "value": dot["decay"]},
        {"metric": "L2", "component": a, "value": d_e - dot["real"]},
    ]
    for b, mask in partition.items():
        m = mask.to(grad_e.device)
        rows.append(
            {
                "metric": "L1_by",
                "component": f"{a}|{b}",
                "value": float(grad_e[m] @ dirs["real"][m]),
            }
        )
        rows.append(
            {
                "metric": "L1_drift_by",
                "component": f"{a}|{b}",
                "value": float(grad_e[m] @ dirs["drift"][m]),
            }
        )
    return rows


def split_rows(
    grad_c: torch.Tensor,
    grad_c_mean: torch.Tensor,
    dirs: dict[str, torch.Tensor],
    e_c: float,
    e_mean: float,
) -> list[dict]:
    """E_C and its first-order terms split into the mean-gradient part and the fluctuation part."""
    rows = [
        {"metric": "E_mean", "component": WHOLE, "value": e_mean},
        {"metric": "E_fluct", "component": WHOLE, "value": e_c - e_mean},
    ]
    for direction, label in (("real", "L1"), ("drift", "L1_drift")):
        mean = float(grad_c_mean @ dirs[direction])
        rows += [
            {"metric": f"{label}_mean", "component": WHOLE, "value": mean},
            {
                "metric": f"{label}_fluct",
                "component": WHOLE,
                "value": float(grad_c @ dirs[direction]) - mean,
            },
        ]
    return rows


def dense_k_rows(
    grads_e: dict, dirs: dict, spec: LedgerSpec, energies: dict, row_names: list[str]
) -> list[dict]:
    """Stream 3's K[A, B] = grad E_A . P_B d and K_norm = K / (E_A ||P_B d||), for d the real AdamW
    step (``optimizer``) and -gbar (``sgd``): the circuit's rows (``C``, its components, ``rest``)
    against the columns (the components, ``rest``, ``C``), and each control against itself."""
    columns = {**spec.partition, WHOLE: spec.energies[WHOLE]}
    own = [a for a in row_names if a in columns]
    pairs = [(a, b) for a in own for b in columns] + [(a, a) for a in row_names if a not in columns]
    rows = []
    for direction, d in (("optimizer", dirs["real"]), ("sgd", dirs["sgd"])):
        for a, b in pairs:
            mask = columns[b] if b in columns else spec.energies[b]
            d_b = torch.where(mask.to(d.device), d, torch.zeros_like(d))
            k = float(grads_e[a] @ d_b)
            denom = energies[a] * float(d_b.norm())
            rows.append(
                {"metric": "K", "component": f"{a}|{b}", "value": k, "direction": direction}
            )
            rows.append(
                {
                    "metric": "K_norm",
                    "component": f"{a}|{b}",
                    "value": k / denom if denom > 0 else float("nan"),
                    "direction": direction,
                }
            )
    return rows
