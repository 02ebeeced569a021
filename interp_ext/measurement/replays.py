"""What Stream 3's replays of real steps share: the sets whose gradient energy they follow, the
check that a run's steps can be replayed, the mean gradient of fresh training batches, and the
probe at a parameter point."""

from __future__ import annotations

from collections.abc import Callable

import torch

from circuits.circuit import Circuit
from interp_ext.errors import MeasureError
from interp_ext.measurement.probes import probe_batches
from interp_ext.measurement.selection import layer_matched
from interp_ext.measurement.windows import (
    check_window_checkpoints,
    formation_settings,
)
from interp_ext.stream3.energy import WHOLE, EnergyProbe


def tracked_sets(
    run, seed: int, circuit: Circuit, controls: int, model
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(partition, energies) as flat masks over the model's parameters.

    ``partition``: the circuit's components and ``rest`` (disjoint, covering theta).
    ``energies``: every set whose energy is followed: the whole circuit ``C``, its
    components, ``rest``, ``controls`` layer-matched random-head sets and ``EMBED``.
    """
    parts = circuit.with_rest().flat_masks(model)
    whole = torch.stack([parts[m] for m in circuit.components]).any(0)
    energies = {WHOLE: whole, **parts}
    for name, c in layer_matched(run, seed, circuit, controls).items():
        energies[name] = torch.stack(list(c.flat_masks(model).values())).any(0)
    if "EMBED" not in circuit.components:
        energies["EMBED"] = Circuit("embed", ["EMBED"]).flat_masks(model)["EMBED"]
    return parts, energies


def check_replay(run, family: str, window: str, n_batches: int | None = None) -> str:
    """A measurement that replays real steps can run on this run: its probe set holds
    ``n_batches``, the run was trained here (its batches are known) and keeps its training data,
    and a START:END window names two checkpoints. Returns the induction rows' settings id that
    an ``auto`` window reads formation steps from ("" for START:END)."""
    probe_batches(run, family, n_batches)
    if run.imported:
        raise MeasureError(
            f"{run.path} was imported: the batches of its real steps are unknown, so its steps cannot be replayed"
        )
    try:
        run.train_tokens()
    except FileNotFoundError as err:
        raise MeasureError(
            f"{family} replays real steps and needs the run's training data: {err}"
        ) from err
    if window != "auto":
        check_window_checkpoints(run, window, family)
        return ""
    return formation_settings(run)


def mean_gradient(
    run, seed: int, step: int, theta: dict, loss_fn, m: int, chunk: int = 4, first: int = 0
) -> dict[str, torch.Tensor]:
    """Mean gradient over ``m`` fresh training batches at theta (the training distribution at the
    data position of ``step``, not the batch trained on): draws ``first`` .. ``first + m - 1``."""
    total = None
    for start in range(first, first + m, chunk):
        stop = min(first + m, start + chunk)
        batch = torch.cat([run.batch(seed, step, draw=j) for j in range(start, stop)]).to(
            next(iter(theta.values())).device
        )
        g = torch.func.grad(loss_fn)(theta, batch)
        share = (stop - start) / m
        total = (
            {n: share * v for n, v in g.items()}
            if total is None
            else {n: total[n] + share * v for n, v in g.items()}
        )
    return total


def probe_factory(
    loss_fn, names: list[str], batches: torch.Tensor, dtype, device, chunk: int
) -> Callable:
    """theta -> the :class:`EnergyProbe` of the probe batches at theta."""

    def probe_at(theta: dict) -> EnergyProbe:
        return EnergyProbe(
            loss_fn, {n: theta[n].detach().to(dtype) for n in names}, batches.to(device), chunk
        )

    return probe_at
