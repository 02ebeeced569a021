"""Statistics over seeds: the one place intervals are formed.

Seeds are the independent replicates of a run; checkpoints of one seed are not
(they are autocorrelated). Every interval here is therefore over per-seed
values: reduce each seed to one number first (its value at a step, or its mean
over a window of steps), then form the interval over seeds. Two intervals:

* :func:`t_interval`: Student t on the per-seed values (mean +- t_{n-1} s / sqrt(n));
* :func:`bootstrap_interval`: percentile bootstrap over seeds of any statistic.

:func:`over_seeds` turns per-seed metric rows into summary rows
(``<metric>/seed_mean``, ``/seed_lo``, ``/seed_hi``, ``/seed_n``) that reports draw.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

SUMMARY_STATS = ("seed_mean", "seed_lo", "seed_hi", "seed_n")


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, lo, hi, n) of the finite values, a Student-t interval; NaN bounds for n < 2."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return (math.nan, math.nan, math.nan, 0)
    mean = float(v.mean())
    if n < 2:
        return (mean, math.nan, math.nan, 1)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return (mean, mean - half, mean + half, n)


def bootstrap_interval(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float, int]:
    """(statistic, lo, hi, n): percentile bootstrap over the finite per-seed values."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return (math.nan, math.nan, math.nan, 0)
    point = float(statistic(v))
    if n < 2:
        return (point, math.nan, math.nan, 1)
    rng = np.random.default_rng(seed)
    boots = np.array([statistic(v[rng.integers(0, n, n)]) for _ in range(n_boot)])
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return (point, float(lo), float(hi), n)


def critical_batch(batch_sizes: Sequence[float], steps: Sequence[float]) -> dict[str, float]:
    """McCandlish et al. 2018's S(B) = S_min (1 + B_crit / B), the steps to a target against the
    batch size, fitted by least squares of S on 1 / B (S is linear in 1 / B: intercept S_min,
    slope S_min B_crit): ``S_min`` and ``B_crit`` (NaN with fewer than two batch sizes or a
    non-positive intercept). The law assumes a learning rate tuned per batch size; at one fixed
    learning rate B_crit is that rate's, not the optimum's."""
    b, t = np.asarray(batch_sizes, float), np.asarray(steps, float)
    ok = np.isfinite(b) & np.isfinite(t) & (b > 0)
    if len(np.unique(b[ok])) < 2:
        return {"S_min": math.nan, "B_crit": math.nan}
    design = np.c_[np.ones(ok.sum()), 1.0 / b[ok]]
    (a, slope), *_ = np.linalg.lstsq(design, t[ok], rcond=None)
    return {"S_min": float(a), "B_crit": float(slope / a) if a > 0 else math.nan}


