"""``llc``: the local learning coefficient over training (devinterp), beside the dashboard and Stream 3.

At each checkpoint and seed, devinterp's estimator (SGLD sampling of the
localised, tempered posterior, ``devinterp.slt.llc.llc``) on a fixed set of
training-distribution sequences, for the whole model and per component: the
seed's circuit, ``rest`` (everything outside it) and each attention head
(``devinterp.slt.weight_restrictions.create_param_masks``). Rows: the estimate
(mean over chains), its spread over chains, each chain's value, and the
sampler's diagnostics: the mean loss of the last quarter of draws against the
third quarter (``trace_drift``, relative to the rise over the initial loss: an
equilibrated trace is flat) and ``diverged`` (a non-finite or exploding chain).
A diverged estimate is kept as NaN, with a warning naming the checkpoint and
the setting to change; the rest continues.

``calibrate`` looks for a plateau of each component's estimate in the SGLD step size, at
the settings' localisation and n_beta: step sizes on a quarter-decade grid are tried from
the largest down, on ``calibration_seeds`` (default the first three) at ``calibration_steps``
(default each seed's middle and last checkpoint: choose them before and after formation),
and the first window spanning ``plateau_range`` (3x) whose estimates are all
:func:`stable` (finite, positive, flat by the trace criterion, local) and agree within
``plateau_tolerance`` (10%) at every probed checkpoint is the plateau; its middle step
size is the component's. The walk stops where a chain would need more than ``max_draws``. A component without one is not estimated (its rows say
``calibrated`` 0); the whole model without one is an error. The choice goes into the
settings (``component_lr``), the sweep into ``<run>/calibration/<settings id>.json`` (the
id of the settings that asked for it; the file also names the chosen settings' id) for the
report. The sweep runs once per settings, as its own step (:meth:`LLC.resolve`):
computing an id never repeats it. devinterp's own SGLD (plain or RMSProp-preconditioned)
is used throughout; nothing here samples.

``drift_trace='paired'`` makes the trace criterion read each step's minibatch loss minus the same
sequences' loss at the checkpoint (:func:`paired_trace`): a head's or a circuit's chains raise the
loss by less than the minibatches differ from one another, and on devinterp's own trace that noise,
not the chain, decides the criterion.

``data`` restricts the sampled data to one of the preset's two parts (rows of uniform
random tokens, or corpus text; both carry a copied span): the data-refined LLC.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import pandas as pd
import torch

from circuits.circuit import CircuitError, Head
from interp_ext import diskio
from interp_ext.geometry.curvature import (
    hutchinson_trace,
    model_hessian,
)
from interp_ext.geometry.learning_coefficient import (
    SAMPLERS,
    chain_length,
    component_masks,
    estimate,
    flat_mask,
    locality,
    plateau,
    quadratic_rows,
    quiet_sampler,
    sampler_kwargs,
    stable,
    window_size,
)
from interp_ext.measurement.probes import rows_by_part
from interp_ext.measurement.runner import (
    Checkpoint,
    Family,
    MeasureError,
    setting,
)
from interp_ext.measurement.selection import member_controls, resolve_circuit, seed_circuit
from interp_ext.measurement.shared_settings import CircuitSource

log = logging.getLogger("interp_ext")
CALIBRATION = "calibration"  # the run's folder of calibration sweeps, one file per settings id
LLC_DRAW = 5000  # training-distribution draws the LLC data set is made of (independent of the batches trained on)
# the calibration's step sizes: quarter decades from 1e-3 down to 1e-9 (three in a row span 3.2x;
# RMSProp-preconditioned SGLD with devinterp's eps plateaus about ten times lower than plain SGLD,
# with an eps below the gradients' scale (the preconditioner in the hundreds) far lower still)
LRS = tuple(float(f"{10.0 ** (k / 4):.3g}") for k in range(-12, -37, -1))
DATA_PARTS = ("all", "random", "text")
CALIBRATION_FIELDS = (
    "calibration_seeds",
    "calibration_steps",
    "plateau_tolerance",
    "plateau_range",
    "max_draws",
)


@dataclass(frozen=True)
class LLCSettings(CircuitSource):
    family = "llc"

    lr: float = setting(1e-4, "SGLD step size (epsilon).")
    localization: float = setting(100.0, "Pull towards the checkpoint (gamma).")
    n_beta: float | None = setting(
        None, "Inverse temperature times n (default: n / log n, n the data set's tokens)."
    )
    num_chains: int = setting(2, "SGLD chains.", cli="--chains")
    # 50 + 150: the shortest chains whose whole-model traces flattened on the tiny study (20 + 60 did not)
    num_draws: int = setting(150, "Draws per chain.", cli="--draws")
    num_burnin_steps: int = setting(50, "Burn-in steps before the draws.", cli="--burnin")
    batch_size: int = setting(16, "Sequences per SGLD step.")
    n_sequences: int = setting(
        256, "Training-distribution sequences the estimate is made on (fixed per seed)."
    )
    components: str = setting(
        "model,circuit,rest,heads",
        "Which estimates: model, circuit, rest, heads (every head), single heads such as L1H2 (comma-separated).",
    )
    circuit: str = setting(
        "cause", "The circuit ('cause', 'induction', heads, or a Circuit JSON file)."
    )
    calibrate: bool = setting(
        False,
        "Find each component's plateau in the SGLD step size first (at this localisation) and use it.",
    )
    seed: int = setting(100, "SGLD seed.")
    trace_probes: int = setting(
        16,
        "Rademacher probes of the Hutchinson estimate of each component's Hessian trace beside its LLC (0: none).",
    )
    trace_batches: int = setting(4, "Probe batches the Hessian trace's loss averages over.")
    sampler: str = setting(
        "sgld",
        "'sgld' (devinterp's plain SGLD) or 'rmsprop' (its RMSProp-preconditioned SGLD).",
    )
    rmsprop_eps: float = setting(
        0.1,
        "RMSProp-SGLD's stability constant (devinterp's default 0.1; below the gradients' scale "
        "the preconditioner adapts, above it it is a constant 1 / eps).",
        key="if_set",
    )
    accumulation: int = setting(
        1,
        "Batches of --batch-size whose mean loss each SGLD step follows (devinterp's gradient "
        "accumulation): less minibatch noise per step at the same step size.",
        key="if_set",
    )
    sampling_time: float = setting(
        0.0,
        "Chain length as SGLD time: draws = sampling_time / lr, burn-in a third of that, so every step size samples as far (0: --draws and --burnin as given).",
        key="if_set",
        cli="--sampling-time",
    )
    drift_trace: str = setting(
        "batch",
        "What the trace criterion reads: 'batch' (devinterp's minibatch loss trace) or 'paired' "
        "(each step's minibatch loss minus the same sequences' loss at the checkpoint: the "
        "minibatch's noise removed, for components whose rise is below it).",
        key="if_set",
    )
    estimate_from: str = setting(
        "steps",
        "Which steps the estimate averages: 'steps' (devinterp's: every step, burn-in included) "
        "or 'draws' (the draws after burn-in, of the trace the criterion reads). Both are written "
        "(llc and llc_draws); this chooses which is llc, the one the calibration reads.",
        key="if_set",
        cli="--estimate-from",
    )
    data: str = setting(
        "all",
        "Rows sampled on: all, random (uniform random tokens) or text (corpus text); both parts carry a copied span.",
        key="if_set",
    )
    susceptibility: bool = setting(
        False,
        "Instead of LLC estimates: devinterp's susceptibilities of each circuit head and a "
        "layer-matched control head to the training mix's random rows and text rows.",
        key="if_set",
    )
    observed: int = setting(
        32,
        "With --susceptibility: sequences of each data part whose per-token losses are observed.",
        key="if_set",
    )
    quadratic: bool = setting(
        False,
        "Beside each component's estimate, what the estimator reads on the loss's second-order Taylor "
        "model at the checkpoint (closed form from the head's dense Hessian block and gradient on "
        "the same data): its curvature count, its gradient term and the directions curved below "
        "-localization / n_beta, where the localised posterior does not exist (one Hessian-vector "
        "product per parameter of a head; for a circuit or the model only the gradient term, by "
        "conjugate gradients).",
        key="if_set",
    )
    component_lr: str = setting(
        "",
        "Per-component step sizes, 'component=lr;...' ('none': no plateau, not estimated); set by --calibrate.",
        key="if_set",
        cli="--component-lr",
    )
    calibration_seeds: str = setting(
        "", "Seeds the calibration probes, comma-separated (default: the first three)."
    )
    calibration_steps: str = setting(
        "",
        "Checkpoint steps the calibration probes, comma-separated (default: each seed's middle and last).",
    )
    plateau_tolerance: float = setting(
        0.1, "Largest relative spread of the estimates inside a plateau."
    )
    plateau_range: float = setting(3.0, "Ratio of step sizes a plateau must span.")
    max_draws: int = setting(
        4000,
        "The calibration stops going down in step size where a chain would need more draws than this.",
    )

    def check(self) -> None:
        """Long because every setting gets its own one-line requirement naming it."""
        self.require(self.lr > 0, "lr", "the SGLD step size must be > 0")
        self.require(
            self.localization >= 0, "localization", "the pull towards the checkpoint must be >= 0"
        )
        self.require(
            self.num_chains >= 1 and self.num_draws >= 4,
            "num_draws",
            "need num_chains >= 1 and num_draws >= 4",
        )
        self.require(
            self.n_sequences >= self.batch_size >= 1,
            "n_sequences",
            "need n_sequences >= batch_size >= 1",
        )
        self.require(
            self.trace_probes >= 0 and self.trace_batches >= 1,
            "trace_probes",
            "need trace_probes >= 0 and trace_batches >= 1",
        )
        self.require(self.sampler in SAMPLERS, "sampler", f"choose one of {sorted(SAMPLERS)}")
        self.require(self.rmsprop_eps > 0, "rmsprop_eps", "must be > 0")
        self.require(
            self.rmsprop_eps == 0.1 or self.sampler == "rmsprop",
            "rmsprop_eps",
            "applies to --sampler rmsprop only",
        )
        self.require(self.accumulation >= 1, "accumulation", "must be an integer >= 1")
        self.require(
            self.observed >= max(2, self.batch_size),
            "observed",
            "need at least 2 sequences per part, and at least batch_size (devinterp evaluates whole batches)",
        )
        self.require(
            self.drift_trace in ("batch", "paired"), "drift_trace", "choose 'batch' or 'paired'"
        )
        self.require(
            self.estimate_from in ("steps", "draws"),
            "estimate_from",
            "choose 'steps' or 'draws'",
        )
        self.require(self.data in DATA_PARTS, "data", f"choose one of {list(DATA_PARTS)}")
        self.require(self.sampling_time >= 0, "sampling_time", "must be >= 0")
        self.require(self.max_draws >= 4, "max_draws", "must be >= 4")
        self.require(
            self.plateau_tolerance > 0 and self.plateau_range > 1,
            "plateau_range",
            "need plateau_tolerance > 0 and plateau_range > 1",
        )
        for name, parse, form in (
            ("component_lr", lambda: self.component_lrs(), "component=lr pairs joined by ';'"),
            (
                "calibration_seeds",
                lambda: _ints(self.calibration_seeds),
                "comma-separated integers",
            ),
            (
                "calibration_steps",
                lambda: _ints(self.calibration_steps),
                "comma-separated integers",
            ),
        ):
            try:
                parse()
            except ValueError:
                self.require(False, name, f"write {form}")
        bad = [
            c
            for c in self.components.split(",")
            if c not in ("model", "circuit", "rest", "heads") and not Head.is_head(c)
        ]
        self.require(
            bool(self.components) and not bad,
            "components",
            f"unknown {bad}; choose from model, circuit, rest, heads or single heads (L1H2)",
        )

    def keyed(self) -> dict:
        """The calibration's own fields decide the values only through the step sizes it chooses
        (``lr``, ``component_lr``): they key the settings that ask for a calibration, not its result."""
        out = super().keyed()
        if self.calibrate:
            return {
                **out,
                **{k: getattr(self, k) for k in CALIBRATION_FIELDS},
                "calibration": "plateau",
            }
        return {k: v for k, v in out.items() if k not in CALIBRATION_FIELDS}

    def component_lrs(self) -> dict[str, float | None]:
        """component -> its step size (None: no plateau) from ``component_lr``."""
        out: dict[str, float | None] = {}
        for part in filter(None, self.component_lr.split(";")):
            name, value = part.split("=")
            out[name.strip()] = None if value.strip() == "none" else float(value)
        return out


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


class LLC(Family):
    name = "llc"
    requires = ("circuit", "induction")
    report_order = 60
    settings = LLCSettings
    summary_metrics = ("llc",)

    def prepare(self, run, settings: LLCSettings) -> LLCSettings:
        try:
            run.train_tokens()
        except FileNotFoundError as err:
            raise MeasureError(
                f"the LLC samples on training-distribution data and needs the run's training data: {err}"
            ) from err
        for c in filter(Head.is_head, settings.components.split(",")):
            try:
                Head.parse(c).check(run.config.model)
            except CircuitError as err:
                raise MeasureError(f"llc setting components: {err}") from err
        p = run.config.data.random_seq_prob
        if settings.susceptibility and not 0 < p < 1:
            raise MeasureError(
                f"llc --susceptibility compares the random and text rows of the training mix; this run's random_seq_prob is {p}, so it has one part only"
            )
        if (settings.data == "random" and p <= 0) or (settings.data == "text" and p >= 1):
            raise MeasureError(
                f"llc setting data={settings.data!r} is invalid: this run's random_seq_prob is {p}, so it has no {settings.data} rows; use data=all"
            )
        return replace(settings, **_resolved_circuit(run, settings))

    def resolve(self, run, settings: LLCSettings, compute: bool = True) -> LLCSettings | None:
        """With ``calibrate``: the step size and localisation the sweep chose, from the saved
        sweep of these settings (``<run>/calibration/<id>.json``), sweeping once when there is none."""
        if not settings.calibrate:
            return settings
        path = calibration_path(run, settings.id)
        if path.exists():
            saved = diskio.read_json(path, "an LLC calibration")
            if saved.get("failed"):
                raise MeasureError(saved["failed"] + f" (the sweep is saved in {path})")
            return chosen_settings(settings, saved["chosen"])
        return calibrate(run, settings) if compute else None

    def start_seed(self, run, settings: LLCSettings, seed: int):
        circuit = (
            seed_circuit(run, seed, settings.circuit, settings.source)
            if _wants_circuit(settings)
            else None
        )
        data = llc_data(run, seed, settings)
        if settings.susceptibility:
            from interp_ext.families.llc.susceptibility import observed_parts

            pairs = member_controls(run, seed, circuit)
            controls = {h: pairs.get(h) for h in circuit.components if Head.is_head(h)}
            parts = observed_parts(run, seed, settings.observed)
            return {"data": data, "controls": controls, "parts": parts}
        if settings.data == "all":
            trace_batches = None  # the run's probe batches
        else:
            per = run.config.data.probe_batch_size
            ids = data[: settings.trace_batches * per]["input_ids"]
            trace_batches = ids.reshape(-1, per, ids.shape[-1])
        return {"data": data, "circuit": circuit, "trace_batches": trace_batches}

    def checkpoint(self, ctx: Checkpoint, settings: LLCSettings, state) -> pd.DataFrame:
        """Long because each component's rows gather the Hessian trace, the estimate with its
        diagnostics, the chains and (when calibrated) the step size, or say it has no plateau."""
        if settings.susceptibility:
            from interp_ext.families.llc.susceptibility import susceptibility_rows

            kwargs = sampler_kwargs(ctx.model, state["data"], None, settings)
            return pd.DataFrame(
                susceptibility_rows(
                    ctx.model,
                    state["data"],
                    state["parts"],
                    state["controls"],
                    kwargs,
                    quiet_sampler,
                )
            )
        rows = []
        batches = state.get("trace_batches")
        batches = ctx.probe["lm"][: settings.trace_batches] if batches is None else batches
        trace_op = model_hessian(ctx.model, batches) if settings.trace_probes else None
        lrs = settings.component_lrs()
        for component, masks in component_masks(ctx.model, state["circuit"], settings).items():
            if component in lrs and lrs[component] is None:
                rows.append({"metric": "calibrated", "component": component, "value": 0.0})
                continue
            if trace_op is not None:
                est, se = hutchinson_trace(
                    trace_op, settings.trace_probes, flat_mask(ctx.model, masks), settings.seed
                )
                rows += [
                    {"metric": "hessian_trace", "component": component, "value": est},
                    {"metric": "hessian_trace_se", "component": component, "value": se},
                ]
            if settings.quadratic:
                quad = quadratic_rows(ctx.model, state["data"], masks, settings)
                rows += [{"metric": k, "component": component, "value": v} for k, v in quad.items()]
            own = settings
            if component in lrs:
                own = replace(settings, lr=lrs[component])
                rows += [
                    {"metric": "calibrated", "component": component, "value": 1.0},
                    {"metric": "step_size", "component": component, "value": own.lr},
                ]
            result = estimate(ctx.model, state["data"], masks, own)
            if result["diverged"]:
                log.warning(
                    "LLC of %s at seed %d step %d diverged (non-finite or exploding chains): rows are NaN; lower --lr or raise --localization",
                    component,
                    ctx.seed,
                    ctx.step,
                )
            rows += [
                {"metric": k, "component": component, "value": v}
                for k, v in result.items()
                if k not in ("chains", "trace")
            ]
            rows += [
                {"metric": "llc_chain", "component": f"{component}#{i}", "value": v}
                for i, v in enumerate(result["chains"])
            ]
        return pd.DataFrame(rows)

    def report(self, page) -> list[str]:
        from interp_ext.families.llc.report import section

        return section(page)


def _wants_circuit(settings: LLCSettings) -> bool:
    return settings.susceptibility or any(
        c in settings.components.split(",") for c in ("circuit", "rest")
    )


def _resolved_circuit(run, settings: LLCSettings) -> dict:
    if not _wants_circuit(settings):
        return {}
    return resolve_circuit(run, settings.circuit, settings.source)


def llc_data(run, seed: int, settings: LLCSettings):
    """A fixed data set of training-distribution sequences (HF ``datasets.Dataset`` with ``input_ids``)."""
    from datasets import Dataset

    n = settings.n_sequences
    if settings.data == "all":
        parts, j = [], 0
        while sum(len(p) for p in parts) < n:
            parts.append(run.batch_rows(seed, 0, draw=LLC_DRAW + j)[0])
            j += 1
        seqs = torch.cat(parts)[:n]
    else:
        rand, text = rows_by_part(
            run,
            seed,
            LLC_DRAW,
            n if settings.data == "random" else 0,
            n if settings.data == "text" else 0,
        )
        seqs = torch.stack(rand if settings.data == "random" else text)
    return Dataset.from_dict({"input_ids": seqs.tolist()}).with_format("torch")


def calibration_probes(run, settings: LLCSettings) -> list[tuple[int, int]]:
    """The (seed, step) checkpoints the calibration probes, each refused in one line when absent."""
    seeds = _ints(settings.calibration_seeds) or run.seeds[:3]
    probes = []
    for seed in seeds:
        if seed not in run.seeds:
            raise MeasureError(
                f"llc setting calibration_seeds: seed {seed} is not in this run (seeds {run.seeds})"
            )
        steps = run.steps_for(seed)
        wanted = _ints(settings.calibration_steps) or sorted({steps[len(steps) // 2], steps[-1]})
        missing = [t for t in wanted if t not in steps]
        if missing:
            raise MeasureError(
                f"llc setting calibration_steps: seed {seed} has no checkpoint at {missing}; its steps are {steps}"
            )
        probes += [(seed, t) for t in wanted]
    return probes


def calibrate(run, settings: LLCSettings) -> LLCSettings:
    """Each component's plateau in the step size (module docstring); the choice and the sweep saved.

    Long because it walks components x step sizes x probed checkpoints, stopping a step size at
    its first unstable probe (it cannot be in a plateau) and a component at its first plateau.
    """
    from tqdm.auto import tqdm

    probes = calibration_probes(run, settings)
    data = {s: llc_data(run, s, settings) for s in {s for s, _ in probes}}
    circuits = {
        s: seed_circuit(run, s, settings.circuit, settings.source)
        if _wants_circuit(settings)
        else None
        for s in data
    }
    models = {p: run.model(*p) for p in probes}
    masks = {p: component_masks(models[p], circuits[p[0]], settings) for p in probes}
    names = list(masks[probes[0]])
    chance = math.log(run.d_vocab)
    need = window_size(LRS, settings.plateau_range)
    sweep, chosen = {}, {}
    bar = tqdm(total=len(names) * len(LRS), desc="LLC calibration", unit="step size")
    for name in names:
        trials = []
        for lr in sorted(LRS, reverse=True):
            if chain_length(replace(settings, lr=lr))[0] > settings.max_draws:
                break
            trial = {
                "lr": lr,
                "stable": True,
                "llc": [],
                "llc_se": [],  # the draws' Monte Carlo error: a change with step size beyond it is real
                "trace_drift": [],
                "trace_drift_se": [],
                "locality": [],
                "init_loss": [],
                "trace": [],
            }
            for p in probes:
                r = estimate(
                    models[p], data[p[0]], masks[p][name], replace(settings, lr=lr, calibrate=False)
                )
                trial["llc"].append(r["llc"])
                trial["llc_se"].append(r["llc_draws_se"])
                trial["trace_drift"].append(r["trace_drift"])
                trial["trace_drift_se"].append(r["trace_drift_se"])
                trial["locality"].append(locality(r, chance))
                trial["init_loss"].append(r["init_loss"])
                if name == "model":
                    trial["trace"].append(r["trace"])
                if not stable(r, chance):
                    trial["stable"] = False
                    break
            trials.append(trial)
            bar.update()
            if len(trials) >= need and plateau(trials[-need:], settings.plateau_tolerance):
                chosen[name] = trials[-need:][need // 2]["lr"]
                break
        bar.update(len(LRS) - len(trials))
        chosen.setdefault(name, None)
        sweep[name] = trials
    bar.close()
    saved = {
        "rule": "plateau",
        "probes": [list(p) for p in probes],
        "grid": list(LRS),
        "window": need,
        "sweep": sweep,
        "chosen": chosen,
    }
    if chosen.get("model", 0.0) is None:
        cap = (
            f" (smaller step sizes need more than --max-draws {settings.max_draws} draws)"
            if min(t["lr"] for t in sweep["model"]) > LRS[-1]
            else ""
        )
        failed = f"LLC calibration found no plateau of the whole model's estimate (within {settings.plateau_tolerance:.0%} over {settings.plateau_range:g}x in step size, every chain stable) in {min(t['lr'] for t in sweep['model']):g}..{LRS[0]:g}{cap} at {probes}; set --sampling-time (chains of equal SGLD time), raise --draws or --burnin, or change --localization"
        diskio.write_json(calibration_path(run, settings.id), {**saved, "failed": failed})
        raise MeasureError(failed)
    lost = [n for n, lr in chosen.items() if lr is None]
    if lost:
        log.warning("LLC calibration: no plateau for %s; they are not estimated", ", ".join(lost))
    result = chosen_settings(settings, chosen)
    diskio.write_json(calibration_path(run, settings.id), {**saved, "chosen_id": result.id})
    return result


def chosen_settings(settings: LLCSettings, chosen: dict[str, float | None]) -> LLCSettings:
    """The settings with the calibration's step sizes (the whole model's as ``lr``)."""
    text = ";".join(
        f"{c}={'none' if lr is None else format(lr, '.6g')}" for c, lr in chosen.items()
    )
    lr = chosen.get("model") or settings.lr
    return replace(settings, lr=lr, component_lr=text, calibrate=False)


__all__ = ["LLC", "LLCSettings"]


def calibration_path(run, settings_id: str):
    """``<run>/calibration/<settings_id>.json``: a calibration sweep and the settings it chose."""
    return run.layout.artifacts(CALIBRATION).joinpath(f"{settings_id}.json")
