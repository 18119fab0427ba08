"""The Ray engine: the local engine's selection, computed on a Ray cluster (``ray`` is imported
here only).

What runs where (the driver is the process running kmq):

- embedding: a Ray Data pipeline over the shards of rows the embedding cache lacks (the
  4096-text shards the local engine encodes one after another, each with one ``encode``
  call), mapped by a fixed pool of encoder replicas (one GPU each when the cluster has GPUs,
  else one CPU each). The driver saves every shard as it arrives, in the local engine's
  per-row cache: local and Ray runs share the cache, and an interrupted run keeps every
  finished shard;
- k-means: the centres are fitted on the driver exactly as the local engine fits them; Ray
  tasks assign the rows to them, one task per 65 536-row chunk (the local engine's chunks);
- selection: the quotas, every cluster's members and the seed are fixed on the driver
  (:meth:`~kmq.selectors.ClusterSelector.plan`); Ray tasks draw each cluster's picks with
  :meth:`~kmq.selectors.ClusterSelector.pick_cluster`, from the cluster's own random stream;
  the driver orders them as the local engine does. Methods without clusters select on the
  driver.

The selection is the local engine's whatever the number of workers, as long as the embeddings
are the same: replicas on GPUs compute vectors that differ from CPU ones in the last bits, so
compare runs that read the same cached embeddings.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar, Unpack, cast

import numpy as np
import ray

from kmq.cache import CacheArgs, content_hash, embed_rows
from kmq.chunks import read_rows, spans
from kmq.clustering import DEFAULT_NITER, Clustering, assign, fit_centroids
from kmq.encoders import Encoder
from kmq.errors import ParameterError
from kmq.random import SeedLike
from kmq.rowcache import row_keys
from kmq.selectors import ClusterSelector, SelectionResult, Selector
from kmq.selectors.base import Picks, SelectArgs

log = logging.getLogger("kmq")

# Per-cluster sampling tasks per worker: enough to even out clusters of different sizes.
TASKS_PER_WORKER = 4

Key = TypeVar("Key")


class RayEngine:
    """Embedding, assignment and per-cluster sampling on a Ray cluster.

    ``address`` is a running cluster's (``auto``: the one this node belongs to;
    ``ray://HOST:10001``: through Ray Client); without it, a Ray runtime already started in
    this process is used, else a local one is started with ``workers`` CPUs (it stays up until
    the process ends or ``ray.shutdown()``). ``workers`` caps the parallelism: encoder
    replicas, and tasks in flight (default: every CPU of the cluster; replicas: every GPU when
    there are GPUs).
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, workers: int | None = None) -> None:
        if workers is not None and (
            isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
        ):
            raise ParameterError(
                "workers", f"{{param}} must be a positive integer, got {workers!r}"
            )
        self.address = address
        self.workers = workers

    def connect(self) -> int:
        """Join (or start) the Ray runtime; the parallelism: ``workers``, else the CPU count."""
        if not ray.is_initialized():
            if self.address:
                try:
                    ray.init(address=self.address)
                except ConnectionError as exc:
                    raise ParameterError(
                        "engine_options['address']",
                        f"could not connect to the Ray cluster at {{param}} {self.address}: {exc}",
                    ) from exc
            else:
                ray.init(
                    num_cpus=self.workers,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                )
        return self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))

    def embed(
        self, texts: Sequence[str], encoder: Encoder, **cache: Unpack[CacheArgs]
    ) -> tuple[np.ndarray, bool]:
        def compute(shards: list[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
            return self.encode_shards(texts, shards, encoder)

        return embed_rows(
            row_keys(texts), compute, encoder, legacy_hash=content_hash(texts), **cache
        )

    def encode_shards(
        self, texts: Sequence[str], shards: list[np.ndarray], encoder: Encoder
    ) -> Iterator[tuple[int, np.ndarray]]:
        """``(number, vectors)`` of each shard (row indices into ``texts``), as replicas of
        ``encoder`` finish them (in any order)."""
        workers = self.connect()
        gpus = int(ray.cluster_resources().get("GPU", 0))
        replicas = max(1, min(workers, gpus or workers, len(shards)))
        items = [
            {"number": number, "texts": [texts[i] for i in rows.tolist()]}
            for number, rows in enumerate(shards)
        ]
        vectors = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            EncoderReplica,
            fn_constructor_kwargs={"encoder": encoder},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=replicas, max_tasks_in_flight_per_actor=1),
            num_gpus=1 if gpus else 0,
        )
        for row in vectors.iter_rows():
            yield int(row["number"]), np.asarray(row["vectors"], dtype=np.float32)

    def kmeans(
        self, embeddings: np.ndarray, k: int, *, seed: SeedLike = 0, niter: int = DEFAULT_NITER
    ) -> Clustering:
        centroids = fit_centroids(embeddings, k, seed=seed, niter=niter)
        labels, distances = self.assign(embeddings, centroids)
        return Clustering(
            labels_=labels.astype(np.int64),
            centroids_=centroids,
            inertia_=float(distances.astype(np.float64).sum()),
        )

    def assign(
        self, embeddings: np.ndarray, centroids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`kmq.clustering.assign`, every chunk searched by a Ray task."""
        workers = self.connect()
        n = len(embeddings)
        labels = np.empty(n, dtype=np.int32)
        distances = np.empty(n, dtype=np.float32)
        centres = ray.put(centroids)
        jobs = (
            (start, _assign_chunk, (read_rows(embeddings, start, stop), centres))
            for start, stop in spans(n)
        )
        for start, (chunk_labels, chunk_distances) in bounded(jobs, workers):
            labels[start : start + len(chunk_labels)] = chunk_labels
            distances[start : start + len(chunk_labels)] = chunk_distances
        return labels, distances

    def select(
        self, selector: Selector, embeddings: np.ndarray, budget: int, **inputs: Unpack[SelectArgs]
    ) -> SelectionResult:
        if not isinstance(selector, ClusterSelector):
            log.info("%s has no per-cluster step: it selects on the driver", selector.name)
            return selector.select(embeddings, budget, **inputs)
        plan = selector.plan(len(embeddings), budget, **inputs)
        quality = inputs.get("quality")
        workers = self.connect()
        vectors = embeddings if selector.uses_embeddings else np.empty((len(embeddings), 0))
        shared = (ray.put(selector), ray.put(vectors), ray.put(quality))
        clusters = plan.clusters
        groups = np.array_split(
            np.asarray(clusters, dtype=np.int64),
            max(1, min(len(clusters), TASKS_PER_WORKER * workers)),
        )

        def arguments(group: np.ndarray) -> tuple[Any, ...]:
            work = [(j, plan.members(j), int(plan.quotas[j])) for j in group.tolist()]
            return (*shared, work, plan.seed)

        jobs = ((number, _pick_clusters, arguments(group)) for number, group in enumerate(groups))
        picks: dict[int, Picks] = {}
        for _, got in bounded(jobs, workers):
            picks.update(got)
        return selector.assemble(plan, picks, quality)


class EncoderReplica:
    """One copy of the encoder on a Ray worker, on the worker's GPU when it was given one
    (torch encoders whose ``device`` was left unset)."""

    def __init__(self, encoder: Encoder) -> None:
        if ray.get_gpu_ids() and getattr(encoder, "device", "") is None:
            cast(Any, encoder).device = "cuda"
        self.encoder = encoder

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One shard (``batch_size=1``) in one ``encode`` call, as the local engine does."""
        (texts,) = batch["texts"]
        vectors = np.asarray(self.encoder.encode([str(t) for t in texts]), dtype=np.float32)
        return {"number": batch["number"], "vectors": vectors[None]}


def bounded(
    jobs: Iterable[tuple[Key, Any, tuple[Any, ...]]], limit: int
) -> Iterator[tuple[Key, Any]]:
    """Run ``(key, remote_function, args)`` jobs with at most ``limit`` in flight (the next
    job's arguments are made only when it is submitted); ``(key, result)`` as each ends."""
    pending: dict[Any, Key] = {}
    for key, function, args in jobs:
        if len(pending) >= limit:
            yield _finish_one(pending)
        pending[function.remote(*args)] = key
    while pending:
        yield _finish_one(pending)


def _finish_one(pending: dict[Any, Key]) -> tuple[Key, Any]:
    (ref,), _ = ray.wait(list(pending), num_returns=1)
    return pending.pop(ref), ray.get(ref)


@ray.remote
def _assign_chunk(rows: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One chunk's nearest centres, computed as :func:`assign` computes that chunk."""
    return assign(rows, centroids)


@ray.remote
def _pick_clusters(
    selector: ClusterSelector,
    embeddings: np.ndarray,
    quality: np.ndarray | None,
    jobs: list[tuple[int, np.ndarray, int]],
    seed: np.random.SeedSequence,
) -> dict[int, Picks]:
    """The picks of each ``(cluster, members, quota)`` in ``jobs``, each from its own stream."""
    return {
        j: selector.pick_cluster(j, members, quota, embeddings, quality, seed)
        for j, members, quota in jobs
    }
