"""``kmq select --streaming``: pools larger than memory, on one machine.

The in-memory path (:func:`kmq.pipeline.select_file`) holds every row as an :class:`Example`
and every embedding as float32. The streaming path keeps per row only what selection needs
(input row index, id, source code, quality) and otherwise reads the input a record at a time:

1. **read**: one pass over the input (a JSONL/Parquet file, or a folder of shards in name
   order), parsed and checked exactly as :func:`kmq.formats.load_pool` does, hashing the
   embedded text of every row (its key in the per-row embedding cache) on the way.
2. **embed**: when rows are missing from the cache, a second pass feeds their texts to the
   encoder shard by shard into the embedding cache, stored as ``--embedding-dtype`` (float16 by
   default: 768 bytes a row at 384 dims) and memory-mapped; an interrupted run keeps every
   finished shard.
3. **sample** + **fit**: k-means (and ``--k auto``) is fitted on ``--kmeans-sample`` rows drawn
   with the run seed (default ``max(256·k, 100,000)``, all rows for smaller pools; faiss fits
   on at most 256 rows per centre anyway, so a larger sample only costs memory).
4. **assign**: every row goes to its nearest centre, reading the memory map in chunks; labels
   are int32, squared distances to the centre float32.
5. **select**: the selectors run on those per-row arrays; kmq, km-random, km-closest and random
   never touch the vectors. k-center, deita, qdit and facility-location need every vector in
   memory and quadratic-ish time, so they run only up to :data:`IN_MEMORY_LIMIT` rows.
6. **write**: one more pass copies the picked records, unchanged and in input order, into
   ``selected-00000.jsonl`` ... shards, next to the usual ``selection.parquet``,
   ``clusters.npz`` (with the distances) and ``manifest.json``.

With ``--embedding-dtype float32`` and a sample of every row the clustering, and so the
selection, is exactly the in-memory path's (same cache entry, same faiss calls). float16
vectors cluster as well (same objective within seed-to-seed noise) but not identically, so the
picks differ from the in-memory path's.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from kmq.cache import ContentHash, embed_rows, encode_shards
from kmq.chunks import CHUNK_ROWS, take_rows
from kmq.clustering import Clustering, assign, default_k_grid, fit_centroids, resolve_k
from kmq.config import SelectConfig, make_encoder, make_selector
from kmq.errors import KmqError, ParameterError, Reject
from kmq.exact import DUPLICATES, KEY_DTYPE, find_duplicates, text_key, write_duplicates
from kmq.examples import Example
from kmq.formats import ExampleStream, write_rejects, write_selected_shards
from kmq.outdir import check_out, staged
from kmq.outputs import (
    CLUSTERS,
    REJECTS,
    TABLE,
    PoolSummary,
    SelectRun,
    Timer,
    build_manifest,
    write_clusters,
    write_selection_table,
)
from kmq.random import make_rng
from kmq.rowcache import keys_array, row_key
from kmq.selectors import SelectionResult, Selector
from kmq.stages import cap_texts, check_vectors, column_quality_info, exclusions, nothing_valid
from kmq.validate import REPAIRS, checks_summary, write_repairs

log = logging.getLogger("kmq")

SAMPLE_PER_CENTROID = 256  # faiss' max_points_per_centroid: rows it fits each centre on
SAMPLE_FLOOR = 100_000
OUTPUT_SHARD_ROWS = 100_000
DEFAULT_DTYPE = "float16"
IN_MEMORY_METHODS = ("k-center", "deita", "qdit", "facility-location")
IN_MEMORY_LIMIT = 200_000  # rows: every float32 vector in memory, O(n · budget) work


@dataclass
class StreamedPool:
    """A pool read in a stream: per valid row, only what selection needs.

    ``rows`` holds each valid row's record index in the input; ``sources`` an index into
    ``source_names`` (-1: none); ``quality`` the ``--quality-field`` values (float64);
    ``keys`` the per-row cache keys of the embedded texts (:func:`kmq.rowcache.row_keys`);
    ``text_hash`` their :class:`~kmq.cache.ContentHash` (to take over an older cache entry);
    ``dedup_keys`` each row's :func:`~kmq.exact.text_key` (for exact de-duplication).
    """

    stream: ExampleStream
    sha256: str
    rows: np.ndarray
    ids: list[str]
    sources: np.ndarray
    source_names: list[str]
    quality: np.ndarray | None
    keys: np.ndarray
    text_hash: str
    dedup_keys: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def path(self) -> Path:
        return self.stream.path

    @property
    def rejects(self) -> list[Reject]:
        return self.stream.rejects

    def source_of(self, row: int) -> str | None:
        code = int(self.sources[row])
        return None if code < 0 else self.source_names[code]

    def source_counts(self, rows: np.ndarray | None = None) -> dict[str, int] | None:
        """Rows per source (``(none)`` for rows without one), or None when no row has one."""
        if not self.source_names:
            return None
        codes = self.sources if rows is None else self.sources[rows]
        counts = np.bincount(codes + 1, minlength=len(self.source_names) + 1)
        names = ["(none)", *self.source_names]
        return dict(sorted((names[j], int(c)) for j, c in enumerate(counts) if c))


def read_pool(config: SelectConfig) -> StreamedPool:
    """One pass over ``config.input``: every check :func:`~kmq.formats.load_pool` makes, and the
    per-row arrays of a :class:`StreamedPool`."""
    stream = ExampleStream(
        config.input,
        fields=config.fields,
        format=config.format,
        on_invalid=config.on_invalid,
        quality_field=config.quality_field,
    )
    rows, codes, quality = array("q"), array("i"), array("d")
    ids: list[str] = []
    names: dict[str, int] = {}
    keys = bytearray()
    text_hash = ContentHash()
    dedup_keys = bytearray()
    with tqdm(desc="reading", unit="row", disable=not config.progress) as bar:
        for example, score in stream:
            rows.append(example.row)
            ids.append(example.id)
            source = example.source
            codes.append(-1 if source is None else names.setdefault(source, len(names)))
            if score is not None:
                quality.append(score)
            text = _text(example, config.view)
            keys += row_key(text)
            text_hash.update(text)
            dedup_keys += text_key(example)
            bar.update()
    return StreamedPool(
        stream=stream,
        sha256=stream.digest(),
        rows=np.frombuffer(rows, dtype=np.int64).copy(),
        ids=ids,
        sources=np.frombuffer(codes, dtype=np.int32).copy(),
        source_names=list(names),
        quality=np.frombuffer(quality, dtype=np.float64).copy() if config.quality_field else None,
        keys=keys_array(bytes(keys)),
        text_hash=text_hash.hexdigest(),
        dedup_keys=np.frombuffer(bytes(dedup_keys), dtype=KEY_DTYPE),
    )


def embed_stream(pool: StreamedPool, config: SelectConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """The pool's embeddings as a read-only memory map of ``--embedding-dtype`` (cached; on a
    miss the input is read again and its missing rows encoded shard by shard), and what made
    them."""
    encoder = make_encoder(config)
    dtype = config.embedding_dtype or DEFAULT_DTYPE
    embeddings, cache_hit = embed_rows(
        pool.keys,
        encode_shards(_Texts(pool.stream, config.view), encoder),
        encoder,
        view=config.view,
        dtype=dtype,
        cache_dir=Path(config.cache_dir) if config.cache_dir else None,
        show_progress=config.progress,
        legacy_hash=pool.text_hash,
    )
    log.info(
        "embeddings %s %s from %s", embeddings.shape, dtype, "cache" if cache_hit else encoder.name
    )
    info = {
        "encoder": encoder.name,
        "view": config.view,
        "dim": int(embeddings.shape[1]),
        "cache_hit": cache_hit,
        "dtype": dtype,
    }
    return embeddings, info


class _Texts:
    """The embedded texts of the valid rows, handed out for increasing row indices as the cache
    asks for them (rows in between, already cached, are read and skipped)."""

    def __init__(self, stream: ExampleStream, view: str) -> None:
        self.stream = stream
        self.view = view
        self.examples: Iterator[tuple[Example, float | None]] | None = None
        self.next_row = 0

    def __call__(self, rows: np.ndarray) -> list[str]:
        if self.examples is None:
            self.examples = iter(self.stream)
        picked = []
        for row in rows.tolist():
            if row < self.next_row:
                raise KmqError(f"row {row} asked for after row {self.next_row}")
            for _ in islice(self.examples, row - self.next_row):
                pass
            example, _ = next(self.examples)
            picked.append(example)
            self.next_row = row + 1
        return cap_texts([_text(ex, self.view) for ex in picked], [ex.id for ex in picked])


def _text(example: Example, view: str) -> str:
    return example.text(view)  # type: ignore[arg-type]


def sample_size(n: int, k_max: int, requested: int | None = None) -> int:
    """Rows k-means is fitted on: ``requested``, else ``max(256·k_max, 100,000)``; at most ``n``."""
    wanted = requested if requested is not None else max(SAMPLE_PER_CENTROID * k_max, SAMPLE_FLOOR)
    return min(n, wanted)


def kmeans_sample(
    embeddings: np.ndarray, size: int, *, seed: int, show_progress: bool = False
) -> np.ndarray:
    """``size`` rows drawn without replacement with ``seed`` (every row, in order, when ``size``
    covers the pool), as float32 in input order, read chunk by chunk."""
    n = len(embeddings)
    rows = np.arange(n) if size >= n else np.sort(make_rng(seed).choice(n, size, replace=False))
    return take_rows(embeddings, rows, show_progress=show_progress, desc="k-means sample")


def centroid_cosine(distances: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Cosine of each unit row to its centre, from the squared L2 distance ``d²`` to it:
    ``(1 + |c|² - d²) / (2|c|)``."""
    norm2 = (centroids.astype(np.float64) ** 2).sum(1)[labels]
    cosine = (1.0 + norm2 - distances) / (2.0 * np.sqrt(np.maximum(norm2, 1e-24)))
    return np.clip(cosine, -1.0, 1.0).astype(np.float32)


