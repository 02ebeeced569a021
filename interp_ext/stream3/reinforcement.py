"""Stream 3 by member: the signal and the noise in a set's gradient energy, and who reinforces whom.

With g_b the gradient of probe batch b (b = 1..B) and P_A the projection on the coordinates of a
set A, the gradient energy E_A = (1/B) sum_b ||P_A g_b||^2 splits exactly into

* the **signal** S_A = (1 / (B (B - 1))) sum_{b != c} (P_A g_b) . (P_A g_c), the U-statistic over
  distinct pairs of batches: an unbiased estimate of ||P_A gbar||^2, the energy of the *mean*
  gradient (it does not depend on the probe batch size, and can come out negative when the mean
  gradient is small beside the noise);
* the **noise** N_A = (1 / (B - 1)) sum_b ||P_A (g_b - gbar_probe)||^2, the unbiased variance of one
  probe batch's gradient on A: tr Cov(P_A g_b), which falls like 1 / (sequences per batch) for
  independent sequences;

E_A = S_A + N_A for every B (algebra: E = ||gbar||^2 + (B - 1) N / B and S = (B ||gbar||^2 - E)
/ (B - 1)). Their gradients come from one forward-over-reverse pass:
grad E_A = (2/B) sum_b H_b P_A g_b, grad ||P_A gbar||^2 = 2 Hbar P_A gbar, so
grad S_A = (B grad ||P_A gbar||^2 - grad E_A) / (B - 1) and grad N_A = grad E_A - grad S_A.

The **member matrix** of flow rates, for X in {S, N, E} and sets A, B (a circuit's members and
their layer-matched controls),

    R^X[A, B] = grad_{theta_B} X_A . u_B,

u the expected AdamW step per unit of lr x steps, u = -(gbar_fresh / D + wd theta) with D the
optimizer's denominator sqrt(v / (1 - beta2^t)) + eps at that point and gbar_fresh the mean
gradient of fresh training batches independent of the probe batches. The diagonal is a member's
self term, the off-diagonal entries are reinforcement between members: the paper's condition
dG_ii/dtheta_j > 0 for i, j in a circuit read per member and on the mean gradient apart from the
noise. Summed over a partition's columns, a row is X_A's rate along the whole of u.

Standard errors come from independent groups: the probe batches and the fresh batches are split
into ``groups`` disjoint groups, each group's estimate uses only its own batches (S_A within a
group is the group's own U-statistic, unbiased), and an entry is the mean over groups with the
standard error of that mean.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from interp_ext.stream3.energy import EnergyProbe

PARTS = ("S", "N", "E")


def signal_noise(probe: EnergyProbe, masks: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per set: ``E`` (the gradient energy), ``S`` (its signal, unbiased ||P_A gbar||^2) and
    ``N`` (its noise, the unbiased per-batch variance), E = S + N. Needs B >= 2 probe batches."""
    g = probe.grads.double()
    b = g.shape[0]
    if b < 2:
        raise ValueError(f"the signal and noise energies need at least 2 probe batches; got {b}")
    out = {}
    for a, mask in masks.items():
        ga = g[:, mask.to(g.device)]
        e = float(ga.pow(2).sum(1).mean())
        s = float((b * ga.mean(0).pow(2).sum() - e) / (b - 1))
        out[a] = {"S": s, "N": e - s, "E": e}
    return out


def part_gradients(
    probe: EnergyProbe, masks: dict[str, torch.Tensor]
) -> dict[str, dict[str, torch.Tensor]]:
    """Per set A and part X in S, N, E: grad_theta X_A as a flat float64 vector (one
    forward-over-reverse pass over the probe batches, two tangents per set)."""
    g = probe.grads
    b = g.shape[0]
    gbar = g.mean(0)
    extra = {
        f"mean:{a}": torch.where(m.to(g.device), gbar, torch.zeros_like(gbar))
        for a, m in masks.items()
    }
    grads = probe.energy_gradients(masks, extra)
    out = {}
    for a in masks:
        grad_e = grads[a]
        grad_s = (b * grads[f"mean:{a}"] - grad_e) / (b - 1)
        out[a] = {"S": grad_s, "N": grad_e - grad_s, "E": grad_e}
    return out


