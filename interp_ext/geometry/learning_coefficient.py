"""The local learning coefficient, estimated: devinterp's SGLD chains (and RMSProp SGLD) on a
model restricted to parameter masks, read from the chain's draws after burn-in or its mean, with
the chain's own checks (drift of the trace, locality, a plateau in step size), and the quadratic
approximation from the Hessian block that a chain should agree with where the loss is quadratic.

The ``llc`` family measures with these at checkpoints; ``settings`` here is its settings object
(:class:`interp_ext.families.llc.LLCSettings`: step size, localization, chains, draws, sampler).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch

from circuits.circuit import Circuit, Head, all_heads
from interp_ext.errors import MeasureError
from interp_ext.geometry.curvature import model_hessian

log = logging.getLogger("interp_ext")
SAMPLERS = {"sgld": "sgmcmc_sgld", "rmsprop": "rmsprop_sgld"}  # devinterp's sampling methods


def devinterp_restrictions(circuit: Circuit) -> list[str]:
    """A circuit's heads and MLPs as devinterp weight restrictions (``l1h2``, ``l0 mlp``); other
    components (LayerNorms, embeddings) are refused: they have no restriction of their own."""
    out = []
    for c in circuit.components:
        if Head.is_head(c):
            out.append(f"l{Head.parse(c).layer}h{Head.parse(c).head}")
        elif c.endswith("MLP") and c[1:-3].isdigit():
            out.append(f"l{c[1:-3]} mlp")
        else:
            raise MeasureError(
                f"the LLC of a circuit covers heads and MLPs; {c!r} of circuit {circuit.name!r} is neither"
            )
    return out


def component_masks(model, circuit: Circuit | None, settings) -> dict[str, dict | None]:
    """component -> devinterp parameter masks (None: every parameter)."""
    from devinterp.slt.weight_restrictions import create_param_masks

    wanted = settings.components.split(",")
    out: dict[str, dict | None] = {}
    if "model" in wanted:
        out["model"] = None
    if circuit is not None and "circuit" in wanted:
        out["circuit"] = create_param_masks(model, devinterp_restrictions(circuit))
    if circuit is not None and "rest" in wanted:
        out["rest"] = circuit.with_rest().masks(model)["rest"]
    heads = all_heads(model) if "heads" in wanted else []
    heads += [Head.parse(c).check(model) for c in wanted if Head.is_head(c)]
    out.update({str(h): create_param_masks(model, f"l{h.layer}h{h.head}") for h in heads})
    return out


def flat_mask(model, masks: dict | None, names: list[str] | None = None) -> torch.Tensor | None:
    """devinterp parameter masks as one bool mask over the flattened parameters (None: all), or
    over the parameters ``names`` only, in that order."""
    if masks is None:
        return None
    params = dict(model.named_parameters())
    parts = []
    for name, p in ((n, params[n]) for n in names or params):
        if name not in masks:
            parts.append(torch.zeros(p.numel(), dtype=torch.bool))
        elif masks[name] is None:
            parts.append(torch.ones(p.numel(), dtype=torch.bool))
        else:
            parts.append(masks[name].detach().bool().flatten().cpu())
    return torch.cat(parts)


@contextmanager
def quiet_sampler():
    """devinterp's per-chain progress bars silenced (one estimate of many), and its full garbage
    collection around each chain skipped (0.3 s a chain in a process that
    holds a run's tables, more than the chains of a small model take)."""
    import devinterp.slt.sampler as sampler
    from tqdm.auto import trange

    original = sampler.trange, sampler._gc_and_empty_cache
    sampler.trange = lambda *a, **k: trange(*a, **{**k, "disable": True})
    sampler._gc_and_empty_cache = lambda: None
    try:
        yield
    finally:
        sampler.trange, sampler._gc_and_empty_cache = original


def estimate(model, data, masks: dict | None, settings) -> dict:
    """devinterp's LLC with these settings; NaN (and ``diverged``) when a chain is non-finite or explodes
    (its loss climbs more than 100 times the initial loss above it).

    devinterp's ``sample`` and ``compute_llc`` (what its ``llc`` runs), writing the samples into a
    temporary directory removed afterwards. With ``drift_trace='paired'`` the trace the drift
    criterion reads is :func:`paired_trace` (each step's minibatch loss minus the same sequences'
    loss at the checkpoint); ``llc_paired`` is the estimate read from it, a check on devinterp's.
    """
    import tempfile

    from devinterp.slt.llc import compute_llc
    from devinterp.slt.sampling import sample

    kwargs = sampler_kwargs(model, data, masks, settings)
    n_beta, burnin = kwargs["n_beta"], kwargs["num_burnin_steps"]
    try:
        with quiet_sampler(), tempfile.TemporaryDirectory(prefix="interp-ext-llc-") as tmp:
            samples = sample(
                model=model,
                dataset=data,
                observables={},
                output_path=f"{tmp}/samples.zarr",
                **kwargs,
            )
            res = compute_llc(samples).load()
            paired = (
                paired_trace(model, data, samples) if settings.drift_trace == "paired" else None
            )
    except (ValueError, RuntimeError) as err:  # devinterp raises on non-finite logits
        log.info("LLC chain failed: %s", err)
        return failed_estimate()
    chains = [float(v) for v in np.asarray(res.llc_per_chain.values).ravel()]
    trace = np.asarray(res.loss_trace.values)  # [chain, step], burn-in included
    init = float(res.init_loss)
    exploded = not np.isfinite(trace).all() or float(np.nanmax(trace)) - init > 100 * max(
        abs(init), 1.0
    )
    if exploded or not all(map(math.isfinite, chains)):
        return failed_estimate(init, np.nan_to_num(trace, nan=np.inf).tolist())
    read = trace - init if paired is None else paired  # the rise the trace criterion reads
    out = {
        "llc": float(res.llc_mean),
        "llc_std": float(res.llc_std),
        "trace_drift": trace_drift(read, 0.0, burnin),
        "trace_drift_se": trace_drift_se(read, burnin),
        "init_loss": init,
        "diverged": 0.0,
        "chains": chains,
        "trace": trace.tolist(),
        **drawn_estimate(read[:, burnin:], n_beta),
    }
    if paired is not None:
        out["llc_paired"] = float(n_beta * paired.mean())
    if settings.estimate_from == "draws":
        drawn = n_beta * read[:, burnin:].mean(1)
        out.update(llc=out["llc_draws"], llc_std=float(drawn.std()), chains=drawn.tolist())
    return out


def drawn_estimate(rise: np.ndarray, n_beta: float) -> dict:
    """The estimate from the draws after burn-in (``rise``: [chain, draw], the loss's rise over
    the checkpoint), with its Monte Carlo standard error and effective sample size (ArviZ's
    ``mcse`` and ``ess`` of the mean, over chains and draws).

    devinterp's estimate averages every step, burn-in included (its ``compute_llc``), so it
    carries the chain's approach from the checkpoint; this one does not. The standard error is
    the chains' own: how far another run of the same length would land.
    """
    arviz = _arviz()
    enough = rise.shape[1] >= 4  # ArviZ's least
    return {
        "llc_draws": float(n_beta * rise.mean()),
        "llc_draws_se": float(n_beta * arviz.mcse(rise, method="mean")) if enough else math.nan,
        "llc_draws_ess": float(arviz.ess(rise, method="mean")) if enough else math.nan,
    }


def _arviz():
    """ArviZ, imported without its announcement of the 1.0 refactor (a FutureWarning)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz
    return arviz


def failed_estimate(init_loss: float = math.nan, trace: list | None = None) -> dict:
    """The rows of an estimate whose chains failed or exploded: NaN, marked ``diverged``."""
    nan = math.nan
    return {
        "llc": nan,
        "llc_std": nan,
        "trace_drift": nan,
        "trace_drift_se": nan,
        "llc_draws": nan,
        "llc_draws_se": nan,
        "llc_draws_ess": nan,
        "init_loss": init_loss,
        "diverged": 1.0,
        "chains": [],
        "trace": trace or [],
    }


def inverse_temperature(data, settings) -> float:
    """n beta: as set, or n / log n with n the data's predicted tokens (sequences x (length - 1))."""
    n = len(data) * (len(data[0]["input_ids"]) - 1)
    return settings.n_beta or n / math.log(n)


def sampler_kwargs(model, data, masks: dict | None, settings) -> dict:
    """devinterp ``sample`` arguments for these settings (n beta = n / log n unless set)."""
    draws, burnin = chain_length(settings)
    kwargs = dict(
        lr=settings.lr,
        n_beta=inverse_temperature(data, settings),
        param_masks=masks,
        localization=settings.localization,
        num_chains=settings.num_chains,
        num_draws=draws,
        num_burnin_steps=burnin,
        batch_size=settings.batch_size,
        init_seed=settings.seed,
        device=str(next(model.parameters()).device),
        sampling_method=SAMPLERS[settings.sampler],
        gradient_accumulation_steps=settings.accumulation,
    )
    if settings.sampler == "rmsprop":
        kwargs["rmsprop_eps"] = settings.rmsprop_eps
    return kwargs


DENSE_LIMIT = 8192  # coordinates: above it a dense Hessian block costs more than the chains


def quadratic_rows(model, data, masks: dict | None, settings) -> dict[str, float]:
    """:func:`quadratic_llc` for one component (devinterp ``masks``,
    None: the whole model) on the estimate's own data, n_beta and localisation: the dense Hessian
    block of the mean loss over the data's sequences and its gradient, differentiated only through
    the tensors the masks name. Above ``DENSE_LIMIT`` coordinates (a circuit, the model) only the
    gradient term, by conjugate gradients (:func:`quadratic_gradient_term`)."""
    seqs = torch.as_tensor(np.asarray(data["input_ids"]))
    op = model_hessian(model, seqs[:, None], names=None if masks is None else list(masks), chunk=64)
    mask = flat_mask(model, masks, op.names)
    mask = torch.ones(op.n, dtype=torch.bool) if mask is None else mask
    n_beta = inverse_temperature(data, settings)
    full = op.gradient()
    g = full[mask.to(full.device)]
    if int(mask.sum()) > DENSE_LIMIT:
        cg = quadratic_gradient_term(op.block_matvec(mask), g, n_beta, settings.localization)
        return {
            "llc_quadratic_gradient": cg["gradient_term"],
            "quadratic_proper": float(1 - cg["improper"]),
            "gradient_norm": float(g.double().norm()),
        }
    hessian = op.block(mask).double().cpu().numpy()
    gradient = g.double().cpu().numpy()
    q = quadratic_llc(hessian, gradient, n_beta, settings.localization)
    return {
        "llc_quadratic": q["llc"],
        "llc_quadratic_count": q["count"],
        "llc_quadratic_gradient": q["gradient_term"],
        "improper_directions": float(q["improper"]),
        "hessian_min": q["hessian_min"],
        "hessian_max": q["hessian_max"],
        "gradient_norm": q["gradient_norm"],
    }


def paired_trace(model, data, samples) -> np.ndarray:
    """[chain, step] the mean over each step's minibatch of its sequences' loss at the sampled
    parameters minus the same sequences' loss at the checkpoint (``model`` as given).

    devinterp's loss trace mixes the rise of the loss with which sequences each step drew; pairing
    each sequence with itself removes the second (the minibatches come from devinterp's stored
    ``sampling_input_ids_micro``), so what remains moves only with the parameters.
    """
    from devinterp.slt.lm_loss import compute_per_token_loss

    ds = samples.dataset
    ids = np.asarray(ds.sampling_input_ids_micro.values)  # [chain, step, batch, token]
    sampled = np.asarray(ds.sampling_loss_micro.values, dtype=np.float64).mean(-1)
    rows = np.asarray(data["input_ids"])
    index = {row.tobytes(): i for i, row in enumerate(rows)}
    where = np.array([index[r.tobytes()] for r in ids.reshape(-1, ids.shape[-1])]).reshape(
        ids.shape[:-1]
    )
    device = next(model.parameters()).device
    with torch.no_grad():
        parts = [
            compute_per_token_loss(model, torch.as_tensor(rows[i : i + 64], device=device))
            for i in range(0, len(rows), 64)
        ]
    start = torch.cat(parts).double().mean(-1).cpu().numpy()
    return (sampled - start[where]).mean(-1)


def chain_length(settings) -> tuple[int, int]:
    """(draws, burn-in steps): as set, or from ``sampling_time`` / lr (burn-in a third of the draws)."""
    if not settings.sampling_time:
        return settings.num_draws, settings.num_burnin_steps
    draws = max(4, round(settings.sampling_time / settings.lr))
    return draws, draws // 3


def last_quarters(trace: np.ndarray, burnin: int) -> tuple[np.ndarray, np.ndarray]:
    """The last and the third quarter of the draws after burn-in ([chain, draw] each): what the
    drift criterion and its standard error compare."""
    draws = trace[:, burnin:]
    q = max(1, draws.shape[1] // 4)
    return draws[:, -q:], draws[:, -2 * q : -q]


def trace_drift(trace: np.ndarray, init: float, burnin: int) -> float:
    """Mean loss of the last quarter of draws minus the third quarter, relative to the rise over the initial
    loss: near 0 for an equilibrated trace, large for one still climbing."""
    last, third = (part.mean() for part in last_quarters(trace, burnin))
    rise = last - init
    return float((last - third) / rise) if rise > 0 else math.inf


def trace_drift_se(rise: np.ndarray, burnin: int) -> float:
    """The standard error of :func:`trace_drift` from the chains' own fluctuation (ArviZ's Monte
    Carlo standard error of the last and the third quarter's means, over chains): a drift many
    times this is a trend, one within two of it is the chain's noise, and the chain is too short
    for the criterion's 0.1 when this is not well below it."""
    arviz = _arviz()
    last, third = last_quarters(rise, burnin)
    level = last.mean()
    if last.shape[1] < 4 or level <= 0:
        return math.nan
    se = [float(arviz.mcse(part, method="mean")) for part in (last, third)]
    return math.hypot(*se) / level


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


def window_size(grid: tuple[float, ...], span: float) -> int:
    """How many consecutive grid step sizes a window needs to span at least ``span``."""
    ratio = grid[0] / grid[1] if grid[0] > grid[1] else grid[1] / grid[0]
    return 1 + math.ceil(math.log(span) / math.log(ratio) - 1e-9)


def plateau(trials: list[dict], tolerance: float) -> bool:
    """Every trial stable at every probe, and at each probe the estimates agree within
    ``tolerance`` (largest over smallest, minus 1)."""
    if not trials or not all(t["stable"] for t in trials):
        return False
    per_probe = np.array([t["llc"] for t in trials], dtype=float)  # [trial, probe]
    return bool((per_probe.max(0) / per_probe.min(0) - 1 <= tolerance).all())


def quadratic_llc(
    hessian: np.ndarray, gradient: np.ndarray, n_beta: float, localization: float
) -> dict[str, float]:
    """What the LLC's estimator reads if the loss were its second-order Taylor expansion about the
    checkpoint, in closed form: ``hessian`` [k, k] and ``gradient`` [k] of the loss on the sampled
    coordinates.

    The localised, tempered posterior exp(-n_beta L(w) - gamma / 2 |w - w0|^2) of the quadratic
    L(w0 + d) = L(w0) + g.d + d'Hd / 2 is Gaussian with precision A = n_beta H + gamma I and mean
    mu = -n_beta A^-1 g, so n_beta E[L(w) - L(w0)] splits over H's eigendirections (h_i, g_i the
    gradient's component) into

        count    = sum_i n_beta h_i / (2 a_i)                       (a_i = n_beta h_i + gamma)
        gradient = -sum_i n_beta^2 g_i^2 (n_beta h_i + 2 gamma) / (2 a_i^2)

    the first a soft count of the directions curved beyond gamma / n_beta, the second negative
    wherever the checkpoint is not a stationary point. Where a_i <= 0 (curvature below
    -gamma / n_beta: ``improper`` directions) the quadratic posterior does not exist, a chain
    leaves along them until the higher-order terms stop it, and ``llc`` is NaN.
    """
    h, q = np.linalg.eigh(np.asarray(hessian, dtype=np.float64))
    g = q.T @ np.asarray(gradient, dtype=np.float64)
    a = n_beta * h + localization
    improper = a <= 0
    ok = ~improper
    count = float(np.sum(n_beta * h[ok] / (2 * a[ok])))
    grad_term = float(
        -np.sum(n_beta**2 * g[ok] ** 2 * (n_beta * h[ok] + 2 * localization) / (2 * a[ok] ** 2))
    )
    return {
        "llc": count + grad_term if not improper.any() else float("nan"),
        "count": count,
        "gradient_term": grad_term,
        "improper": int(improper.sum()),
        "hessian_min": float(h[0]),
        "hessian_max": float(h[-1]),
        "gradient_norm": float(np.linalg.norm(g)),
    }


def quadratic_gradient_term(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    gradient: torch.Tensor,
    n_beta: float,
    localization: float,
    tol: float = 1e-6,
    maxiter: int = 500,
) -> dict[str, float]:
    """The gradient term of :func:`quadratic_llc` without a dense Hessian, for blocks too large
    to hold one: with x = A^-1 g (A = n_beta H + gamma I, ``matvec`` the block's H v),

        gradient term = -n_beta^2 (g.x + gamma |x|^2) / 2,

    x by conjugate gradients. Where CG meets a direction with p'Ap <= 0, A is not positive
    definite and the quadratic posterior does not exist: the term is then NaN and ``improper`` 1
    (a negative direction CG never meets, one orthogonal to the Krylov space of g, goes
    unseen). ``iterations``: CG steps to a residual below ``tol`` |g|."""
    g = gradient.double()
    x = torch.zeros_like(g)
    r, p = g.clone(), g.clone()
    rr = float(r @ r)
    stop = tol**2 * rr
    for it in range(1, maxiter + 1):
        ap = n_beta * matvec(p.to(gradient.dtype)).double() + localization * p
        curv = float(p @ ap)
        if curv <= 0:
            return {"gradient_term": float("nan"), "improper": 1, "iterations": it}
        alpha = rr / curv
        x += alpha * p
        r -= alpha * ap
        new = float(r @ r)
        if new <= stop:
            break
        p = r + (new / rr) * p
        rr = new
    else:
        log.warning("CG did not reach residual %g |g| in %d steps", tol, maxiter)
    term = -(n_beta**2) * (float(g @ x) + localization * float(x @ x)) / 2
    return {"gradient_term": term, "improper": 0, "iterations": it}