def check_supported(config: SelectConfig) -> None:
    """Refuse what the streaming path cannot do, before any work."""
    if config.quality:
        raise ParameterError(
            "quality",
            f"{{param}} {config.quality!r} scores rows held in memory, which {{streaming}} does "
            "not do; score the pool first (kmq score), add the score to each record and pass "
            "{quality_field}",
            "streaming",
            "quality_field",
        )
    if config.dedup is not None:
        raise ParameterError(
            "dedup",
            "{param} compares vectors held in memory and does not run with {streaming}",
            "streaming",
        )


@dataclass
class StreamedClusters:
    """The clustering of a streamed pool: k-means fitted on ``sample_size`` rows, every row
    assigned (``distances``: squared L2 to its centre), and the silhouette per k tried."""

    fitted: Clustering
    distances: np.ndarray
    silhouette: dict[int, float] | None
    sample_size: int


def cluster_stream(
    embeddings: np.ndarray, budget: int, config: SelectConfig, timer: Timer
) -> StreamedClusters:
    """k (given, or by silhouette) and centres from a seeded sample, then every row assigned."""
    n = len(embeddings)
    grid = [int(config.k)] if config.k != "auto" else config.k_grid or default_k_grid(n, budget)
    size = sample_size(n, max(grid), config.kmeans_sample)
    if max(grid) > size:
        raise ParameterError(
            "kmeans_sample",
            f"k={max(grid)} needs at least that many rows to fit on; {{param}} is {size}",
        )
    with timer.stage("sample"):
        sample = kmeans_sample(embeddings, size, seed=config.seed, show_progress=config.progress)
    encoder = config.encoder if isinstance(config.encoder, str) else config.encoder.name
    check_vectors(sample, f"{encoder} (in the k-means sample)", config.cache_dir)
    with timer.stage("fit"):
        k, silhouette = resolve_k(sample, config.k, n_pool=n, **config.k_search(budget))
        centroids = fit_centroids(sample, k, seed=config.seed, niter=config.niter)
        del sample
    with timer.stage("assign"):
        labels, distances = assign(embeddings, centroids, show_progress=config.progress)
    log.info("k-means (k=%d) fitted on %d of %d rows", k, size, n)
    inertia = float(distances.astype(np.float64).sum())
    fitted = Clustering(labels_=labels, centroids_=centroids, inertia_=inertia)
    return StreamedClusters(fitted, distances, silhouette, size)


