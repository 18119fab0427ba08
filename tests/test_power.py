"""The downstream benchmark's power estimate against published reference values (G*Power)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "quality"))

import power


@pytest.mark.parametrize(
    ("effect", "n", "expected"),
    [(1.0, 10, 0.8031), (0.5, 34, 0.8078), (0.5, 10, 0.2932)],  # paired t, two-sided, α = 0.05
)
def test_power_matches_gpower(effect: float, n: int, expected: float) -> None:
    assert power.power(effect, 1.0, n, alpha=0.05) == pytest.approx(expected, abs=5e-4)


def test_seeds_needed_is_the_first_n_with_enough_power() -> None:
    n = power.seeds_needed(0.02, 0.02, 0.05, 0.8)
    assert (
        power.power(0.02, 0.02, n, alpha=0.05) >= 0.8 > power.power(0.02, 0.02, n - 1, alpha=0.05)
    )
    assert n == 10  # d_z = 1 needs 10 pairs for 80 % (G*Power)
    assert power.seeds_needed(0.02, 0.02, 0.005, 0.8) > n  # Holm's smallest level needs more


def test_far_tail_is_finite() -> None:
    # far in the tail, where scipy's noncentral t cdf is NaN: a 200,000-draw simulation of
    # the paired t-test gives 0.9874 (a normal approximation would give 0.998)
    assert power.power(0.02, 0.0096, 10, alpha=0.005) == pytest.approx(0.9874, abs=0.002)
