"""The t quantile and the intervals over seeds (pfl_dist/sweep/stats.py), against published
t tables, closed forms and an independent numpy computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pfl_dist.sweep.stats import incomplete_beta, paired_difference, t_cdf, t_interval, t_quantile

# Two-sided 95% critical values t_{0.975, dof} as printed in standard tables (3 decimals).
PUBLISHED_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
                 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}


@pytest.mark.parametrize("dof", sorted(PUBLISHED_975))
def test_t_quantile_matches_the_published_table(dof: int) -> None:
    assert round(t_quantile(0.975, dof), 3) == PUBLISHED_975[dof]


def test_t_quantile_matches_closed_forms_and_other_levels() -> None:
    # dof 1 is the Cauchy distribution: tan(pi (p - 1/2)); dof 2: (2p - 1) sqrt(2 / (4p(1 - p)))
    for p in (0.6, 0.9, 0.975, 0.995):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) * math.sqrt(2 / (4 * p * (1 - p))), rel=1e-9)
    assert round(t_quantile(0.995, 4), 3) == 4.604 and round(t_quantile(0.95, 9), 3) == 1.833
    assert t_quantile(0.025, 4) == -t_quantile(0.975, 4)  # symmetric
    assert abs(t_quantile(0.5, 7)) < 1e-9
    assert round(t_quantile(0.975, 100_000), 3) == 1.960  # tends to the normal quantile


def test_t_cdf_and_incomplete_beta_are_consistent() -> None:
    assert incomplete_beta(2.0, 3.0, 0.0) == 0.0 and incomplete_beta(2.0, 3.0, 1.0) == 1.0
    # I_x(1, b) = 1 - (1 - x)^b and I_x(a, 1) = x^a
    assert incomplete_beta(1.0, 3.0, 0.3) == pytest.approx(1 - 0.7**3, rel=1e-12)
    assert incomplete_beta(2.5, 1.0, 0.4) == pytest.approx(0.4**2.5, rel=1e-12)
    for dof in (1, 4, 29):
        assert t_cdf(t_quantile(0.975, dof), dof) == pytest.approx(0.975, abs=1e-11)
        assert t_cdf(0.0, dof) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        t_quantile(0.975, 0)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_t_interval_is_the_hand_computed_one() -> None:
    values = [8.61, 13.69, 10.95, 7.37, 6.72]
    x = np.array(values)
    half = 2.776445105 * x.std(ddof=1) / np.sqrt(5)  # t_{0.975, 4} s / sqrt(n)
    estimate = t_interval(values)
    assert estimate.n == 5 and estimate.mean == pytest.approx(x.mean(), rel=1e-12)
    assert estimate.half_width == pytest.approx(half, rel=1e-9)
    assert (estimate.low, estimate.high) == pytest.approx((x.mean() - half, x.mean() + half), rel=1e-9)
    one = t_interval([3.5])
    assert one.half_width is None and one.mean == 3.5 and not one.excludes_zero()


def test_paired_difference_uses_the_shared_seeds_only() -> None:
    a = {0: 10.0, 1: 14.0, 2: 11.0, 3: 7.5, 9: 100.0}
    b = {0: 10.5, 1: 14.4, 2: 11.7, 3: 7.9}  # b is above a on every seed, by 0.4-0.7
    diff = paired_difference(a, b)
    d = np.array([-0.5, -0.4, -0.7, -0.4])
    assert diff is not None and diff.n == 4 and diff.mean == pytest.approx(d.mean())
    assert diff.half_width == pytest.approx(3.182446305 * d.std(ddof=1) / 2.0, rel=1e-9)
    assert diff.excludes_zero() and diff.high < 0
    # unpaired, the seeds' spread (7.5 .. 14.4) hides the same difference
    assert t_interval(list(b.values())).low < t_interval([a[s] for s in b]).high
    assert paired_difference({0: 1.0, 1: 2.0}, {0: 1.5, 2: 0.0}) is None  # one shared seed: no interval
    assert not paired_difference({0: 1.0, 1: 2.0}, {0: 1.5, 1: 1.0}).excludes_zero()  # type: ignore[union-attr]
