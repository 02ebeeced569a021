"""``counterfactual``: does gradient noise drive induction formation? Replays with the noise changed.

From each seed's pre-formation checkpoint (the ledger's window), the seed's
training continues over the same window with everything kept (AdamW state,
learning rate, numerics) except the batches each step trains on:

* ``real``: the batches it trained on (the real trajectory, checked bit for bit
  against the window's end checkpoint);
* ``order_<k>``: other batches from the same training distribution (another data
  order: the spread of the real trajectory);
* ``mean<M>``: the mean gradient of M batches (the real one and M - 1 fresh ones):
  the same expected step with its noise cut about M-fold;
* ``half``: half of the real batch: the noise doubled.

Every ``record_every`` steps: the probe loss, the circuit's gradient energy E_C
and the best induction score (layer >= 1). Per seed and variant: the formation
step (where the induction score rises fastest on that grid) and its shift from
the real one, whether the heads formed at all, and the change of E_C over the
window. Across seeds: t-intervals of the shifts and k of n seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from circuits.circuit import Circuit
from circuits.induction import formation_step
from interp_ext.measurement.circuits import resolve_circuit, seed_circuit
from interp_ext.measurement.runner import (
    Checkpoint,
    Family,
    MeasureError,
    setting,
)
from interp_ext.measurement.stream3 import (
    MEAN_DRAWS,
    ORDER_DRAWS,
    Recorder,
    TrajectorySettings,
    check_replay,
)
from interp_ext.optim_step import step_batch
from interp_ext.replay import Replay, ReplayError
from interp_ext.stats import sign_count, t_interval


@dataclass(frozen=True)
class CounterfactualSettings(TrajectorySettings):
    family = "counterfactual"

    orders: int = setting(4, "Other data orders replayed.")
    mean_batches: int = setting(
        16,
        "Batches whose mean gradient replaces the minibatch gradient (noise cut about that many times); 0: skip.",
    )
    half_batch: bool = setting(True, "Also replay with half of each real batch (noise doubled).")

    def check(self) -> None:
        super().check()
        self.require(self.orders >= 0, "orders", "must be >= 0")
        self.require(
            self.mean_batches == 0 or self.mean_batches >= 2,
            "mean_batches",
            "must be 0 (skip) or >= 2",
        )


class Counterfactual(Family):
    name = "counterfactual"
    report_order = 100
    settings = CounterfactualSettings
    columns = ("variant",)
    between_checkpoints = True

    def prepare(self, run, settings: CounterfactualSettings) -> CounterfactualSettings:
        formation = check_replay(run, "counterfactual", settings.window, settings.n_batches)
        if settings.window == "auto":
            settings = replace(settings, formation=settings.formation or formation)
        return replace(settings, **resolve_circuit(run, settings.circuit, settings.source))

    def seed_steps(
        self, run, settings: CounterfactualSettings, seed: int, steps: list[int]
    ) -> list[int]:
        window = settings.seed_window(run, seed)
        return [window[0]] if window else []

    def checkpoint(self, ctx: Checkpoint, settings: CounterfactualSettings, state) -> pd.DataFrame:
        window = settings.seed_window(ctx.run, ctx.seed)
        circuit = seed_circuit(ctx.run, ctx.seed, settings.circuit, settings.source)
        frames = [
            trajectory(ctx.run, ctx.seed, window, name, batch_of, circuit, settings, ctx.progress)
            for name, batch_of in variants(ctx.run, ctx.seed, settings)
        ]
        return pd.concat(frames, ignore_index=True)

    def finish_seed(
        self, run, settings: CounterfactualSettings, seed: int, rows: pd.DataFrame
    ) -> pd.DataFrame | None:
        return seed_outcomes(rows, settings)

    def finish(self, run, settings: CounterfactualSettings, rows: pd.DataFrame) -> pd.DataFrame:
        return across_seeds(rows)

    def report(self, page) -> list[str]:
        from interp_ext.families.counterfactual.report import section

        return section(page)


def variants(run, seed: int, settings: CounterfactualSettings) -> list[tuple[str, object]]:
    """(name, batch of each step) for every counterfactual, the real trajectory first."""
    out = [("real", None)]
    out += [
        (f"order_{k}", lambda step, k=k: step_batch(run, seed, step, draw=ORDER_DRAWS + k))
        for k in range(1, settings.orders + 1)
    ]
    if settings.mean_batches:
        m = settings.mean_batches
        out.append(
            (
                f"mean{m}",
                lambda step: torch.cat(
                    [step_batch(run, seed, step)]
                    + [step_batch(run, seed, step, draw=MEAN_DRAWS + j) for j in range(m - 1)]
                ),
            )
        )
    if settings.half_batch:
        out.append(
            ("half", lambda step: step_batch(run, seed, step)[: run.config.train.batch_size // 2])
        )
    return out


def trajectory(
    run,
    seed: int,
    window: tuple[int, int],
    name: str,
    batch_of,
    circuit: Circuit,
    settings: CounterfactualSettings,
    progress: bool,
) -> pd.DataFrame:
    """One replay over the window, recorded every ``record_every`` steps (the real one verified at its end).

    A batch of M concatenated batches trains on the mean loss over all of them, whose gradient is the
    mean of the M batch gradients (equal batch sizes).
    """
    start, end = window
    try:
        replay = Replay(run, seed, start, batch_of=batch_of)
    except ReplayError as err:
        raise MeasureError(str(err)) from err
    record = Recorder(run, replay, circuit, settings.n_batches)
    rows = record(start, name)
    for step in tqdm(
        replay.steps(end),
        total=end - start,
        desc=f"{name} seed {seed}",
        leave=False,
        disable=not progress,
    ):
        if (step.step + 1 - start) % settings.record_every == 0 or step.step + 1 == end:
            rows += record(step.step + 1, name)
    if name == "real":
        try:
            replay.verify()
        except ReplayError as err:
            raise MeasureError(str(err)) from err
    return pd.DataFrame(rows)


def seed_outcomes(rows: pd.DataFrame, settings: CounterfactualSettings) -> pd.DataFrame:
    """Per variant: formation step (steepest rise of the induction score on the record grid), its shift
    from the real trajectory's, whether the heads formed, and the change of E_C over the window."""
    out = []
    scores = rows[(rows.metric == "induction_score") & (rows.step >= 0)]
    real = np.nan
    for variant, g in sorted(scores.groupby("variant"), key=lambda kv: kv[0] != "real"):
        g = g.sort_values("step")
        formed = float(g.value.iloc[-1] > settings.threshold)
        form = formation_step(g.step.to_numpy(), g.value.to_numpy()) if formed else math.nan
        real = form if variant == "real" else real
        e = rows[(rows.metric == "E_C") & (rows.variant == variant)].sort_values("step").value
        out += [
            {"metric": "formed", "value": formed, "variant": variant},
            {"metric": "formation_step", "value": form, "variant": variant},
            {"metric": "formation_shift", "value": form - real, "variant": variant},
            {"metric": "E_C_change", "value": float(e.iloc[-1] - e.iloc[0]), "variant": variant},
            {
                "metric": "final_induction_score",
                "value": float(g.value.iloc[-1]),
                "variant": variant,
            },
        ]
    return pd.DataFrame([{**r, "step": -1, "component": ""} for r in out])


