"""``noise``: gradient noise apart from data per step, in replays that read the same data.

A replay that cuts the noise by averaging more batches also changes the data each step
reads. Here every noise arm reads the same sequences per step. From each seed's
pre-formation checkpoint (``margin`` steps before its formation) the seed's
training continues with its AdamW state, learning rate and numerics, but the
update's gradient is

    g = g_bar_M + c xi,   xi = (g_A - g_B) / sqrt(2),

with g_bar_M the mean gradient of M real-size batches (the real batch and M - 1
fresh ones) and g_A, g_B two more
independent real-size batches: xi has mean 0 and one minibatch's covariance, so
c = 1 has the real minibatch's noise level (plus the mean's 1/M), c = 0 none and
c = sqrt(2) twice its variance. The batches of a step are the same in every arm.
One backward pass per arm and step: the loss mean_M + c (L_A - L_B) / sqrt(2).

Adam's second moment: each arm runs with its own v (``/own``) and with the real
run's v_tau fed in at every step (``/fed``, from the real replay in lockstep, which
is checked bit for bit against the window's end checkpoint). Both use AdamW's
update written out (:func:`adamw_step`, equal to torch's AdamW to float rounding,
tested); every step logs the update norm and the mean of 1 / (sqrt(v_hat) + eps).

Batch-size arms (``batch<B>``, own v): B sequences per step (the real batch cut or
extended with fresh ones), formation in steps and in tokens, beside the gradient
noise scale B_noise = tr(Sigma) / |G|^2 (McCandlish et al. 2018) measured at the
window's start from M per-batch gradients (per sequence; |G|^2 unbiased).

Formation: the steepest rise of the best induction score on the record grid, if
the score ends above ``threshold``; otherwise the arm is censored at the window's
end (formation > end) and counted as such: summaries over seeds are Kaplan-Meier
medians and, against the reference arm, paired orders by seed that treat censored pairs
by their bounds, with exact sign tests (arms of one seed are paired, never pooled as
independent samples). No seed is dropped. The batch arms give each seed's critical batch
size (``B_crit``, ``S_min``: S(B) = S_min (1 + B_crit / B), :func:`interp_ext.stats.critical_batch`)
and, over seeds, that of the mean S(B) with a bootstrap interval resampling seeds. With ``stop_after`` an arm stops once it has formed
(:func:`has_formed`: its steepest rise lies that many steps behind and the score has
levelled off), so its formation step is the one the whole window would give unless
a steeper rise came later; E_C's change and the final score are then read at the
arm's last step (``last_step`` in its rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from circuits.circuit import Circuit
from circuits.induction import attention_scores, formation_step
from interp_ext.adamw import step_norms
from interp_ext.geometry.gradients import loss_function, measure_dtype, per_batch_gradients
from interp_ext.measurement.probes import repeated_probe
from interp_ext.measurement.replays import check_replay
from interp_ext.measurement.runner import (
    Checkpoint,
    Family,
    MeasureError,
    setting,
)
from interp_ext.measurement.selection import resolve_circuit, seed_circuit
from interp_ext.measurement.shared_settings import CircuitSource, FormationSource, ProbeBatches
from interp_ext.measurement.windows import replay_window, seed_window, window_problem
from interp_ext.stats import (
    critical_batch,
    critical_batch_over_seeds,
    km_median,
    paired_order,
    sign_test,
)
from interp_ext.stream3.energy import EnergyProbe
from interp_ext.trajectory import Arm, parse_scales, step_tokens


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
class _Window(ProbeBatches, CircuitSource, FormationSource):
    """The arms' window around
    each seed's formation, the record grid, the formation threshold and the circuit of E_C."""

    window: str = setting(
        "auto",
        "'auto' (checkpoints >= margin steps around each seed's formation step) or START:END.",
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

    def check(self) -> None:
        self.require(self.record_every >= 1, "record_every", "must be >= 1")
        self.require(0 < self.threshold < 1, "threshold", "must lie in (0, 1)")
        self.require(self.margin >= 0, "margin", "must be >= 0")
        self.require(
            window_problem(self.window) is None, "window", str(window_problem(self.window))
        )

    def seed_window(self, run, seed: int) -> tuple[int, int] | None:
        return seed_window(run, self.window, self.margin, self.formation, seed)


@dataclass(frozen=True)
class NoiseSettings(_Window):
    family = "noise"

    mean_batches: int = setting(16, "M: real-size batches whose mean gradient every arm follows.")
    scales: str = setting(
        "0,1,sqrt2", "Noise scales c of the arms (comma-separated; sqrtX for the root of X)."
    )
    second_moment: str = setting(
        "both", "'own' (each arm's v), 'fed' (the real run's v_tau) or 'both'."
    )
    batch_sizes: str = setting(
        "16,32,64,128", "Sequences per step of the batch-size arms (comma-separated; '' for none)."
    )
    stop_after: int = setting(
        0,
        "Stop an arm once formed: its score above threshold, its steepest rise ended at least "
        "this many steps before and the last record's rise at most half of it (0: every arm "
        "runs to the window's end).",
        key="if_set",
    )

    def check(self) -> None:
        super().check()
        self.require(self.mean_batches >= 2, "mean_batches", "must be >= 2")
        self.require(
            self.stop_after >= 0 and self.stop_after % self.record_every == 0,
            "stop_after",
            f"must be 0 or a multiple of record_every ({self.record_every}), e.g. 50",
        )
        try:
            scales = parse_scales(self.scales)
        except ValueError as err:
            scales = None
            self.require(False, "scales", f"{err} is no scale >= 0; e.g. 0,1,sqrt2")
        self.require(bool(scales) or self.batch_arms(), "scales", "no arm left to replay")
        self.require(
            self.second_moment in ("own", "fed", "both"),
            "second_moment",
            "choose 'own', 'fed' or 'both'",
        )
        sizes = [p for p in str(self.batch_sizes).replace(" ", "").split(",") if p]
        self.require(
            all(p.isdigit() and int(p) >= 1 for p in sizes),
            "batch_sizes",
            "must be positive integers, e.g. 16,32,64,128",
        )

    def batch_arms(self) -> list[int]:
        return [int(p) for p in str(self.batch_sizes).replace(" ", "").split(",") if p]

    def arms(self) -> list[Arm]:
        """Noise arms (each scale with its own and/or the fed second moment), then batch arms."""
        moments = {"own": [False], "fed": [True], "both": [False, True]}[self.second_moment]
        parts = [p for p in str(self.scales).replace(" ", "").split(",") if p]
        out = [
            Arm(f"c{p}/{'fed' if fed else 'own'}", c, fed)
            for p, c in zip(parts, parse_scales(self.scales))
            for fed in moments
        ]
        return out + [Arm(f"batch{b}", rows=b) for b in self.batch_arms()]


def noise_scale(run, seed: int, start: int, mean_batches: int) -> dict[str, float]:
    """B_noise = tr(Sigma) / |G|^2 per sequence at checkpoint ``start``, from the M per-batch
    gradients of the step's mean batches: tr(Sigma_batch) by the unbiased variance over batches,
    |G|^2 = |g_bar|^2 - tr(Sigma_batch) / M (unbiased), Sigma per sequence = batch x Sigma_batch."""
    batch = run.config.train.batch_size
    rows = step_tokens(run, seed, start, mean_batches)[: mean_batches * batch]
    grads = per_batch_gradients(run.model(seed, start), rows.view(mean_batches, batch, -1))
    return noise_scale_of(grads, batch)


def noise_scale_of(grads: torch.Tensor, batch: int) -> dict[str, float]:
    """B_noise from per-batch gradients [n_batches, n_params] of batches of ``batch`` sequences:
    tr(Sigma) per sequence = batch x the unbiased variance summed over coordinates, |G|^2 =
    |mean|^2 - tr(Sigma_batch) / n (unbiased), B_noise = tr(Sigma) / |G|^2 (inf when |G|^2 <= 0)."""
    n = grads.shape[0]
    trace = float(grads.double().var(dim=0, unbiased=True).sum())
    mean_sq = float(grads.double().mean(0).pow(2).sum()) - trace / n
    return {
        "trace_sigma": batch * trace,
        "mean_grad_sq": mean_sq,
        "B_noise": batch * trace / mean_sq if mean_sq > 0 else math.inf,
    }


class Noise(Family):
    name = "noise"
    requires = ("circuit", "induction")
    report_order = 101
    settings = NoiseSettings
    columns = ("variant",)
    between_checkpoints = True

    def prepare(self, run, settings: NoiseSettings) -> NoiseSettings:
        largest = max(settings.batch_arms(), default=0)
        per_step = settings.mean_batches * run.config.train.batch_size
        if largest > per_step:
            raise MeasureError(
                f"noise setting batch_sizes={settings.batch_sizes!r} is invalid: {largest} sequences exceed the "
                f"{per_step} a step reads (mean_batches x the run's batch size); use at most {per_step}"
            )
        formation = check_replay(run, "noise", settings.window, settings.n_batches)
        if settings.window == "auto":
            settings = replace(settings, formation=settings.formation or formation)
        return replace(settings, **resolve_circuit(run, settings.circuit, settings.source))

    def seed_steps(self, run, settings: NoiseSettings, seed: int, steps: list[int]) -> list[int]:
        window = settings.seed_window(run, seed)
        return [window[0]] if window else []

    def checkpoint(self, ctx: Checkpoint, settings: NoiseSettings, state) -> pd.DataFrame:
        window = settings.seed_window(ctx.run, ctx.seed)
        circuit = seed_circuit(ctx.run, ctx.seed, settings.circuit, settings.source)
        rows = replay_arms(ctx.run, ctx.seed, window, settings, circuit, ctx.progress)
        scale = noise_scale(ctx.run, ctx.seed, window[0], settings.mean_batches)
        rows += [
            {"step": window[0], "metric": k, "component": "", "value": v, "variant": ""}
            for k, v in scale.items()
        ]
        return pd.DataFrame(rows)

    def finish_seed(
        self, run, settings: NoiseSettings, seed: int, rows: pd.DataFrame
    ) -> pd.DataFrame | None:
        return seed_outcomes(run, rows, settings)

    def finish(self, run, settings: NoiseSettings, rows: pd.DataFrame) -> pd.DataFrame:
        return across_seeds(rows, f"batch{run.config.train.batch_size}")

    def report(self, page) -> list[str]:
        from interp_ext.families.noise.report import section

        return section(page, across_seeds)


def tokens_per_step(run, arm: Arm, settings: NoiseSettings) -> int:
    """Sequences x context a step's gradient reads: the M batches of the mean for a noise arm
    (xi's two batches add noise, not signal), the arm's rows for a batch arm."""
    rows = arm.rows if arm.is_batch else settings.mean_batches * run.config.train.batch_size
    return rows * run.config.model.n_ctx


def replay_arms(
    run, seed: int, window: tuple[int, int], settings: NoiseSettings, circuit, progress: bool
) -> list[dict]:
    """Every arm and the real run, in lockstep over the window (rows: the record grid and, per
    step, each arm's update norm and mean 1 / (sqrt(v_hat) + eps)).

    Long because the arms share each step's batches and the real run's v_tau, so one loop
    steps them together and records them on one grid.
    """
    start, end = window
    rows: list[dict] = []
    scores: dict[str, list] = {}  # (step, best induction score) per record

    def setup(lock):
        recorders = {"real": Recorder(run, lock, circuit, settings.n_batches)}
        recorders |= {
            a.arm.name: Recorder(run, a, circuit, settings.n_batches) for a in lock.states
        }
        scores.update({name: [] for name in recorders})
        rows.extend(r for name, rec in recorders.items() for r in rec(start, name))
        _note_scores(scores, rows)

        def visit(taken) -> None:
            for name, arm_step in taken.arms.items():
                norm, inv = step_norms(arm_step, run.config.train)
                rows.extend(
                    {"step": taken.step, "metric": k, "component": "", "value": v, "variant": name}
                    for k, v in (("update_norm", norm), ("inv_sqrt_vhat", inv))
                )
            at = taken.step + 1
            if (at - start) % settings.record_every == 0 or at == end:
                new = [r for name, rec in recorders.items() for r in rec(at, name)]
                rows.extend(new)
                _note_scores(scores, new)
                for name in list(taken.arms) if settings.stop_after else []:
                    if has_formed(*zip(*scores[name]), settings.threshold, settings.stop_after):
                        lock.drop(name)
                        del recorders[name]

        return visit

    replay_window(
        run,
        seed,
        start,
        end,
        setup,
        verify=True,
        desc=f"noise arms seed {seed}",
        progress=progress,
        arms=tuple(settings.arms()),
        mean_batches=settings.mean_batches,
    )
    return rows


def _note_scores(scores: dict[str, list], rows: list[dict]) -> None:
    for r in rows:
        if r["metric"] == "induction_score":
            scores[r["variant"]].append((r["step"], r["value"]))


def has_formed(steps, scores, threshold: float, after: int) -> bool:
    """Whether a score curve recorded so far has formed for good: it ends above ``threshold``,
    its steepest rise (the interval :func:`formation_step` picks) ended at least ``after`` steps
    ago, and the last interval rose at most half as fast. A curve still climbing steeply (a slow
    arm whose rise has not peaked) is not formed yet."""
    steps, scores = np.asarray(steps, float), np.asarray(scores, float)
    if len(steps) < 3 or scores[-1] <= threshold:
        return False
    rate = np.diff(scores) / np.diff(steps)
    i = int(np.nanargmax(rate))
    return bool(steps[-1] - steps[i + 1] >= after and rate[-1] <= rate[i] / 2)


def seed_outcomes(run, rows: pd.DataFrame, settings: NoiseSettings) -> pd.DataFrame:
    """Per arm: formation step (or censored at the window's end), steps and tokens from the
    window's start to formation, tokens per step, E_C's change and the final induction score."""
    out = []
    arms = {a.name: a for a in settings.arms()}
    scores = rows[(rows.metric == "induction_score") & (rows.step >= 0)]
    for variant, g in scores.groupby("variant"):
        g = g.sort_values("step")
        start, end = int(g.step.iloc[0]), int(g.step.iloc[-1])
        formed = bool(g.value.iloc[-1] > settings.threshold)
        form = formation_step(g.step.to_numpy(), g.value.to_numpy()) if formed else math.nan
        per_step = (
            tokens_per_step(run, arms[variant], settings)
            if variant in arms
            else run.config.train.batch_size * run.config.model.n_ctx  # the real run
        )
        elapsed = (form if formed else end) - start
        e = rows[(rows.metric == "E_C") & (rows.variant == variant)].sort_values("step").value
        for metric, value in (
            ("formed", float(formed)),
            ("censored", float(not formed)),
            ("formation_step", form),
            ("formation_bound", float(end)),
            ("steps_to_formation", float(elapsed)),
            ("tokens_per_step", float(per_step)),
            ("formation_tokens", float(elapsed * per_step)),
            ("E_C_change", float(e.iloc[-1] - e.iloc[0])),
            ("final_induction_score", float(g.value.iloc[-1])),
            ("last_step", float(end)),
        ):
            out.append({"metric": metric, "value": value, "variant": variant})
    batch = {
        r["variant"]: r["value"]
        for r in out
        if r["metric"] == "steps_to_formation" and r["variant"].startswith("batch")
    }
    censored = {r["variant"] for r in out if r["metric"] == "censored" and r["value"] > 0}
    if len(batch) >= 2 and not censored & set(batch):  # S(B) of this seed's batch arms
        fit = critical_batch([int(v.removeprefix("batch")) for v in batch], list(batch.values()))
        out += [{"metric": k, "value": v, "variant": "batch"} for k, v in fit.items()]
    return pd.DataFrame([{**r, "step": -1, "component": ""} for r in out])


def across_seeds(rows: pd.DataFrame, batch_reference: str) -> pd.DataFrame:
    """Per arm over seeds, censoring kept: seeds formed, Kaplan-Meier medians of steps and tokens
    to formation (a bound when the median is censored), and against the reference arm (c = 1 with
    the same second moment for noise arms; ``batch_reference``, the run's batch size, for batch arms): the
    paired order (seeds later / seeds whose order is known, with its exact one-sided sign-test p;
    the arms are paired by seed, so no test treats them as independent samples), and the critical
    batch size of the batch arms."""
    per = rows[(rows.seed >= 0) & (rows.step < 0) & (rows.variant != "")]
    table = per.pivot_table(index=["variant", "seed"], columns="metric", values="value")
    out = []
    for variant, g in table.groupby(level="variant"):
        cens = g["censored"].to_numpy() > 0
        for metric in ("steps_to_formation", "formation_tokens"):
            median, bound = km_median(g[metric].to_numpy(), cens)
            out += [
                {"metric": f"{metric}/km_median", "value": median, "variant": variant},
                {
                    "metric": f"{metric}/km_median_censored",
                    "value": float(bound),
                    "variant": variant,
                },
            ]
        out += [
            {"metric": "formed/seeds", "value": float((~cens).sum()), "variant": variant},
            {"metric": "formed/seed_n", "value": float(len(cens)), "variant": variant},
        ]
        # a noise arm against c = 1 with the same second moment (own against own, fed against fed)
        moment = variant.split("/")[1] if "/" in variant else "own"
        ref = batch_reference if variant.startswith("batch") else f"c1/{moment}"
        if variant == ref or ref not in table.index.get_level_values("variant"):
            continue
        r = table.loc[ref].reindex(g.index.get_level_values("seed"))
        a_t, r_t = g["steps_to_formation"].to_numpy(), r["steps_to_formation"].to_numpy()
        r_c = r["censored"].to_numpy() > 0
        later, known = paired_order(a_t, cens, r_t, r_c)
        earlier, _ = paired_order(r_t, r_c, a_t, cens)
        out += [
            {"metric": "vs_reference/seeds_later", "value": float(later), "variant": variant},
            {"metric": "vs_reference/seeds_earlier", "value": float(earlier), "variant": variant},
            {"metric": "vs_reference/seeds_known", "value": float(known), "variant": variant},
            {
                "metric": "vs_reference/p_later",
                "value": sign_test(later, known),
                "variant": variant,
            },
            {
                "metric": "vs_reference/p_earlier",
                "value": sign_test(earlier, known),
                "variant": variant,
            },
        ]
    out += critical_batch_rows(table)
    return pd.DataFrame([{**r, "step": -1, "component": ""} for r in out])


def batch_steps(table: pd.DataFrame) -> pd.DataFrame:
    """Steps to formation per seed (rows) and batch arm's size (columns); a seed with a censored
    batch arm is left out (its S(B) is a bound there)."""
    batches = [v for v in table.index.get_level_values("variant").unique() if v.startswith("batch")]
    cols = {}
    for v in batches:
        g = table.loc[v]
        cols[int(v.removeprefix("batch"))] = g["steps_to_formation"].where(g["censored"] == 0)
    return pd.DataFrame(cols).sort_index(axis=1)


def critical_batch_rows(table: pd.DataFrame) -> list[dict]:
    """Over seeds: the B_crit of the mean S(B) with a bootstrap interval resampling seeds (needs
    two batch sizes; each seed's own B_crit is written with its rows, :func:`seed_outcomes`)."""
    steps = batch_steps(table)
    if steps.shape[1] < 2:
        return []
    fit = critical_batch_over_seeds(steps)
    names = {"B_crit": "mean_curve", "lo": "lo", "hi": "hi", "n": "seed_n", "distinct": "distinct"}
    return [
        {"metric": f"B_crit/{names[k]}", "value": v, "variant": "batch"} for k, v in fit.items()
    ]


__all__ = ["Noise", "NoiseSettings", "has_formed", "noise_scale", "noise_scale_of"]
