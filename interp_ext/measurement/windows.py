"""Formation windows: each seed's induction formation step (from the ``induction`` family's
rows) and the window of checkpoints around it that replays of real steps cover.

A window is ``auto`` (per seed: the last checkpoint at least ``margin`` steps before
its formation step to the first at least ``margin`` after) or ``START:END`` (two
checkpoint steps). A seed whose heads never passed the detection threshold has no
formation step, so it has no auto window.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from interp_ext.errors import MeasureError

log = logging.getLogger("interp_ext")


def window_problem(window: str) -> str | None:
    """What is wrong with a window spec (None when it parses)."""
    if window == "auto":
        return None
    parts = window.split(":")
    ok = (
        len(parts) == 2
        and all(p.strip().isdigit() for p in parts)
        and int(parts[0]) < int(parts[1])
    )
    return None if ok else "use 'auto' or START:END with two checkpoint steps, START < END"


def check_window_checkpoints(run, window: str, family: str) -> None:
    """A ``START:END`` window names two checkpoints of the run."""
    start, end = (int(p) for p in window.split(":"))
    missing = [s for s in (start, end) if s not in run.steps]
    if missing:
        raise MeasureError(
            f"{family} window {window}: no checkpoint at step(s) {missing}; checkpoints: {run.steps}"
        )


def formation_settings(run) -> str:
    """The settings id of the run's latest induction rows that hold formation steps."""
    rows = run.metrics(_formation().name)
    if rows.empty or "formation_step" not in set(rows.metric):
        raise MeasureError(
            f"the auto window needs each seed's formation step: run `interp-ext measure {_formation().name} {run.path}` first, or pass --window START:END"
        )
    return str(rows.settings.iloc[0])


def formation_of(run, formation: str, seed: int) -> float:
    """The seed's formation step in the induction rows ``formation`` (a settings id; "" for the
    latest); NaN when its heads never pass the detection threshold."""
    rows = run.metrics(_formation().name, settings=formation or "latest", seeds=[seed])
    rows = rows[rows.seed == seed]
    if rows.empty or rows[rows.metric == "detected_induction_head"].empty:
        return math.nan
    form = rows[rows.metric == "formation_step"].value
    return float(form.iloc[0]) if len(form) else math.nan


def formed_seeds(run) -> list[int]:
    """The run's seeds whose induction heads passed the detection threshold (latest induction rows)."""
    formation = formation_settings(run)
    return [s for s in run.seeds if math.isfinite(formation_of(run, formation, s))]


def formation_or_null(run, seed: int) -> tuple[float, str]:
    """(the seed's formation step, ""), or, for a seed that never formed, (the median formation step
    of the seeds that did, "null_"): where a per-seed signal is read against formation, and its
    null. NaN when the run has no induction rows or no seed formed."""
    if run.metrics(_formation().name).empty:
        return math.nan, ""
    form = formation_of(run, "", seed)
    if math.isfinite(form):
        return form, ""
    formed = [formation_of(run, "", s) for s in formed_seeds(run)]
    return (float(np.median(formed)), "null_") if formed else (math.nan, "")


def seed_window(run, window: str, margin: int, formation: str, seed: int) -> tuple[int, int] | None:
    """(start, end) checkpoints of the seed's window; None when its induction heads never formed."""
    if window != "auto":
        start, end = (int(p) for p in window.split(":"))
        return start, end
    form = formation_of(run, formation, seed)
    if not math.isfinite(form):
        log.warning(
            "seed %d: no induction head passed the detection threshold, so it has no formation step and no window",
            seed,
        )
        return None
    steps = run.steps_for(seed)
    before = [s for s in steps if s <= form - margin]
    after = [s for s in steps if s >= form + margin]
    return (before[-1] if before else steps[0], after[0] if after else steps[-1])


def settings_window(run, settings, seed: int) -> tuple[int, int] | None:
    """The seed's replayed window for a family's ``window``, ``margin`` and ``formation``
    settings, or None (no window asked, or a seed that never formed)."""
    if not settings.window:
        return None
    return seed_window(run, settings.window, settings.margin, settings.formation, seed)


