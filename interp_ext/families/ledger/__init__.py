"""``ledger``: Stream 3 decided step by step, through each seed's induction formation.

For every seed, the real training steps of a window around its formation step
are replayed bit for bit from a checkpoint (``interp_ext.replay``; a replay that
does not reproduce the checkpoint at the window's end is refused and nothing is
written). At every ``every``-th step the ledger (``interp_ext.stream3.split``) splits
the change of the circuit's gradient energy E_C on the fixed probe set into its
exact first-order parts (by component, drift vs noise, momentum, mean vs
fluctuation) and the higher orders; every ``detail_every``-th step adds the same
for each component, ``rest``, the layer-matched controls and the embedding, the
dense Stream 3 K matrix along both directions, and the central-difference check.

Per seed: window sums of every term (sampled steps scaled to the window, with
their sampling error under systematic sampling), before / during / after
formation, and the exact telescoped change E_C(t1) - E_C(t0). Across seeds:
t-intervals over the per-seed sums and sign counts (k of n seeds).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import pandas as pd
from tqdm.auto import tqdm

from circuits.circuit import Circuit
from interp_ext.geometry.gradients import loss_function, measure_dtype
from interp_ext.measurement.circuits import (
    resolve_circuit,
    seed_circuit,
    source_folders,
)
from interp_ext.measurement.runner import (
    Checkpoint,
    Family,
    MeasureError,
    Settings,
    setting,
)
from interp_ext.measurement.stream3 import (
    check_replay,
    mean_gradient,
    probe_factory,
    tracked_sets,
)
from interp_ext.measurement.windows import (
    formation_of,
    phase_of,
    seed_window,
    window_problem,
)
from interp_ext.replay import Replay, ReplayError
from interp_ext.run import parts
from interp_ext.stats import sampled_sum, sums_over_seeds
from interp_ext.stream3.split import WHOLE, LedgerSpec, StepInputs, measure_step

log = logging.getLogger("interp_ext")

TERMS = (
    "dE",
    "L1",
    "L1_drift",
    "L1_noise",
    "L1_inherited",
    "L1_fresh",
    "L1_decay",
    "L2",
    "L1_mean",
    "L1_fluct",
    "L1_drift_mean",
    "L1_drift_fluct",
    "second_order_cd",
    "L1_by",
    "L1_drift_by",
)
PHASES = ("window", "before", "rise", "after")


@dataclass(frozen=True)
class LedgerSettings(Settings):
    family = "ledger"
    revision = 1  # drift updates from torch.func gradients in the parameters' layout

    window: str = setting(
        "auto",
        "'auto' (per seed: the last checkpoint >= margin steps before its formation step to the first >= margin after) or START:END.",
    )
    every: int = setting(5, "Measure every N-th real step of the window.")
    drift_batches: int = setting(
        16,
        "Fresh training batches whose mean gradient replaces the minibatch gradient in the drift update.",
    )
    detail_every: int = setting(
        50,
        "Every that many steps: terms of every component and control, dense K, central differences (a multiple of --every).",
    )
    margin: int = setting(500, "Auto window: steps before and after the formation step.")
    rise: int = setting(250, "Half-width of the 'rise' phase around the formation step.")
    circuit: str = setting(
        "cause",
        "'cause', 'induction', heads like L1H2,L0H3, or a Circuit JSON file (as for autocatalysis).",
    )
    controls: int = setting(
        2,
        "Layer-matched random-head controls (heads outside the circuit below the detection thresholds).",
    )
    n_batches: int | None = setting(
        None, "Probe batches (default: all of the probe set).", cli="--batches"
    )
    source: str = setting("", "Settings id of the rows the circuit is read from (resolved).")
    formation: str = setting(
        "", "Settings id of the induction rows giving each seed's formation step (resolved)."
    )
    chunk: int | None = setting(
        None,
        "Probe batches per vmap (default: 4 for vocabularies up to 4,096 tokens, else 1); speed only.",
        key=False,
    )

    def check(self) -> None:
        self.require(self.every >= 1, "every", "must be >= 1")
        self.require(
            self.detail_every >= self.every and self.detail_every % self.every == 0,
            "detail_every",
            f"must be a multiple of every={self.every}",
        )
        self.require(self.drift_batches >= 1, "drift_batches", "must be >= 1")
        self.require(self.margin >= 0 and self.rise >= 0, "margin", "margin and rise must be >= 0")
        self.require(self.controls >= 0, "controls", "must be >= 0")
        self.require(self.n_batches is None or self.n_batches >= 2, "n_batches", "must be >= 2")
        self.require(
            window_problem(self.window) is None, "window", str(window_problem(self.window))
        )


class Ledger(Family):
    name = "ledger"
    report_order = 90
    settings = LedgerSettings
    columns = ("direction",)
    between_checkpoints = True

    def prepare(self, run, settings: LedgerSettings) -> LedgerSettings:
        formation = check_replay(run, "ledger", settings.window, settings.n_batches)
        if settings.window == "auto":
            settings = replace(settings, formation=settings.formation or formation)
        return replace(settings, **resolve_circuit(run, settings.circuit, settings.source))

    def seed_steps(self, run, settings: LedgerSettings, seed: int, steps: list[int]) -> list[int]:
        window = seed_window(run, settings.window, settings.margin, settings.formation, seed)
        return [window[0]] if window else []

    def start_seed(self, run, settings: LedgerSettings, seed: int) -> dict:
        return {
            "window": seed_window(run, settings.window, settings.margin, settings.formation, seed),
            "circuit": seed_circuit(run, seed, settings.circuit, settings.source),
        }

    def checkpoint(self, ctx: Checkpoint, settings: LedgerSettings, state: dict) -> pd.DataFrame:
        return window_rows(
            ctx.run, ctx.seed, state["window"], state["circuit"], settings, ctx.progress
        )

    def finish_seed(
        self, run, settings: LedgerSettings, seed: int, rows: pd.DataFrame
    ) -> pd.DataFrame | None:
        window = seed_window(run, settings.window, settings.margin, settings.formation, seed)
        if window is None or rows.empty:
            return pd.DataFrame([{"step": -1, "metric": "formed", "component": "", "value": 0.0}])
        return pd.concat(
            [
                window_sums(rows, window, formation_of(run, settings.formation, seed), settings),
                cumulative_rows(rows, settings),
            ],
            ignore_index=True,
        )

    def finish(self, run, settings: LedgerSettings, rows: pd.DataFrame) -> pd.DataFrame:
        return across_seeds(rows)

    def inputs(self, run, settings: LedgerSettings) -> list:
        folders = source_folders(run, settings.circuit, settings.source)
        return folders + (
            parts.settings_folders(run.metrics_dir, "induction", settings.formation)
            if settings.formation
            else []
        )

    def describe(self, rows: pd.DataFrame) -> list[str]:
        return describe_ledger(rows)

    def report(self, page) -> list[str]:
        from interp_ext.families.ledger.report import section

        return section(page)

    def report_beside(self, runs: dict, out) -> list[str]:
        from interp_ext.families.ledger.report import ledger_comparison

        return ledger_comparison(runs, out)


# --------------------------------------------------------------------------- one window


def ledger_spec(run, seed: int, circuit: Circuit, settings: LedgerSettings, model) -> LedgerSpec:
    """Masks of the circuit, its components, ``rest``, the layer-matched controls and the embedding."""
    parts, energies = tracked_sets(run, seed, circuit, settings.controls, model)
    detail = [a for a in energies if a != WHOLE]
    return LedgerSpec(parts, energies, [WHOLE], detail)


def window_rows(
    run,
    seed: int,
    window: tuple[int, int],
    circuit: Circuit,
    settings: LedgerSettings,
    progress: bool = False,
) -> pd.DataFrame:
    """Replay the window's real steps and measure the ledger; refuse (nothing returned) if the replay diverges.

    Long because it is the one loop of the ledger: replay, sample, measure, verify.
    """
    start, end = window
    try:
        replay = Replay(run, seed, start)
    except ReplayError as err:
        raise MeasureError(str(err)) from err
    model = replay.model
    names = replay.names
    loss_fn = loss_function(model, names)
    dtype = measure_dtype(model)
    batches = (
        run.probe_set()["lm"][: settings.n_batches] if settings.n_batches else run.probe_set()["lm"]
    )
    chunk = settings.chunk or (4 if model.cfg.d_vocab <= 4096 else 1)

    probe_at = probe_factory(loss_fn, names, batches, dtype, model.cfg.device, chunk)

    spec = ledger_spec(run, seed, circuit, settings, model)
    rows, before = [], None
    bar = tqdm(
        total=end - start,
        desc=f"ledger seed {seed} steps {start}..{end}",
        leave=False,
        disable=not progress,
        dynamic_ncols=True,
    )
    for step in replay.steps(end):
        bar.update(1)
        offset = step.step - start
        if offset % settings.every:
            before = None
            continue
        theta = {n: step.theta[n].to(dtype) for n in names}
        drift = mean_gradient(run, seed, step.step, theta, loss_fn, settings.drift_batches)
        inputs = StepInputs(step, drift, run.config.train)
        out, after = measure_step(
            inputs, spec, probe_at, before, detail=offset % settings.detail_every == 0
        )
        rows += [{**r, "step": step.step} for r in out]
        before = after if settings.every == 1 else None
    bar.close()
    try:
        replay.verify()
    except ReplayError as err:
        raise MeasureError(str(err)) from err
    final = probe_at(dict(replay.model.named_parameters()))
    rows += [
        {"metric": "E_end", "component": a, "value": final.energy(m), "step": end}
        for a, m in spec.energies.items()
    ]
    rows += [
        {"metric": "window", "component": "start", "value": float(start), "step": -1},
        {"metric": "window", "component": "end", "value": float(end), "step": -1},
    ]
    rows += [
        {"metric": "circuit_member", "component": c, "value": 1.0, "step": -1}
        for c in circuit.components
    ]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- summaries


def window_sums(
    rows: pd.DataFrame, window: tuple[int, int], form: float, settings: LedgerSettings
) -> pd.DataFrame:
    """Per term and set: the window's sum estimated from the sampled steps (scaled by the sampling
    interval), its standard error under systematic sampling, per phase; and the exact telescoped change."""
    start, end = window
    terms = rows[rows.metric.isin(TERMS) & (rows.step >= 0)]
    out = []
    for (metric, component), g in terms.groupby(["metric", "component"]):
        phases = phase_of(g.step.to_numpy(), form, settings.rise)
        spans = {
            "window": (start, end),
            "before": (start, form - settings.rise),
            "rise": (form - settings.rise, form + settings.rise),
            "after": (form + settings.rise, end),
        }
        for phase in PHASES:
            vals = g.value.to_numpy() if phase == "window" else g.value.to_numpy()[phases == phase]
            lo, hi = spans[phase]
            length = (
                max(0.0, min(hi, end) - max(lo, start))
                if math.isfinite(lo) and math.isfinite(hi)
                else 0.0
            )
            if len(vals) == 0 or length == 0:
                continue
            total, se = sampled_sum(vals, length / settings.every, settings.every)
            out += [
                {"metric": f"{metric}/sum", "component": f"{component}@{phase}", "value": total},
                {"metric": f"{metric}/sum_se", "component": f"{component}@{phase}", "value": se},
            ]
    e = rows[rows.metric == "E"]
    e_end = rows[rows.metric == "E_end"].set_index("component").value
    for a, v in e[e.step == start].set_index("component").value.items():
        out.append(
            {
                "metric": "dE/exact",
                "component": f"{a}@window",
                "value": float(e_end.get(a, math.nan) - v),
            }
        )
    k_cc = drift_k_cc(rows)
    rise = k_cc[phase_of(k_cc.index.to_numpy(), form, settings.rise) == "rise"]
    if len(rise):
        out.append(
            {
                "metric": "K_drift_CC_positive_share",
                "component": "C@rise",
                "value": float((rise > 0).mean()),
            }
        )
    out.append({"metric": "formation_step", "component": "", "value": form})
    return pd.DataFrame([{**r, "step": -1} for r in out])


def drift_k_cc(rows: pd.DataFrame) -> pd.Series:
    """Per sampled step, K[C,C] along the drift update: grad E_C along the circuit members' own part
    of it (the sum of ``L1_drift_by`` over C|member; ``rest`` and the controls left out)."""
    members = set(rows[rows.metric == "circuit_member"].component)
    by = rows[(rows.metric == "L1_drift_by") & rows.component.str.startswith(f"{WHOLE}|")]
    by = by[by.component.str.split("|").str[1].isin(members)]
    return by.groupby("step").value.sum()


def cumulative_rows(rows: pd.DataFrame, settings: LedgerSettings) -> pd.DataFrame:
    """Running sums of the circuit's terms over the sampled steps (each scaled by the sampling interval), for the figures."""
    terms = ("dE", "L1", "L1_drift", "L1_noise", "L1_inherited", "L1_fresh", "L1_decay", "L2")
    sel = rows[rows.metric.isin(terms) & (rows.component == WHOLE) & (rows.step >= 0)].sort_values(
        "step"
    )
    out = []
    for metric, g in sel.groupby("metric"):
        running = settings.every * g.value.cumsum()
        out += [
            {
                "metric": f"{metric}/cumulative",
                "component": WHOLE,
                "value": float(v),
                "step": int(s),
            }
            for s, v in zip(g.step, running)
        ]
    return pd.DataFrame(out)


