"""Cluster weights from feedback: pure functions (the paper's Eq. 6 and the official softmax).

Each round the loop has, per cluster j, the mean feedback score s_j of the rows it trained on
(Eq. 5; higher = the model still has more to learn there, so the cluster deserves more rows).
``update`` turns the previous weights and these means into the next weights.

- ``paper`` (default): Eq. 6, w_j ← w_j · s̃_j / Σ_c s̃_c, renormalised. Eq. 6 is only defined
  for positive scores, so the means are first mapped to positive values ``s̃`` by ``positive``:
  ``shift`` (default) adds one offset to every mean, max(0, ε·spread − min), with ε =
  ``epsilon`` and spread = max − min: means whose smallest is at least ε·spread pass unchanged
  (plain Eq. 6), otherwise the smallest becomes ε·spread (computed in units of the spread,
  which Eq. 6's normalisation cancels). The offset is continuous in the means,
  and a cluster's weight never falls when its own mean rises (a slightly negative mean never
  beats a slightly positive one); equal means leave the weights as they are. ``exp`` uses
  s̃ = exp(s / temperature) (a multiplicative-weights / Hedge step, smooth in s).
- ``softmax``: the official code, w_j = softmax(s / temperature); it replaces the old weights.

Clusters with no feedback this round (none of their rows were trained on) get the mean of
the clusters that have feedback, so their weight moves only through renormalisation (the
official code crashes there). Finally ``floor`` mixes in the uniform distribution,
w ← (1 − floor) · w + floor / k, so no cluster's weight reaches exactly zero by accident.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kmq.errors import KmqError

RULES = ("paper", "softmax")
POSITIVE_MAPS = ("shift", "exp")


def uniform(k: int) -> np.ndarray:
    """The paper's w⁰_j = 1/k."""
    if k < 1:
        raise KmqError(f"k must be >= 1, got {k}")
    return np.full(k, 1.0 / k)


PRIORS = ("balanced", "proportional")
"""Round 1's weights: ``balanced`` w⁰_j = 1/k (Algorithm 1), ``proportional`` w⁰_j ∝ the rows
cluster j can give (the quotas of the paper's text for one-shot kMQ)."""


def initial_weights(allocation: str, capacity: np.ndarray) -> np.ndarray:
    """w⁰ under ``allocation`` (one of :data:`PRIORS`) for clusters holding ``capacity`` rows
    that may be picked; Eq. 6 multiplies the rounds' feedback into them."""
    capacity = np.asarray(capacity, dtype=np.float64)
    if allocation == "balanced":
        return uniform(len(capacity))
    if allocation != "proportional":
        raise KmqError(f"allocation must be one of {', '.join(PRIORS)}; got {allocation!r}")
    if capacity.sum() <= 0:
        raise KmqError("no cluster has a row left to pick")
    return capacity / capacity.sum()


def cluster_means(labels: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 5: mean feedback score per cluster, and which clusters had any (finite) feedback."""
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    ok = np.isfinite(scores)
    counts = np.bincount(labels[ok], minlength=k).astype(np.float64)
    sums = np.bincount(labels[ok], weights=scores[ok], minlength=k)
    present = counts > 0
    means = np.full(k, np.nan)
    means[present] = sums[present] / counts[present]
    return means, present


def to_positive(
    means: np.ndarray, *, positive: str = "shift", temperature: float = 1.0, epsilon: float = 0.05
) -> np.ndarray:
    """Map finite cluster means to strictly positive values (see the module docstring)."""
    if positive == "exp":
        return np.exp((means - means.max()) / temperature)
    if positive != "shift":
        raise KmqError(f"positive must be one of {', '.join(POSITIVE_MAPS)}; got {positive!r}")
    spread = float(means.max() - means.min())
    if spread == 0:
        return np.ones_like(means)
    # in units of the spread (Eq. 6 renormalises, so a common factor changes nothing): the
    # smallest value is then >= epsilon even when the spread is a subnormal float
    scaled = means / spread
    return scaled + max(0.0, epsilon - float(scaled.min()))


def update(
    weights: Sequence[float] | np.ndarray,
    means: np.ndarray,
    present: np.ndarray,
    *,
    rule: str = "paper",
    positive: str = "shift",
    temperature: float = 1.0,
    epsilon: float = 0.05,
    floor: float = 1e-3,
) -> np.ndarray:
    """Next cluster weights from the previous ``weights`` and the per-cluster ``means``.

    ``present[j]`` says whether cluster j had feedback; absent clusters take the mean of the
    present ones. The result is a probability vector with every entry >= floor / k.
    """
    w = np.asarray(weights, dtype=np.float64)
    k = len(w)
    if means.shape != (k,) or present.shape != (k,):
        raise KmqError(f"weights, means and present must all have {k} entries")
    if not 0 <= floor < 1:
        raise KmqError(f"floor must be in [0, 1), got {floor}")
    if not temperature > 0:
        raise KmqError(f"temperature must be > 0, got {temperature}")
    if not present.any():
        return w / w.sum()
    filled = np.where(present, means, np.nanmean(np.where(present, means, np.nan)))
    if rule == "paper":
        new = w * to_positive(filled, positive=positive, temperature=temperature, epsilon=epsilon)
    elif rule == "softmax":
        new = np.exp((filled - filled.max()) / temperature)
    else:
        raise KmqError(f"rule must be one of {', '.join(RULES)}; got {rule!r}")
    new = new / new.sum()
    return (1.0 - floor) * new + floor / k