def across_seeds(rows: pd.DataFrame) -> pd.DataFrame:
    """Per variant: t-intervals over seeds of the formation shift and the change of E_C, and counts
    (seeds formed, seeds forming earlier than the real run)."""
    per_seed = rows[(rows.seed >= 0) & (rows.step < 0)]
    out = []
    for variant, g in per_seed.groupby("variant"):
        for metric in ("formation_shift", "E_C_change", "formation_step"):
            values = g[g.metric == metric].value.to_numpy()
            for stat, v in zip(("seed_mean", "seed_lo", "seed_hi", "seed_n"), t_interval(values)):
                out.append({"metric": f"{metric}/{stat}", "value": v, "variant": variant})
        shifts = g[g.metric == "formation_shift"].value.to_numpy()
        later, n = sign_count(shifts)
        earlier, _ = sign_count(-shifts)
        formed = g[g.metric == "formed"].value
        out += [
            {"metric": "formation_shift/seeds_later", "value": float(later), "variant": variant},
            {
                "metric": "formation_shift/seeds_earlier",
                "value": float(earlier),
                "variant": variant,
            },
            {"metric": "formed/seeds", "value": float(formed.sum()), "variant": variant},
            {"metric": "formed/seed_n", "value": float(len(formed)), "variant": variant},
        ]
    return pd.DataFrame([{**r, "step": -1, "component": ""} for r in out])


__all__ = ["Counterfactual", "CounterfactualSettings"]
