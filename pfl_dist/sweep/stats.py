"""Confidence intervals over seeds: the mean ± a Student t interval, and paired comparisons.

The runs of a sweep point with several seeds (`seeds: [0, 1, 2, 3, 4]`) are n independent
draws of the whole experiment: each seed draws its own data, initial model and sampled clients
(pfl_dist/data, the tasks' `init_params`, pfl_dist/sampling.py). For a final metric x_1..x_n:

    mean  x̄ = (1/n) Σ x_s
    s     = sqrt(Σ (x_s - x̄)² / (n - 1))                  (sample standard deviation)
    95% interval  x̄ ± t_{0.975, n-1} · s / √n                (Student t, n - 1 degrees of freedom)

Two methods run on the same seeds see the same data, initial model and client samples, so they
are compared on the per-seed differences d_s = x_s(A) - x_s(B): the paired t interval
d̄ ± t_{0.975, n-1} · s_d / √n. When it excludes 0 the difference is called significant (at 5%);
pairing removes the seed-to-seed spread both methods share, which on these sweeps is most of it.

The t quantile is computed here (no scipy): the t distribution's CDF through the regularized
incomplete beta function (continued fraction, Numerical Recipes' `betacf` with Lentz's method),
inverted by bisection to 1e-12. With one seed there is no interval (None), and tables print the
plain value as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

LEVEL = 0.95  # every interval pfl_dist prints


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (Numerical Recipes §6.4, modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        even = m * (b - m) * x / ((qam + m2) * (a + m2))
        odd = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        for numerator in (even, odd):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta: no convergence at a={a}, b={b}, x={x}")


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"incomplete_beta needs a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast here; else use the symmetry
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, dof: int) -> float:
    """P(T <= t) for Student's t with `dof` degrees of freedom."""
    tail = 0.5 * incomplete_beta(dof / 2.0, 0.5, dof / (dof + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile of Student's t with `dof` >= 1 degrees of freedom (t_{0.975, 4} = 2.776...)."""
    if not (0.0 < p < 1.0) or type(dof) is not int or dof < 1:
        raise ValueError(f"t_quantile needs 0 < p < 1 and an integer dof >= 1, got p={p}, dof={dof}")
    if p < 0.5:
        return -t_quantile(1.0 - p, dof)
    low, high = 0.0, 1.0
    while t_cdf(high, dof) < p:  # bracket: the quantile grows without bound as p -> 1
        low, high = high, high * 2.0
    while high - low > 1e-12 * max(1.0, high):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if t_cdf(middle, dof) < p else (low, middle)
    return 0.5 * (low + high)


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds and its 95% t interval's half-width (None with one seed)."""

    mean: float
    half_width: float | None
    n: int

    @property
    def low(self) -> float:
        return self.mean - (self.half_width or 0.0)

    @property
    def high(self) -> float:
        return self.mean + (self.half_width or 0.0)

    def excludes_zero(self) -> bool:
        return self.half_width is not None and (self.low > 0.0 or self.high < 0.0)


def t_interval(values: Sequence[float], level: float = LEVEL) -> Estimate:
    """The mean of `values` (one per seed) ± t_{(1+level)/2, n-1} · s / √n; no interval for n = 1."""
    n = len(values)
    if n == 0:
        raise ValueError("t_interval needs at least one value")
    mean = math.fsum(values) / n
    if n == 1:
        return Estimate(mean, None, 1)
    s = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return Estimate(mean, t_quantile((1.0 + level) / 2.0, n - 1) * s / math.sqrt(n), n)


def paired_difference(a: dict[int, float], b: dict[int, float], level: float = LEVEL) -> Estimate | None:
    """The t interval of the per-seed differences a[s] - b[s] over the seeds both have; None
    when fewer than 2 seeds are shared (no interval can be computed)."""
    shared = sorted(set(a) & set(b))
    if len(shared) < 2:
        return None
    return t_interval([a[s] - b[s] for s in shared], level)
