"""Exact tests at the design's resolution against scipy and enumeration, and the growth-law fit
on series whose law is known."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from interp_ext.stats import (
    LAWS,
    growth_law,
    permutation_p,
    sign_test,
    sign_test_floor,
    signed_rank_p,
)


def test_signed_rank_p_is_the_enumerated_exact_test():
    d = np.array([0.8, -0.3, 1.1, 0.4, 0.9, -0.1, 0.6])
    ranks = stats.rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    sums = [
        sum(r for r, s in zip(ranks, signs) if s)
        for signs in itertools.product([0, 1], repeat=len(d))
    ]
    want = np.mean(np.array(sums) >= observed)
    p, floor = signed_rank_p(d)
    assert p == pytest.approx(want, rel=1e-12)
    assert floor == 0.5**7
    assert signed_rank_p(np.ones(4))[0] == pytest.approx(1 / 16)  # 4 of 4 positive: the floor
    assert signed_rank_p(d, "two-sided")[1] == 2 * 0.5**7


def test_signed_rank_p_with_ties_enumerates_sign_flips_with_midranks():
    """Shifts on a 50-step grid tie in |d|: the p-value is the enumeration with midranks (scipy's
    exact table assumes no ties), here checked by brute force and by scipy's permutation test."""
    d = np.array([50.0, 100.0, 100.0, -50.0, 250.0, 50.0, 100.0, -300.0, 375.0])
    ranks = stats.rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    sums = [
        sum(r for r, s in zip(ranks, signs) if s)
        for signs in itertools.product([0, 1], repeat=len(d))
    ]
    for alternative, want in (
        ("greater", np.mean(np.array(sums) >= observed - 1e-9)),
        ("less", np.mean(np.array(sums) <= observed + 1e-9)),
    ):
        assert signed_rank_p(d, alternative)[0] == pytest.approx(want, rel=1e-12)
    scipy_perm = stats.permutation_test(
        (d,),
        lambda x: stats.rankdata(np.abs(d))[x > 0].sum(),
        permutation_type="samples",
        alternative="greater",
        n_resamples=np.inf,
    ).pvalue
    assert signed_rank_p(d)[0] == pytest.approx(scipy_perm, rel=1e-9)


def test_permutation_p_is_scipys_exact_permutation_test():
    a = [0.9, 1.3, 0.7, 1.6, 1.1]
    b = [0.4, 0.8, 0.2]
    want = stats.permutation_test(
        (a, b),
        lambda x, y: np.mean(x) - np.mean(y),
        permutation_type="independent",
        alternative="greater",
        n_resamples=np.inf,
    ).pvalue
    p, floor = permutation_p(a, b)
    assert p == pytest.approx(want, rel=1e-12)
    assert floor == pytest.approx(1 / 56)  # C(8, 5)
    assert permutation_p(a, b, "less")[0] == pytest.approx(
        stats.permutation_test(
            (a, b),
            lambda x, y: np.mean(x) - np.mean(y),
            permutation_type="independent",
            alternative="less",
            n_resamples=np.inf,
        ).pvalue
    )
    # a perfect separation reaches the floor and no lower
    assert permutation_p([5, 6, 7], [1, 2])[0] == pytest.approx(1 / 10)
    # two-sided with equal groups: the mirror assignment is as extreme, so the floor doubles
    assert permutation_p([5, 6, 7], [1, 2, 3], "two-sided") == pytest.approx((0.1, 0.1))


def test_sign_test_and_its_floor():
    assert sign_test(5, 5) == pytest.approx(sign_test_floor(5)) == pytest.approx(1 / 32)
    assert sign_test_floor(4) == 0.0625


@pytest.mark.parametrize("law", ["exponential", "linear"])
def test_growth_law_finds_the_law_a_series_grows_by(law):
    rng = np.random.default_rng(0)
    t = np.arange(250, 2500, 250, dtype=float)
    if law == "exponential":
        y = 0.02 * np.exp(0.0015 * (t - t[0]))
    else:
        y = 0.02 + 0.0004 * (t - t[0])
    y = y * (1 + 0.02 * rng.standard_normal(len(t)))
    fit = growth_law(t, y)
    assert LAWS[int(fit["best"])] == law
    if law == "exponential":
        assert fit["delta_aic"] < -2
        assert fit["rate_lo"] < 0.0015 < fit["rate_hi"]
    else:
        assert fit["delta_aic"] > 2
    assert np.isnan(growth_law(t[:3], y[:3])["best"])  # three points decide nothing


