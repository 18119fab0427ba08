from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmq.clustering import kmeans
from kmq.errors import KmqError
from kmq.selectors import CLUSTERED, SELECTORS, KMQSelector, SelectionResult, get_selector
from kmq.selectors.base import weighted_order
from tests.conftest import make_blobs

X, TRUTH = make_blobs(300, 9, seed=3)
LABELS = kmeans(X, 9, seed=0).labels_
QUALITY = np.random.default_rng(5).random(len(X))


@settings(max_examples=40, deadline=None)
@given(
    method=st.sampled_from(sorted(SELECTORS)),
    allocation=st.sampled_from(["balanced", "proportional"]),
    budget=st.integers(1, 250),
    seed=st.integers(0, 2**32),
    excluded=st.sets(st.integers(0, len(X) - 1), max_size=50),
)
def test_selection_properties(
    method: str, allocation: str, budget: int, seed: int, excluded: set[int]
) -> None:
    options = {"allocation": allocation} if method in CLUSTERED else {}
    selector = get_selector(method, **options)
    exclude = np.array(sorted(excluded), dtype=np.int64)

    def run() -> SelectionResult:
        return selector.select(
            X, budget, labels=LABELS, quality=QUALITY, exclude=exclude, seed=seed
        )

    result = run()
    picked = result.indices
    # exact budget; only deita may fall short (its distance threshold), and then it says so
    assert result.shortfall == 0 or (method == "deita" and result.notes)
    assert len(picked) == budget - result.shortfall
    assert len(set(picked.tolist())) == len(picked)  # no duplicates
    assert not set(picked.tolist()) & excluded  # excluded rows never picked
    assert len(result.reasons) == len(result.scores) == len(picked)
    if result.quotas is not None:  # quotas respected, per cluster
        assert np.array_equal(
            np.bincount(LABELS[picked], minlength=len(result.quotas)), result.quotas
        )
        available = np.bincount(np.delete(LABELS, exclude), minlength=len(result.quotas))
        assert np.all(result.quotas <= available)
    again = run()  # same seed ⇒ same selection
    assert np.array_equal(again.indices, picked)


def test_golden_selections() -> None:
    """A fixed seed pins the selection: a change here is a change users will see.

    Uses the blobs' true labels (numpy only) so the pin does not depend on faiss' k-means.
    """
    kmq = KMQSelector(allocation="balanced").select(X, 12, labels=TRUTH, quality=QUALITY, seed=7)
    # sizes 36 36 31 37 38 30 35 33 24: one each, the 3 left over to the 3 largest (38, 37, 36)
    assert kmq.quotas is not None
    assert kmq.quotas.tolist() == [2, 1, 1, 2, 2, 1, 1, 1, 1]
    assert kmq.indices.tolist() == [81, 240, 197, 1, 242, 243, 27, 286, 228, 22, 119, 253]
    prop = get_selector("km-random", allocation="proportional").select(X, 10, labels=TRUTH, seed=7)
    assert prop.quotas is not None
    assert prop.quotas.tolist() == [1, 1, 1, 1, 2, 1, 1, 1, 1]
    assert prop.indices.tolist() == [72, 220, 141, 147, 244, 152, 88, 234, 154, 238]


def test_pick_order_is_round_robin_across_clusters() -> None:
    result = get_selector("km-random").select(X, 27, labels=LABELS, seed=0)
    first_round = LABELS[result.indices[:9]]
    assert sorted(first_round.tolist()) == list(range(9))


def test_seeds_differ() -> None:
    a = get_selector("kmq").select(X, 50, labels=LABELS, quality=QUALITY, seed=1)
    b = get_selector("kmq").select(X, 50, labels=LABELS, quality=QUALITY, seed=2)
    assert not np.array_equal(np.sort(a.indices), np.sort(b.indices))


def test_kmq_prefers_quality() -> None:
    """Over many draws, a high-quality row is drawn far more often than a low-quality one."""
    labels = np.zeros(200, dtype=np.int64)
    quality = np.full(200, 0.01)
    quality[:20] = 1.0
    hits = sum(
        np.isin(
            np.arange(20),
            KMQSelector().select(X[:200], 20, labels=labels, quality=quality, seed=s).indices,
        ).sum()
        for s in range(30)
    )
    # 20 rows of weight 1 vs 180 of weight 0.01: nearly all draws come from the first 20
    assert hits / (30 * 20) > 0.8


def test_kmq_without_quality_says_it_is_km_random() -> None:
    result = KMQSelector().select(X, 10, labels=LABELS, seed=0)
    assert any("km-random" in note for note in result.notes)


