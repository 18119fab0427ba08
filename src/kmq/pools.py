"""The pool a selection runs on, behind one interface (:class:`Pool`): every record in memory
(:class:`MemoryPool`) or read in a stream (:class:`~kmq.streaming.StreamedPool`); and
:func:`open_pool`, which reads the one a :class:`~kmq.config.SelectConfig` asks for."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from kmq.config import SelectConfig, make_encoder, make_engine, quality_multiple
from kmq.errors import Reject
from kmq.exact import ExactDuplicates, exact_duplicates
from kmq.examples import Example
from kmq.export import write_output
from kmq.formats import LoadedPool, load_pool
from kmq.outputs import PoolSummary, Timer, source_counts
from kmq.random import stream
from kmq.scoring import compute_quality, fill_missing
from kmq.selectors import SelectionResult
from kmq.stages import cap_texts, check_vectors, column_quality_info, nothing_valid
from kmq.streaming import StreamedPool, read_pool
from kmq.validate import Repair

log = logging.getLogger("kmq")

# The random stream (under --seed) that --sample draws from, apart from the selection's own.
SAMPLE_STREAM = 0x53414D50


class Pool(Protocol):
    """What :func:`kmq.pipeline.select_file` asks of a pool; ``rows`` are positions among its
    valid rows (None: all of them).

    ``examples`` are the records, when the pool holds them in memory: the stages that read
    them (token counts, decontamination, quality scorers, statistics) run on those only; a
    streamed pool keeps per-row arrays instead (``examples`` is None; :meth:`SelectConfig.validate`
    refuses those stages for it), and ``fit_on_sample`` says that its k-means is fitted on a
    sample of the vectors and every row then assigned.
    """

    fit_on_sample: bool

    @property
    def ids(self) -> list[str]: ...

    @property
    def examples(self) -> list[Example] | None: ...

    @property
    def quality(self) -> np.ndarray | None: ...  # the --quality-field column

    @property
    def rejects(self) -> list[Reject]: ...

    @property
    def repairs(self) -> list[Repair]: ...

    def __len__(self) -> int: ...

    def left_out(self) -> dict[str, int]:
        """Rows dropped before the selection, by reason (the manifest's counts)."""
        ...

    def exact_duplicates(self) -> ExactDuplicates: ...

    def score_quality(
        self, config: SelectConfig, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray | None, dict[str, Any] | None]: ...

    def embed(self, config: SelectConfig) -> tuple[np.ndarray, dict[str, Any] | None]:
        """The vectors (empty, ``(n, 0)``, when the run needs none) and what made them."""
        ...

    def selection_vectors(self, embeddings: np.ndarray, config: SelectConfig) -> np.ndarray:
        """What the selector reads of ``embeddings``."""
        ...

    def input_rows(self, rows: np.ndarray | None = None) -> np.ndarray:
        """The record index in the input of each row (int64)."""
        ...

    def sources_of(self, rows: np.ndarray | None = None) -> list[str | None]: ...

    def write_rows(
        self, folder: Path, result: SelectionResult, config: SelectConfig
    ) -> str | list[str]:
        """Write the picked records into ``folder``; the manifest's name(s) of the file(s)."""
        ...

    def summary(self, result: SelectionResult) -> PoolSummary: ...

    def streaming_section(
        self, sample_size: int | None, embedding: dict[str, Any] | None, config: SelectConfig
    ) -> dict[str, Any] | None: ...


def open_pool(config: SelectConfig, timer: Timer) -> MemoryPool | StreamedPool:
    """The pool of ``config``: streamed when :meth:`SelectConfig.is_streaming`, else loaded (and
    sampled with ``--sample``); a pool without a valid row stops the run."""
    pool: MemoryPool | StreamedPool
    if config.is_streaming():
        with timer.stage("read"):
            pool = read_pool(config)
    else:
        with timer.stage("load"):
            pool = MemoryPool.of(
                load_pool(
                    config.input,
                    fields=config.fields,
                    format=config.format,
                    on_invalid=config.on_invalid,
                    quality_field=config.quality_field,
                )
            )
    if len(pool) == 0:
        nothing_valid(config, pool.rejects)
    return pool.opened(config)


@dataclass
class MemoryPool(LoadedPool):
    """A pool loaded whole (:func:`~kmq.formats.load_pool`): every record an
    :class:`~kmq.examples.Example` in memory; ``not_sampled``, the valid rows ``--sample``
    left out."""

    not_sampled: int | None = field(default=None, compare=False)

    fit_on_sample = False

    @classmethod
    def of(cls, loaded: LoadedPool) -> MemoryPool:
        return cls(**{f.name: getattr(loaded, f.name) for f in fields(LoadedPool)})

    def opened(self, config: SelectConfig) -> MemoryPool:
        """The pool logged, and with ``--sample``, a sample of it."""
        n = len(self)
        log.info(
            "loaded %d rows of %s (%s, %s), %d rejected",
            n,
            self.path,
            self.format,
            self.file_kind,
            len(self.rejects),
        )
        if config.sample is None or config.sample >= n:
            return self
        log.info(
            "kept a sample of %d of the %d valid rows (--sample, seed %d)",
            config.sample,
            n,
            config.seed,
        )
        return self.sample(config.sample, config.seed)

    def sample(self, size: int, seed: int) -> MemoryPool:
        """The pool with ``size`` of its valid rows, drawn uniformly without replacement from the
        seed's own stream (:data:`SAMPLE_STREAM`) and kept in input order."""
        keep = np.sort(stream(seed, SAMPLE_STREAM).choice(len(self), size, replace=False))
        return replace(
            self,
            examples=[self.examples[i] for i in keep],
            quality=None if self.quality is None else self.quality[keep],
            not_sampled=len(self) - size,
        )

    @cached_property
    def ids(self) -> list[str]:
        return [ex.id for ex in self.examples]

    def __len__(self) -> int:
        return len(self.examples)

    def left_out(self) -> dict[str, int]:
        return {} if self.not_sampled is None else {"not_sampled": self.not_sampled}

    def exact_duplicates(self) -> ExactDuplicates:
        return exact_duplicates(self.examples)

    def score_quality(
        self, config: SelectConfig, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray | None, dict[str, Any] | None]:
        return pool_quality(self, config, rows)

    def embed(self, config: SelectConfig) -> tuple[np.ndarray, dict[str, Any] | None]:
        return embed_pool(self, config)

    def selection_vectors(self, embeddings: np.ndarray, config: SelectConfig) -> np.ndarray:
        return embeddings

    def input_rows(self, rows: np.ndarray | None = None) -> np.ndarray:
        picked = self.examples if rows is None else [self.examples[i] for i in rows]
        return np.array([ex.row for ex in picked], dtype=np.int64)

    def sources_of(self, rows: np.ndarray | None = None) -> list[str | None]:
        picked = self.examples if rows is None else [self.examples[i] for i in rows]
        return [ex.source for ex in picked]

    def write_rows(self, folder: Path, result: SelectionResult, config: SelectConfig) -> str:
        picked_rows = [self.examples[i].row for i in result.indices]
        return write_output(self, picked_rows, folder, config.output_format).name

    def summary(self, result: SelectionResult) -> PoolSummary:
        summary = PoolSummary(
            input={
                "path": str(self.path.resolve() if self.path.exists() else self.path),
                "sha256": self.sha256,
                "kind": self.file_kind,
                "compressed": self.compressed,
                "format": self.format,
            },
            records=self.n_records,
            valid=len(self),
            rejected=len(self.rejects),
            sources=source_counts(self),
            selected_sources=source_counts(self, result.indices),
        )
        if self.parts:  # several inputs: each file, and the list of them as the path
            summary.input |= {"path": [part["path"] for part in self.parts], "files": self.parts}
        return summary

    def streaming_section(
        self, sample_size: int | None, embedding: dict[str, Any] | None, config: SelectConfig
    ) -> None:
        return None


def pool_quality(
    pool: LoadedPool, config: SelectConfig, rows: np.ndarray | None = None
) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """Quality per row from ``--quality-field`` or a ``--quality`` scorer (NaN → lowest score),
    the scorer run on ``rows`` only when given (the other rows stay NaN)."""
    if config.quality_field:
        return pool.quality, column_quality_info(config.quality_field)
    if not config.quality:
        return None, None
    scores = compute_quality(
        pool.examples,
        config.quality,
        rows=rows,
        options=config.quality_options,
        cache_dir=Path(config.cache_dir) if config.cache_dir else None,
        show_progress=config.progress,
    )
    info = scores.summary() | {"candidates": None if rows is None else quality_multiple(config)}
    return fill_missing(scores.values, rows), info


def embed_pool(pool: LoadedPool, config: SelectConfig) -> tuple[np.ndarray, dict[str, Any] | None]:
    """The pool's embeddings (cached) and what made them; none for plain random selection."""
    if not config.needs_embeddings():
        return np.empty((len(pool.examples), 0), dtype=np.float32), None
    encoder = make_encoder(config)
    texts = [ex.text(config.view) for ex in pool.examples]  # type: ignore[arg-type]
    texts = cap_texts(texts, [ex.id for ex in pool.examples])
    embeddings, cache_hit = make_engine(config).embed(
        texts,
        encoder,
        view=config.view,
        cache_dir=Path(config.cache_dir) if config.cache_dir else None,
        show_progress=config.progress,
    )
    check_vectors(embeddings, encoder.name, config.cache_dir)
    log.info("embeddings %s from %s", embeddings.shape, "cache" if cache_hit else encoder.name)
    info = {
        "encoder": encoder.name,
        "view": config.view,
        "dim": int(embeddings.shape[1]),
        "cache_hit": cache_hit,
    }
    return embeddings, info
