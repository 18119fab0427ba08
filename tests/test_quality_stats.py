"""The quality benchmark's statistics against values computed independently here."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path[:0] = [str(BENCH / "quality"), str(BENCH)]

from stats import (  # noqa: E402
    d_z_interval,
    detectable_difference,
    holm,
    judge,
    paired_test,
    power,
    t_critical,
)


def t_cdf(t: float, df: int) -> float:
    """Student t CDF for integer df from the closed-form series (Abramowitz & Stegun 26.7.3/4),
    with θ = atan(t/√df) and A = P(|T| ≤ |t|); only ``math`` is used."""
    theta = math.atan(abs(t) / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:
        series, term = 0.0, math.cos(theta)
        for k in range(1, (df - 1) // 2 + 1):  # cos θ · Σ (2·4···(2k−2))/(1·3···(2k−1)) cos^{2k−2}
            series += term
            term *= c2 * (2 * k) / (2 * k + 1)
        a = 2 / math.pi * (theta + math.sin(theta) * series) if df > 1 else 2 * theta / math.pi
    else:
        series, term = 0.0, 1.0
        for k in range(1, df // 2 + 1):  # Σ (1·3···(2k−3))/(2·4···(2k−2)) cos^{2k−2} θ
            series += term
            term *= c2 * (2 * k - 1) / (2 * k)
        a = math.sin(theta) * series
    return 0.5 + 0.5 * a if t >= 0 else 0.5 - 0.5 * a


def t_quantile_by_bisection(p: float, df: int) -> float:
    lo, hi = 0.0, 1000.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize("n", range(2, 31))
def test_exact_t_critical_values_for_every_n(n: int) -> None:
    df = n - 1
    assert t_critical(df, sides=2) == pytest.approx(t_quantile_by_bisection(0.975, df), abs=1e-9)
    assert t_critical(df, sides=1) == pytest.approx(t_quantile_by_bisection(0.95, df), abs=1e-9)


def test_t_critical_matches_printed_tables_and_is_not_the_normal_value() -> None:
    printed_two_sided = {1: 12.706, 2: 4.303, 4: 2.776, 7: 2.365, 9: 2.262, 29: 2.045}
    printed_one_sided = {1: 6.314, 2: 2.920, 7: 1.895, 8: 1.860, 9: 1.833, 29: 1.699}
    for df, value in printed_two_sided.items():
        assert t_critical(df) == pytest.approx(value, abs=5e-4)
    for df, value in printed_one_sided.items():
        assert t_critical(df, sides=1) == pytest.approx(value, abs=5e-4)
    assert t_critical(8, sides=1) > 1.645  # the old fallback beyond 7 df was too lenient
    with pytest.raises(ValueError, match="df must be an integer >= 1, got 0"):
        t_critical(0)
    with pytest.raises(ValueError, match="sides must be 1 or 2, got 3"):
        t_critical(5, sides=3)


def test_paired_test_by_hand() -> None:
    """d = [1, 2, 3]: mean 2, sd 1, se 1/√3, t = 2√3; df 2 has the closed form
    F(t) = 1/2 + t / (2√(2 + t²)), so p = 1 − 2√3/√14; t_.975,2 = 4.302653."""
    test = paired_test([1.0, 2.0, 3.0])
    assert test.n == 3 and test.mean == 2.0 and test.std == 1.0
    assert test.t == pytest.approx(2 * math.sqrt(3))
    assert test.p == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14), abs=1e-12)
    half = 4.302652729911275 / math.sqrt(3)
    assert test.ci == pytest.approx((2 - half, 2 + half), abs=1e-9)
    assert test.d_z == 2.0
    assert test.undefined is None


def noncentral_t_cdf(t: float, df: int, delta: float) -> float:
    """P(T ≤ t) for T = (Z + δ)/√(V/df), by integrating Φ(t√(v/df) − δ) over V ~ χ²_df."""
    from scipy import integrate
    from scipy.stats import chi2, norm

    value, _ = integrate.quad(
        lambda v: norm.cdf(t * math.sqrt(v / df) - delta) * chi2.pdf(v, df), 0, np.inf
    )
    return float(value)


@pytest.mark.parametrize(("t", "n"), [(2 * math.sqrt(3), 3), (1.2, 5), (-0.7, 10)])
def test_d_z_interval_inverts_the_noncentral_t(t: float, n: int) -> None:
    lo, hi = d_z_interval(t, n)
    assert lo < t / math.sqrt(n) < hi
    assert noncentral_t_cdf(t, n - 1, lo * math.sqrt(n)) == pytest.approx(0.975, abs=1e-6)
    assert noncentral_t_cdf(t, n - 1, hi * math.sqrt(n)) == pytest.approx(0.025, abs=1e-6)


def test_d_z_interval_does_not_depend_on_the_last_bits_of_t() -> None:
    """scipy 1.17's noncentral t CDF is nan at δ = −10 (the first probe) for t = 13.103358000001,
    df = 4, and not for t = 13.103358: the interval must be found for both, and be the same to
    rounding."""
    t = 13.103358000001
    lo, hi = d_z_interval(t, 5)
    assert (lo, hi) == pytest.approx(d_z_interval(13.103358, 5), rel=1e-9)
    assert noncentral_t_cdf(t, 4, lo * math.sqrt(5)) == pytest.approx(0.975, abs=1e-6)
    assert noncentral_t_cdf(t, 4, hi * math.sqrt(5)) == pytest.approx(0.025, abs=1e-6)


def test_holm_on_the_textbook_example() -> None:
    """Four hypotheses, p = 0.01, 0.04, 0.03, 0.005 at α = 0.05: sorted 0.005·4 = 0.02 and
    0.01·3 = 0.03 are rejected, 0.03·2 = 0.06 stops; H1 and H4 rejected, H2 and H3 not."""
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [p <= 0.05 for p in adjusted] == [True, False, False, True]
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_zero_spread_and_one_seed_are_never_holds() -> None:
    flat = paired_test([-0.1, -0.1, -0.1])
    assert flat.undefined == "zero spread" and flat.std == 0.0
    assert math.isnan(flat.p) and math.isnan(flat.d_z)
    single = paired_test([-0.5])
    assert single.undefined == "one seed"
    clear = paired_test([-0.30, -0.31, -0.29, -0.30, -0.32])
    verdicts = judge([flat, single, clear], [-1, -1, -1])
    assert [v.verdict for v in verdicts] == ["n/a (zero spread)", "n/a (one seed)", "holds"]
    assert math.isnan(verdicts[0].p_holm)
    assert verdicts[2].p_holm == pytest.approx(clear.p)  # the family has one testable claim


def test_judge_applies_holm_over_the_family_and_reads_direction() -> None:
    strong = paired_test([0.30, 0.31, 0.29, 0.30, 0.32])  # p ≈ 2e-7
    weak = paired_test([0.06, 0.01, 0.04, 0.01, 0.03])  # t = √10, p ≈ 0.034
    assert weak.p < 0.05  # significant alone...
    verdicts = judge([strong, weak, weak, strong], [1, 1, 1, -1])
    # ...but Holm multiplies the two weak p-values by 2 and 1 and keeps the running maximum
    assert verdicts[1].p_holm == pytest.approx(2 * weak.p)
    assert [v.verdict for v in verdicts] == ["holds", "within noise", "within noise", "reversed"]
    with pytest.raises(ValueError, match="claimed signs must be"):
        judge([strong], [0])


def test_a_partial_family_is_corrected_as_strictly_as_the_declared_one() -> None:
    """Two of a declared family of four have run: Holm counts the two missing as p = 1, so the
    smaller p is multiplied by 4 (not 2) and the larger by 3."""
    weak = paired_test([0.06, 0.01, 0.04, 0.01, 0.03])  # p ≈ 0.034
    strong = paired_test([0.30, 0.31, 0.29, 0.30, 0.32])
    alone = judge([weak, strong], [1, 1])
    declared = judge([weak, strong], [1, 1], family_size=4)
    assert alone[0].p_holm == pytest.approx(weak.p)  # 2·p(strong) < p(weak): running max
    assert declared[0].p_holm == pytest.approx(3 * weak.p)
    assert declared[1].p_holm == pytest.approx(4 * strong.p)
    assert [v.verdict for v in alone] == ["holds", "holds"]
    assert [v.verdict for v in declared] == ["within noise", "holds"]
    assert judge([weak], [1], family_size=1)[0].p_holm == pytest.approx(weak.p)
    with pytest.raises(ValueError, match="family_size 1 < the 2 tests"):
        judge([weak, strong], [1, 1], family_size=1)


def test_power_matches_a_simulation() -> None:
    assert power(0.0, 1.0, 10) == pytest.approx(0.05, abs=1e-9)  # no effect: the test's level
    rng = np.random.default_rng(0)
    d = rng.normal(0.5, 1.0, size=(20000, 6))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(6))
    simulated = float((np.abs(t) > t_critical(5)).mean())
    assert power(0.5, 1.0, 6) == pytest.approx(simulated, abs=0.015)


def test_detectable_difference_inverts_power_and_tends_to_the_normal_value() -> None:
    for n in (3, 5, 10):
        mde = detectable_difference(0.01, n, alpha=0.01)
        assert power(mde, 0.01, n, alpha=0.01) == pytest.approx(0.8, abs=1e-6)
    assert detectable_difference(1.0, 5) > detectable_difference(1.0, 10)  # more seeds, smaller
    # large n: (z_0.975 + z_0.8) · sd / √n = 2.8016 · sd / √n
    assert detectable_difference(1.0, 400) == pytest.approx(2.8016 / 20, rel=0.01)
    with pytest.raises(ValueError, match="n must be"):
        power(0.1, 1.0, 1)