def replay_window(
    run,
    seed: int,
    start: int,
    stop: int,
    setup,
    verify: bool,
    desc: str = "",
    progress: bool = False,
    **kind,
):
    """The one place a measurement replays steps: build the trajectory from checkpoint ``start``
    (``kind``: :func:`interp_ext.trajectory.build`'s ``scale``, ``arm``, ``arms``,
    ``mean_batches``), hand it to ``setup``, which returns the visitor of each step, take every
    step (every sub-step) up to ``stop`` and, with ``verify``, refuse
    (:class:`~interp_ext.errors.ReplayError`, a measurement error) a replay that does not
    reproduce the run's checkpoint there. Returns the trajectory at ``stop``."""
    from interp_ext.trajectory import build, walk

    trajectory = build(run, seed, start, **kind)
    walk(trajectory, stop, setup(trajectory), verify=verify, desc=desc, progress=progress)
    return trajectory


def polyak_average(run, seed: int, step: int, width: int) -> dict:
    """The slow weights at checkpoint ``step``: the mean (float64) of the real trajectory's
    parameters theta_tau over the ``width`` steps tau = step - width + 1 .. step, replayed bit for
    bit from the last checkpoint at or before the first of them and verified against the saved
    checkpoint at ``step`` (:class:`~interp_ext.errors.ReplayError` when it does not reproduce it)."""
    from interp_ext.errors import ReplayError

    first = step - width + 1
    earlier = [s for s in run.steps_for(seed) if s <= first]
    if width < 1 or not earlier or step not in run.steps_for(seed):
        raise ReplayError(
            f"seed {seed}: no checkpoint at or before step {first} to average the {width} steps "
            f"up to checkpoint {step} (width must be >= 1 and fit after the run's first checkpoint)"
        )
    total: dict = {}

    def setup(_replay):
        def add(taken) -> None:
            if taken.step >= first:
                for n, t in taken.theta.items():
                    total[n] = total.get(n, 0) + t.double()

        return add

    replay = replay_window(run, seed, earlier[-1], step, setup, verify=True)
    for n, p in replay.model.named_parameters():
        total[n] = total.get(n, 0) + p.detach().double()
    return {n: t / width for n, t in total.items()}


def replayed_rows(run, seed: int, window: tuple[int, int], every: int, measure):
    """Replay a seed's window (start, end) bit for bit and measure after every ``every``-th real
    step that is not a checkpoint: ``measure(model, step, at)`` returns a frame of rows (``step``
    the replayed step: AdamW's state after it is ``step.new_exp_avg_sq`` at count
    ``step.count + 1``; ``at`` the step after it, written as the rows' ``step``). The replay must
    reproduce the checkpoint at the window's end bit for bit (a warning where there is none)."""
    import pandas as pd

    start, end = window
    checkpoints = set(run.steps_for(seed))
    frames = []

    def setup(replay):
        def visit(step) -> None:
            at = step.step + 1  # the state after this step
            if (at - start) % every == 0 and at not in checkpoints and at < end:
                frames.append(measure(replay.model, step, at).assign(step=at))

        return visit

    replay_window(run, seed, start, end, setup, verify=end in checkpoints)
    if end not in checkpoints:
        log.warning("seed %d: no checkpoint at step %d to verify the replayed window", seed, end)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def phase_of(steps: np.ndarray, form: float, rise: int) -> np.ndarray:
    """Each step's phase: ``before`` (earlier than formation - rise), ``rise`` (within rise of
    the formation step), ``after``; ``window`` for all when there is no formation step."""
    if not math.isfinite(form):
        return np.full(len(steps), "window", dtype=object)
    return np.where(steps < form - rise, "before", np.where(steps < form + rise, "rise", "after"))


def _formation():
    from interp_ext.measurement.runner import formation_family

    return formation_family()
