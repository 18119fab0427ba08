from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kmq.errors import KmqError
from kmq.reweight import cluster_means, to_positive, uniform, update


def test_eq5_cluster_means_ignore_nan_and_mark_absent() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2])
    scores = np.array([1.0, 3.0, np.nan, 2.0, 4.0, 6.0])
    means, present = cluster_means(labels, scores, 4)
    assert present.tolist() == [True, False, True, False]
    assert means[0] == 2.0 and means[2] == 4.0
    assert np.isnan(means[1]) and np.isnan(means[3])


def test_eq6_by_hand() -> None:
    w = np.array([0.5, 0.3, 0.2])
    s = np.array([2.0, 1.0, 1.0])
    # w_j * s_j / Σ s = [1.0, 0.3, 0.2] / 4, renormalised: [1.0, 0.3, 0.2] / 1.5
    out = update(w, s, np.ones(3, dtype=bool), floor=0.0)
    assert np.allclose(out, [1.0 / 1.5, 0.3 / 1.5, 0.2 / 1.5])


def test_softmax_rule_by_hand_replaces_old_weights() -> None:
    s = np.array([0.0, np.log(3.0)])
    out = update([0.9, 0.1], s, np.ones(2, dtype=bool), rule="softmax", floor=0.0)
    assert np.allclose(out, [0.25, 0.75])  # softmax of [0, ln 3], old weights ignored
    hot = update([0.5, 0.5], s, np.ones(2, dtype=bool), rule="softmax", temperature=0.5, floor=0)
    assert np.allclose(hot, [0.1, 0.9])  # softmax of [0, 2 ln 3] = [1, 9] / 10


def test_negative_means_shift_and_exp() -> None:
    s = np.array([-1.0, 0.0, 3.0])
    shifted = to_positive(s, epsilon=0.05)
    # minus the min, plus 5% of the spread (4): [0.2, 1.2, 4.2], in units of the spread
    assert np.allclose(shifted, np.array([0.2, 1.2, 4.2]) / 4)
    assert np.all(to_positive(np.array([1.0, 2.0])) == [1.0, 2.0])  # positive: plain Eq. 6
    assert np.allclose(to_positive(s, positive="exp"), np.exp(s - 3.0))
    out = update(uniform(3), s, np.ones(3, dtype=bool), floor=0.0)
    assert np.allclose(out, shifted / shifted.sum())


def test_shift_is_continuous_where_the_smallest_mean_crosses_zero() -> None:
    """The audit's case: a mean of -1e-9 gave its cluster 0.0275, one of +1e-9 gave 0.0000."""
    ahead = update(uniform(3), np.array([1e-9, 0.02, 0.03]), np.ones(3, dtype=bool), floor=0.0)
    behind = update(uniform(3), np.array([-1e-9, 0.02, 0.03]), np.ones(3, dtype=bool), floor=0.0)
    assert np.allclose(ahead, behind, atol=1e-6)
    assert behind[0] <= ahead[0]
    # the smallest mean sits at epsilon x spread: 0.0015 against 0.0215 and 0.0315
    assert np.allclose(ahead, np.array([0.0015, 0.0215, 0.0315]) / 0.0545, atol=1e-6)
    # once the smallest mean is at least epsilon x spread, Eq. 6 runs on the raw means
    assert np.allclose(to_positive(np.array([0.1, 1.0]), epsilon=0.05), np.array([0.1, 1.0]) / 0.9)


def test_absent_clusters_keep_a_defined_weight() -> None:
    w = np.array([0.25, 0.25, 0.5])
    means = np.array([1.0, np.nan, 3.0])
    out = update(w, means, np.array([True, False, True]), floor=0.0)
    # the absent cluster takes the mean of the present ones (2.0)
    expected = w * np.array([1.0, 2.0, 3.0])
    assert np.allclose(out, expected / expected.sum())
    nothing = update(w, np.full(3, np.nan), np.zeros(3, dtype=bool))
    assert np.allclose(nothing, w)


def test_floor_keeps_every_cluster_alive() -> None:
    out = update(uniform(4), np.array([0.0, 0.0, 0.0, 5.0]), np.ones(4, dtype=bool), floor=0.01)
    assert out.min() >= 0.01 / 4
    assert out.sum() == pytest.approx(1.0)


finite = st.floats(-50, 50, allow_nan=False)


@given(
    st.data(),
    st.integers(1, 20),
    st.sampled_from(["paper", "softmax"]),
    st.sampled_from(["shift", "exp"]),
)
def test_weights_are_a_distribution(data: st.DataObject, k: int, rule: str, positive: str) -> None:
    raw = data.draw(st.lists(st.floats(0.01, 1.0), min_size=k, max_size=k))
    w = np.array(raw) / sum(raw)
    means = np.array(data.draw(st.lists(finite, min_size=k, max_size=k)))
    present = np.array(data.draw(st.lists(st.booleans(), min_size=k, max_size=k)))
    out = update(w, np.where(present, means, np.nan), present, rule=rule, positive=positive)
    assert out.sum() == pytest.approx(1.0)
    assert np.all(out > 0) and np.all(np.isfinite(out))


def test_errors_name_values() -> None:
    with pytest.raises(KmqError, match="rule must be one of paper, softmax"):
        update(uniform(2), np.ones(2), np.ones(2, dtype=bool), rule="eq7")
    with pytest.raises(KmqError, match="floor must be in"):
        update(uniform(2), np.ones(2), np.ones(2, dtype=bool), floor=1.0)


def draw_state(data: st.DataObject, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    raw = data.draw(st.lists(st.floats(0.01, 1.0), min_size=k, max_size=k))
    means = np.array(
        data.draw(st.lists(st.floats(-1, 1, allow_subnormal=False), min_size=k, max_size=k))
    )
    present = np.array(data.draw(st.lists(st.booleans(), min_size=k, max_size=k)))
    j = data.draw(st.integers(0, k - 1))
    present[j] = True
    return np.array(raw) / sum(raw), means, present, j


@given(
    st.data(),
    st.integers(2, 8),
    st.floats(1e-6, 2.0),
    st.sampled_from([("paper", "shift"), ("paper", "exp"), ("softmax", "shift")]),
)
def test_a_cluster_weight_never_falls_when_its_mean_rises(
    data: st.DataObject, k: int, rise: float, rule_map: tuple[str, str]
) -> None:
    w, means, present, j = draw_state(data, k)
    rule, positive = rule_map
    higher = means.copy()
    higher[j] += rise
    before = update(w, np.where(present, means, np.nan), present, rule=rule, positive=positive)
    after = update(w, np.where(present, higher, np.nan), present, rule=rule, positive=positive)
    assert after[j] >= before[j] - 1e-12


@given(st.data(), st.integers(2, 8))
def test_shift_weights_are_continuous_at_zero(data: st.DataObject, k: int) -> None:
    w, means, present, j = draw_state(data, k)
    others = np.delete(np.where(present, means, 0.0), j)
    # all means equal is the one point where a map invariant to the scores' scale must jump
    assume(np.abs(others).max() > 0.01)
    up, down = means.copy(), means.copy()
    up[j], down[j] = 1e-12, -1e-12
    a = update(w, np.where(present, up, np.nan), present)
    b = update(w, np.where(present, down, np.nan), present)
    assert np.abs(a - b).max() < 1e-6
