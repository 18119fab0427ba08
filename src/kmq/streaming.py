"""``kmq select --streaming``: pools larger than memory, on one machine.

A pool held in memory (:class:`kmq.pools.MemoryPool`) keeps every row as an :class:`Example`
and every embedding as float32. A :class:`StreamedPool` keeps per row only what selection
needs (input row index, id, source code, quality) and otherwise reads the input a record at a
time. :func:`kmq.pipeline.select_file` runs the same steps on both; for a streamed pool they
are:

1. **read**: one pass over the input (a JSONL/Parquet file, or a folder of shards in name
   order), parsed and checked exactly as :func:`kmq.formats.load_pool` does, hashing the
   embedded text of every row (its key in the per-row embedding cache) on the way.
2. **embed**: when rows are missing from the cache, a second pass feeds their texts to the
   encoder shard by shard into the embedding cache, stored as ``--embedding-dtype`` (float16 by
   default: 768 bytes a row at 384 dims) and memory-mapped; an interrupted run keeps every
   finished shard.
3. **sample** + **fit**: k-means (and ``--k auto``) is fitted on ``--kmeans-sample`` rows drawn
   with the run seed (default ``max(256·k, 100,000)``, all rows for smaller pools; faiss fits
   on at most 256 rows per centre anyway, so a larger sample only costs memory): the
   sample-then-assign clustering, :func:`kmq.pipeline.sample_then_assign`.
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
from kmq.config import SelectConfig, make_encoder
from kmq.errors import KmqError, ParameterError, Reject
from kmq.exact import KEY_DTYPE, ExactDuplicates, find_duplicates, text_key
from kmq.examples import Example
from kmq.formats import ExampleStream, write_selected_shards
from kmq.outputs import PoolSummary
from kmq.rowcache import keys_array, row_key
from kmq.selectors import SelectionResult
from kmq.stages import cap_texts, column_quality_info
from kmq.validate import Repair

log = logging.getLogger("kmq")

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

    fit_on_sample = True  # its vectors are a memory map: k-means fits on a sample of them

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def path(self) -> Path:
        return self.stream.path

    @property
    def rejects(self) -> list[Reject]:
        return self.stream.rejects

    @property
    def repairs(self) -> list[Repair]:
        return self.stream.repairs

    @property
    def examples(self) -> None:
        """None: a streamed pool keeps no record in memory."""
        return None

    def opened(self, config: SelectConfig) -> StreamedPool:
        """The pool logged; a method that needs every vector in memory is refused above
        :data:`IN_MEMORY_LIMIT` rows."""
        n = len(self)
        log.info(
            "read %d rows of %s (%s, %d file(s), streaming), %d rejected",
            n,
            config.input,
            self.stream.format,
            len(self.stream.files),
            len(self.rejects),
        )
        if config.method in IN_MEMORY_METHODS and n > IN_MEMORY_LIMIT:
            raise ParameterError(
                "method",
                f"{{param}} {config.method!r} needs every vector in memory and O(n · budget) "
                f"time; with {{streaming}} it runs on pools of up to {IN_MEMORY_LIMIT:,} rows, and "
                f"this one has {n:,}. Use kmq, km-random, km-closest or random",
                "streaming",
            )
        return self

    def left_out(self) -> dict[str, int]:
        return {}

    def exact_duplicates(self) -> ExactDuplicates:
        return find_duplicates(self.dedup_keys)

    def score_quality(
        self, config: SelectConfig, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray | None, dict[str, Any] | None]:
        """The ``--quality-field`` column (a scorer reads records in memory: refused)."""
        if not config.quality_field:
            return None, None
        return self.quality, column_quality_info(config.quality_field)

    def embed(self, config: SelectConfig) -> tuple[np.ndarray, dict[str, Any] | None]:
        if not config.needs_embeddings():
            return np.empty((len(self), 0), dtype=np.float32), None
        return embed_stream(self, config)

    def selection_vectors(self, embeddings: np.ndarray, config: SelectConfig) -> np.ndarray:
        """Every vector as float32 for the methods that read them (:data:`IN_MEMORY_METHODS`);
        for the others, which read only the per-row arrays, an empty ``(n, 0)`` array."""
        if config.method in IN_MEMORY_METHODS:
            return take_rows(embeddings, np.arange(len(self)), show_progress=config.progress)
        return np.empty((len(self), 0), dtype=np.float32)

    def input_rows(self, rows: np.ndarray | None = None) -> np.ndarray:
        return self.rows if rows is None else self.rows[rows]

    def source_of(self, row: int) -> str | None:
        code = int(self.sources[row])
        return None if code < 0 else self.source_names[code]

    def sources_of(self, rows: np.ndarray | None = None) -> list[str | None]:
        return [self.source_of(i) for i in (range(len(self)) if rows is None else rows)]

    def write_rows(self, folder: Path, result: SelectionResult, config: SelectConfig) -> list[str]:
        """The picked records, unchanged and in input order, in ``selected-00000…`` shards."""
        files = write_selected_shards(
            self.stream,
            np.sort(self.rows[result.indices]),
            folder,
            sha256=self.sha256,
            shard_rows=config.output_shard_rows or OUTPUT_SHARD_ROWS,
            show_progress=config.progress,
        )
        return [path.name for path in files]

    def summary(self, result: SelectionResult) -> PoolSummary:
        return PoolSummary(
            input={
                "path": str(self.path.resolve()),
                "sha256": self.sha256,
                "kind": self.stream.file_kind,
                "compressed": self.stream.compressed,
                "format": self.stream.format,
            },
            records=self.stream.n_records,
            valid=len(self),
            rejected=len(self.rejects),
            sources=self.source_counts(),
            selected_sources=self.source_counts(result.indices),
        )

    def streaming_section(
        self, sample_size: int | None, embedding: dict[str, Any] | None, config: SelectConfig
    ) -> dict[str, Any]:
        """The manifest's ``streaming``: how the pool was read, fitted on and written."""
        return {
            "input_files": len(self.stream.files),
            "kmeans_sample": sample_size,
            "embedding_dtype": None if embedding is None else embedding["dtype"],
            "chunk_rows": CHUNK_ROWS,
            "output_shard_rows": config.output_shard_rows or OUTPUT_SHARD_ROWS,
        }

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