def test_seed_label_permutation_permutes_seeds_not_pairs():
    """Pairs that share a seed move together: with 5 seeds of which 2 labelled, the null is the
    C(5, 2) = 10 assignments of the labels to seeds, whatever the number of pairs (10 here)."""
    from interp_ext.stats import seed_label_permutation_p

    seeds = range(5)
    labels = {s: s < 2 for s in seeds}
    values = {(i, j): (1.0 if i < 2 and j < 2 else 0.0) for i in seeds for j in seeds if i < j}
    observed, p, floor = seed_label_permutation_p(values, labels)
    assert observed == pytest.approx(1.0)
    assert p == pytest.approx(1 / 10) and floor == pytest.approx(1 / 10)
    # a pair value that only one labelled seed carries is no evidence
    values = {(i, j): (1.0 if i == 0 else 0.0) for i in seeds for j in seeds if i < j}
    _, p, _ = seed_label_permutation_p(values, labels)
    assert p > 0.3


def test_event_near_formation_uses_the_seeds_own_formation_steps():
    """Every seed has a boundary at 2,500 and formations spread 2,375-2,625: near its own
    formation on every seed, but so it would be under any permutation of the formation steps, so
    p = 1; with events that follow each seed's own formation, p reaches the floor."""
    from interp_ext.stats import event_near_formation_p

    formation = {0: 2375, 1: 2625, 2: 2375, 3: 2625}
    same = {s: [2500] for s in formation}
    assert event_near_formation_p(same, formation, 150) == (4, 1.0, 1.0)
    own = {0: [2375], 1: [2625], 2: [2375], 3: [2625]}
    k, p, floor = event_near_formation_p(own, formation, 100)
    assert k == 4 and p == pytest.approx(4 / 24) and floor == pytest.approx(4 / 24)


def test_event_near_formation_equals_listing_every_permutation_and_runs_at_16_seeds():
    """The dynamic programme's distribution equals the one from listing the permutations on
    random cases (ties in the formation steps included); at 16 seeds, where listing them is out
    of reach, the counts still sum to 16!."""
    import itertools
    import math

    import numpy as np

    from interp_ext.stats import event_near_formation_p, permutation_hit_counts

    rng = np.random.default_rng(0)
    for n in (1, 3, 5, 7):
        formation = {s: float(rng.choice([1500, 1750, 2000, 2250])) for s in range(n)}
        events = {s: list(rng.choice(np.arange(1000, 3000, 250), 2)) for s in range(n)}
        steps = [formation[s] for s in range(n)]

        def count(assigned, events=events, n=n):
            return sum(
                any(abs(e - f) <= 100 for e in events[s]) for s, f in zip(range(n), assigned)
            )

        null = np.array([count(p) for p in itertools.permutations(steps)])
        observed = count(steps)
        k, p, floor = event_near_formation_p(events, formation, 100)
        assert k == observed
        assert p == pytest.approx(np.mean(null >= observed))
        assert floor == pytest.approx(np.mean(null >= null.max()))
    hit = (rng.random((16, 16)) < 0.3).astype(int)
    counts = permutation_hit_counts(hit)
    assert counts.sum() == math.factorial(16) and len(counts) == 17


def test_critical_batch_recovers_the_law_and_the_by_hand_fits():
    """S(B) = S_min (1 + B_crit / B) exactly recovered; the four seeds' batch arms of results 4.1
    give the B_crit first fitted by hand (71, 57, 30, 43)."""
    from interp_ext.stats import critical_batch

    sizes = [16, 32, 64, 128]
    exact = critical_batch(sizes, [100 * (1 + 50 / b) for b in sizes])
    assert exact["B_crit"] == pytest.approx(50) and exact["S_min"] == pytest.approx(100)
    table = {
        1: [725, 375, 275, 225],
        3: [675, 375, 275, 225],
        4: [475, 275, 225, 225],
        5: [725, 425, 325, 275],
    }
    got = [round(critical_batch(sizes, s)["B_crit"]) for s in table.values()]
    assert got == [71, 57, 30, 43]
    assert math.isnan(critical_batch([32, 32], [10, 12])["B_crit"])  # one batch size: no fit


def test_critical_batch_over_seeds_resamples_seeds_whole():
    import pandas as pd

    from interp_ext.stats import critical_batch, critical_batch_over_seeds

    sizes = [16, 32, 64, 128]
    same = pd.DataFrame([[100 * (1 + 40 / b) for b in sizes]] * 4, columns=sizes)
    fit = critical_batch_over_seeds(same)
    assert fit["B_crit"] == pytest.approx(40) and fit["lo"] == pytest.approx(40)
    assert fit["hi"] == pytest.approx(40) and fit["n"] == 4 and fit["distinct"] == 35
    table = pd.DataFrame(
        [[725, 375, 275, 225], [675, 375, 275, 225], [475, 275, 225, 225], [725, 425, 325, 275]],
        columns=sizes,
    )
    fit = critical_batch_over_seeds(table, n_boot=500)
    assert fit["B_crit"] == pytest.approx(critical_batch(sizes, table.mean().to_numpy())["B_crit"])
    per_seed = [critical_batch(sizes, row)["B_crit"] for row in table.to_numpy()]
    assert min(per_seed) - 1e-9 <= fit["lo"] <= fit["B_crit"] <= fit["hi"] <= max(per_seed) + 1e-9
