"""``kmq select`` as functions: arrays in → :class:`SelectionResult`; a file in → files out."""

from __future__ import annotations

import json
import logging
import platform
import resource
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kmq._imports import require
from kmq._version import __version__
from kmq.atomic import atomic_path, write_json
from kmq.clustering import (
    DEFAULT_NITER,
    SILHOUETTE_SAMPLE,
    Clustering,
    resolve_k,
)
from kmq.config import (
    SelectConfig,
    input_label,
    make_encoder,
    make_engine,
    make_selector,
    quality_multiple,
    resolve_budget,
)
from kmq.decontaminate import (
    CONTAMINATION,
    Contamination,
    find_contamination,
    read_eval,
    write_contamination,
)
from kmq.dedup import DedupResult, semdedup
from kmq.engines import Engine, get_engine
from kmq.errors import KmqError, Reject
from kmq.exact import DUPLICATES, ExactDuplicates, exact_duplicates, write_duplicates
from kmq.export import check_output_format, to_record, write_output
from kmq.formats import (
    LoadedPool,
    load_pool,
    write_rejects,
)
from kmq.outdir import check_out, staged
from kmq.random import SeedLike, seed_sequence, stream
from kmq.scoring import compute_quality, fill_missing
from kmq.selectors import CLUSTERED, SELECTORS, KMQSelector, SelectionResult, get_selector
from kmq.selectors.kmq import candidate_multiple
from kmq.validate import REPAIRS, checks_summary, write_repairs

if TYPE_CHECKING:
    from kmq.streaming import StreamedPool

log = logging.getLogger("kmq")

MANIFEST = "manifest.json"
TABLE = "selection.parquet"
REJECTS = "rejects.jsonl"
CLUSTERS = "clusters.npz"
DEDUP = "dedup.jsonl"
# Characters of a row's text that are embedded at most (about 12,500 tokens, ~50 MiniLM
# windows); the longest row of the 71k-row mix pool has 26,253.
EMBED_MAX_CHARS = 50_000
# The random stream (under --seed) that --sample draws from, apart from the selection's own.
SAMPLE_STREAM = 0x53414D50


def cluster(
    embeddings: np.ndarray,
    k: int | Literal["auto"],
    *,
    budget: int | None = None,
    seed: SeedLike = 0,
    k_grid: Sequence[int] | None = None,
    niter: int = DEFAULT_NITER,
    silhouette_sample: int = SILHOUETTE_SAMPLE,
    show_progress: bool = False,
    engine: Engine | None = None,
) -> tuple[Clustering, dict[int, float] | None]:
    """k-means with a given k, or with k chosen by silhouette over ``k_grid`` (``"auto"``); the
    rows are assigned to the centres by ``engine`` (default: in this process)."""
    k, scores = resolve_k(
        embeddings,
        k,
        budget=budget,
        seed=seed,
        k_grid=k_grid,
        niter=niter,
        silhouette_sample=silhouette_sample,
        show_progress=show_progress,
    )
    return (engine or get_engine()).kmeans(embeddings, k, seed=seed, niter=niter), scores