def flow_direction(
    mean_grad: torch.Tensor, denominator: torch.Tensor, theta: torch.Tensor, weight_decay: float
) -> torch.Tensor:
    """u = -(gbar / D + wd theta): AdamW's expected step per unit of lr x steps (flat vectors)."""
    return -(mean_grad.double() / denominator.double() + weight_decay * theta.double())


def rates(
    probe: EnergyProbe,
    masks: dict[str, torch.Tensor],
    u: torch.Tensor,
    columns: dict[str, torch.Tensor] | None = None,
) -> pd.DataFrame:
    """One group's rows: per set A (the rows) and column B, R^X[A, B] = grad X_A . P_B u for X in
    S, N, E, beside X_A itself (``value``). ``columns`` defaults to the row sets."""
    columns = masks if columns is None else columns
    levels = signal_noise(probe, masks)
    grads = part_gradients(probe, masks)
    u = u.double().to(probe.grads.device)
    out = []
    for a in masks:
        for x in PARTS:
            out.append({"part": x, "A": a, "B": "", "value": levels[a][x]})
            for b, mask in columns.items():
                m = mask.to(u.device)
                rate = float(grads[a][x][m] @ u[m])
                out.append({"part": x, "A": a, "B": b, "value": rate})
    return pd.DataFrame(out)


def with_unions(frame: pd.DataFrame, unions: dict[str, list[str]]) -> pd.DataFrame:
    """Add the rows and columns of unions of disjoint sets (e.g. the circuit ``C`` from its
    members): S, N and E are sums over coordinates, so a union's levels and rates are the sums of
    its sets' (rates as rows, as columns, and the union against itself)."""
    if not unions:
        return frame
    rows = [
        frame[frame.A.isin(sets)].groupby(["part", "B"], as_index=False).value.sum().assign(A=name)
        for name, sets in unions.items()
    ]
    frame = pd.concat([frame, *rows], ignore_index=True)
    columns = [
        frame[frame.B.isin(sets)].groupby(["part", "A"], as_index=False).value.sum().assign(B=name)
        for name, sets in unions.items()
    ]
    return pd.concat([frame, *columns], ignore_index=True)


def grouped_rates(
    probe_at: Callable[[torch.Tensor], EnergyProbe],
    probe_batches: torch.Tensor,
    u_of_group: Callable[[int], torch.Tensor],
    masks: dict[str, torch.Tensor],
    columns: dict[str, torch.Tensor] | None = None,
    groups: int = 4,
    unions: dict[str, list[str]] | None = None,
    levels: dict[str, torch.Tensor] | None = None,
) -> pd.DataFrame:
    """:func:`rates` on ``groups`` disjoint groups of the probe batches (each with its own flow
    direction ``u_of_group(i)``, from fresh batches of its own), then per entry the mean over
    groups (``value``), its standard error (``se``) and the number of groups (``n``).
    ``unions``: derived sets (:func:`with_unions`); ``levels``: more sets whose S, N, E alone are
    wanted (no rates: they cost no tangent)."""
    n = probe_batches.shape[0]
    if groups < 1 or n // groups < 2:
        raise ValueError(
            f"{n} probe batches cannot make {groups} groups of at least 2 (the signal of a group "
            "is a U-statistic over its distinct pairs): use more batches or fewer groups"
        )
    per = n // groups
    frames = []
    for i in range(groups):
        probe = probe_at(probe_batches[i * per : (i + 1) * per])
        frame = (
            with_unions(rates(probe, masks, u_of_group(i), columns), unions or {})
            if masks
            else pd.DataFrame(columns=["part", "A", "B", "value"])
        )
        if levels:
            more = signal_noise(probe, levels)
            frame = pd.concat(
                [
                    frame,
                    pd.DataFrame(
                        [
                            {"part": x, "A": a, "B": "", "value": v[x]}
                            for a, v in more.items()
                            for x in PARTS
                        ]
                    ),
                ],
                ignore_index=True,
            )
        frames.append(frame.assign(group=i))
    rows = pd.concat(frames, ignore_index=True)
    summary = rows.groupby(["part", "A", "B"], sort=False).value.agg(["mean", "std", "count"])
    summary = summary.reset_index().rename(columns={"mean": "value", "count": "n"})
    summary["se"] = summary["std"] / np.sqrt(summary["n"]) if groups > 1 else np.nan
    return summary.drop(columns="std")


