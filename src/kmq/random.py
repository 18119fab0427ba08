"""Randomness in one place: one seed in, derived streams out (never ``np.random.seed``)."""

from __future__ import annotations

import numpy as np

SeedLike = int | np.random.Generator | np.random.SeedSequence


def seed_sequence(seed: SeedLike) -> np.random.SeedSequence:
    """The SeedSequence behind ``seed`` (a Generator contributes one draw, so it advances)."""
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, np.random.Generator):
        return np.random.SeedSequence(int(seed.integers(2**63)))
    if isinstance(seed, bool | np.bool_) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an int, a numpy Generator or SeedSequence, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.SeedSequence(int(seed))


def make_rng(seed: SeedLike) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed_sequence(seed))


def as_int_seed(seed: SeedLike) -> int:
    """An int for libraries that take one (faiss): the seed itself, or a draw from its stream."""
    if isinstance(seed, int | np.integer) and not isinstance(seed, bool):
        return int(seed)
    return int(seed_sequence(seed).generate_state(1)[0])


def stream(seed: SeedLike, *key: int) -> np.random.Generator:
    """An independent Generator for ``key`` (a cluster, a round, a worker) under ``seed``.

    The same (seed, key) gives the same stream whatever order streams are asked for in, so a
    per-cluster draw does not depend on how many clusters came before it or on which worker.
    """
    base = seed_sequence(seed)
    child = np.random.SeedSequence(base.entropy, spawn_key=(*base.spawn_key, *key))
    return np.random.default_rng(child)
