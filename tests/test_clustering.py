from __future__ import annotations

import numpy as np
import pytest

from kmq.clustering import choose_k, default_k_grid, kmeans, normalize, silhouette
from kmq.errors import KmqError
from tests.conftest import make_blobs


def test_kmeans_is_seeded_and_assigns_every_row() -> None:
    x, _ = make_blobs(500, 8)
    a, b = kmeans(x, 8, seed=3), kmeans(x, 8, seed=3)
    assert np.array_equal(a.labels_, b.labels_)
    assert a.labels_.shape == (500,) and a.sizes_.sum() == 500
    xn = normalize(x)
    d2 = ((xn[:, None, :] - a.centroids_[None]) ** 2).sum(-1)
    assert np.array_equal(a.labels_, d2.argmin(1))
    assert a.inertia_ == pytest.approx(d2.min(1).sum(), rel=1e-4)


def test_silhouette_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    labels = rng.integers(0, 4, size=40)
    labels[0] = 5  # a singleton cluster scores 0
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    expected = []
    for i in range(40):
        own = labels == labels[i]
        if own.sum() == 1:
            expected.append(0.0)
            continue
        a = d[i, own].sum() / (own.sum() - 1)
        b = min(d[i, labels == c].mean() for c in set(labels.tolist()) - {labels[i]})
        expected.append((b - a) / max(a, b))
    assert silhouette(x, labels, block=7) == pytest.approx(np.mean(expected), abs=1e-5)


def test_choose_k_finds_the_true_number_of_blobs() -> None:
    x, _ = make_blobs(800, 8, spread=0.05, dim=16)
    choice = choose_k(x, [2, 4, 8, 16, 32], seed=0)
    assert choice.k == 8
    assert set(choice.scores) == {2, 4, 8, 16, 32}


def test_default_grid_respects_budget_and_size() -> None:
    assert default_k_grid(100_000, 300) == [8, 16, 32, 64, 128, 256]
    assert max(default_k_grid(1000)) <= 250


def test_bad_k_is_named() -> None:
    with pytest.raises(KmqError, match="k must be between 1 and the number of rows"):
        kmeans(np.ones((5, 2), dtype=np.float32), 6)