def set_masks(model, sets: dict[str, list[str] | torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each set as one flat mask over the model's parameters: the union of its components'
    (``circuits.Circuit`` names), or a given flat mask as it is."""
    from circuits.circuit import Circuit

    out = {}
    for a, c in sets.items():
        if isinstance(c, torch.Tensor):
            out[a] = c
        else:
            out[a] = torch.stack(list(Circuit(a, list(c)).flat_masks(model).values())).any(0)
    return out


def member_matrix(
    model,
    probe_batches: torch.Tensor,
    fresh_batches: torch.Tensor,
    rows: dict[str, list[str]],
    denominator: dict[str, torch.Tensor],
    weight_decay: float,
    groups: int = 4,
    unions: dict[str, list[str]] | None = None,
    levels: dict[str, list[str] | torch.Tensor] | None = None,
    chunk: int | None = None,
    matrix: bool = True,
) -> pd.DataFrame:
    """The member matrix of a ``HookedTransformer`` at its current parameters (``matrix=False``:
    S, N and E of every set alone, no rates, no fresh batches' gradients).

    Long because the docstring names every argument.

    Args:
        probe_batches: [n, batch, pos] tokens whose per-batch gradients make S, N and E; split
            into ``groups`` disjoint groups.
        fresh_batches: [m, batch, pos] tokens, independent of the probe batches, whose mean
            gradient makes the flow direction; split into the same number of groups (group i's
            u beside probe group i, so the groups are independent).
        rows: set name -> component names (``L1H3``, ``L0MLP``, ...): the rows and columns of R.
        denominator: AdamW's D per parameter (:func:`interp_ext.adamw.denominators`).
        unions: derived sets, e.g. ``{"C": members}``; ``levels``: sets with S, N, E only
            (component names, or a flat mask such as a circuit's ``rest``).

    Returns:
        Rows ``part`` (S, N, E), ``A``, ``B`` ("" for the level X_A itself), ``value`` (mean over
        groups, per unit of lr x steps for rates), ``se``, ``n``.
    """
    from interp_ext.geometry.gradients import current_params, flatten, loss_function

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    theta = current_params(model, names)
    loss_fn = loss_function(model, names)
    device = next(iter(theta.values())).device
    if not matrix:  # every set a level: S, N, E from the per-batch gradients alone
        unions = unions or {}
        levels = {**rows, **{k: [c for a in v for c in rows[a]] for k, v in unions.items()}} | (
            levels or {}
        )
        rows, unions = {}, {}
    masks, level_masks = set_masks(model, rows), set_masks(model, levels or {})
    flat_theta = flatten(theta, names).double()
    flat_d = flatten({n: denominator[n].to(device) for n in names}, names)
    if fresh_batches.shape[0] < groups:
        raise ValueError(
            f"{fresh_batches.shape[0]} fresh batches cannot make {groups} groups: give at least one per group"
        )
    per = fresh_batches.shape[0] // groups

    def u_of_group(i: int) -> torch.Tensor:
        grads = [
            flatten(torch.func.grad(loss_fn)(theta, b.to(device)), names)
            for b in fresh_batches[i * per : (i + 1) * per]
        ]
        return flow_direction(torch.stack(grads).double().mean(0), flat_d, flat_theta, weight_decay)

    def probe_at(sub):
        return EnergyProbe(loss_fn, theta, sub.to(device), chunk)

    return grouped_rates(
        probe_at, probe_batches, u_of_group, masks, groups=groups, unions=unions, levels=level_masks
    )


__all__ = [
    "member_matrix",
    "with_unions",
    "PARTS",
    "flow_direction",
    "grouped_rates",
    "part_gradients",
    "rates",
    "signal_noise",
]
