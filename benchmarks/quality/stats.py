"""Seed-paired statistics for the quality benchmark: exact Student t, Holm, effect sizes.

A claim "method A beats method B on metric M" is judged on the per-seed differences
d_i = M(A, seed i) − M(B, seed i) (same selection and training seed on both sides):

- a two-sided one-sample t-test of mean(d) = 0 with n − 1 degrees of freedom, the critical
  values and p-values from the exact Student t distribution for every n (no normal
  approximation);
- Holm's step-down correction over the whole family of claims tested together (family-wise
  error ≤ ``alpha``): a claim **holds** when its Holm-adjusted p ≤ ``alpha`` and the mean
  difference lies on the claimed side, is **reversed** when it is significant on the other
  side, and is **within noise** otherwise;
- effect sizes with 95 % intervals: the mean difference (t interval) and Cohen's
  d_z = mean(d) / sd(d) (interval by inverting the noncentral t distribution of
  t = d_z·√n);
- with one seed, or with differences that are all equal (zero spread: no variance to test
  against), the test is not defined: the claim is **n/a** and left out of the Holm family.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05
LEVEL = 0.95
ZERO_SPREAD = 1e-12
"""Differences whose range is at most this share of their largest magnitude count as all equal
(float rounding of, e.g., 1.2 − 1.3 against 1.0 − 1.1 must not become a t of 10¹⁵)."""


def t_critical(df: int, *, level: float = LEVEL, sides: int = 2) -> float:
    """Student t critical value: P(T > c) = (1 − level) / sides for ``df`` degrees of freedom."""
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df must be an integer >= 1, got {df!r}")
    if sides not in (1, 2):
        raise ValueError(f"sides must be 1 or 2, got {sides!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    return float(stats.t.ppf(1.0 - (1.0 - level) / sides, df))


@dataclass(frozen=True)
class PairedTest:
    """The seed-paired comparison of one claim; ``undefined`` says why there is no test."""

    n: int
    mean: float  # mean of the differences first − second
    std: float  # their sample standard deviation (ddof = 1); nan with one seed
    t: float  # mean / (std / √n); nan when undefined
    p: float  # two-sided p-value; nan when undefined
    ci: tuple[float, float]  # 95 % t interval of the mean difference; nan when undefined
    d_z: float  # Cohen's d_z = mean / std; nan when undefined
    d_z_ci: tuple[float, float]  # 95 % interval of d_z; nan when undefined
    undefined: str | None  # "one seed" or "zero spread", else None


def paired_test(differences: Sequence[float] | np.ndarray, *, level: float = LEVEL) -> PairedTest:
    """Two-sided one-sample t-test of the per-seed ``differences`` against 0, with intervals."""
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 1 or len(d) == 0 or not np.isfinite(d).all():
        raise ValueError(f"differences must be a non-empty 1-d array of finite values, got {d!r}")
    n = len(d)
    mean = float(d.mean())
    nan_pair = (math.nan, math.nan)
    if n < 2:
        return PairedTest(
            n, mean, math.nan, math.nan, math.nan, nan_pair, math.nan, nan_pair, "one seed"
        )
    if np.ptp(d) <= ZERO_SPREAD * np.abs(d).max():
        return PairedTest(
            n, mean, 0.0, math.nan, math.nan, nan_pair, math.nan, nan_pair, "zero spread"
        )
    std = float(d.std(ddof=1))
    df = n - 1
    se = std / math.sqrt(n)
    t = mean / se
    p = float(2.0 * stats.t.sf(abs(t), df))
    half = t_critical(df, level=level) * se
    d_z = mean / std
    return PairedTest(
        n=n,
        mean=mean,
        std=std,
        t=t,
        p=p,
        ci=(mean - half, mean + half),
        d_z=d_z,
        d_z_ci=d_z_interval(t, n, level=level),
        undefined=None,
    )


def noncentral_t_cdf(t: float, df: int, delta: float) -> float:
    """P(T ≤ t) for T ~ noncentral t(df, δ): scipy's, or where scipy returns nan (it does at
    some δ far below t, where the CDF is ≈ 1, depending on the last bits of t) the defining
    integral ∫ Φ(t·√(v/df) − δ) χ²_df(v) dv."""
    value = float(stats.nct.cdf(t, df, delta))
    if math.isfinite(value):
        return value
    from scipy import integrate

    value, _ = integrate.quad(
        lambda v: stats.norm.cdf(t * math.sqrt(v / df) - delta) * stats.chi2.pdf(v, df),
        0,
        np.inf,
    )
    return float(value)


def d_z_interval(t: float, n: int, *, level: float = LEVEL) -> tuple[float, float]:
    """Interval for d_z from t = d_z·√n: the noncentrality parameters δ with
    P(T_{n−1}(δ) ≤ t) = 1 − (1 − level)/2 and (1 − level)/2, divided by √n. Computed for |t|
    (the interval of −t is the mirror image); (nan, nan) where the noncentral t cannot be
    evaluated at all."""
    if t < 0:
        lo, hi = d_z_interval(-t, n, level=level)
        return -hi, -lo
    df = n - 1
    tail = (1.0 - level) / 2.0

    def solve(target: float) -> float:
        def gap(delta: float) -> float:
            return noncentral_t_cdf(t, df, delta) - target

        width = 10.0 + abs(t)
        lo, hi = t - width, t + width
        while gap(lo) < 0:  # the CDF falls as δ grows: widen until the root is inside
            lo -= width
        while gap(hi) > 0:
            hi += width
        return float(optimize.brentq(gap, lo, hi, xtol=1e-12, rtol=1e-12))

    root_n = math.sqrt(n)
    try:
        return solve(1.0 - tail) / root_n, solve(tail) / root_n
    except ValueError:  # brentq met a nan even from the integral
        return math.nan, math.nan


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: with p sorted ascending,
    adj_(i) = max_{j ≤ i} min(1, (m − j + 1)·p_(j)). Reject where adj ≤ alpha."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"p_values must be values in [0, 1], got {p_values!r}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted.tolist()


def power(difference: float, sd: float, n: int, *, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` with ``n`` seeds when the true
    mean difference is ``difference`` and the differences' sd is ``sd``: P(|T| > t_crit) under
    the noncentral t with n − 1 degrees of freedom and noncentrality difference·√n / sd."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if not sd > 0:
        raise ValueError(f"sd must be > 0, got {sd!r}")
    df = n - 1
    c = t_critical(df, level=1.0 - alpha)
    nc = abs(difference) * math.sqrt(n) / sd
    # P(T < −c) as P(T(−nc) > c): scipy's cdf there is NaN for some large nc
    return float(stats.nct.sf(c, df, nc) + stats.nct.sf(c, df, -nc))


def detectable_difference(sd: float, n: int, *, alpha: float = ALPHA, target: float = 0.8) -> float:
    """The smallest true mean difference the paired t-test detects with probability
    ``target`` at level ``alpha`` (two-sided) with ``n`` seeds and differences of sd ``sd``."""
    if not 0 < target < 1:
        raise ValueError(f"target power must be in (0, 1), got {target!r}")
    if power(0.0, sd, n, alpha=alpha) >= target:
        return 0.0
    hi = sd
    while power(hi, sd, n, alpha=alpha) < target:
        hi *= 2.0
    return float(optimize.brentq(lambda d: power(d, sd, n, alpha=alpha) - target, 0.0, hi))


@dataclass(frozen=True)
class Verdict:
    """A claim's test, its Holm-adjusted p over the family (nan if n/a) and the verdict."""

    test: PairedTest
    p_holm: float
    verdict: str


