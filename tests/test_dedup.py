"""SemDeDup and the blocked greedy walk it shares with Deita."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmq.clustering import normalize
from kmq.dedup import semdedup, threshold_walk
from kmq.errors import KmqError
from tests.conftest import make_blobs

BASE, BASE_LABELS = make_blobs(200, 5, dim=16, seed=4, spread=0.6)


def planted() -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """BASE plus an exact copy of rows 0..9 and a near copy of rows 10..19 (same clusters).

    Returns the embeddings, the labels and {copy row: original row}.
    """
    rng = np.random.default_rng(0)
    near = BASE[10:20] + 1e-3 * rng.normal(size=(10, BASE.shape[1])).astype(np.float32)
    x = np.concatenate([BASE, BASE[:10], near])
    labels = np.concatenate([BASE_LABELS, BASE_LABELS[:20]])
    return x, labels, {200 + i: i for i in range(20)}


def test_planted_duplicates_are_removed_with_their_twins() -> None:
    x, labels, pairs = planted()
    result = semdedup(x, labels, 0.01)
    assert len(result.removed) == 20
    for row, twin, sim in zip(result.removed, result.twin, result.similarity, strict=True):
        partner = pairs.get(int(row), next((c for c, o in pairs.items() if o == row), None))
        assert twin == partner
        assert sim > 0.99
        assert result.keep[twin] and not result.keep[row]
    assert result.keep.sum() == len(x) - 20
    assert np.array_equal(result.removed, np.sort(result.removed))


@pytest.mark.parametrize("keep", ["farthest", "closest"])
def test_which_copy_is_kept(keep: str) -> None:
    x, labels, _ = planted()
    result = semdedup(x, labels, 0.01, keep=keep)
    xn = normalize(x)
    for row, twin in zip(result.removed, result.twin, strict=True):
        members = labels == labels[row]
        centre = normalize(xn[members].mean(axis=0, keepdims=True))[0]
        if np.array_equal(x[row], x[twin]):
            assert twin < row  # exact copies: tie on the centroid cosine, by row index
        elif keep == "farthest":
            assert xn[twin] @ centre <= xn[row] @ centre
        else:
            assert xn[twin] @ centre >= xn[row] @ centre


@settings(max_examples=25, deadline=None)
@given(eps=st.floats(0.01, 0.9), seed=st.integers(0, 1000))
def test_kept_rows_respect_the_bound(eps: float, seed: int) -> None:
    x, labels = make_blobs(150, 4, dim=6, seed=seed, spread=0.3)
    result = semdedup(x, labels, eps)
    xn = normalize(x).astype(np.float64)
    for j in np.unique(labels):
        kept = xn[result.keep & (labels == j)]
        sims = kept @ kept.T
        np.fill_diagonal(sims, -1.0)
        assert sims.max(initial=-1.0) <= 1 - eps + 1e-5
    twins_sim = np.einsum("ij,ij->i", xn[result.removed], xn[result.twin])
    assert np.all(twins_sim > 1 - eps - 1e-5)
    assert np.allclose(twins_sim, result.similarity, atol=1e-5)
    assert np.array_equal(labels[result.removed], labels[result.twin])
    assert result.keep[result.twin].all()


def naive_walk(x: np.ndarray, order: np.ndarray, bound: float) -> tuple[list[int], list[int]]:
    kept: list[int] = []
    twins: list[int] = []
    for pos, row in enumerate(order):
        sims = [float(x[order[k]] @ x[row]) for k in kept]
        if sims and max(sims) > bound:
            twins.append(kept[int(np.argmax(sims))])
        else:
            kept.append(pos)
    return kept, twins


@pytest.mark.parametrize(("block", "chunk"), [(7, 5), (1, 1), (512, 8192)])
def test_blocked_walk_matches_naive_walk(block: int, chunk: int) -> None:
    x = normalize(make_blobs(120, 3, dim=5, seed=9, spread=0.4)[0])
    order = np.random.default_rng(1).permutation(len(x))
    walk = threshold_walk(x, order, 0.8, block=block, chunk=chunk)
    kept, twins = naive_walk(x, order, 0.8)
    assert walk.kept.tolist() == kept
    assert walk.twin.tolist() == twins
    assert walk.examined == len(x)
    limited = threshold_walk(x, order, 0.8, block=block, chunk=chunk, limit=5)
    assert limited.kept.tolist() == kept[:5]
    assert limited.examined == kept[4] + 1


def test_write_jsonl(tmp_path: Path) -> None:
    x, labels, _ = planted()
    result = semdedup(x, labels, 0.01)
    path = tmp_path / "dedup" / "removed.jsonl"
    result.write_jsonl(path)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["row"] for r in records] == result.removed.tolist()
    assert [r["twin"] for r in records] == result.twin.tolist()
    assert set(records[0]) == {"row", "twin", "similarity"}
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_centroids_can_be_given() -> None:
    x, labels, _ = planted()
    centroids = np.stack([normalize(x[labels == j]).mean(axis=0) for j in range(5)])
    given_centres = semdedup(x, labels, 0.01, centroids=centroids)
    assert np.array_equal(given_centres.keep, semdedup(x, labels, 0.01).keep)


@pytest.mark.parametrize("eps", [0, 1, -0.5, 1.5, float("nan"), True])
def test_eps_must_be_in_open_unit_interval(eps: float) -> None:
    with pytest.raises(
        KmqError, match=r"eps must be a number in \(0, 1\), got " + re.escape(repr(eps))
    ):
        semdedup(BASE, BASE_LABELS, eps)


def test_bad_keep_and_labels() -> None:
    with pytest.raises(KmqError, match="farthest, closest; got 'random'"):
        semdedup(BASE, BASE_LABELS, 0.1, keep="random")
    with pytest.raises(KmqError, match=r"one entry per row \(200\)"):
        semdedup(BASE, BASE_LABELS[:10], 0.1)
    with pytest.raises(KmqError, match="got -1"):
        semdedup(BASE, np.full(200, -1), 0.1)
