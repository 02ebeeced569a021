"""``geometry``: the gradient-geometry dashboard and Stream 1 drift.

Per checkpoint, from the B probe batches: the spectrum metrics of G, energy in
U_t on held-out batches, gradient cosine, per-group gradient norms and G traces,
function-space alignment of the real next step, and the comparisons with other
checkpoints of the same seed: U_t against the previous checkpoint and step 0,
``subspace_similarity`` against ``lag`` checkpoints back, and Stream 1's drift
rate against the checkpoint ``drift_delta`` steps back (rows of family
``stream1``). An imported checkpoint whose weights equal the previous one's
(:meth:`~interp_ext.run.Run.duplicate_steps`) gets neither the ``*_prev`` rows
nor a drift row. Those comparisons make the family stateful: a resumed measurement
replays the checkpoints whose U_t the next one compares with.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import pandas as pd
import torch

from interp_ext.geometry import spectral
from interp_ext.geometry.dashboard import (
    COMPANIONS,
    DASHBOARD,
    CheckpointGeometry,
    checkpoint_geometry,
    function_space_alignment,
)
from interp_ext.geometry.gradients import GROUPS
from interp_ext.measurement.grams import save_grams
from interp_ext.measurement.probes import probe_batches
from interp_ext.measurement.runner import (
    Checkpoint,
    Family,
    MeasureError,
    Settings,
    setting,
)

log = logging.getLogger("interp_ext")


@dataclass(frozen=True)
class GeometrySettings(Settings):
    family = "geometry"

    n_batches: int | None = setting(
        None, "Probe batches B that build G (default: all of the probe set).", cli="--batches"
    )
    k: int = setting(4, "Size of the top eigenspace U.")
    params: str = setting(
        "all",
        "'all', 'blocks' or comma-separated groups (ln, attn_qkv, attn_out, mlp_in, mlp_out, embed, unembed).",
    )
    centered: bool = setting(False, "Subtract the mean gradient before forming G.")
    lag: int = setting(10, "Checkpoints between U_t and U_{t-lag} (subspace_similarity).")
    drift_delta: int | None = setting(
        None, "Stream 1 Delta in steps (default: lag checkpoint intervals).", cli="--delta"
    )
    chunk: int | None = setting(
        None, "Batches per vmap (default: 1 on a CPU, 8 on a GPU); speed only.", key=False
    )

    def check(self) -> None:
        self.require(
            self.n_batches is None or self.n_batches >= 2,
            "n_batches",
            "must be >= 2 (G needs at least two gradients)",
        )
        self.require(self.k >= 1, "k", "must be >= 1")
        self.require(self.lag >= 1, "lag", "must be >= 1")
        self.require(
            self.drift_delta is None or self.drift_delta > 0,
            "drift_delta",
            "must be a positive number of steps",
        )
        groups = [] if self.params in ("all", "blocks") else self.params.split(",")
        bad = [g for g in groups if g not in GROUPS]
        self.require(
            not bad,
            "params",
            f"unknown group(s) {bad}; use 'all', 'blocks' or groups from {GROUPS}",
        )

    @property
    def param_groups(self) -> str | list[str]:
        return self.params if self.params in ("all", "blocks") else self.params.split(",")


@dataclass
class History:
    """What one seed's next checkpoint is compared with."""

    lag: int
    delta: int
    init: torch.Tensor | None = None
    prev: CheckpointGeometry | None = None
    recent: deque = field(default_factory=deque)
    by_step: dict[int, torch.Tensor] = field(default_factory=dict)


