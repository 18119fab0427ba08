"""``kmq select`` as functions: arrays in → :class:`SelectionResult`; a file in → files out."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from kmq.cachedir import default_cache_dir
from kmq.clustering import DEFAULT_NITER, Clustering, resolve_k
from kmq.config import SelectConfig, make_encoder, make_engine, make_selector, quality_multiple
from kmq.decontaminate import (
    CONTAMINATION,
    Contamination,
    find_contamination,
    read_eval,
    write_contamination,
)
from kmq.dedup import semdedup
from kmq.engines import Engine, get_engine
from kmq.errors import KmqError, ParameterError
from kmq.exact import DUPLICATES, exact_duplicates, write_duplicates
from kmq.export import write_output
from kmq.formats import LoadedPool, load_pool, write_rejects
from kmq.mixing import select_budgeted
from kmq.outdir import check_out, staged
from kmq.outputs import (
    CLUSTERS,
    DEDUP,
    REJECTS,
    TABLE,
    PoolSummary,
    SelectRun,
    Timer,
    build_manifest,
    source_counts,
    write_clusters,
    write_dedup,
    write_table,
)
from kmq.random import SeedLike, seed_sequence, stream
from kmq.scoring import compute_quality, fill_missing
from kmq.selectors import ClusterSelector, KMQSelector, SelectionResult, Selector, get_selector
from kmq.selectors.kmq import candidate_multiple
from kmq.stages import cap_texts, check_vectors, column_quality_info, exclusions, nothing_valid
from kmq.statistics import statistics
from kmq.streaming import select_streaming
from kmq.token_budget import row_budget, rows_for_tokens
from kmq.tokens import DEFAULT_TOKENIZER, load_token_counter
from kmq.validate import REPAIRS, checks_summary, write_repairs

log = logging.getLogger("kmq")

# The random stream (under --seed) that --sample draws from, apart from the selection's own.
SAMPLE_STREAM = 0x53414D50


def cluster(
    embeddings: np.ndarray,
    k: int | Literal["auto"],
    *,
    engine: Engine | None = None,
    **search: Any,
) -> tuple[Clustering, dict[int, float] | None]:
    """k-means with a given k, or with k chosen by silhouette (``"auto"``; ``search`` holds
    :func:`~kmq.clustering.resolve_k`'s options: ``budget``, ``seed``, ``k_grid``, ``niter``,
    ``silhouette_sample``, ``show_progress``); the rows are assigned to the centres by
    ``engine`` (default: in this process)."""
    k, scores = resolve_k(embeddings, k, **search)
    seed, niter = search.get("seed", 0), search.get("niter", DEFAULT_NITER)
    return (engine or get_engine()).kmeans(embeddings, k, seed=seed, niter=niter), scores


def select(
    embeddings: np.ndarray,
    budget: int | float | None = None,
    *,
    budget_tokens: int | None = None,
    tokens: np.ndarray | Sequence[int] | None = None,
    mix: Mapping[str, float] | None = None,
    sources: Sequence[str | None] | None = None,
    method: str | Selector = "kmq",
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
    **options: Any,
) -> SelectionResult:
    """Select ``budget`` rows of ``embeddings`` (a count or a fraction) with ``method``: a name
    of :data:`~kmq.selectors.SELECTORS`, built with ``options`` (e.g. ``method="qdit",
    alpha=0.9``; an option the method does not take is refused), or a
    :class:`~kmq.selectors.Selector` object.

    Clustered methods cluster first unless ``labels`` are given. The result's ``notes`` say
    when a method fell back (e.g. kMQ without quality is kM-Random). ``engine`` (a name or an
    :class:`~kmq.engines.Engine`) assigns the rows and draws the per-cluster picks; every
    engine gives the same selection. ``allocation`` (the clustered methods),
    ``quality_weighting`` and ``temperature`` (kmq) go to the methods that take them.

    ``quality`` is one score per row, or a function called once with the (ascending) rows
    whose scores the selection needs, returning their scores. ``quality_candidates`` = M
    (kmq only; None, 0 or ``"all"``: every row) draws each cluster's quota among M × quota
    uniformly drawn candidates, so only those rows need a score (see
    :class:`~kmq.selectors.KMQSelector`).

    ``budget_tokens`` (instead of ``budget``) selects rows whose ``tokens`` (one count per row)
    sum to at most that many, as :mod:`kmq.token_budget` says; every row's quality is then read.
    ``mix`` (source → share, summing to 1) with ``sources`` (one per row) splits the budget by
    source first and selects inside each source's rows (:mod:`kmq.mixing`).
    """
    runner = get_engine(engine) if isinstance(engine, str) else engine
    check_embeddings(embeddings)
    n = len(embeddings)
    n_budget = row_budget(budget, budget_tokens, tokens, n, exclude, quality_candidates)
    multiple = candidate_multiple(quality_candidates)
    selector = make_method(
        method,
        options,
        allocation=allocation,
        weighting=quality_weighting,
        temperature=temperature,
        candidates=multiple,
    )
    if multiple is not None and not isinstance(selector, KMQSelector):
        raise ParameterError(
            "quality_candidates",
            f"{{param}} applies to method='kmq' only (other methods read every row's "
            f"quality); got method={method!r}",
        )
    silhouette = None
    if labels is None and isinstance(selector, ClusterSelector):
        fitted, silhouette = cluster(
            embeddings, k, budget=n_budget, seed=seed, k_grid=k_grid, niter=niter, engine=runner
        )
        labels = fitted.labels_
    if callable(quality):
        rows = np.arange(n, dtype=np.int64)
        if isinstance(selector, KMQSelector):
            seed = seed_sequence(seed)  # a Generator would advance between the two calls
            rows = selector.candidate_rows(n, n_budget, labels=labels, exclude=exclude, seed=seed)
        quality = scores_at(rows, np.asarray(quality(rows), dtype=np.float64), n)
    result, _, spent = select_budgeted(
        selector,
        embeddings,
        n_budget,
        engine=runner,
        mix=mix,
        sources=sources,
        budget_tokens=budget_tokens,
        tokens=None if tokens is None else np.asarray(tokens),
        labels=labels,
        quality=quality,
        exclude=exclude,
        seed=seed,
    )
    if spent is not None:
        result.notes.append(spent.note())
    result.silhouette = silhouette
    return result


# select()'s names of the settings the selectors take under another name
SELECT_PARAMETERS = {"weighting": "quality_weighting", "candidates": "quality_candidates"}


def make_method(method: str | Selector, options: dict[str, Any], **shared: Any) -> Selector:
    """The selector :func:`select` runs: ``method`` itself, or the one it names built with
    ``options`` and the ``shared`` settings it takes."""
    if not isinstance(method, str):
        if options:
            raise ParameterError(
                "method",
                f"{{param}} is a selector object; give {', '.join(options)} to it, not to select()",
            )
        return method
    try:
        return get_selector(method, shared=shared, **options)
    except ParameterError as exc:
        if exc.parameter not in SELECT_PARAMETERS:
            raise
        raise exc.renamed(SELECT_PARAMETERS[exc.parameter]) from None


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


def select_file(config: SelectConfig) -> SelectRun:
    """Load → embed (cached) → cluster → select → write, as ``kmq select`` does.

    Streaming runs (``config.streaming``, or a folder of shards as input) go to
    :func:`kmq.streaming.select_streaming`.
    """
    config.validate()
    check_out(config.out)
    if config.is_streaming():
        return select_streaming(config)
    streaming_only = ("kmeans_sample", "embedding_dtype", "output_shard_rows")
    given = [name for name in streaming_only if getattr(config, name) is not None]
    if given:
        listed = ", ".join(["{param}", *(f"{{{name}}}" for name in given[1:])])
        verb = "applies" if len(given) == 1 else "apply"
        raise ParameterError(
            given[0], f"{listed} {verb} to {{streaming}} runs only", *given[1:], "streaming"
        )
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
    ids = [ex.id for ex in pool.examples]
    left_out = exclusions(config, ids, lambda: exact_duplicates(pool.examples))
    budget, exclude_mask, duplicates = left_out.budget, left_out.mask, left_out.duplicates
    tokens, tokenizer = count_tokens(pool, config, timer)
    if config.budget_tokens is not None:
        budget = rows_for_tokens(config.budget_tokens, tokens, exclude_mask)
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
        if config.needs_clusters():
            fitted, silhouette = cluster(
                embeddings, config.k, engine=make_engine(config), **config.k_search(budget)
            )
    excluded = left_out.counts(
        decontaminated=None if contamination is None else len(contamination.removed),
        **not_sampled,
    )
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
        result, mix, token_selection = select_budgeted(
            selector,
            embeddings,
            budget,
            engine=make_engine(config),
            mix=config.mix,
            sources=[ex.source for ex in pool.examples],
            budget_tokens=config.budget_tokens,
            tokens=tokens,
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
        if pool.parts:  # several inputs: each file, and the list of them as the path
            summary.input |= {"path": [part["path"] for part in pool.parts], "files": pool.parts}
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
            checks=checks_summary(pool.rejects, pool.repairs),
        )
        manifest.outputs["contamination"] = CONTAMINATION if contamination is not None else None
        manifest.statistics = statistics(
            pool.examples, result.indices, tokens=tokens, tokenizer=tokenizer, labels=labels
        )
        if mix is not None and manifest.sources is not None:
            manifest.sources["mix"] = mix
        manifest.statistics["token_budget"] = (
            None if token_selection is None else token_selection.summary()
        )
        manifest.write(folder)  # last: the folder is complete
    return SelectRun(result=result, pool=pool, manifest=manifest, out=out)


def count_tokens(
    pool: LoadedPool, config: SelectConfig, timer: Timer
) -> tuple[np.ndarray | None, str | None]:
    """Tokens of every row (see :mod:`kmq.tokens`) and the tokenizer's name, when the run has
    a token budget or names a tokenizer; ``(None, None)`` otherwise."""
    if config.budget_tokens is None and config.tokenizer is None:
        return None, None
    with timer.stage("tokens"):
        counter = load_token_counter(config.tokenizer or DEFAULT_TOKENIZER, config.cache_dir)
        tokens = counter.count(pool.examples, cache_dir=config.cache_dir or default_cache_dir())
    log.info("%s tokens in %d rows (%s)", f"{int(tokens.sum()):,}", len(tokens), counter.name)
    return tokens, counter.name


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
