"""How far to believe an ablation: the mean of a metric over seeds with its 95 % Student-t interval, and
whether a variant differs from the reference by more than the seeds' noise (two-sided t-test at 5 %:
paired over seeds when both ran the same seeds on the same eval set, Welch's otherwise).

Plain Python (no scipy at run time): Student's t distribution through the regularized incomplete beta
function, evaluated by its continued fraction (Numerical Recipes §6.4); tests check it against scipy.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

LEVEL = 0.95  # confidence of every interval; a difference is significant when its interval excludes 0


def _incomplete_beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz), converging fast for x < (a + 1) / (a + b + 2)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((qam + 2 * m) * (a + 2 * m)),
                          -(a + m) * (qab + m) * x / ((a + 2 * m) * (qap + 2 * m))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _incomplete_beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _incomplete_beta_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    return incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def t_critical(df: float, level: float = LEVEL) -> float:
    """The t with P(|T| >= t) = 1 - level (bisection on the two-sided p)."""
    alpha, low, high = 1.0 - level, 0.0, 1.0
    while t_two_sided_p(high, df) > alpha:
        high *= 2.0
    for _ in range(100):
        middle = (low + high) / 2.0
        low, high = (middle, high) if t_two_sided_p(middle, df) > alpha else (low, middle)
    return (low + high) / 2.0


@dataclass(frozen=True)
class Estimate:
    """A metric over seeds: mean and 95 % interval half-width (None from a single seed)."""
    mean: float
    half_width: float | None
    n: int


def estimate(values: Sequence[float]) -> Estimate:
    n = len(values)
    if n == 0:
        raise ValueError("estimate needs at least one value")
    mean = statistics.fmean(values)
    if n == 1:
        return Estimate(mean, None, 1)
    return Estimate(mean, t_critical(n - 1) * statistics.stdev(values) / math.sqrt(n), n)


@dataclass(frozen=True)
class Difference:
    """variant - reference: mean, 95 % interval half-width, two-sided p, and which test gave them."""
    mean: float
    half_width: float | None
    p: float | None
    test: str  # "paired t", "Welch t", or "none" (fewer than 2 seeds on a side)

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < 1.0 - LEVEL


def _t_test(mean: float, standard_error: float, df: float, test: str) -> Difference:
    if standard_error == 0.0:  # identical differences on every seed: no noise to compare with
        return Difference(mean, 0.0, 1.0 if mean == 0.0 else 0.0, test)
    return Difference(mean, t_critical(df) * standard_error, t_two_sided_p(mean / standard_error, df), test)


def difference(values: Sequence[float], reference: Sequence[float], paired: bool) -> Difference:
    """Compare ``values`` with ``reference`` (one number per seed each). ``paired``: entry i of both comes
    from the same seed (same initialization and data order) and the same eval set, so the test runs on
    the per-seed differences; otherwise Welch's unequal-variance test."""
    mean = statistics.fmean(values) - statistics.fmean(reference)
    if paired:
        if len(values) != len(reference):
            raise ValueError(f"a paired comparison needs one value per seed on both sides, got "
                             f"{len(values)} and {len(reference)}")
        if len(values) < 2:
            return Difference(mean, None, None, "none")
        diffs = [v - r for v, r in zip(values, reference)]
        return _t_test(mean, statistics.stdev(diffs) / math.sqrt(len(diffs)), len(diffs) - 1, "paired t")
    if min(len(values), len(reference)) < 2:
        return Difference(mean, None, None, "none")
    var_v, var_r = statistics.variance(values) / len(values), statistics.variance(reference) / len(reference)
    if var_v + var_r == 0.0:
        return _t_test(mean, 0.0, 1.0, "Welch t")
    df = (var_v + var_r) ** 2 / (var_v ** 2 / (len(values) - 1) + var_r ** 2 / (len(reference) - 1))
    return _t_test(mean, math.sqrt(var_v + var_r), df, "Welch t")