def critical_batch_over_seeds(
    steps: pd.DataFrame, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """B_crit of the seeds' mean S(B) (``steps``: one row per seed, one column per batch size),
    with a percentile bootstrap interval that resamples seeds whole (a seed's arms stay together);
    ``distinct`` is the number of distinct resamples n seeds allow, C(2n - 1, n) (35 for 4 seeds):
    below a few hundred the interval is coarse."""
    table = steps.dropna()
    sizes = np.asarray(table.columns, float)
    values = table.to_numpy(float)
    n = len(values)
    point = critical_batch(sizes, values.mean(0))["B_crit"] if n else math.nan
    out = {"B_crit": point, "lo": math.nan, "hi": math.nan, "n": float(n)}
    out["distinct"] = float(math.comb(2 * n - 1, n)) if n else 0.0
    if n < 2:
        return out
    rng = np.random.default_rng(seed)
    boots = [
        critical_batch(sizes, values[rng.integers(0, n, n)].mean(0))["B_crit"]
        for _ in range(n_boot)
    ]
    lo, hi = np.nanquantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return {**out, "lo": float(lo), "hi": float(hi)}


def sign_count(values: Sequence[float]) -> tuple[int, int]:
    """(number of positive values, number of finite values): "k of n seeds"."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return int((v > 0).sum()), len(v)


def over_seeds(
    rows: pd.DataFrame, by: Sequence[str] = ("step", "metric", "component"), level: float = 0.95
) -> pd.DataFrame:
    """Summary rows over seeds: for every group of ``by``, a t-interval over the per-seed values.

    Args:
        rows: metric rows with one value per seed in each group (average replicates within a
            seed first).
        by: the grouping columns (``step``, ``metric``, ``component`` and any extra column).

    Returns:
        Rows with ``seed = -1`` and metric ``<metric>/seed_mean``, ``/seed_lo``, ``/seed_hi``, ``/seed_n``.
    """
    by = list(by)
    rows = rows[rows.seed >= 0]
    if rows.empty:
        return pd.DataFrame(columns=by + ["seed", "value"])
    per_seed = rows.groupby(by + ["seed"], dropna=False)["value"].mean().reset_index()
    out = []
    for key, group in per_seed.groupby(by, dropna=False):
        base = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for stat, value in zip(SUMMARY_STATS, t_interval(group["value"].to_numpy(), level)):
            out.append(
                {**base, "seed": -1, "metric": f"{base['metric']}/{stat}", "value": float(value)}
            )
    return pd.DataFrame(out)


def sign_test(k: int, n: int) -> float:
    """One-sided sign-test p-value of k positive seeds out of n: P(X >= k), X ~ Binomial(n, 1/2)
    (5 of 5 gives 1/32 = 0.031; 4 of 5 gives 6/32 = 0.19)."""
    if n == 0:
        return math.nan
    return float(stats.binomtest(k, n, 0.5, alternative="greater").pvalue)


def sampled_sum(values: np.ndarray, n_steps: float, every: int) -> tuple[float, float]:
    """Sum over ``n_steps`` sampling intervals of ``every`` steps, estimated from one sampled step
    per interval: every x sum, and its standard error with the finite-population correction
    (0 when every step was measured)."""
    n = len(values)
    total = float(every * values.sum() * (n_steps / n))
    if every == 1 or n < 2:
        return total, 0.0 if every == 1 else math.nan
    population = n_steps * every
    fpc = max(0.0, 1 - n / population)
    return total, float(population * values.std(ddof=1) / math.sqrt(n) * math.sqrt(fpc))


def sums_over_seeds(sums: pd.DataFrame, p_values: bool = False) -> pd.DataFrame:
    """For every per-seed value (one row per seed and (metric, component)): the t-interval over
    seeds, the number of seeds where it is positive and, with ``p_values``, the one-sided
    sign-test p-values for "positive" (``p_positive``) and "negative" (``p_negative``)."""
    out = []
    for (metric, component), g in sums.groupby(["metric", "component"]):
        values = g.value.to_numpy()
        mean, lo, hi, n = t_interval(values)
        k, finite = sign_count(values)
        stats_ = [("seed_mean", mean), ("seed_lo", lo), ("seed_hi", hi), ("seed_n", n)]
        stats_.append(("seeds_positive", k))
        if p_values:
            below = int((values[np.isfinite(values)] < 0).sum())
            stats_ += [
                ("p_positive", sign_test(k, finite)),
                ("p_negative", sign_test(below, finite)),
            ]
        out += [
            {"step": -1, "metric": f"{metric}/{stat}", "component": component, "value": float(v)}
            for stat, v in stats_
        ]
    return pd.DataFrame(out)


def km_median(times: Sequence[float], censored: Sequence[bool]) -> tuple[float, bool]:
    """Kaplan-Meier median of right-censored times (``censored``: the event was not seen by that
    time, so the true time is larger): the smallest time where the survival estimate falls to 0.5
    or below (``scipy.stats.ecdf``). When it never does, the largest time observed and True: the
    median is above that bound."""
    t = np.asarray(times, float)
    c = np.asarray(censored, bool)
    if len(t) == 0:
        return math.nan, False
    if c.all():
        return float(t.max()), True
    sf = stats.ecdf(stats.CensoredData(uncensored=t[~c], right=t[c])).sf
    below = np.flatnonzero(sf.probabilities <= 0.5)
    if len(below) == 0:
        return float(t.max()), True
    return float(sf.quantiles[below[0]]), False


def logrank_p(
    times_a: Sequence[float],
    censored_a: Sequence[bool],
    times_b: Sequence[float],
    censored_b: Sequence[bool],
) -> float:
    """Two-sided log-rank p-value of two samples of right-censored times (``scipy.stats.logrank``);
    NaN when a sample is empty or no event was seen in either."""
    ta, ca = np.asarray(times_a, float), np.asarray(censored_a, bool)
    tb, cb = np.asarray(times_b, float), np.asarray(censored_b, bool)
    if len(ta) == 0 or len(tb) == 0 or (ca.all() and cb.all()):
        return math.nan
    x = stats.CensoredData(uncensored=ta[~ca], right=ta[ca])
    y = stats.CensoredData(uncensored=tb[~cb], right=tb[cb])
    return float(stats.logrank(x, y).pvalue)


def paired_order(
    a: Sequence[float], a_censored: Sequence[bool], b: Sequence[float], b_censored: Sequence[bool]
) -> tuple[int, int]:
    """Seeds where time a is later than time b, and seeds where the order is known, for paired
    right-censored times: a censored time is later than an observed one below its bound; two
    censored times, or a censored bound below the other's time, leave the order unknown."""
    later = known = 0
    for ta, ca, tb, cb in zip(a, a_censored, b, b_censored):
        if ca and cb:
            continue
        if ca:  # a > ta; known later when tb <= ta
            if tb <= ta:
                later, known = later + 1, known + 1
            continue
        if cb:
            if ta <= tb:
                known += 1
            continue
        if ta != tb:
            later, known = later + (ta > tb), known + 1
    return later, known


# --------------------------------------------------------------------------- exact tests at the
# design's resolution: every p-value comes with the smallest value its design can give


def sign_test_floor(n: int) -> float:
    """The smallest one-sided sign-test p-value n units can give: 0.5^n."""
    return 0.5**n if n else math.nan


def signed_rank_p(
    differences: Sequence[float], alternative: str = "greater"
) -> tuple[float, float]:
    """(p, floor) of the exact Wilcoxon signed-rank test of paired differences (per seed: arm minus
    its pair) against 0; zeros dropped. Without ties in |d|, ``scipy.stats.wilcoxon`` with
    ``method="exact"``; with ties (differences on a grid), the exact permutation distribution
    of the statistic over all 2^n sign flips with midranks (n <= 20; beyond, scipy's). The floor
    is 0.5^n one-sided, 2 x 0.5^n two-sided."""
    d = np.asarray(differences, float)
    d = d[np.isfinite(d) & (d != 0)]
    n = len(d)
    if n == 0:
        return math.nan, math.nan
    if len(np.unique(np.abs(d))) < n and n <= 20:
        ranks = stats.rankdata(np.abs(d))  # midranks
        observed = float(ranks[d > 0].sum())
        signs = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
        null = signs @ ranks
        tol = 1e-9
        if alternative == "greater":
            p = float(np.mean(null >= observed - tol))
        elif alternative == "less":
            p = float(np.mean(null <= observed + tol))
        else:
            centre = ranks.sum() / 2
            p = float(np.mean(np.abs(null - centre) >= abs(observed - centre) - tol))
    else:
        p = float(stats.wilcoxon(d, alternative=alternative, method="exact").pvalue)
    floor = sign_test_floor(n) * (2 if alternative == "two-sided" else 1)
    return p, min(1.0, floor)


def permutation_p(
    a: Sequence[float], b: Sequence[float], alternative: str = "greater"
) -> tuple[float, float]:
    """(p, floor) of the exact permutation test of mean(a) - mean(b) over every assignment of the
    pooled units to groups of the observed sizes (seed labels permuted: formed against
    never-formed). ``alternative``: "greater" (a larger), "less" or "two-sided" (|difference|).
    The floor is the smallest p these values can give: 1 / C(n_a + n_b, n_a) one-sided without
    ties, twice that two-sided when the groups are of equal size."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if len(x) == 0 or len(y) == 0:
        return math.nan, math.nan
    pooled = np.concatenate([x, y])
    n, k = len(pooled), len(x)
    observed = x.mean() - y.mean()
    total = pooled.sum()
    diffs = []
    for idx in itertools.combinations(range(n), k):
        s = pooled[list(idx)].sum()
        diffs.append(s / k - (total - s) / (n - k))
    diffs = np.asarray(diffs)
    tol = 1e-12 * max(1.0, abs(observed))
    if alternative == "greater":
        p = float(np.mean(diffs >= observed - tol))
        floor = float(np.mean(diffs >= diffs.max() - tol))
    elif alternative == "less":
        p = float(np.mean(diffs <= observed + tol))
        floor = float(np.mean(diffs <= diffs.min() + tol))
    else:
        p = float(np.mean(np.abs(diffs) >= abs(observed) - tol))
        floor = float(np.mean(np.abs(diffs) >= np.abs(diffs).max() - tol))
    return p, floor


def growth_law(steps: Sequence[float], values: Sequence[float]) -> dict[str, float]:
    """Which law a series grows by: least-squares fits (in the values' own scale, Gaussian errors)
    of ``exponential`` y = a exp(r t), ``linear`` y = a + b t and ``power`` y = a (t / t_0)^p
    (t_0 the first step), each with its AIC; ``best`` the law with the lowest AIC (index into
    ``LAWS``), ``delta_aic`` exponential's AIC minus the best other law's (negative: exponential
    preferred), ``rate`` r with its 95% interval ``rate_lo``, ``rate_hi`` (per step). What
    self-reinforcement predicts, dS/dt proportional to S, is the exponential law."""
    import warnings

    from scipy.optimize import OptimizeWarning, curve_fit

    t = np.asarray(steps, float)
    y = np.asarray(values, float)
    keep = np.isfinite(t) & np.isfinite(y)
    t, y = t[keep], y[keep]
    out = {"n": float(len(t))}
    if len(t) < 4:
        return {**out, "best": math.nan, "delta_aic": math.nan, "rate": math.nan}
    t0 = t[0]
    span = max(t[-1] - t0, 1.0)
    laws = {
        "exponential": (lambda x, a, r: a * np.exp(r * (x - t0)), [max(y[0], 1e-12), 1 / span]),
        "linear": (lambda x, a, b: a + b * (x - t0), [y[0], (y[-1] - y[0]) / span]),
        "power": (lambda x, a, p: a * (x / max(t0, 1.0)) ** p, [max(y[0], 1e-12), 1.0]),
    }
    aic = {}
    for name, (f, p0) in laws.items():
        try:
            with warnings.catch_warnings():  # an undetermined covariance gives a NaN interval
                warnings.simplefilter("ignore", OptimizeWarning)
                params, cov = curve_fit(f, t, y, p0=p0, maxfev=20000)
        except (RuntimeError, ValueError):
            aic[name] = math.inf
            continue
        rss = float(np.sum((y - f(t, *params)) ** 2))
        aic[name] = len(t) * math.log(max(rss, 1e-300) / len(t)) + 2 * 2
        out[f"aic_{name}"] = aic[name]
        if name == "exponential":
            se = float(np.sqrt(cov[1, 1])) if np.all(np.isfinite(cov)) else math.nan
            half = float(stats.t.ppf(0.975, len(t) - 2)) * se
            out.update(rate=float(params[1]), rate_lo=params[1] - half, rate_hi=params[1] + half)
    best = min(aic, key=aic.get)
    others = min(v for k, v in aic.items() if k != "exponential")
    out.update(best=float(LAWS.index(best)), delta_aic=aic["exponential"] - others)
    return out


LAWS = ("exponential", "linear", "power")


def seed_label_permutation_p(
    pair_values: dict[tuple[int, int], float],
    labels: dict[int, bool],
    alternative: str = "greater",
) -> tuple[float, float, float]:
    """(observed, p, floor) for a quantity built from seed *pairs* (a cross-seed alignment of seeds
    i and j), read against seed labels (formed or not), by permuting the labels over the seeds,
    never the pairs: pairs that share a seed are not independent. The statistic is the mean over
    pairs of two labelled seeds minus the mean over the other pairs; every assignment of the
    observed number of labelled seeds is enumerated. ``alternative``: "greater", "less" or
    "two-sided"."""
    seeds = sorted(labels)
    k = sum(bool(labels[s]) for s in seeds)
    pairs = [(i, j, v) for (i, j), v in pair_values.items() if np.isfinite(v)]

    def statistic(chosen: set[int]) -> float:
        inside = [v for i, j, v in pairs if i in chosen and j in chosen]
        other = [v for i, j, v in pairs if not (i in chosen and j in chosen)]
        if not inside or not other:
            return math.nan
        return float(np.mean(inside) - np.mean(other))

    observed = statistic({s for s in seeds if labels[s]})
    null = np.array([statistic(set(c)) for c in itertools.combinations(seeds, k)])
    null = null[np.isfinite(null)]
    if not np.isfinite(observed) or len(null) == 0:
        return observed, math.nan, math.nan
    tol = 1e-12 * max(1.0, abs(observed))
    if alternative == "greater":
        p, floor = np.mean(null >= observed - tol), np.mean(null >= null.max() - tol)
    elif alternative == "less":
        p, floor = np.mean(null <= observed + tol), np.mean(null <= null.min() + tol)
    else:
        p = np.mean(np.abs(null) >= abs(observed) - tol)
        floor = np.mean(np.abs(null) >= np.abs(null).max() - tol)
    return observed, float(p), float(floor)


def event_near_formation_p(
    events: dict[int, Sequence[float]], formation: dict[int, float], within: float
) -> tuple[int, float, float]:
    """(seeds with an event within ``within`` steps of their formation, p, floor): the null draws
    formation steps from the seeds' own, permuted across the seeds (every permutation), so a
    clustering of every seed's events at the same stage of training is not read as a link to
    its own formation. p = P(count >= observed) under the permutations.

    Exact at any seed count: the count's distribution over all n! permutations is summed by
    dynamic programming over the set of formation steps already assigned (2^n states), not by
    listing the permutations (16! of them at 16 seeds)."""
    seeds = sorted(set(events) & set(formation))
    if not seeds:
        return 0, 1.0, 1.0
    steps = [formation[s] for s in seeds]
    hit = np.array(
        [[any(abs(e - f) <= within for e in events[s]) for f in steps] for s in seeds], dtype=int
    )
    observed = int(np.trace(hit))
    counts = permutation_hit_counts(hit)
    total = counts.sum()
    top = int(np.nonzero(counts)[0].max())
    return observed, float(counts[observed:].sum() / total), float(counts[top] / total)


def permutation_hit_counts(hit: np.ndarray) -> np.ndarray:
    """For a 0/1 matrix ``hit`` [n, n]: how many permutations pi give sum_i hit[i, pi(i)] = k,
    for k = 0..n (the distribution behind :func:`event_near_formation_p`). Row i is assigned a
    column at the i-th stage; ``ways[mask, k]`` counts the assignments of the first popcount(mask)
    rows to the columns in ``mask`` with k hits."""
    n = hit.shape[0]
    ways = np.zeros((1 << n, n + 1), dtype=np.int64)
    ways[0, 0] = 1
    masks = np.arange(1 << n)
    size = np.array([bin(m).count("1") for m in masks])
    for i in range(n):
        stage = masks[size == i]
        for j in range(n):
            free = stage[(stage >> j) & 1 == 0]
            shift = int(hit[i, j])
            ways[free | (1 << j), shift:] += ways[free, : n + 1 - shift]
    return ways[-1]