def across_seeds(rows: pd.DataFrame) -> pd.DataFrame:
    """For every per-seed sum: a t-interval over seeds and the number of seeds where it is positive."""
    sums = rows[
        (rows.seed >= 0)
        & (
            rows.metric.str.endswith("/sum")
            | (rows.metric == "dE/exact")
            | (rows.metric == "K_drift_CC_positive_share")
        )
    ]
    return sums_over_seeds(sums)


def describe_ledger(rows: pd.DataFrame) -> list[str]:
    sums = rows[
        (rows.seed < 0) & rows.component.eq("C@window") & rows.metric.str.endswith("/seed_mean")
    ]
    if sums.empty:
        return []
    n = rows[(rows.seed < 0) & (rows.metric == "dE/exact/seed_n")].value
    lines = [
        f"E_C ledger over each seed's window (mean over {int(n.iloc[0]) if len(n) else '?'} seeds; k = seeds where the sum is positive):"
    ]
    for term in (
        "dE/exact",
        "dE/sum",
        "L1/sum",
        "L1_drift/sum",
        "L1_noise/sum",
        "L1_inherited/sum",
        "L1_fresh/sum",
        "L2/sum",
    ):
        sel = (
            rows[
                (rows.seed < 0)
                & (rows.component == "C@window")
                & rows.metric.str.startswith(term + "/")
            ]
            .set_index("metric")
            .value
        )
        if f"{term}/seed_mean" in sel:
            lines.append(
                f"  {term:>16}: {sel[f'{term}/seed_mean']:+.4f} [{sel[f'{term}/seed_lo']:+.4f}, {sel[f'{term}/seed_hi']:+.4f}], k = {int(sel[f'{term}/seeds_positive'])}"
            )
    return lines


__all__ = ["Ledger", "LedgerSettings"]