class Geometry(Family):
    name = "geometry"
    report_order = 40
    settings = GeometrySettings
    stateful = True
    row_families = ("geometry", "stream1")
    summary_metrics = DASHBOARD + COMPANIONS + ("drift_rate", "drift_floor")

    def prepare(self, run, settings: GeometrySettings) -> GeometrySettings:
        b = probe_batches(run, "geometry", settings.n_batches)
        if settings.k > b:
            raise MeasureError(
                f"geometry setting k={settings.k} is invalid: G from B={b} batches has at most {b} eigenvectors; use k <= {b}"
            )
        return settings

    def start_seed(self, run, settings: GeometrySettings, seed: int) -> History:
        delta = settings.drift_delta or settings.lag * run.config.train.checkpoint_every
        return History(lag=settings.lag, delta=delta, recent=deque(maxlen=settings.lag + 1))

    def replay_steps(
        self, settings: GeometrySettings, sequence: list[int], todo: list[int], state: History
    ) -> set[int]:
        earlier = sequence[: sequence.index(todo[0])]
        return (
            {sequence[0]}
            | set(earlier[-settings.lag :])
            | {t for t in earlier if t >= todo[0] - state.delta}
        )

    def checkpoint(
        self, ctx: Checkpoint, settings: GeometrySettings, state: History
    ) -> pd.DataFrame | None:
        lm = ctx.probe["lm"][: settings.n_batches] if settings.n_batches else ctx.probe["lm"]
        geo = checkpoint_geometry(
            ctx.model,
            lm,
            settings.k,
            ctx.probe["heldout"],
            settings.param_groups,
            settings.centered,
            settings.chunk,
        )
        metrics, drift = compare(geo, ctx.step, state, settings)
        if ctx.replay:
            return None
        if ctx.step in ctx.run.duplicate_steps(ctx.seed):  # the previous checkpoint's weights again
            metrics = {m: v for m, v in metrics.items() if not m.endswith("_prev")}
            drift = None
        if ctx.step < ctx.run.config.train.steps:
            metrics.update(step_alignment(ctx))
        rows = [("geometry", m, "", v) for m, v in metrics.items()]
        rows += [("geometry", "grad_norm", g, v) for g, v in geo.group_norms.items()]
        rows += [("geometry", "g_trace", g, v) for g, v in geo.group_trace.items()]
        if drift is not None:
            rows.append(("stream1", "drift_rate", "", drift))
            rows.append(("stream1", "drift_floor", "", metrics["angle_floor"] / state.delta))
        save_grams(ctx.run, settings.id, ctx.seed, ctx.step, geo.grams)
        return pd.DataFrame(rows, columns=["family", "metric", "component", "value"])

    def describe(self, rows: pd.DataFrame) -> list[str]:
        geo = rows[(rows.family == "geometry") & (rows.component == "") & (rows.seed >= 0)]
        if geo.empty:
            return []
        last = geo[geo.step == geo.step.max()].groupby("metric")["value"].mean()
        shown = ("effective_rank", "participation_ratio", "topk_variance", "overlap_prev")
        return [
            f"geometry at step {geo.step.max()} (seed mean): "
            + ", ".join(f"{m} {last[m]:.3f}" for m in shown if m in last)
        ]

    def report(self, page) -> list[str]:
        from interp_ext.families.geometry.report import section

        return section(page)


def compare(
    geo: CheckpointGeometry, step: int, state: History, settings: GeometrySettings
) -> tuple[dict[str, float], float | None]:
    """The metrics comparing U_t with earlier checkpoints, and Stream 1's drift; updates the state."""
    m = dict(geo.metrics)
    if state.init is None:
        state.init = geo.basis
    if state.prev is not None:
        m["overlap_prev"] = spectral.subspace_overlap(geo.basis, state.prev.basis)
        m["top_eigvec_prev"] = spectral.top_vector_similarity(geo.basis, state.prev.basis)
        m["grad_alignment_prev"] = spectral.cosine(geo.mean_grad, state.prev.mean_grad)
    m["overlap_init"] = spectral.subspace_overlap(geo.basis, state.init)
    m["top_eigvec_init"] = spectral.top_vector_similarity(geo.basis, state.init)
    if len(state.recent) >= settings.lag:
        m["subspace_similarity"] = spectral.subspace_overlap(
            geo.basis, state.recent[-settings.lag][1]
        )
    state.by_step[step] = geo.basis
    back = state.by_step.get(step - state.delta)
    drift = spectral.drift_rate(geo.basis, back, state.delta) if back is not None else None
    for old in [s for s in state.by_step if s < step - state.delta]:
        del state.by_step[old]  # keep only the bases Stream 1 can still need
    state.recent.append((step, geo.basis))
    state.prev = geo
    return m, drift


def step_alignment(ctx: Checkpoint) -> dict[str, float]:
    """Function-space alignment of the real training step taken after this checkpoint."""
    from interp_ext.trajectory import real_step

    try:
        theta, direction, batch = real_step(ctx.run, ctx.seed, ctx.step)
    except (
        FileNotFoundError,
        KeyError,
        RuntimeError,
    ) as err:  # the run's training data or moments are missing
        log.info("function-space alignment skipped at seed %d step %d: %s", ctx.seed, ctx.step, err)
        return {}
    return {
        "function_space_alignment_same": function_space_alignment(
            ctx.model, theta, direction, batch
        ),
        "function_space_alignment_heldout": function_space_alignment(
            ctx.model, theta, direction, ctx.probe["heldout"][0]
        ),
    }


__all__ = ["Geometry", "GeometrySettings"]