def select(
    embeddings: np.ndarray,
    budget: int | float,
    *,
    method: str = "kmq",
    k: int | Literal["auto"] = "auto",
    labels: np.ndarray | None = None,
    quality: np.ndarray | Callable[[np.ndarray], np.ndarray] | None = None,
    quality_candidates: int | str | None = None,
    allocation: str = "balanced",
    quality_weighting: str = "auto",
    temperature: float = 1.0,
    exclude: np.ndarray | Sequence[int] | None = None,
    seed: SeedLike = 0,
    k_grid: Sequence[int] | None = None,
    niter: int = DEFAULT_NITER,
    engine: str | Engine = "local",
) -> SelectionResult:
    """Select ``budget`` rows of ``embeddings`` (a count or a fraction) with ``method``.

    Clustered methods cluster first unless ``labels`` are given. The result's ``notes`` say
    when a method fell back (e.g. kMQ without quality is kM-Random). ``engine`` (a name or an
    :class:`~kmq.engines.Engine`) assigns the rows and draws the per-cluster picks; every
    engine gives the same selection.

    ``quality`` is one score per row, or a function called once with the (ascending) rows
    whose scores the selection needs, returning their scores. ``quality_candidates`` = M
    (kmq only; None, 0 or ``"all"``: every row) draws each cluster's quota among M × quota
    uniformly drawn candidates, so only those rows need a score (see
    :class:`~kmq.selectors.KMQSelector`).
    """
    runner = get_engine(engine) if isinstance(engine, str) else engine
    check_embeddings(embeddings)
    n = len(embeddings)
    n_budget = resolve_budget(budget, n)
    if method not in SELECTORS:
        raise KmqError(f"method must be one of {', '.join(SELECTORS)}; got {method!r}")
    multiple = candidate_multiple(quality_candidates)
    if multiple is not None and method != "kmq":
        raise KmqError(
            f"quality_candidates applies to method='kmq' only (other methods read every row's "
            f"quality); got method={method!r}"
        )
    silhouette = None
    if labels is None and method in CLUSTERED:
        fitted, silhouette = cluster(
            embeddings, k, budget=n_budget, seed=seed, k_grid=k_grid, niter=niter, engine=runner
        )
        labels = fitted.labels_
    selector = get_selector(
        method,
        allocation=allocation,
        weighting=quality_weighting,
        temperature=temperature,
        candidates=multiple,
    )
    if callable(quality):
        rows = np.arange(n, dtype=np.int64)
        if isinstance(selector, KMQSelector):
            seed = seed_sequence(seed)  # a Generator would advance between the two calls
            rows = selector.candidate_rows(n, n_budget, labels=labels, exclude=exclude, seed=seed)
        quality = scores_at(rows, np.asarray(quality(rows), dtype=np.float64), n)
    result = runner.select(
        selector, embeddings, n_budget, labels=labels, quality=quality, exclude=exclude, seed=seed
    )
    result.silhouette = silhouette
    return result


