"""``work``: Stream 3 exactly: the work each part of the real step does on a circuit's gradient energy.

For every seed, the real training steps around its induction formation are
replayed bit for bit from a checkpoint (``interp_ext.trajectory``; a replay that does
not reproduce the checkpoint after its window is refused). At every ``every``-th
step the change of the circuit's gradient energy E_C on the fixed probe set is
split into the exact work of each part of the step (``interp_ext.stream3.line_integrals``:
the line integral of grad E along the step by 2-point Gauss-Legendre, which splits
linearly over any split of the step):

* ``work`` (its total) and ``work_remainder`` = dE - work (the quadrature's error);
* ``work/drift`` and ``work/noise``: the drift is the AdamW update built from a
  *shadow first moment* m_bar_tau = beta1 m_bar_{tau-1} + (1 - beta1) g_bar_tau,
  g_bar_tau the mean gradient of ``drift_batches`` fresh training batches at
  theta_tau, carried along the real trajectory from at least ``horizon`` steps
  before the first measured step (beta1^horizon < 1e-3), with the real run's
  second moment v_tau; the noise is the real update minus the drift, i.e.
  -lr (m_tau - m_bar_tau) / ((1 - beta1^t) D): every earlier minibatch's noise in
  the momentum is noise, not drift;
* ``work/inherited``, ``work/fresh``, ``work/decay``: the momentum carried in, this
  step's gradient and the weight decay (each set adds up to ``work``);
* ``work_by`` / ``work_drift_by``: the work of each parameter block of the real and
  the drift update (``C|<block>``); ``C|<member>`` summed over the circuit's members
  is K[C, C] in its exact, integrated form;

for every tracked set: the circuit ``C``, each member, ``rest``, the layer-matched
controls and ``EMBED``. Every ``detail_every``-th step adds the null of the K-type
terms (the same integrand along a random direction on the circuit's block with the
norm of the update's part there: ``work_by_random``, ``work_drift_by_random``) and
each part's own curvature term (``curv_drift``, ``curv_noise``: u^T Hess(E) u / 2 by
central differences; the noise's is the "entropic" term whose mean is
tr(H_E Cov(d_noise)) / 2).

``arm`` measures a replay of the ``noise`` family (``interp_ext.trajectory``: the mean gradient of M
batches plus c times a minibatch's noise, own or fed second moment) over the seed's window:
it starts at the window's first checkpoint, so the measured steps begin ``horizon`` steps
later; it has no checkpoint to reproduce.

``scale`` = k replays the same span at lr / k with k steps per real batch (the
optimizer's time constants held fixed in units of lr x steps): the gradient-flow
limit is k -> infinity. Such a replay has no checkpoint to reproduce. A sampled real
step is measured on *every one* of its k sub-steps, and its rows hold their sum (the
work of the whole real step, as at k = 1; ``E`` is the energy before the first
sub-step, ``update_norm`` the length of the k sub-steps' path, and a ``substeps``
row says how many were summed), so a window's sums are over the same lr x steps as
the real run's. The shadow moment's M fresh batches of a real step are shared out
over its k sub-steps (M / k each, independent draws: the same batches the real-lr
measurement draws at that step), so both estimate the drift from the same number
of batches per unit of lr x steps.

Per seed: sums of every term over the window and its phases (before / rise /
after formation) with their sampling error, per unit of lr x steps, and the exact
telescoped change. A seed whose heads never formed is measured over the median
window of the seeds that did (its best-scoring heads as the circuit), as the null.
Across seeds: t-intervals, k of n seeds positive, one-sided sign-test p-values.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from circuits.circuit import Circuit
from interp_ext.adamw import moment, momentum_split, update_from_moment
from interp_ext.geometry.gradients import flatten, loss_function, measure_dtype
from interp_ext.measurement.replays import (
    check_replay,
    mean_gradient,
    probe_factory,
    tracked_sets,
)
from interp_ext.measurement.runner import (
    Checkpoint,
    Family,
    MeasureError,
    setting,
)
from interp_ext.measurement.selection import resolve_circuit, seed_circuit, source_inputs
from interp_ext.measurement.shared_settings import CircuitSource, FormationSource, ProbeBatches
from interp_ext.measurement.windows import (
    formation_of,
    formed_seeds,
    phase_of,
    replay_window,
    window_problem,
)
from interp_ext.stats import sampled_sum, sums_over_seeds
from interp_ext.stream3.energy import WHOLE
from interp_ext.stream3.line_integrals import (
    RULES,
    line_integrands,
    on,
    own_curvature,
    random_draw,
    random_like,
    sum_substeps,
    work_of,
)
from interp_ext.trajectory import Arm

log = logging.getLogger("interp_ext")

TERMS = (
    "dE",
    "work",
    "work_remainder",
    *(f"work/{p}" for p in ("drift", "noise", "inherited", "fresh", "decay")),
    "work/drift_halves",
    "work_by",
    "work_drift_by",
    "work_by_random",
    "work_drift_by_random",
    "curv_drift",
    "curv_noise",
)
PHASES = ("window", "before", "rise", "after")


@dataclass(frozen=True)
class WorkSettings(ProbeBatches, CircuitSource, FormationSource):
    family = "work"

    window: str = setting(
        "auto",
        "'auto' (per seed: the last checkpoint >= margin steps before its formation step to the first >= margin after) or START:END.",
    )
    until: str = setting(
        "window",
        "'window' (measure to the window's end) or 'rise' (stop at the end of the rise: formation + rise).",
    )
    every: int = setting(5, "Measure every N-th real step.")
    rule: str = setting(
        "gl2",
        "Quadrature of the line integral: 'gl2' (2-point Gauss-Legendre) or 'midpoint' (one node: "
        "half the cost, but on the tiny preset its window sum missed E_C's change by 1.1%).",
    )
    detail_every: int = setting(
        50,
        "Every that many steps: random-direction nulls and curvature terms (a multiple of --every).",
    )
    drift_batches: int = setting(
        16,
        "Fresh training batches per real step whose mean gradient feeds the shadow first moment "
        "(M; at --scale k, M / k per replayed step).",
    )
    horizon: int = setting(
        0,
        "Steps the shadow moment runs before the first measured step (0: the smallest with beta1^k < 1e-3).",
    )
    margin: int = setting(500, "Auto window: steps before and after the formation step.")
    rise: int = setting(250, "Half-width of the 'rise' phase around the formation step.")
    scale: int = setting(
        1, "Replay at lr / scale, scale steps per real batch (1: the real steps, bit for bit)."
    )
    arm: str = setting(
        "",
        "Measure an arm of the noise family instead of the real steps (c0/own, csqrt2/own, "
        "c1/fed, batch64, ...): it starts at the window's first checkpoint, the shadow moment "
        "runs its horizon from there; '' the real steps.",
        key="if_set",
    )
    arm_batches: int = setting(
        16, "An arm's M: real-size batches whose mean gradient it follows.", key="if_set"
    )
    circuit: str = setting(
        "cause", "'cause', 'induction', heads like L1H2,L0H3, or a Circuit JSON file."
    )
    controls: int = setting(2, "Layer-matched random-head control sets.")
    nulls: bool = setting(
        True, "Measure seeds that never formed over the median window of those that did."
    )
    chunk: int | None = setting(
        None,
        "Probe batches per vmap (default: 4 up to 4,096 tokens, else 1); speed only.",
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
        self.require(self.horizon >= 0, "horizon", "must be >= 0 (0: automatic)")
        self.require(self.margin >= 0 and self.rise >= 0, "margin", "margin and rise must be >= 0")
        self.require(self.scale >= 1, "scale", "must be >= 1")
        self.require(
            self.drift_batches % self.scale == 0,
            "drift_batches",
            f"must be a multiple of scale={self.scale}: M counts fresh batches per real step, "
            "M / scale per replayed step (a plan saved when M counted per replayed step reads "
            "M x scale now)",
        )
        if self.arm:
            try:
                Arm.parse(self.arm)
            except ValueError as err:
                self.require(False, "arm", str(err))
            self.require(self.scale == 1, "arm", "an arm is replayed at the run's lr (scale 1)")
        self.require(self.arm_batches >= 2, "arm_batches", "must be >= 2")
        self.require(self.controls >= 0, "controls", "must be >= 0")
        self.require(self.until in ("window", "rise"), "until", "choose 'window' or 'rise'")
        self.require(self.rule in RULES, "rule", f"choose one of {sorted(RULES)}")
        self.require(self.n_batches is None or self.n_batches >= 2, "n_batches", "must be >= 2")
        self.require(
            window_problem(self.window) is None, "window", str(window_problem(self.window))
        )

    def keyed(self) -> dict:
        """The id's fields; a scaled replay's rows also carry the revision of its sums (every
        sub-step of a sampled real step summed, fresh batches drawn per sub-step), so rows made
        before, which held one sub-step in k, are never read as its rows. The real steps' ids
        (scale 1) are unchanged: their rows are."""
        out = super().keyed()
        if self.scale > 1:
            out["scaled_sums"] = SCALED_SUMS
        return out


# the revision of a scaled replay's rows: 2 = every sub-step of a sampled real step summed
SCALED_SUMS = 2


def momentum_horizon(beta1: float) -> int:
    """The fewest steps k with beta1^k < 1e-3: what the shadow moment forgets of its start."""
    return math.ceil(math.log(1e-3) / math.log(beta1)) + 1


class Work(Family):
    name = "work"
    requires = ("circuit", "induction", "noise")
    report_order = 95
    settings = WorkSettings
    between_checkpoints = True

    def prepare(self, run, settings: WorkSettings) -> WorkSettings:
        formation = check_replay(run, "work", settings.window, settings.n_batches)
        if settings.window == "auto":
            settings = replace(settings, formation=settings.formation or formation)
        if not settings.horizon:
            settings = replace(settings, horizon=momentum_horizon(run.config.train.betas[0]))
        return replace(settings, **resolve_circuit(run, settings.circuit, settings.source))

    def seed_steps(self, run, settings: WorkSettings, seed: int, steps: list[int]) -> list[int]:
        plan = seed_plan(run, settings, seed)
        return [plan["replay_from"]] if plan else []

    def start_seed(self, run, settings: WorkSettings, seed: int) -> dict:
        return {
            "plan": seed_plan(run, settings, seed),
            "circuit": seed_circuit(run, seed, settings.circuit, settings.source),
        }

    def checkpoint(self, ctx: Checkpoint, settings: WorkSettings, state: dict) -> pd.DataFrame:
        return window_work(
            ctx.run, ctx.seed, state["plan"], state["circuit"], settings, ctx.progress
        )

    def finish_seed(self, run, settings: WorkSettings, seed: int, rows: pd.DataFrame):
        plan = seed_plan(run, settings, seed)
        if plan is None or rows.empty:
            return pd.DataFrame([{"step": -1, "metric": "measured", "component": "", "value": 0.0}])
        return window_sums(rows, plan, run.config.train.lr, settings)

    def finish(self, run, settings: WorkSettings, rows: pd.DataFrame) -> pd.DataFrame:
        sums = rows[(rows.seed >= 0) & rows.metric.str.contains("/sum|/exact|/per_lr_step")]
        sums = sums[~sums.metric.str.endswith("/sum_se")]
        formed = rows[(rows.seed >= 0) & (rows.metric == "formed")].groupby("seed").value.first()
        out = []
        for label, keep in (("formed", formed > 0), ("unformed", formed == 0)):
            seeds = formed[keep].index
            part = sums_over_seeds(sums[sums.seed.isin(seeds)], p_values=True)
            if len(part):
                out.append(part.assign(component=part.component + f"#{label}"))
        return pd.concat(out, ignore_index=True) if out else None

    def inputs(self, run, settings: WorkSettings) -> list:
        formation = [("induction", settings.formation)] if settings.formation else []
        return source_inputs(settings.circuit, settings.source) + formation

    def describe(self, rows: pd.DataFrame) -> list[str]:
        return describe_work(rows)

    def report(self, page) -> list[str]:
        from interp_ext.families.work.report import section

        return section(page)

    def report_beside(self, runs: dict, out) -> list[str]:
        from interp_ext.families.work.report import work_comparison

        return work_comparison(runs, out)


# --------------------------------------------------------------------------- the plan of a seed


def seed_plan(run, settings: WorkSettings, seed: int) -> dict | None:
    """Where a seed's replay starts and which real steps are measured; None when it has no window.

    ``formation``: the seed's formation step (NaN for a null seed measured over the median
    window of the formed seeds); ``start``/``end``: the measured real steps [start, end);
    ``replay_from``: the checkpoint the replay starts at, at least ``horizon`` steps before
    ``start`` (or the first checkpoint); ``verify_at``: the checkpoint whose saved state the
    replay must reproduce (the first at or after ``end``; None for a scaled replay).

    Long because it plans every case in one place: a fixed or automatic window, a formed or a
    null seed, the real steps or an arm.
    """
    steps = run.steps_for(seed)
    if settings.window != "auto":
        start, end = (int(p) for p in settings.window.split(":"))
        form = formation_of(run, settings.formation, seed) if settings.formation else math.nan
        null = False
    else:
        form = formation_of(run, settings.formation, seed)
        null = not math.isfinite(form)
        if null:
            if not settings.nulls:
                return None
            formed = [formation_of(run, settings.formation, s) for s in formed_seeds(run)]
            if not formed:
                log.warning("seed %d never formed, and no seed did: no window for a null", seed)
                return None
            center = float(np.median(formed))
        else:
            center = form
        before = [s for s in steps if s <= center - settings.margin]
        after = [s for s in steps if s >= center + settings.margin]
        start = before[-1] if before else steps[0]
        end = after[0] if after else steps[-1]
        if settings.until == "rise":
            end = min(end, int(center + settings.rise))
        form = center
    if settings.arm:  # starts at the window's checkpoint, measured from its grid after the horizon
        replay_from, start = (
            start,
            start + math.ceil(settings.horizon / settings.every) * settings.every,
        )
        if start >= end:
            raise MeasureError(
                f"seed {seed}: the window {replay_from}:{end} is not longer than the shadow moment's "
                f"horizon ({settings.horizon} steps); an arm needs a longer window"
            )
        verify_at = None
    else:
        earlier = [s for s in steps if s <= start - settings.horizon]
        replay_from = earlier[-1] if earlier else steps[0]
        later = [s for s in steps if s >= end]
        verify_at = (later[0] if later else None) if settings.scale == 1 else None
    if settings.scale == 1 and not settings.arm and verify_at is None:
        raise MeasureError(
            f"seed {seed}: no checkpoint at or after step {end} to verify the replay"
        )
    return {
        "formation": form,
        "null": null,
        "start": start,
        "end": end,
        "replay_from": replay_from,
        "verify_at": verify_at,
    }


# --------------------------------------------------------------------------- one replay


def window_work(
    run, seed: int, plan: dict, circuit: Circuit, settings: WorkSettings, progress: bool = False
) -> pd.DataFrame:
    """Replay from ``plan["replay_from"]``, carry the shadow moment, measure the work terms at the
    sampled steps of [start, end); refuse (nothing returned) if the replay diverges.

    Long because each replayed step carries the shadow moment, and a sampled one is measured
    on every sub-step and summed per real step.
    """
    k = settings.scale
    shadow_from = max(plan["replay_from"], plan["start"] - settings.horizon)
    gen = torch.Generator().manual_seed(1000 + seed)
    stop = plan["end"] if plan["verify_at"] is None else plan["verify_at"]
    rows: list[dict] = []
    # what the visitor measures with, made from the trajectory; the shadow moment of each half of
    # the M batches; the measured sub-steps of the current sampled real step; the random-direction
    # null's draws of that real step
    state: dict = {"halves": {}, "substeps": [], "nulls": {}}

    def setup(replay):
        model, names, cfg = replay.model, replay.names, replay.train_cfg
        loss_fn = loss_function(model, names)
        dtype = measure_dtype(model)
        batches = run.probe_set()["lm"]
        batches = batches[: settings.n_batches] if settings.n_batches else batches
        chunk = settings.chunk or (4 if model.cfg.d_vocab <= 4096 else 1)
        probe_at = probe_factory(loss_fn, names, batches, dtype, model.cfg.device, chunk)
        partition, sets = tracked_sets(run, seed, circuit, settings.controls, model)
        state.update(probe_at=probe_at, sets=sets)

        def visit(step) -> None:
            offset = step.step - plan["replay_from"]
            real, sub = plan["replay_from"] + offset // k, offset % k  # real step, its sub-step
            theta = {n: step.theta[n].to(dtype) for n in names}
            if real == plan["end"] and sub == 0:  # the end of the measured span: its energies
                rows.extend(end_energies(probe_at(step.theta), sets, plan["end"]))
            if shadow_from <= real < plan["end"]:
                if not state["halves"]:  # the real m here: weight below 1e-3 when measuring
                    state["halves"] = {
                        h: {n: m.double() for n, m in step.exp_avg.items()} for h in "AB"
                    }
                state["halves"] = advance_shadow(
                    state["halves"], run, seed, real, theta, loss_fn, settings, cfg.betas[0], sub, k
                )
            if not sampled(real, plan, settings.every):
                return
            detail = (real - plan["start"]) % settings.detail_every == 0
            if detail and sub == 0:  # one null direction per real step, for all k sub-steps
                state["nulls"] = {key: random_draw(sets[WHOLE], gen) for key in ("real", "drift")}
            state["substeps"].append(
                step_work(
                    step,
                    state["halves"],
                    cfg,
                    names,
                    probe_at,
                    partition,
                    sets,
                    settings.rule,
                    detail,
                    state["nulls"],
                )
            )
            if sub == k - 1:  # the real step's last sub-step: one row per term for all k
                rows.extend({**r, "step": real} for r in sum_substeps(state["substeps"]))
                state["substeps"] = []

        return visit

    replay = replay_window(
        run,
        seed,
        plan["replay_from"],
        plan["replay_from"] + (stop - plan["replay_from"]) * k,
        setup,
        verify=plan["verify_at"] is not None,
        desc=f"work seed {seed} x{k}",
        progress=progress,
        scale=k,
        arm=settings.arm,
        mean_batches=settings.arm_batches,
    )
    if not any(r["metric"] == "E_end" for r in rows):  # the span ends where the replay stopped
        end_theta = dict(replay.model.named_parameters())
        rows += end_energies(state["probe_at"](end_theta), state["sets"], plan["end"])
    rows += [
        {"metric": "plan", "component": key, "value": float(plan[key]), "step": -1}
        for key in ("start", "end", "replay_from", "formation")
    ]
    rows.append(
        {"metric": "formed", "component": "", "value": 0.0 if plan["null"] else 1.0, "step": -1}
    )
    rows += [
        {"metric": "circuit_member", "component": c, "value": 1.0, "step": -1}
        for c in circuit.components
    ]
    return pd.DataFrame(rows)


def sampled(real: int, plan: dict, every: int) -> bool:
    """Whether real step ``real`` is measured: every ``every``-th real step from the replay's start,
    within the measured span [start, end). At a scale k every sub-step of a sampled real step is
    measured (:func:`sum_substeps`), so a row always stands for one whole real step and a window's
    sum is ``every`` x the sum of its rows (``interp_ext.stats.sampled_sum``)."""
    return (real - plan["replay_from"]) % every == 0 and plan["start"] <= real < plan["end"]


def advance_shadow(halves, run, seed, step, theta, loss_fn, settings, b1, sub=0, k=1) -> dict:
    """One replayed step of the shadow moment for each half of its fresh batches.

    Real step ``step`` draws M fresh batches (draws 0 .. M - 1); at scale k its sub-step ``sub``
    takes its own M / k of them (draws sub M / k ..), so each sub-step's are independent and a
    real step's k sub-steps together see the M batches the real-lr measurement sees there. Half
    A takes the first half of a sub-step's draws, half B the rest: their mean is the shadow
    moment of all of them when the halves are of equal size (an odd number of draws weighs the
    smaller half's more), their difference measures the drift's own sampling error. With one
    batch per sub-step both halves see it, and that error reads 0: give at least 2 per sub-step
    (``drift_batches`` >= 2 x ``scale``) where it is read."""
    m = settings.drift_batches // k
    base = sub * m
    size = {"A": max(1, m // 2), "B": max(1, m - m // 2)}
    first = {"A": base, "B": base + (m // 2 if m > 1 else 0)}
    out = {}
    for h, shadow in halves.items():
        g = mean_gradient(run, seed, step, theta, loss_fn, size[h], first=first[h])
        out[h] = {n: moment(shadow[n], g[n].double(), b1) for n in shadow}
    return out


def end_energies(probe, sets: dict, step: int) -> list[dict]:
    return [
        {"metric": "E_end", "component": a, "value": probe.energy(m), "step": step}
        for a, m in sets.items()
    ]


def step_work(step, halves, cfg, names, probe_at, partition, sets, rule, detail, nulls):
    """Every row of one measured step (see the module docstring).

    Every step: E and dE of every set, and the circuit's integrand I_C, so every part and block
    of the step on E_C (one per-batch tangent per node). Detail steps add the real step's, the
    drift's, the inherited and the fresh part's work on every other set (four shared tangents),
    the circuit's per-block terms, the random-direction nulls and the curvature terms.
    """
    real = {n: step.update[n].double() for n in names}
    shadow = {n: (halves["A"][n] + halves["B"][n]) / 2 for n in names}
    drift = update_from_moment(step, shadow, cfg)
    drift_a, drift_b = (update_from_moment(step, halves[h], cfg) for h in "AB")
    half_gap = flatten({n: (drift_a[n] - drift_b[n]) / 2 for n in names}, names).double()
    parts = momentum_split(step, cfg)
    dirs = {
        "real": flatten(real, names).double(),
        "drift": flatten(drift, names).double(),
        "inherited": flatten(parts["inherited"], names).double(),
        "fresh": flatten(parts["fresh"], names).double(),
    }
    block = sets[WHOLE]
    shared = {k: dirs[k] for k in ("real", "drift", "inherited", "fresh")} if detail else {}
    p0 = probe_at(step.theta)
    e0 = {a: p0.energy(m) for a, m in sets.items()}
    p1 = probe_at({n: step.theta[n] + step.update[n] for n in names})
    d_e = {a: p1.energy(m) - e0[a] for a, m in sets.items()}
    grads, c = line_integrands(step.theta, step.update, {WHOLE: block}, shared, probe_at, rule)
    i_c = grads[WHOLE]
    rows = [{"metric": "E", "component": a, "value": e0[a]} for a in sets]
    rows += [{"metric": "dE", "component": a, "value": d_e[a]} for a in sets]
    for a, mask in sets.items():
        if a == WHOLE:
            rows += work_terms(a, {k: float(i_c @ dirs[k]) for k in dirs}, d_e[a])
        elif detail:
            rows += work_terms(a, {k: work_of(c[k], mask) for k in dirs}, d_e[a])
    rows += [
        {
            "metric": "work_by",
            "component": f"{WHOLE}|{WHOLE}",
            "value": float(i_c @ on(block, dirs["real"])),
        },
        {
            "metric": "work_drift_by",
            "component": f"{WHOLE}|{WHOLE}",
            "value": float(i_c @ on(block, dirs["drift"])),
        },
        {"metric": "work/drift_halves", "component": WHOLE, "value": float(i_c @ half_gap)},
        {"metric": "update_norm", "component": "real", "value": float(dirs["real"].norm())},
        {"metric": "update_norm", "component": "drift", "value": float(dirs["drift"].norm())},
    ]
    if detail:
        rows += detail_rows(i_c, dirs, partition, block, nulls)
        rows += curvature_rows(step, real, drift, names, probe_at, sets, e0)
    return rows


def work_terms(a: str, w: dict[str, float], d_e: float) -> list[dict]:
    """``work`` (real), ``work_remainder`` and, where measured, the parts of one set's work."""
    terms = {"work": w["real"], "work_remainder": d_e - w["real"]}
    if "drift" in w:
        terms.update(
            {
                "work/drift": w["drift"],
                "work/noise": w["real"] - w["drift"],
                "work/inherited": w["inherited"],
                "work/fresh": w["fresh"],
                "work/decay": w["real"] - w["inherited"] - w["fresh"],
            }
        )
    return [{"metric": k, "component": a, "value": v} for k, v in terms.items()]


def detail_rows(i_c, dirs, partition, block, nulls) -> list[dict]:
    """The work on E_C of each block's part of the real and the drift update, and of random
    directions with the norms of the circuit block's parts (the nulls of the K-type terms; one
    direction per real step, ``nulls`` its draws, scaled at each sub-step to that sub-step's
    norm, so over a real step's k sub-steps the null adds up coherently as the K terms do)."""
    rows = []
    for b, mask in partition.items():
        for label, key in (("work_by", "real"), ("work_drift_by", "drift")):
            value = float(i_c @ on(mask, dirs[key]))
            rows.append({"metric": label, "component": f"{WHOLE}|{b}", "value": value})
    for label, key in (("work_by_random", "real"), ("work_drift_by_random", "drift")):
        value = float(i_c @ random_like(dirs[key], block, draw=nulls[key]))
        rows.append({"metric": label, "component": f"{WHOLE}|{WHOLE}", "value": value})
    return rows


def curvature_rows(step, real, drift, names, probe_at, sets, e0) -> list[dict]:
    """Each part's own second-order term on every set: u^T Hess(E) u / 2 by central differences."""

    def energies_at(theta):
        probe = probe_at(theta)
        return {a: probe.energy(m) for a, m in sets.items()}

    rows = []
    noise = {n: real[n] - drift[n] for n in names}
    for label, u in (("curv_drift", drift), ("curv_noise", noise)):
        curv = own_curvature(energies_at, step.theta, u, e0)
        rows += [{"metric": label, "component": a, "value": v} for a, v in curv.items()]
    return rows


# --------------------------------------------------------------------------- summaries


def window_sums(rows: pd.DataFrame, plan: dict, lr: float, settings: WorkSettings) -> pd.DataFrame:
    """Per term and set and phase: the sum over the phase's steps estimated from the sampled ones
    (with its sampling error), the same per unit of lr x steps, and the exact telescoped change
    of each set's energy over the measured span (first measured E to E after the last step)."""
    start, end, form = plan["start"], plan["end"], plan["formation"]
    spans = {
        "window": (start, end),
        "before": (start, form - settings.rise),
        "rise": (form - settings.rise, form + settings.rise),
        "after": (form + settings.rise, end),
    }
    detail_terms = {"work_by_random", "work_drift_by_random", "curv_drift", "curv_noise"}
    terms = rows[rows.metric.isin(TERMS) & (rows.step >= 0)]
    out = []
    for (metric, component), g in terms.groupby(["metric", "component"]):
        phases = phase_of(g.step.to_numpy(), form, settings.rise)
        every = settings.detail_every if metric in detail_terms else settings.every
        for phase in PHASES:
            vals = g.value.to_numpy() if phase == "window" else g.value.to_numpy()[phases == phase]
            lo, hi = spans[phase]
            length = max(0.0, min(hi, end) - max(lo, start)) if math.isfinite(lo + hi) else 0.0
            if len(vals) == 0 or length == 0:
                continue
            total, se = sampled_sum(vals, length / every, every)
            where = f"{component}@{phase}"
            out += [
                {"metric": f"{metric}/sum", "component": where, "value": total},
                {"metric": f"{metric}/sum_se", "component": where, "value": se},
                {
                    "metric": f"{metric}/per_lr_step",
                    "component": where,
                    "value": total / (lr * length),
                },
            ]
    # from the first measured step: the window's start, or for an arm the first step on the
    # sampling grid after the shadow moment's horizon
    measured = rows[(rows.metric == "E") & (rows.step >= start)]
    first = measured.step.min() if len(measured) else start
    e = measured[measured.step == first].set_index("component").value
    e_end = rows[rows.metric == "E_end"].set_index("component").value
    out += [
        {"metric": "dE/exact", "component": f"{a}@window", "value": float(e_end[a] - e[a])}
        for a in e.index
        if a in e_end.index
    ]
    work = rows[(rows.metric == "work") & (rows.step >= 0)]
    out += [
        {
            "metric": "abs_work/sum",
            "component": f"{a}@window",
            "value": float(settings.every * g.value.abs().sum()),
        }
        for a, g in work.groupby("component")
    ]
    out.append({"metric": "formed", "component": "", "value": 0.0 if plan["null"] else 1.0})
    out.append({"metric": "formation_step", "component": "", "value": form})
    return pd.DataFrame([{**r, "step": -1} for r in out])


def describe_work(rows: pd.DataFrame) -> list[str]:
    per = rows[(rows.seed >= 0) & (rows.step == -1) & rows.metric.str.endswith("/sum")]
    per = per[per.component == "C@window"]
    if per.empty:
        return ["no seed had a window (measure induction first, or pass --window START:END)"]
    lines = ["window sums of the circuit's terms, per seed:"]
    for metric, g in per.groupby("metric"):
        values = ", ".join(f"{int(s)}: {v:+.4g}" for s, v in zip(g.seed, g.value))
        lines.append(f"  {metric:<26} {values}")
    return lines


__all__ = ["Work", "WorkSettings", "momentum_horizon"]