def judge(
    tests: Sequence[PairedTest],
    claimed_signs: Sequence[int],
    *,
    alpha: float = ALPHA,
    family_size: int | None = None,
) -> list[Verdict]:
    """Verdicts for a family of claims. ``claimed_signs[i]`` is +1 when the claim says the
    difference is positive (higher is better), −1 when negative (lower is better).

    ``family_size``: how many tests the family was declared with, when only some of them have
    run: Holm counts every missing test (and every n/a one) as p = 1, so a partial family is
    corrected as strictly as the whole one (never less)."""
    if len(tests) != len(claimed_signs):
        raise ValueError(f"{len(tests)} tests but {len(claimed_signs)} claimed signs")
    if any(sign not in (1, -1) for sign in claimed_signs):
        raise ValueError(f"claimed signs must be +1 or -1, got {list(claimed_signs)}")
    tested = [i for i, test in enumerate(tests) if test.undefined is None]
    missing = 0
    if family_size is not None:
        if family_size < len(tests):
            raise ValueError(f"family_size {family_size} < the {len(tests)} tests given")
        missing = family_size - len(tested)
    p_values = [tests[i].p for i in tested] + [1.0] * missing
    adjusted = dict(zip(tested, holm(p_values)[: len(tested)], strict=True))
    out = []
    for i, (test, sign) in enumerate(zip(tests, claimed_signs, strict=True)):
        if test.undefined is not None:
            out.append(Verdict(test, math.nan, f"n/a ({test.undefined})"))
            continue
        p_holm = adjusted[i]
        if p_holm > alpha:
            verdict = "within noise"
        else:
            verdict = "holds" if np.sign(test.mean) == sign else "reversed"
        out.append(Verdict(test, p_holm, verdict))
    return out