def select_rows(
    pool: StreamedPool,
    embeddings: np.ndarray | None,
    clusters: StreamedClusters | None,
    budget: int,
    exclude: np.ndarray,
    config: SelectConfig,
) -> tuple[SelectionResult, Selector]:
    """The selection and the selector that made it. Only the in-memory methods get vectors;
    km-closest gets each row's cosine to its centre; the others need only per-row arrays."""
    n = len(pool)
    options: dict[str, Any] = {}
    if config.method == "km-closest" and clusters is not None:
        fitted = clusters.fitted
        options["centroid_cosine"] = centroid_cosine(
            clusters.distances, fitted.labels_, fitted.centroids_
        )
    if config.method in IN_MEMORY_METHODS:
        assert embeddings is not None
        vectors = take_rows(embeddings, np.arange(n), show_progress=config.progress)
    else:
        vectors = np.empty((n, 0), dtype=np.float32)  # the selectors only read its length
    selector = make_selector(config, **options)
    result = selector.select(
        vectors,
        budget,
        labels=None if clusters is None else clusters.fitted.labels_,
        quality=pool.quality,
        exclude=exclude,
        seed=config.seed,
    )
    result.silhouette = None if clusters is None else clusters.silhouette
    return result, selector


def write_outputs(
    out: Path,
    pool: StreamedPool,
    result: SelectionResult,
    clusters: StreamedClusters | None,
    config: SelectConfig,
) -> list[Path]:
    """The picked rows in shards, selection.parquet, clusters.npz and rejects.jsonl; returns
    the shards."""
    out.mkdir(parents=True, exist_ok=True)
    files = write_selected_shards(
        pool.stream,
        np.sort(pool.rows[result.indices]),
        out,
        sha256=pool.sha256,
        shard_rows=config.output_shard_rows or OUTPUT_SHARD_ROWS,
        show_progress=config.progress,
    )
    idx = result.indices
    write_selection_table(
        out / TABLE,
        result,
        pool.quality,
        rows=pool.rows[idx],
        ids=[pool.ids[i] for i in idx],
        sources=[pool.source_of(i) for i in idx],
    )
    if clusters is not None:
        write_clusters(out / CLUSTERS, clusters.fitted, distances=clusters.distances)
    if pool.rejects:
        write_rejects(pool.rejects, out / REJECTS)
    if pool.stream.repairs:
        write_repairs(pool.stream.repairs, out / REPAIRS)
    return files