def scores_at(rows: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """One score per row of an ``n``-row pool: ``values`` at ``rows``, NaN elsewhere."""
    if values.shape != rows.shape:
        raise KmqError(f"the quality function returned {values.shape} scores for {len(rows)} rows")
    full = np.full(n, np.nan, dtype=np.float64)
    full[rows] = values
    return full


def check_embeddings(embeddings: Any) -> None:
    """:func:`select` takes an embedding matrix; records go through :func:`select_file`."""
    module = type(embeddings).__module__.split(".")[0]
    rows = isinstance(embeddings, list | tuple) and len(embeddings) > 0
    if (
        isinstance(embeddings, pa.Table)
        or module in ("datasets", "pandas")
        or (rows and isinstance(embeddings[0], Mapping))
    ):
        raise KmqError(
            f"select() takes an (n, d) embedding matrix, got records ({type(embeddings).__name__});"
            " to select from records (a list, a datasets.Dataset, a DataFrame or an Arrow table) "
            "use select_file(SelectConfig(input=records, out=FOLDER, budget=...))"
        )


@dataclass
class SelectRun:
    """What :func:`select_file` did: the result, the pool and the manifest it wrote.

    ``result.indices`` index the pool's valid rows; :attr:`rows` are the picks' rows in the
    input (the same when no row was rejected), so ``dataset.select(run.rows)`` is the selection.
    """

    result: SelectionResult
    pool: LoadedPool | StreamedPool
    manifest: dict[str, Any]
    out: Path

    @property
    def rows(self) -> list[int]:
        """The input row (0-based record index) of every pick, in pick order."""
        if isinstance(self.pool, LoadedPool):
            return [self.pool.examples[i].row for i in self.result.indices]
        return self.pool.rows[self.result.indices].tolist()

    def records(self, output_format: str = "native") -> list[dict[str, Any]]:
        """The picked records in pick order: as read (``native``) or as ``messages`` /
        ``sharegpt`` / ``alpaca`` records (see :mod:`kmq.export`)."""
        check_output_format(output_format)
        if not isinstance(self.pool, LoadedPool):
            raise KmqError(
                f"a streaming run keeps no records in memory; read {self.out}/selected-*"
            )
        picked = [self.pool.examples[i] for i in self.result.indices]
        if output_format == "native":
            return [dict(example.fields) for example in picked]
        return [to_record(example, output_format) for example in picked]

    def to_dataset(self, output_format: str = "native") -> Any:
        """The picks as a ``datasets.Dataset``, in pick order: for a Dataset input and
        ``native``, ``dataset.select(run.rows)`` (its features kept); else built from
        :meth:`records`."""
        datasets = require("datasets")
        data = self.pool.data if isinstance(self.pool, LoadedPool) else None
        if output_format == "native" and isinstance(data, datasets.Dataset):
            return data.select(self.rows)
        return datasets.Dataset.from_list(self.records(output_format))


class Timer:
    """Named wall-clock stages."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 3)


def read_exclude(path: Path) -> list[str]:
    """Ids never to pick: a selection table (Parquet), a JSON array or JSONL of ids or of
    objects with an ``id``, or plain text with one id per line. A JSON object is refused (it
    holds no list of ids kmq could read without guessing)."""
    if not path.exists():
        raise KmqError(f"--exclude file not found: {path}")
    if not path.is_file():
        raise KmqError(f"--exclude {path} is a folder; give a file of ids")
    if path.suffix == ".parquet":
        try:
            names = pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as exc:
            raise KmqError(f"--exclude {path}: not a readable Parquet file ({exc})") from None
        if "id" not in names:
            raise KmqError(
                f"--exclude {path}: no 'id' column (it has {', '.join(names) or 'none'})"
            )
        return [str(v) for v in pq.read_table(path, columns=["id"]).column("id").to_pylist()]
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise KmqError(f"--exclude {path}: not UTF-8 text (byte {exc.start})") from None
    if path.suffix == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KmqError(
                f"--exclude {path}, line {exc.lineno} column {exc.colno}: not valid JSON "
                f"({exc.msg})"
            ) from None
        if not isinstance(items, list):
            raise KmqError(
                f"--exclude {path}: a JSON {json_kind(items)}, expected an array of ids "
                '(["a", "b"]) or of objects with an "id"'
            )
        return exclude_ids(path, "item", list(enumerate(items, start=1)))
    if path.suffix == ".jsonl":
        lines = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                lines.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise KmqError(
                    f"--exclude {path}, line {number}: not valid JSON ({exc.msg})"
                ) from None
        return exclude_ids(path, "line", lines)
    return [line.strip() for line in text.splitlines() if line.strip()]


def json_kind(value: Any) -> str:
    """What JSON calls the type of a parsed ``value``."""
    kinds = {dict: "object", str: "string", bool: "boolean", int: "number", float: "number"}
    return kinds.get(type(value), "null" if value is None else type(value).__name__)


def exclude_ids(path: Path, unit: str, items: list[tuple[int, Any]]) -> list[str]:
    """The id of every (number, item): the item itself or its ``id`` field."""
    ids = []
    for number, item in items:
        value = item.get("id") if isinstance(item, dict) else item
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise KmqError(
                f"--exclude {path}, {unit} {number}: expected an id (a string, or an object "
                f"with 'id'), got {json.dumps(item)[:80]}"
            )
        ids.append(str(value))
    return ids


def select_file(config: SelectConfig) -> SelectRun:
    """Load → embed (cached) → cluster → select → write, as ``kmq select`` does.

    Streaming runs (``config.streaming``, or a folder of shards as input) go to
    :func:`kmq.streaming.select_streaming`.
    """
    config.validate()
    check_out(config.out)
    if config.is_streaming():
        from kmq.streaming import select_streaming  # it builds on this module

        return select_streaming(config)
    streaming_only = {
        "--kmeans-sample": config.kmeans_sample,
        "--embedding-dtype": config.embedding_dtype,
        "--output-shard-rows": config.output_shard_rows,
    }
    given = [flag for flag, value in streaming_only.items() if value is not None]
    if given:
        raise KmqError(f"{', '.join(given)} apply to --streaming runs only")
    timer = Timer()
    out = Path(config.out)
    with timer.stage("load"):
        pool = load_pool(
            config.input,
            fields=config.fields,
            format=config.format,
            on_invalid=config.on_invalid,
            quality_field=config.quality_field,
        )
    n = len(pool.examples)
    if n == 0:
        nothing_valid(config, pool.rejects)
    log.info(
        "loaded %d rows of %s (%s, %s), %d rejected",
        n,
        pool.path,
        pool.format,
        pool.file_kind,
        len(pool.rejects),
    )
    not_sampled = {}
    if config.sample is not None and config.sample < n:
        pool = sample_pool(pool, config.sample, config.seed)
        not_sampled["not_sampled"] = n - config.sample
        log.info(
            "kept a sample of %d of the %d valid rows (--sample, seed %d)",
            config.sample,
            n,
            config.seed,
        )
        n = config.sample
    budget = resolve_budget(config.budget, n)
    ids = [ex.id for ex in pool.examples]
    exclude_mask, unknown_excluded = exclusion(ids, config.exclude)
    n_excluded = int(exclude_mask.sum())  # by --exclude; the masks below are counted apart
    check_feasible(config, n, budget, n_excluded)
    duplicates = None if config.keep_duplicates else exact_duplicates(pool.examples)
    exclude_mask |= exact_mask(duplicates, n)
    contamination = decontamination(pool, config)
    if contamination is not None:
        exclude_mask |= contamination.mask(n)
    multiple = quality_multiple(config)
    quality: np.ndarray | None = None
    quality_info: dict[str, Any] | None = None
    if multiple is None:
        with timer.stage("quality"):
            quality, quality_info = pool_quality(pool, config)
    with timer.stage("embed"):
        embeddings, embedding = embed_pool(pool, config)
    fitted: Clustering | None = None
    silhouette = None
    with timer.stage("cluster"):
        if config.method in CLUSTERED or config.k != "auto" or config.dedup is not None:
            fitted, silhouette = cluster(
                embeddings,
                config.k,
                budget=budget,
                seed=config.seed,
                k_grid=config.k_grid,
                niter=config.niter,
                silhouette_sample=config.silhouette_sample,
                show_progress=config.progress,
                engine=make_engine(config),
            )
    excluded = {
        "excluded": n_excluded,
        "excluded_not_in_pool": unknown_excluded,
        "deduplicated": 0,
        "exact_duplicates": None if duplicates is None else len(duplicates.removed),
        "decontaminated": None if contamination is None else len(contamination.removed),
        **not_sampled,
    }
    dedup = None
    if config.dedup is not None and fitted is not None:
        with timer.stage("dedup"):
            dedup = semdedup(embeddings, fitted.labels_, config.dedup, centroids=fitted.centroids_)
            exclude_mask = exclude_mask | ~dedup.keep
            excluded["deduplicated"] = len(dedup.removed)
        log.info("SemDeDup (eps=%g) removed %d near-duplicates", config.dedup, len(dedup.removed))
    selector = make_selector(config)
    labels = None if fitted is None else fitted.labels_
    if isinstance(selector, KMQSelector) and multiple is not None:
        with timer.stage("quality"):
            rows = selector.candidate_rows(
                n, budget, labels=labels, exclude=exclude_mask, seed=config.seed
            )
            quality, quality_info = pool_quality(pool, config, rows=rows)
    with timer.stage("select"):
        result = make_engine(config).select(
            selector,
            embeddings,
            budget,
            labels=labels,
            quality=quality,
            exclude=exclude_mask,
            seed=config.seed,
        )
        result.silhouette = silhouette
    if quality_info is not None and hasattr(selector, "rule_"):
        quality_info["weighting"] = f"{selector.rule_} (temperature {config.temperature})"
    for note in result.notes:
        log.warning(note)
    with staged(out) as folder:
        with timer.stage("write"):
            picked_rows = [pool.examples[i].row for i in result.indices]
            data_path = write_output(pool, picked_rows, folder, config.output_format)
            write_table(folder / TABLE, pool, result, quality)
            if fitted is not None:
                write_clusters(folder / CLUSTERS, fitted)
            if pool.rejects:
                write_rejects(pool.rejects, folder / REJECTS)
            if pool.repairs:
                write_repairs(pool.repairs, folder / REPAIRS)
            pool_rows = np.array([ex.row for ex in pool.examples], dtype=np.int64)
            if duplicates is not None:
                write_duplicates(folder / DUPLICATES, duplicates, pool_rows, ids)
            if contamination is not None:
                write_contamination(folder / CONTAMINATION, contamination, pool_rows, ids)
            if dedup is not None:
                write_dedup(folder / DEDUP, pool, dedup)
        summary = PoolSummary(
            input={
                "path": str(pool.path.resolve() if pool.path.exists() else pool.path),
                "sha256": pool.sha256,
                "kind": pool.file_kind,
                "compressed": pool.compressed,
                "format": pool.format,
            },
            records=pool.n_records,
            valid=len(pool.examples),
            rejected=len(pool.rejects),
            sources=source_counts(pool),
            selected_sources=source_counts(pool, result.indices),
        )
        manifest = build_manifest(
            config,
            summary,
            result,
            fitted,
            embedding,
            quality_info,
            excluded,
            timer,
            data_path.name,
        )
        manifest["checks"] = checks_summary(pool.rejects, pool.repairs)
        manifest["outputs"]["contamination"] = CONTAMINATION if contamination is not None else None
        write_json(folder / MANIFEST, manifest)  # last: the folder is complete
    return SelectRun(result=result, pool=pool, manifest=manifest, out=out)


def nothing_valid(config: SelectConfig, rejects: Sequence[Reject]) -> NoReturn:
    """Stop a run whose input has no valid row; with rejects, ``--out`` holds only
    ``rejects.jsonl`` (every row and why), which the error names."""
    if not rejects:
        raise KmqError(f"{input_label(config.input)}: no valid rows to select from")
    with staged(config.out) as folder:
        write_rejects(rejects, folder / REJECTS)
    raise KmqError(
        f"{input_label(config.input)}: every row was rejected ({len(rejects)}), nothing to select; "
        f"each row and its reason are in {Path(config.out) / REJECTS}"
    )


def check_feasible(config: SelectConfig, n: int, budget: int, excluded: int) -> None:
    """Before any embedding: the budget fits the rows left, and k (or the k grid) the pool."""
    left = n - excluded
    if left == 0:
        raise KmqError(
            f"--exclude {config.exclude} names every one of the {n} valid rows: "
            "nothing is left to select"
        )
    if budget > left:
        named = f" ({excluded} excluded by --exclude {config.exclude})" if excluded else ""
        raise KmqError(f"--budget {budget} exceeds the {left} rows left to select of {n}{named}")
    if not (config.method in CLUSTERED or config.k != "auto" or config.dedup is not None):
        return
    if config.k != "auto" and config.k > n:
        raise KmqError(f"--k {config.k} exceeds the {n} valid rows (k-means needs k <= rows)")
    if config.k == "auto" and config.k_grid and max(config.k_grid) > n:
        raise KmqError(f"--k-grid {config.k_grid} has a k above the {n} valid rows")


def decontamination(pool: LoadedPool, config: SelectConfig) -> Contamination | None:
    """The rows ``--decontaminate`` drops (``None`` without evaluation files), logged."""
    if not config.decontaminate:
        return None
    found = find_contamination(pool.examples, read_eval(config.decontaminate, config.ngram))
    log.info(
        "decontamination (%d-grams of %d evaluation texts; %d under 8 words left out) "
        "dropped %d rows",
        config.ngram,
        found.eval_texts,
        found.eval_too_short,
        len(found.removed),
    )
    return found


def exact_mask(duplicates: ExactDuplicates | None, n: int) -> np.ndarray:
    """Mask of the rows removed as exact duplicates (none when dedup is off), logged."""
    if duplicates is None:
        return np.zeros(n, dtype=bool)
    log.info("removed %d exact duplicates (kept their first copies)", len(duplicates.removed))
    return duplicates.mask(n)


def sample_pool(pool: LoadedPool, size: int, seed: int) -> LoadedPool:
    """``pool`` with ``size`` of its valid rows, drawn uniformly without replacement from the
    seed's own stream (:data:`SAMPLE_STREAM`) and kept in input order."""
    keep = np.sort(stream(seed, SAMPLE_STREAM).choice(len(pool.examples), size, replace=False))
    quality = None if pool.quality is None else pool.quality[keep]
    return replace(pool, examples=[pool.examples[i] for i in keep], quality=quality)


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


def column_quality_info(column: str) -> dict[str, Any]:
    """The manifest's ``quality`` for scores read from a column (``--quality-field``)."""
    return {"scorer": "column", "column": column, "direction": "as given; higher = better"}


def embed_pool(pool: LoadedPool, config: SelectConfig) -> tuple[np.ndarray, dict[str, Any] | None]:
    """The pool's embeddings (cached) and what made them; none for plain random selection."""
    if config.method == "random" and config.k == "auto":
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


def cap_texts(texts: list[str], ids: Sequence[str]) -> list[str]:
    """``texts`` with each cut to its first :data:`EMBED_MAX_CHARS` characters (a warning names
    how many were cut and the longest), so one huge row cannot take hours and gigabytes."""
    long = [i for i, text in enumerate(texts) if len(text) > EMBED_MAX_CHARS]
    if not long:
        return texts
    longest = max(long, key=lambda i: len(texts[i]))
    log.warning(
        "%d rows are longer than %s characters: only their first %s are embedded "
        "(the longest: id %s, %s characters)",
        len(long),
        f"{EMBED_MAX_CHARS:,}",
        f"{EMBED_MAX_CHARS:,}",
        ids[longest],
        f"{len(texts[longest]):,}",
    )
    return [text[:EMBED_MAX_CHARS] for text in texts]


def check_vectors(vectors: np.ndarray, encoder: str, cache_dir: str | None) -> None:
    """Refuse vectors that cannot be clustered: any NaN/inf, or every row all-zero (an API
    that answers zeros); a few all-zero rows only warn (e.g. a static model that knows none of
    a text's tokens)."""
    n = len(vectors)
    where = f"--cache-dir {cache_dir}" if cache_dir else "the kmq cache ($KMQ_CACHE_DIR)"
    fix = f"; they may be cached in {where}: remove that entry or give another --cache-dir"
    broken = n - int(np.isfinite(vectors).all(axis=1).sum())
    if broken:
        raise KmqError(f"the encoder {encoder} returned {broken} of {n} vectors with NaN/inf{fix}")
    zero = int((~np.any(vectors != 0, axis=1)).sum())
    if zero == n:
        raise KmqError(
            f"the encoder {encoder} returned an all-zero vector for every one of the {n} rows: "
            f"nothing to cluster{fix}"
        )
    if zero:
        log.warning("the encoder %s returned %d all-zero vectors of %d", encoder, zero, n)


def exclusion(ids: list[str], path: str | None) -> tuple[np.ndarray, int]:
    """Mask of the pool rows named in ``--exclude``, and how many named ids are not in the pool."""
    mask = np.zeros(len(ids), dtype=bool)
    if path is None:
        return mask, 0
    wanted = set(read_exclude(Path(path)))
    position = {id_: i for i, id_ in enumerate(ids)}
    hits = [position[w] for w in wanted if w in position]
    mask[hits] = True
    unknown = len(wanted) - len(hits)
    if unknown:
        log.warning("%d ids in %s are not in the pool", unknown, path)
    return mask, unknown


def write_table(
    path: Path, pool: LoadedPool, result: SelectionResult, quality: np.ndarray | None
) -> None:
    """One row per pick: pick order, input row, id, cluster, source, quality, score, reason."""
    idx = result.indices
    write_selection_table(
        path,
        result,
        quality,
        rows=np.array([pool.examples[i].row for i in idx], dtype=np.int64),
        ids=[pool.examples[i].id for i in idx],
        sources=[pool.examples[i].source for i in idx],
    )


def write_selection_table(
    path: Path,
    result: SelectionResult,
    quality: np.ndarray | None,
    *,
    rows: np.ndarray,
    ids: list[str],
    sources: list[str | None],
) -> None:
    """:func:`write_table` given the input row, id and source of every pick (in pick order)."""
    idx = result.indices
    picked_quality = quality[idx] if quality is not None else np.full(len(idx), np.nan)
    table = pa.table(
        {
            "pick_order": np.arange(len(idx), dtype=np.int64),
            "index": np.asarray(rows, dtype=np.int64),
            "id": ids,
            "cluster": (
                result.labels[idx] if result.labels is not None else np.full(len(idx), -1)
            ).astype(np.int64),
            "source": sources,
            "quality": picked_quality.astype(np.float64),
            f"{result.score_name}_score": result.scores,
            "reason": result.reasons,
        }
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_dedup(path: Path, pool: LoadedPool, dedup: DedupResult) -> None:
    """One line per near-duplicate removed: its input row and id, its kept twin's, the cosine."""
    lines = []
    for row, twin, sim in zip(dedup.removed, dedup.twin, dedup.similarity, strict=True):
        ex, kept = pool.examples[row], pool.examples[twin]
        record = {
            "index": ex.row,
            "id": ex.id,
            "twin_index": kept.row,
            "twin_id": kept.id,
            "similarity": round(float(sim), 6),
        }
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    with atomic_path(path) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")


def write_clusters(path: Path, fitted: Clustering, distances: np.ndarray | None = None) -> None:
    """Labels of every pool row and the centroids (``np.load(path)["labels"|"centroids"]``);
    the streaming path adds each row's squared L2 ``distances`` to its centre."""
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        if distances is None:
            np.savez(fh, labels=fitted.labels_, centroids=fitted.centroids_)
        else:
            np.savez(fh, labels=fitted.labels_, centroids=fitted.centroids_, distances=distances)


def source_counts(pool: LoadedPool, rows: np.ndarray | None = None) -> dict[str, int] | None:
    sources = [ex.source for ex in pool.examples]
    if all(s is None for s in sources):
        return None
    picked = sources if rows is None else [sources[i] for i in rows]
    return dict(sorted(Counter(s if s is not None else "(none)" for s in picked).items()))


def entropy(counts: dict[str, int]) -> float:
    """Shannon entropy (nats) of a count distribution."""
    p = np.array(list(counts.values()), dtype=np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum())


@dataclass
class PoolSummary:
    """What the manifest says of the input: where it is, what it held, its sources (rows per
    source in the pool and in the selection; None when no row has one)."""

    input: dict[str, Any]  # path, sha256, kind, compressed, format
    records: int
    valid: int
    rejected: int
    sources: dict[str, int] | None
    selected_sources: dict[str, int] | None


def build_manifest(
    config: SelectConfig,
    pool: PoolSummary,
    result: SelectionResult,
    fitted: Clustering | None,
    embedding: dict[str, Any] | None,
    quality_info: dict[str, Any] | None,
    excluded: dict[str, int | None],
    timer: Timer,
    rows_written: str | list[str],
    streaming: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``manifest.json``; ``rows_written`` names the selected-rows file(s), ``streaming`` (only
    in streaming runs) how the pool was streamed."""
    pool_sources = pool.sources
    picked_sources = pool.selected_sources
    encoder = config.encoder if isinstance(config.encoder, str) else config.encoder.name
    config_dict = asdict(replace(config, encoder=encoder, input=input_label(config.input)))
    clusters = None
    if fitted is not None:
        clusters = {
            "k": fitted.k,
            "inertia": fitted.inertia_,
            "silhouette": {str(k): s for k, s in (result.silhouette or {}).items()} or None,
            "pool": fitted.sizes_.tolist(),
            "quota": None if result.quotas is None else result.quotas.tolist(),
            "selected": np.bincount(fitted.labels_[result.indices], minlength=fitted.k).tolist(),
        }
    return {
        "tool": "kmq",
        "version": __version__,
        "python": platform.python_version(),
        "config": config_dict,
        "seed": config.seed,
        "input": pool.input,
        "counts": {
            "records": pool.records,
            "valid": pool.valid,
            "rejected": pool.rejected,
            **excluded,
            "budget": result.budget,
            "selected": len(result),
            "shortfall": result.shortfall,
        },
        "method": result.method,
        "score_name": f"{result.score_name}_score",
        "notes": result.notes,
        "embedding": embedding,
        "quality": quality_info,
        "clusters": clusters,
        "sources": None
        if pool_sources is None
        else {
            "pool": pool_sources,
            "selected": picked_sources,
            "entropy_pool": entropy(pool_sources),
            "entropy_selected": entropy(picked_sources or {}),
        },
        "timings_s": timer.seconds,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "outputs": {
            "clusters": CLUSTERS if fitted is not None else None,
            "rows": rows_written,
            "table": TABLE,
            "rejects": REJECTS if pool.rejected else None,
            "dedup": DEDUP if config.dedup is not None else None,
            "duplicates": None if config.keep_duplicates else DUPLICATES,
        },
    } | ({"streaming": streaming} if streaming is not None else {})
