"""What Stream 3's replays of real steps share: the sets whose gradient energy they follow, the
mean gradient of fresh training batches, the probe at a parameter point, and the recorder of a
replay's loss, E_C and induction score."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from circuits.circuit import Circuit
from circuits.induction import attention_scores
from interp_ext.errors import MeasureError
from interp_ext.geometry.gradients import loss_function, measure_dtype
from interp_ext.measurement.circuits import layer_matched
from interp_ext.measurement.probes import probe_batches, repeated_probe
from interp_ext.measurement.runner import Settings, setting
from interp_ext.measurement.windows import (
    check_window_checkpoints,
    formation_settings,
    seed_window,
    window_problem,
)
from interp_ext.optim_step import step_batch
from interp_ext.stream3.energy import WHOLE, EnergyProbe

# fresh batches of the replays: other data orders (draws 1000 + k) and a mean's batches (2000 + j);
# the member matrix's probe sequences (3000 + j) and its flow direction's batches (4000 + j)
ORDER_DRAWS, MEAN_DRAWS, PROBE_DRAWS, FRESH_DRAWS = 1000, 2000, 3000, 4000


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
        batch = torch.cat([step_batch(run, seed, step, draw=j) for j in range(start, stop)]).to(
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


class Recorder:
    """Probe loss, E_C and the best induction score of a replay's current parameters (anything with
    ``model`` and ``names``), one row each, with the replay's name in ``variant``."""

    def __init__(self, run, replay, circuit: Circuit, n_batches: int | None = None):
        self.replay, self.model = replay, replay.model
        names = replay.names
        self.loss_fn, self.names, self.dtype = (
            loss_function(self.model, names),
            names,
            measure_dtype(self.model),
        )
        lm = run.probe_set()["lm"]
        self.lm = (lm[:n_batches] if n_batches else lm).to(self.model.cfg.device)
        self.repeated = repeated_probe(run)
        self.mask = torch.stack(list(circuit.flat_masks(self.model).values())).any(0)
        self.chunk = 4 if self.model.cfg.d_vocab <= 4096 else 1

    @torch.no_grad()
    def _loss_and_score(self) -> tuple[float, float]:
        self.model.eval()
        loss = float(np.mean([float(self.model(b, return_type="loss")) for b in self.lm]))
        scores = attention_scores(self.model, self.repeated)["induction_score"][1:]
        self.model.train()
        return loss, float(scores.max())

    def __call__(self, step: int, name: str) -> list[dict]:
        theta = {n: p.detach().to(self.dtype) for n, p in self.model.named_parameters()}
        energy = EnergyProbe(self.loss_fn, theta, self.lm, self.chunk).energy(self.mask)
        loss, score = self._loss_and_score()
        return [
            {"step": step, "metric": m, "component": "", "value": v, "variant": name}
            for m, v in (("loss", loss), ("E_C", energy), ("induction_score", score))
        ]


@dataclass(frozen=True)
class TrajectorySettings(Settings):
    """What replays recorded on a grid share (``counterfactual``, ``noise``): the window around
    each seed's formation, the record grid, the formation threshold and the circuit of E_C."""

    window: str = setting(
        "auto",
        "'auto' (as the ledger's: checkpoints >= margin steps around each seed's formation step) or START:END.",
    )
    margin: int = setting(500, "Auto window: steps before and after the formation step.")
    record_every: int = setting(
        50, "Record loss, E_C and the induction score every that many steps."
    )
    threshold: float = setting(
        0.4, "Best induction score that counts as formed at the window's end."
    )
    circuit: str = setting(
        "cause",
        "The circuit whose E_C is recorded ('cause', 'induction', heads, or a Circuit JSON file).",
    )
    n_batches: int | None = setting(
        None, "Probe batches (default: all of the probe set).", cli="--batches"
    )
    source: str = setting("", "Settings id of the rows the circuit is read from (resolved).")
    formation: str = setting(
        "", "Settings id of the induction rows giving each seed's formation step (resolved)."
    )

    def check(self) -> None:
        self.require(self.record_every >= 1, "record_every", "must be >= 1")
        self.require(0 < self.threshold < 1, "threshold", "must lie in (0, 1)")
        self.require(self.margin >= 0, "margin", "must be >= 0")
        self.require(
            window_problem(self.window) is None, "window", str(window_problem(self.window))
        )

    def seed_window(self, run, seed: int) -> tuple[int, int] | None:
        return seed_window(run, self.window, self.margin, self.formation, seed)
