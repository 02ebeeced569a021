"""Stream 2 (cross-seed alignment), the beta fit and transition detection (SPEC section 5).

* Cross-seed alignment of group P: mean over seed pairs of cos(gbar_s[P], gbar_s'[P]),
  gbar the mean gradient on the shared probe batches. The permutation-invariant
  variant first matches heads and MLP neurons of seed s' to seed s by Hungarian
  matching (``scipy.optimize.linear_sum_assignment``) on weight cosine similarity
  and permutes s' gradients accordingly: raw cosines of permutable units are ~0
  by symmetry alone.
* Beta fit: sim(t) = sim* (1 - exp(-gamma (t - t0))) by non-linear least squares
  (``scipy.optimize.curve_fit``), with bootstrap intervals over seeds.
* Transitions: a change point per metric series (the split minimising the
  two-segment squared error), then the window where several metrics agree.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from scipy.optimize import curve_fit, linear_sum_assignment
from transformer_lens import HookedTransformer

from circuits.circuit import Head
from interp_ext.geometry.gradients import group_names, per_batch_gradients, select_params, unflatten
from interp_ext.geometry.spectral import cosine, linear_cka, linear_cka_unbiased

log = logging.getLogger("interp_ext")


# --------------------------------------------------------------------------- unit matching


def _unit_features(model: HookedTransformer) -> dict[tuple[int, str], torch.Tensor]:
    """Per layer: a feature row per head (Q, K, V, O weights) and per MLP neuron (in and out)."""
    feats = {}
    for layer, block in enumerate(model.blocks):
        a = block.attn
        heads = torch.cat(
            [
                a.W_Q.flatten(1),
                a.W_K.flatten(1),
                a.W_V.flatten(1),
                a.W_O.transpose(1, 2).flatten(1),
            ],
            dim=1,
        )
        feats[(layer, "heads")] = heads.detach().float()
        if not model.cfg.attn_only:
            neurons = torch.cat([block.mlp.W_in.T, block.mlp.W_out], dim=1)
            feats[(layer, "neurons")] = neurons.detach().float()
    return feats


def match_units(
    reference: HookedTransformer, other: HookedTransformer
) -> dict[tuple[int, str], np.ndarray]:
    """Permutation of ``other``'s heads / neurons per layer best matching ``reference``.

    Returns:
        (layer, "heads" | "neurons") -> perm with ``other`` unit ``perm[i]``
        matched to ``reference`` unit ``i``.
    """
    ref, oth = _unit_features(reference), _unit_features(other)
    out = {}
    for key in ref:
        a = ref[key] / ref[key].norm(dim=1, keepdim=True).clamp_min(1e-12)
        b = oth[key] / oth[key].norm(dim=1, keepdim=True).clamp_min(1e-12)
        rows, cols = linear_sum_assignment(-(a @ b.T).numpy())
        perm = np.empty(len(rows), dtype=np.int64)
        perm[rows] = cols
        out[key] = perm
    return out


def permute_params(
    tensors: dict[str, torch.Tensor], perms: dict[tuple[int, str], np.ndarray]
) -> dict[str, torch.Tensor]:
    """Reorder heads / neurons of parameter-shaped tensors (weights or gradients)."""
    out = dict(tensors)
    for name, t in tensors.items():
        parts = name.split(".")
        if parts[0] != "blocks":
            continue
        layer, leaf = int(parts[1]), parts[-1]
        if leaf in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V") and (layer, "heads") in perms:
            out[name] = t[torch.as_tensor(perms[(layer, "heads")])]
        elif (layer, "neurons") in perms:
            idx = torch.as_tensor(perms[(layer, "neurons")])
            if leaf == "W_in":
                out[name] = t[:, idx]
            elif leaf in ("b_in", "W_out"):
                out[name] = t[idx]
    return out


# --------------------------------------------------------------------------- Stream 2


def cross_seed_alignment(
    models: Sequence[HookedTransformer],
    batches: torch.Tensor,
    params: str | Sequence[str] = "all",
    mean_grads: Sequence[torch.Tensor] | None = None,
) -> pd.DataFrame:
    """Raw and permutation-invariant cross-seed alignment per group and per layer.

    Args:
        models: one model per seed, same architecture.
        batches: shared probe batches [B, batch, pos].
        mean_grads: precomputed gbar per model (flattened over ``params``).

    Returns:
        DataFrame (metric, component, value) with metrics ``cross_seed_alignment``
        and ``cross_seed_alignment_perm``.
    """
    if len(models) < 2:
        raise ValueError(f"Stream 2 compares seeds and needs >= 2 of them; got {len(models)}")
    names = select_params(models[0], params)
    if mean_grads is None:
        mean_grads = [per_batch_gradients(m, batches, params).mean(0) for m in models]
    grads = [unflatten(g, models[0], names) for g in mean_grads]
    groups = group_names(names, per_layer=True)
    sums: dict[tuple[str, str], list[float]] = {}
    for i, j in itertools.combinations(range(len(models)), 2):
        perms = match_units(models[i], models[j])
        gj_perm = permute_params(grads[j], perms)
        for group, members in groups.items():
            gi = torch.cat([grads[i][n].flatten() for n in members])
            for metric, gj in (
                ("cross_seed_alignment", grads[j]),
                ("cross_seed_alignment_perm", gj_perm),
            ):
                sums.setdefault((metric, group), []).append(
                    cosine(gi, torch.cat([gj[n].flatten() for n in members]))
                )
    return pd.DataFrame(
        [{"metric": m, "component": g, "value": float(np.mean(v))} for (m, g), v in sums.items()]
    )


# --------------------------------------------------------------------------- basis-free Stream 2


@torch.no_grad()
def head_patterns(model: HookedTransformer, tokens: torch.Tensor) -> dict[int, torch.Tensor]:
    """Per layer, each head's attention pattern on the tokens, flattened: [head_index, batch * q * k]."""
    _, cache = model.run_with_cache(
        tokens.to(model.cfg.device),
        names_filter=lambda n: n.endswith("hook_pattern"),
        return_type=None,
    )
    return {
        layer: cache["pattern", layer].float().cpu().transpose(0, 1).reshape(model.cfg.n_heads, -1)
        for layer in range(model.cfg.n_layers)
    }


