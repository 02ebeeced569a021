"""Kaplan-Meier median, log-rank test and paired order for censored formation times."""

from __future__ import annotations

import math

import numpy as np
import pytest

from interp_ext.stats import km_median, logrank_p, paired_order


def test_km_median_without_censoring_is_the_lower_median():
    assert km_median([5, 1, 3, 2], [False] * 4) == (2.0, False)
    assert km_median([3, 1, 2], [False] * 3) == (2.0, False)


def test_km_median_by_hand_with_censoring():
    # times 1, 2+, 3, 4: S(1) = 3/4, at 3 two at risk: S(3) = 3/4 * 1/2 = 3/8 <= 0.5
    assert km_median([1, 2, 3, 4], [False, True, False, False]) == (3.0, False)


def test_km_median_above_every_time_is_a_bound():
    assert km_median([1, 5, 5, 5], [False, True, True, True]) == (5.0, True)
    assert km_median([7, 9], [True, True]) == (9.0, True)


def test_logrank_separates_clearly_different_samples_and_not_equal_ones():
    early, late = np.arange(1, 9), np.arange(20, 28)
    assert logrank_p(early, [False] * 8, late, [False] * 4 + [True] * 4) < 0.01
    assert logrank_p(early, [False] * 8, early, [False] * 8) == pytest.approx(1.0)
    assert math.isnan(logrank_p([5], [True], [6], [True]))


def test_paired_order_counts_censored_pairs_only_when_the_order_is_known():
    # a formed later; a censored beyond b; b censored beyond a; both censored; a censored below b
    a = [10, 30, 5, 30, 12]
    ac = [False, True, False, True, True]
    b = [8, 20, 40, 30, 20]
    bc = [False, False, True, True, False]
    assert paired_order(a, ac, b, bc) == (2, 3)
