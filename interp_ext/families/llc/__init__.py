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

``calibrate`` sweeps the SGLD step size and the localisation on the middle and
the last checkpoint of the first seed (whole model), and keeps the largest step
size whose chains are finite, positive, flat and local (they stay well short of
chance loss) at both (the largest localisation among ties): the choice goes into the settings,
and the sweep's traces into ``<run>/calibration/<settings id>.json`` (the id of the settings
that asked for the sweep; the file also names the chosen settings' id) for the report. The
sweep runs once per settings, as its own step (:meth:`LLC.resolve`): computing an id never
repeats it. devinterp's own SGLD is used throughout; nothing here samples.
"""

from __future__ import annotations

import logging
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from circuits.circuit import Circuit, Head, all_heads
from interp_ext.geometry.sharpness import hutchinson_trace, model_hessian
from interp_ext.measurement.circuits import resolve_circuit, seed_circuit
from interp_ext.measurement.runner import (
    Checkpoint,
    Family,
    MeasureError,
    Settings,
    setting,
)
from interp_ext.optim_step import step_batch
from interp_ext.run import io

log = logging.getLogger("interp_ext")
LLC_DRAW = 5000  # training-distribution draws the LLC data set is made of (independent of the batches trained on)
LRS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
LOCALIZATIONS = (10.0, 100.0, 1000.0)


SAMPLERS = {"sgld": "sgmcmc_sgld", "rmsprop": "rmsprop_sgld"}  # devinterp's sampling methods


@dataclass(frozen=True)
class LLCSettings(Settings):
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
        "Which estimates: model, circuit, rest, heads (comma-separated).",
    )
    circuit: str = setting(
        "cause", "The circuit ('cause', 'induction', heads, or a Circuit JSON file)."
    )
    calibrate: bool = setting(
        False, "Sweep step size and localisation first and keep the stable choice."
    )
    seed: int = setting(100, "SGLD seed.")
    source: str = setting("", "Settings id of the rows the circuit is read from (resolved).")
    trace_probes: int = setting(
        16,
        "Rademacher probes of the Hutchinson estimate of each component's Hessian trace beside its LLC (0: none).",
    )
    trace_batches: int = setting(4, "Probe batches the Hessian trace's loss averages over.")
    sampler: str = setting(
        "sgld",
        "'sgld' (devinterp's plain SGLD) or 'rmsprop' (its RMSProp-preconditioned SGLD).",
    )

    def check(self) -> None:
        self.require(
            self.lr > 0 and self.localization >= 0, "lr", "lr must be > 0 and localization >= 0"
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
        bad = [
            c for c in self.components.split(",") if c not in ("model", "circuit", "rest", "heads")
        ]
        self.require(
            bool(self.components) and not bad,
            "components",
            f"unknown {bad}; choose from model, circuit, rest, heads",
        )


class LLC(Family):
    name = "llc"
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
        return replace(settings, **_resolved_circuit(run, settings))

    def resolve(self, run, settings: LLCSettings, compute: bool = True) -> LLCSettings | None:
        """With ``calibrate``: the step size and localisation the sweep chose, from the saved
        sweep of these settings (``<run>/calibration/<id>.json``), sweeping once when there is none."""
        if not settings.calibrate:
            return settings
        path = run.layout.calibration(settings.id)
        if path.exists():
            chosen = io.read_json(path, "an LLC calibration")["chosen"]
            return replace(
                settings, lr=chosen["lr"], localization=chosen["localization"], calibrate=False
            )
        return calibrate(run, settings) if compute else None

    def start_seed(self, run, settings: LLCSettings, seed: int):
        circuit = (
            seed_circuit(run, seed, settings.circuit, settings.source)
            if _wants_circuit(settings)
            else None
        )
        return {"data": llc_data(run, seed, settings), "circuit": circuit}

    def checkpoint(self, ctx: Checkpoint, settings: LLCSettings, state) -> pd.DataFrame:
        rows = []
        trace_op = (
            model_hessian(ctx.model, ctx.probe["lm"][: settings.trace_batches])
            if settings.trace_probes
            else None
        )
        for component, masks in component_masks(ctx.model, state["circuit"], settings).items():
            if trace_op is not None:
                est, se = hutchinson_trace(
                    trace_op, settings.trace_probes, flat_mask(ctx.model, masks), settings.seed
                )
                rows += [
                    {"metric": "hessian_trace", "component": component, "value": est},
                    {"metric": "hessian_trace_se", "component": component, "value": se},
                ]
            result = estimate(ctx.model, state["data"], masks, settings)
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
    return any(c in settings.components.split(",") for c in ("circuit", "rest"))


def _resolved_circuit(run, settings: LLCSettings) -> dict:
    if not _wants_circuit(settings):
        return {}
    return resolve_circuit(run, settings.circuit, settings.source)


def llc_data(run, seed: int, settings: LLCSettings):
    """A fixed data set of training-distribution sequences (HF ``datasets.Dataset`` with ``input_ids``)."""
    from datasets import Dataset

    per = run.config.train.batch_size
    draws = math.ceil(settings.n_sequences / per)
    seqs = torch.cat([step_batch(run, seed, 0, draw=LLC_DRAW + j) for j in range(draws)])[
        : settings.n_sequences
    ]
    return Dataset.from_dict({"input_ids": seqs.tolist()}).with_format("torch")


def component_masks(
    model, circuit: Circuit | None, settings: LLCSettings
) -> dict[str, dict | None]:
    """component -> devinterp parameter masks (None: every parameter)."""
    from devinterp.slt.weight_restrictions import create_param_masks

    wanted = settings.components.split(",")
    out: dict[str, dict | None] = {}
    if "model" in wanted:
        out["model"] = None
    if circuit is not None and "circuit" in wanted:
        heads = [c for c in circuit.components if Head.is_head(c)]
        out["circuit"] = create_param_masks(
            model, [f"l{Head.parse(h).layer}h{Head.parse(h).head}" for h in heads]
        )
    if circuit is not None and "rest" in wanted:
        out["rest"] = circuit.with_rest().masks(model)["rest"]
    if "heads" in wanted:
        out.update(
            {str(h): create_param_masks(model, f"l{h.layer}h{h.head}") for h in all_heads(model)}
        )
    return out


def flat_mask(model, masks: dict | None) -> torch.Tensor | None:
    """devinterp parameter masks as one bool mask over the flattened parameters (None: all)."""
    if masks is None:
        return None
    parts = []
    for name, p in model.named_parameters():
        if name not in masks:
            parts.append(torch.zeros(p.numel(), dtype=torch.bool))
        elif masks[name] is None:
            parts.append(torch.ones(p.numel(), dtype=torch.bool))
        else:
            parts.append(masks[name].detach().bool().flatten().cpu())
    return torch.cat(parts)


@contextmanager
def quiet_sampler():
    """devinterp's per-chain progress bars and its temporary-output warning silenced (one estimate of
    many), and its full garbage collection around each chain skipped (0.3 s a chain in a process that
    holds a run's tables, more than the chains of a small model take)."""
    import devinterp.slt.sampler as sampler
    from tqdm.auto import trange

    original = sampler.trange, sampler._gc_and_empty_cache
    sampler.trange = lambda *a, **k: trange(*a, **{**k, "disable": True})
    sampler._gc_and_empty_cache = lambda: None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sampling without output_path")
            yield
    finally:
        sampler.trange, sampler._gc_and_empty_cache = original


def estimate(model, data, masks: dict | None, settings: LLCSettings) -> dict:
    """devinterp's LLC with these settings; NaN (and ``diverged``) when a chain is non-finite or explodes
    (its loss climbs more than 100 times the initial loss above it)."""
    from devinterp.slt.llc import llc

    n = len(data) * (len(data[0]["input_ids"]) - 1)
    n_beta = settings.n_beta or n / math.log(n)
    kwargs = dict(
        lr=settings.lr,
        n_beta=n_beta,
        param_masks=masks,
        localization=settings.localization,
        num_chains=settings.num_chains,
        num_draws=settings.num_draws,
        num_burnin_steps=settings.num_burnin_steps,
        batch_size=settings.batch_size,
        init_seed=settings.seed,
        device=str(next(model.parameters()).device),
        sampling_method=SAMPLERS[settings.sampler],
    )
    failed = {
        "llc": math.nan,
        "llc_std": math.nan,
        "trace_drift": math.nan,
        "init_loss": math.nan,
        "diverged": 1.0,
        "chains": [],
        "trace": [],
    }
    try:
        with quiet_sampler():
            res = llc(model, data, {}, **kwargs)
    except (ValueError, RuntimeError) as err:  # devinterp raises on non-finite logits
        log.info("LLC chain failed: %s", err)
        return failed
    chains = [float(v) for v in np.asarray(res.llc_per_chain.values).ravel()]
    trace = np.asarray(res.loss_trace.values)  # [chain, step]
    init = float(res.init_loss)
    exploded = not np.isfinite(trace).all() or float(np.nanmax(trace)) - init > 100 * max(
        abs(init), 1.0
    )
    if exploded or not all(map(math.isfinite, chains)):
        return {**failed, "init_loss": init, "trace": np.nan_to_num(trace, nan=np.inf).tolist()}
    return {
        "llc": float(res.llc_mean),
        "llc_std": float(res.llc_std),
        "trace_drift": trace_drift(trace, init, settings.num_burnin_steps),
        "init_loss": init,
        "diverged": 0.0,
        "chains": chains,
        "trace": trace.tolist(),
    }


def trace_drift(trace: np.ndarray, init: float, burnin: int) -> float:
    """Mean loss of the last quarter of draws minus the third quarter, relative to the rise over the initial
    loss: near 0 for an equilibrated trace, large for one still climbing."""
    draws = trace[:, burnin:]
    q = max(1, draws.shape[1] // 4)
    last, third = draws[:, -q:].mean(), draws[:, -2 * q : -q].mean()
    rise = last - init
    return float((last - third) / rise) if rise > 0 else math.inf


def locality(result: dict, chance: float) -> float:
    """How far the chains' loss over the last quarter of the trace rose from the checkpoint's loss, as a
    share of the way to chance (``chance`` = log d_vocab): 0 stays put, 1 has forgotten everything."""
    trace, init = np.asarray(result["trace"], dtype=float), result["init_loss"]
    if trace.ndim != 2 or not np.isfinite(trace).all() or not math.isfinite(init):
        return math.inf
    rise = float(trace[:, -max(1, trace.shape[1] // 4) :].mean()) - init
    return rise / max(chance - init, 1e-6)


def stable(result: dict, chance: float) -> bool:
    """Finite, positive, flat (|trace_drift| < 0.1) and local (:func:`locality` < 0.5)."""
    return (
        not result["diverged"]
        and result["llc"] > 0
        and abs(result["trace_drift"]) < 0.1
        and locality(result, chance) < 0.5
    )


def calibrate(run, settings: LLCSettings) -> LLCSettings:
    """Sweep step size x localisation on the middle and the last checkpoint of the first seed; keep the
    stable choice.

    Stable at a checkpoint (:func:`stable`): every chain finite, LLC > 0, the trace flat after burn-in
    (|trace_drift| < 0.1) and the chain local (its loss rises by less than half the way from the
    checkpoint's loss to chance, log d_vocab: a chain that forgets what the model learned samples
    another region, not this checkpoint's neighbourhood). The largest step size stable at both wins
    (the sampler moves most), the largest localisation among ties. Early checkpoints near chance are
    not probed: there is nothing local to keep the chain near.
    """
    seed = run.seeds[0]
    steps = run.steps_for(seed)
    probe = sorted({steps[len(steps) // 2], steps[-1]})
    data = llc_data(run, seed, settings)
    chance = math.log(run.d_vocab)
    sweep = []
    for lr in LRS:
        for gamma in LOCALIZATIONS:
            trial = replace(settings, lr=lr, localization=gamma, calibrate=False)
            results = [estimate(run.model(seed, t), data, None, trial) for t in probe]
            sweep.append(
                {
                    "lr": lr,
                    "localization": gamma,
                    "stable": all(stable(r, chance) for r in results),
                    "llc": [r["llc"] for r in results],
                    "trace_drift": [r["trace_drift"] for r in results],
                    "locality": [locality(r, chance) for r in results],
                    "init_loss": [r["init_loss"] for r in results],
                    "trace": [r["trace"] for r in results],
                }
            )
    good = [s for s in sweep if s["stable"]]
    if not good:
        raise MeasureError(
            f"LLC calibration found no stable step size in {LRS} x localisation {LOCALIZATIONS} at steps {probe}; raise --draws or --burnin, or set --lr/--localization by hand"
        )
    best = sorted(good, key=lambda s: (-s["lr"], -s["localization"]))[0]
    chosen = replace(settings, lr=best["lr"], localization=best["localization"], calibrate=False)
    io.write_json(
        run.layout.calibration(settings.id),
        {
            "steps": probe,
            "seed": seed,
            "sweep": sweep,
            "chosen": {"lr": best["lr"], "localization": best["localization"]},
            "chosen_id": chosen.id,
        },
    )
    return chosen


__all__ = ["LLC", "LLCSettings"]