def match_heads(
    patterns_a: dict[int, torch.Tensor], patterns_b: dict[int, torch.Tensor]
) -> dict[int, np.ndarray]:
    """Per layer, the head of b matched to each head of a (Hungarian matching on pattern cosine similarity):
    perm[i] is b's head for a's head i. Attention patterns are functions of the input, not of a basis."""
    out = {}
    for layer, a in patterns_a.items():
        b = patterns_b[layer]
        sim = (a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ (
            b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
        ).T
        rows, cols = linear_sum_assignment(-sim.numpy())
        perm = np.empty(len(rows), dtype=np.int64)
        perm[rows] = cols
        out[layer] = perm
    return out


def cka_alignment(
    grams: Sequence[dict[str, torch.Tensor]],
    perms: dict[tuple[int, int], dict[int, np.ndarray]] | None = None,
    seeds: Sequence[int] | None = None,
    unbiased: bool = False,
) -> pd.DataFrame:
    """Basis-free cross-seed alignment: mean over seed pairs of the linear CKA of their per-batch
    gradient Gram matrices on the same probe batches (SPEC section 5), for every block.

    Args:
        grams: per seed, block -> B x B Gram (groups such as ``attn_qkv`` and ``blocks.1.mlp_in``,
            heads ``L1H2``), all on the same batches in the same order.
        perms: (i, j) -> per-layer head matching of seed j to seed i; heads are compared through it
            (``cka_head`` per head of the first seed, ``cka_heads`` per layer over all pairs).
        seeds: the seeds' names; when given, the seed-level rows are added: ``cka_pair`` and
            ``cka_heads_pair`` per pair (``seed`` the first of the pair, ``partner`` the second) and
            ``cka_seed`` / ``cka_heads_seed`` per seed, the mean over the pairs it is in.
        unbiased: CKA from the unbiased HSIC (:func:`linear_cka_unbiased`); every metric's name
            then ends in ``_unbiased`` (``cka_unbiased``, ``cka_unbiased_pair``, ...).

    Returns:
        DataFrame (metric, component, value[, seed, partner]).
    """
    pairs: dict[tuple[str, str, int, int], list[float]] = {}
    first: dict[str, list[float]] = {}
    cka, tag = (linear_cka_unbiased, "_unbiased") if unbiased else (linear_cka, "")
    for i, j in itertools.combinations(range(len(grams)), 2):
        for block, k in grams[i].items():
            if Head.is_head(block):
                if perms is None:
                    continue
                h = Head.parse(block)
                partner = str(Head(h.layer, int(perms[(i, j)][h.layer][h.head])))
                value = cka(k, grams[j][partner])
                pairs.setdefault((f"cka_heads{tag}", f"blocks.{h.layer}.heads", i, j), []).append(
                    value
                )
                if i == 0:
                    first.setdefault(block, []).append(value)
            else:
                pairs.setdefault((f"cka{tag}", block, i, j), []).append(cka(k, grams[j][block]))
    rows = [
        {"metric": f"cka_head{tag}", "component": c, "value": float(np.mean(v))}
        for c, v in first.items()
    ]
    return pd.concat([_over_pairs(pairs, seeds), pd.DataFrame(rows)], ignore_index=True)


def _over_pairs(
    pairs: dict[tuple[str, str, int, int], list[float]], seeds: Sequence[int] | None
) -> pd.DataFrame:
    """Rows of (metric, component) values per seed pair (i, j): the mean over pairs under the metric's
    name; with ``seeds``, also each pair's value (``<metric>_pair``) and each seed's mean over its
    pairs (``<metric>_seed``)."""
    per_pair = {key: float(np.mean(v)) for key, v in pairs.items()}
    groups: dict[tuple[str, str], list[float]] = {}
    for (metric, comp, _, _), value in per_pair.items():
        groups.setdefault((metric, comp), []).append(value)
    rows = [
        {"metric": m, "component": c, "value": float(np.mean(v))} for (m, c), v in groups.items()
    ]
    if seeds is not None:
        by_seed: dict[tuple[str, str, int], list[float]] = {}
        for (metric, comp, i, j), value in per_pair.items():
            rows.append(
                {
                    "metric": f"{metric}_pair",
                    "component": comp,
                    "value": value,
                    "seed": int(seeds[i]),
                    "partner": str(int(seeds[j])),
                }
            )
            for s in (i, j):
                by_seed.setdefault((metric, comp, s), []).append(value)
        rows += [
            {
                "metric": f"{m}_seed",
                "component": c,
                "value": float(np.mean(v)),
                "seed": int(seeds[s]),
            }
            for (m, c, s), v in by_seed.items()
        ]
    return pd.DataFrame(rows)


def shuffled_null(
    grams: Sequence[dict[str, torch.Tensor]],
    draws: int = 4,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    unbiased: bool = False,
) -> pd.DataFrame:
    """The same CKA with the batch order of the second seed of each pair shuffled: what it reads when
    the batches no longer correspond (``cka_null_shuffled``, groups only; with ``seeds``, also per pair
    and per seed, as :func:`cka_alignment`; ``unbiased``: ``cka_null_shuffled_unbiased``)."""
    gen = torch.Generator().manual_seed(seed)
    cka, tag = (linear_cka_unbiased, "_unbiased") if unbiased else (linear_cka, "")
    pairs: dict[tuple[str, str, int, int], list[float]] = {}
    for i, j in itertools.combinations(range(len(grams)), 2):
        for _ in range(draws):
            perm = torch.randperm(next(iter(grams[j].values())).shape[0], generator=gen)
            for block, k in grams[i].items():
                if not Head.is_head(block):
                    pairs.setdefault((f"cka_null_shuffled{tag}", block, i, j), []).append(
                        cka(k, grams[j][block][perm][:, perm])
                    )
    return _over_pairs(pairs, seeds)


# --------------------------------------------------------------------------- beta fit


def saturating(t: np.ndarray, sim_star: float, gamma: float, t0: float) -> np.ndarray:
    """sim(t) = sim* (1 - exp(-gamma (t - t0)))."""
    return sim_star * (1.0 - np.exp(-gamma * (np.asarray(t, float) - t0)))


def fit_saturating(t: np.ndarray, sim: np.ndarray) -> tuple[float, float, float]:
    """Least-squares (sim*, gamma, t0); NaNs if the fit fails."""
    t, sim = np.asarray(t, float), np.asarray(sim, float)
    ok = np.isfinite(t) & np.isfinite(sim)
    t, sim = t[ok], sim[ok]
    if len(t) < 4:
        return (math.nan, math.nan, math.nan)
    span = max(t.max() - t.min(), 1.0)
    p0 = (float(sim.max()), 3.0 / span, float(t.min() - 0.05 * span))
    try:
        popt, _ = curve_fit(
            saturating,
            t,
            sim,
            p0=p0,
            maxfev=20000,
            bounds=([-np.inf, 1e-12, -np.inf], [np.inf, np.inf, t.max()]),
        )
    except (RuntimeError, ValueError) as err:
        log.warning("beta fit failed: %s", err)
        return (math.nan, math.nan, math.nan)
    return tuple(float(x) for x in popt)


def beta_fit(
    curves: dict[int, tuple[np.ndarray, np.ndarray]],
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Fit the seed-mean curve; bootstrap over seeds for intervals.

    The interval is point +- t_{n-1} x (bootstrap standard error x sqrt(n / (n - 1))),
    n the number of seeds: with the handful of seeds a run has, percentile
    intervals of a non-linear fit cover the truth far less often than stated.

    Args:
        curves: seed -> (steps, similarity).

    Returns:
        ``sim_star``, ``gamma``, ``t0`` and their ``_lo`` / ``_hi`` bounds.
    """
    from scipy import stats

    seeds = sorted(curves)
    frame = pd.concat(
        [pd.DataFrame({"seed": s, "t": curves[s][0], "sim": curves[s][1]}) for s in seeds]
    )
    mean = frame.groupby("t")["sim"].mean()
    point = fit_saturating(mean.index.to_numpy(), mean.to_numpy())
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot if len(seeds) > 1 else 0):
        pick = rng.choice(seeds, size=len(seeds), replace=True)
        sample = pd.concat([frame[frame.seed == s] for s in pick]).groupby("t")["sim"].mean()
        boots.append(fit_saturating(sample.index.to_numpy(), sample.to_numpy()))
    out = dict(zip(("sim_star", "gamma", "t0"), point))
    boots_arr = np.array(boots) if boots else np.full((1, 3), np.nan)
    n = len(seeds)
    t_q = stats.t.ppf(0.5 + level / 2, n - 1) if n > 1 else math.nan
    for i, name in enumerate(("sim_star", "gamma", "t0")):
        col = boots_arr[:, i][np.isfinite(boots_arr[:, i])]
        se = float(col.std(ddof=1) * math.sqrt(n / (n - 1))) if len(col) > 1 and n > 1 else math.nan
        out[f"{name}_lo"], out[f"{name}_hi"] = point[i] - t_q * se, point[i] + t_q * se
    return out


# --------------------------------------------------------------------------- transitions


def change_point(steps: np.ndarray, values: np.ndarray, min_size: int = 2) -> tuple[float, float]:
    """Best single split of a series into two constant segments.

    Returns:
        (step at which the second segment starts, relative SSE reduction in [0, 1]).
    """
    steps, values = np.asarray(steps, float), np.asarray(values, float)
    ok = np.isfinite(values)
    steps, values = steps[ok], values[ok]
    n = len(values)
    if n < 2 * min_size:
        return (math.nan, 0.0)
    total = float(((values - values.mean()) ** 2).sum())
    best, best_i = math.inf, -1
    for i in range(min_size, n - min_size + 1):
        a, b = values[:i], values[i:]
        sse = float(((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum())
        if sse < best:
            best, best_i = sse, i
    gain = 1.0 - best / total if total > 0 else 0.0
    return (float(steps[best_i]), gain)


def detect_transition(
    series: dict[str, tuple[np.ndarray, np.ndarray]],
    min_gain: float = 0.25,
    window: float | None = None,
) -> dict:
    """Change point of each metric, then the window where most of them agree.

    Args:
        series: metric -> (steps, seed-mean values).
        min_gain: a metric votes only if its split explains this share of variance.
        window: agreement tolerance in steps (default: 2 checkpoint intervals).

    Returns:
        ``start``, ``end`` (steps), ``agreeing`` (metric names), ``points`` (metric -> step).
    """
    points = {}
    for metric, (steps, values) in series.items():
        step, gain = change_point(steps, values)
        if math.isfinite(step) and gain >= min_gain:
            points[metric] = step
    if not points:
        return {"start": math.nan, "end": math.nan, "agreeing": [], "points": {}}
    all_steps = np.unique(np.concatenate([np.asarray(s, float) for s, _ in series.values()]))
    interval = float(np.median(np.diff(all_steps))) if len(all_steps) > 1 else 1.0
    window = window or 2 * interval
    values = np.array(list(points.values()))
    # the step with the most change points within +-window
    counts = [(np.abs(values - v) <= window).sum() for v in values]
    centre = values[int(np.argmax(counts))]
    agreeing = [m for m, v in points.items() if abs(v - centre) <= window]
    agree_vals = np.array([points[m] for m in agreeing])
    return {
        "start": float(agree_vals.min() - interval),
        "end": float(agree_vals.max()),
        "agreeing": agreeing,
        "points": points,
    }