def test_kmq_weighting_rules_on_signed_quality() -> None:
    signed = QUALITY - 0.5
    with pytest.raises(KmqError, match="softmax"):
        KMQSelector(weighting="linear").select(X, 10, labels=LABELS, quality=signed, seed=0)
    auto = KMQSelector().select(X, 10, labels=LABELS, quality=signed, seed=0)
    soft = KMQSelector(weighting="softmax").select(X, 10, labels=LABELS, quality=signed, seed=0)
    assert np.array_equal(auto.indices, soft.indices)  # auto decides once, for the whole pool
    assert auto.notes == [] and KMQSelector().resolve_weighting(signed) == "softmax"
    positive = KMQSelector().select(X, 10, labels=LABELS, quality=QUALITY, seed=0)
    linear = KMQSelector(weighting="linear").select(X, 10, labels=LABELS, quality=QUALITY, seed=0)
    assert np.array_equal(positive.indices, linear.indices)
    with pytest.raises(KmqError, match="NaN"):
        KMQSelector().select(X, 10, labels=LABELS, quality=np.full(len(X), np.nan), seed=0)


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(1e-3, 1e3), shift=st.floats(-1e3, 1e3), seed=st.integers(0, 2**32))
def test_kmq_standardized_is_scale_free(scale: float, shift: float, seed: int) -> None:
    select = KMQSelector(weighting="standardized").select
    base = select(X, 40, labels=LABELS, quality=QUALITY, seed=seed)
    moved = select(X, 40, labels=LABELS, quality=QUALITY * scale + shift, seed=seed)
    assert np.array_equal(base.indices, moved.indices)


def test_kmq_standardized_weights_by_hand() -> None:
    q = np.array([0.0, 1.0, 2.0, 3.0])
    selector = KMQSelector(weighting="standardized", temperature=2.0)
    selector.decide_weighting(q)
    assert selector.scale_ == pytest.approx(np.std(q))
    w = selector.draw_weights(q)
    # a row one σ better is e^(1/temperature) times as likely
    assert w[3] / w[2] == pytest.approx(np.exp(1.0 / (2.0 * np.std(q))))
    flat = KMQSelector(weighting="standardized")
    flat.decide_weighting(np.full(4, 7.0))
    assert np.array_equal(flat.draw_weights(np.full(4, 7.0)), np.ones(4))  # σ = 0: uniform


def test_raw_softmax_on_a_wide_score_is_an_argmax_and_standardized_is_not() -> None:
    wide = QUALITY * 3000.0  # a score spread over thousands of units (summed nats)
    picks = {
        rule: {
            tuple(
                KMQSelector(weighting=rule)
                .select(X, 9, labels=LABELS, quality=wide, seed=s)
                .indices
            )
            for s in range(8)
        }
        for rule in ("softmax", "standardized")
    }
    assert len(picks["softmax"]) == 1  # the top row of every cluster, whatever the seed
    assert len(picks["standardized"]) > 1


def test_km_closest_picks_the_most_central_rows() -> None:
    result = get_selector("km-closest", allocation="balanced").select(X, 9, labels=LABELS, seed=0)
    for row in result.indices:
        members = np.flatnonzero(LABELS[row] == LABELS)
        xm = X[members] / np.linalg.norm(X[members], axis=1, keepdims=True)
        centre = xm.mean(0)
        centre /= np.linalg.norm(centre)
        assert members[np.argmax(xm @ centre)] == row


def test_k_center_covers_every_blob() -> None:
    x, truth = make_blobs(400, 6, seed=1, spread=0.05)
    result = get_selector("k-center").select(x, 6, seed=0)
    assert sorted(truth[result.indices].tolist()) == list(range(6))


def test_k_center_scores_are_non_increasing() -> None:
    result = get_selector("k-center").select(X, 40, seed=0)
    d = result.scores[1:]
    assert np.all(np.diff(d) <= 1e-6)


def test_weighted_order_zero_weights_last() -> None:
    w = np.array([0.0, 1.0, 0.0, 2.0, 0.0])
    order = weighted_order(w, np.random.default_rng(0))
    assert set(order[:2].tolist()) == {1, 3}
    assert sorted(order.tolist()) == [0, 1, 2, 3, 4]


def test_errors_name_the_values() -> None:
    with pytest.raises(KmqError, match="budget=301 exceeds the 300 rows"):
        get_selector("random").select(X, 301, seed=0)
    with pytest.raises(KmqError, match="needs cluster labels"):
        get_selector("kmq").select(X, 3, seed=0)
    with pytest.raises(KmqError, match="method must be one of kmq, km-random"):
        get_selector("best")


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_select_refuses_an_unknown_keyword(name: str) -> None:
    selector = get_selector(name)
    with pytest.raises(TypeError, match="unexpected keyword argument 'lables'"):
        selector.select(X, 5, lables=LABELS, seed=0)  # type: ignore[call-arg]
