"""Exact tests at the design's resolution against scipy and enumeration, and the growth-law fit
on series whose law is known."""

from __future__ import annotations

import itertools

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