def summarize(pool: StreamedPool, result: SelectionResult) -> PoolSummary:
    """What the manifest says of the streamed input."""
    return PoolSummary(
        input={
            "path": str(pool.path.resolve()),
            "sha256": pool.sha256,
            "kind": pool.stream.file_kind,
            "compressed": pool.stream.compressed,
            "format": pool.stream.format,
        },
        records=pool.stream.n_records,
        valid=len(pool),
        rejected=len(pool.rejects),
        sources=pool.source_counts(),
        selected_sources=pool.source_counts(result.indices),
    )


def select_streaming(config: SelectConfig) -> SelectRun:
    """Read → embed (cached memory map) → sample + fit → assign → select → write, in a stream."""
    config.validate()
    check_out(config.out)
    check_supported(config)
    timer = Timer()
    out = Path(config.out)
    with timer.stage("read"):
        pool = read_pool(config)
    n = len(pool)
    if n == 0:
        nothing_valid(config, pool.rejects)
    log.info(
        "read %d rows of %s (%s, %d file(s), streaming), %d rejected",
        n,
        config.input,
        pool.stream.format,
        len(pool.stream.files),
        len(pool.rejects),
    )
    if config.method in IN_MEMORY_METHODS and n > IN_MEMORY_LIMIT:
        raise ParameterError(
            "method",
            f"{{param}} {config.method!r} needs every vector in memory and O(n · budget) time; "
            f"with {{streaming}} it runs on pools of up to {IN_MEMORY_LIMIT:,} rows, and this "
            f"one has {n:,}. Use kmq, km-random, km-closest or random",
            "streaming",
        )
    left_out = exclusions(config, pool.ids, lambda: find_duplicates(pool.dedup_keys))
    budget, exclude_mask, duplicates = left_out.budget, left_out.mask, left_out.duplicates
    clustered = config.needs_clusters()  # --dedup is refused above: the clusters are k-means'
    embeddings, embedding = None, None
    if config.needs_embeddings():
        with timer.stage("embed"):
            embeddings, embedding = embed_stream(pool, config)
    clusters = None
    if clustered:
        assert embeddings is not None
        clusters = cluster_stream(embeddings, budget, config, timer)
    with timer.stage("select"):
        result, selector = select_rows(pool, embeddings, clusters, budget, exclude_mask, config)
    quality_info = column_quality_info(config.quality_field) if config.quality_field else None
    if quality_info is not None and hasattr(selector, "rule_"):
        quality_info["weighting"] = f"{selector.rule_} (temperature {config.temperature})"
    for note in result.notes:
        log.warning(note)
    with staged(out) as folder:
        with timer.stage("write"):
            files = write_outputs(folder, pool, result, clusters, config)
        excluded = left_out.counts(decontaminated=None)
        if duplicates is not None:
            write_duplicates(folder / DUPLICATES, duplicates, pool.rows, pool.ids)
        streaming = {
            "input_files": len(pool.stream.files),
            "kmeans_sample": None if clusters is None else clusters.sample_size,
            "embedding_dtype": None if embedding is None else embedding["dtype"],
            "chunk_rows": CHUNK_ROWS,
            "output_shard_rows": config.output_shard_rows or OUTPUT_SHARD_ROWS,
        }
        manifest = build_manifest(
            config,
            summarize(pool, result),
            result,
            None if clusters is None else clusters.fitted,
            embedding,
            quality_info,
            excluded,
            timer,
            [path.name for path in files],
            streaming,
            checks=checks_summary(pool.rejects, pool.stream.repairs),
        )
        manifest.write(folder)  # last: the folder is complete
    return SelectRun(result=result, pool=pool, manifest=manifest, out=out)
