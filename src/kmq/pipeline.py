"""``kmq select`` as functions: arrays in → :class:`SelectionResult`; a file in → files out."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from kmq.cachedir import default_cache_dir
from kmq.clustering import (
    DEFAULT_NITER,
    Clustering,
    assign,
    centroid_cosine,
    default_k_grid,
    fit_centroids,
    kmeans_sample,
    resolve_k,
    sample_size,
)
from kmq.config import SelectConfig, make_engine, make_selector, quality_multiple
from kmq.decontaminate import (
    CONTAMINATION,
    Contamination,
    find_contamination,
    read_eval,
    write_contamination,
)
from kmq.dedup import DedupResult, semdedup
from kmq.engines import Engine, get_engine
from kmq.errors import KmqError, ParameterError
from kmq.exact import DUPLICATES, ExactDuplicates, write_duplicates
from kmq.examples import Example
from kmq.formats import write_rejects
from kmq.mixing import select_budgeted
from kmq.outdir import check_out, staged
from kmq.outputs import (
    CLUSTERS,
    DEDUP,
    REJECTS,
    TABLE,
    SelectRun,
    Timer,
    build_manifest,
    write_clusters,
    write_dedup,
    write_selection_table,
)
from kmq.pools import Pool, open_pool
from kmq.random import SeedLike, seed_sequence
from kmq.selectors import ClusterSelector, KMQSelector, SelectionResult, Selector, get_selector
from kmq.selectors.kmq import candidate_multiple
from kmq.stages import check_vectors, exclusions
from kmq.statistics import statistics
from kmq.token_budget import row_budget, rows_for_tokens
from kmq.tokens import DEFAULT_TOKENIZER, load_token_counter
from kmq.validate import REPAIRS, checks_summary, write_repairs

log = logging.getLogger("kmq")


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


@dataclass
class Clusters:
    """A run's clustering and the silhouette per k tried; when k-means was fitted on a sample
    (:func:`sample_then_assign`), the sample's size and each row's squared L2 ``distances`` to
    its centre."""

    fitted: Clustering
    silhouette: dict[int, float] | None
    distances: np.ndarray | None = None
    sample_size: int | None = None


def cluster_pool(
    embeddings: np.ndarray,
    budget: int,
    config: SelectConfig,
    timer: Timer,
    *,
    on_sample: bool = False,
) -> Clusters | None:
    """The run's clusters (None when :meth:`SelectConfig.needs_clusters` says it runs none):
    k-means on every row by the config's engine, or (``on_sample``) sample-then-assign."""
    if not config.needs_clusters():
        return None
    if on_sample:
        return sample_then_assign(embeddings, budget, config, timer)
    with timer.stage("cluster"):
        fitted, silhouette = cluster(
            embeddings, config.k, engine=make_engine(config), **config.k_search(budget)
        )
    return Clusters(fitted, silhouette)


def sample_then_assign(
    embeddings: np.ndarray, budget: int, config: SelectConfig, timer: Timer
) -> Clusters:
    """k (given, or by silhouette) and centres fitted on ``--kmeans-sample`` rows drawn with the
    run seed (see :func:`~kmq.clustering.sample_size`), then every row assigned, the vectors
    read in chunks: the vectors need not fit in memory. With float32 vectors and a sample of
    every row, the clustering is :func:`cluster`'s."""
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
    return Clusters(fitted, silhouette, distances, size)


def select_file(config: SelectConfig) -> SelectRun:
    """Load → embed (cached) → cluster → select → write, as ``kmq select`` does.

    The pool is held in memory, or read in a stream (``config.streaming``, or a folder of
    shards as input: see :mod:`kmq.streaming`); the steps are the same for both
    (:class:`~kmq.pools.Pool`), and a streamed pool's k-means is fitted on a sample.
    """
    config.validate()
    check_out(config.out)
    timer = Timer()
    out = Path(config.out)
    pool = open_pool(config, timer)
    n = len(pool)
    examples = pool.examples  # None when streamed: validate() refused the stages that read them
    left_out = exclusions(config, pool.ids, pool.exact_duplicates)
    budget, exclude_mask, duplicates = left_out.budget, left_out.mask, left_out.duplicates
    tokens, tokenizer = (None, None) if examples is None else count_tokens(examples, config, timer)
    if config.budget_tokens is not None:
        budget = rows_for_tokens(config.budget_tokens, tokens, exclude_mask)
    contamination = None if examples is None else decontamination(examples, config)
    if contamination is not None:
        exclude_mask |= contamination.mask(n)
    multiple = quality_multiple(config)
    quality: np.ndarray | None = None
    quality_info: dict[str, Any] | None = None
    if multiple is None:
        with timer.stage("quality"):
            quality, quality_info = pool.score_quality(config)
    with timer.stage("embed"):
        embeddings, embedding = pool.embed(config)
    clusters = cluster_pool(embeddings, budget, config, timer, on_sample=pool.fit_on_sample)
    fitted = None if clusters is None else clusters.fitted
    excluded = left_out.counts(
        decontaminated=None if contamination is None else len(contamination.removed),
        **pool.left_out(),
    )
    dedup = None
    if config.dedup is not None and fitted is not None:
        with timer.stage("dedup"):
            dedup = semdedup(embeddings, fitted.labels_, config.dedup, centroids=fitted.centroids_)
            exclude_mask = exclude_mask | ~dedup.keep
            excluded["deduplicated"] = len(dedup.removed)
        log.info("SemDeDup (eps=%g) removed %d near-duplicates", config.dedup, len(dedup.removed))
    selector = make_selector(config, **selector_options(config, clusters))
    labels = None if fitted is None else fitted.labels_
    if isinstance(selector, KMQSelector) and multiple is not None:
        with timer.stage("quality"):
            rows = selector.candidate_rows(
                n, budget, labels=labels, exclude=exclude_mask, seed=config.seed
            )
            quality, quality_info = pool.score_quality(config, rows=rows)
    with timer.stage("select"):
        result, mix, token_selection = select_budgeted(
            selector,
            pool.selection_vectors(embeddings, config),
            budget,
            engine=make_engine(config),
            mix=config.mix,
            sources=pool.sources_of() if config.mix else None,
            budget_tokens=config.budget_tokens,
            tokens=tokens,
            labels=labels,
            quality=quality,
            exclude=exclude_mask,
            seed=config.seed,
        )
        result.silhouette = None if clusters is None else clusters.silhouette
    if quality_info is not None and hasattr(selector, "rule_"):
        quality_info["weighting"] = f"{selector.rule_} (temperature {config.temperature})"
    for note in result.notes:
        log.warning(note)
    with staged(out) as folder:
        with timer.stage("write"):
            rows_written = write_files(
                folder,
                pool,
                config,
                result,
                quality=quality,
                clusters=clusters,
                duplicates=duplicates,
                contamination=contamination,
                dedup=dedup,
            )
        manifest = build_manifest(
            config,
            pool.summary(result),
            result,
            fitted,
            embedding,
            quality_info,
            excluded,
            timer,
            rows_written,
            pool.streaming_section(
                None if clusters is None else clusters.sample_size, embedding, config
            ),
            checks=checks_summary(pool.rejects, pool.repairs),
        )
        manifest.outputs["contamination"] = CONTAMINATION if contamination is not None else None
        if mix is not None and manifest.sources is not None:
            manifest.sources["mix"] = mix
        if examples is not None:
            manifest.statistics = statistics(
                examples, result.indices, tokens=tokens, tokenizer=tokenizer, labels=labels
            )
            manifest.statistics["token_budget"] = (
                None if token_selection is None else token_selection.summary()
            )
        manifest.write(folder)  # last: the folder is complete
    return SelectRun(result=result, pool=pool, manifest=manifest, out=out)


def write_files(
    folder: Path,
    pool: Pool,
    config: SelectConfig,
    result: SelectionResult,
    *,
    quality: np.ndarray | None,
    clusters: Clusters | None,
    duplicates: ExactDuplicates | None,
    contamination: Contamination | None,
    dedup: DedupResult | None,
) -> str | list[str]:
    """Every output file but the manifest; returns the name(s) of the picked rows' file(s)."""
    rows_written = pool.write_rows(folder, result, config)
    picks = result.indices
    write_selection_table(
        folder / TABLE,
        result,
        quality,
        rows=pool.input_rows(picks),
        ids=[pool.ids[i] for i in picks],
        sources=pool.sources_of(picks),
    )
    if clusters is not None:
        write_clusters(folder / CLUSTERS, clusters.fitted, distances=clusters.distances)
    if pool.rejects:
        write_rejects(pool.rejects, folder / REJECTS)
    if pool.repairs:
        write_repairs(pool.repairs, folder / REPAIRS)
    if duplicates is not None:
        write_duplicates(folder / DUPLICATES, duplicates, pool.input_rows(), pool.ids)
    if contamination is not None:
        write_contamination(folder / CONTAMINATION, contamination, pool.input_rows(), pool.ids)
    if dedup is not None:
        write_dedup(folder / DEDUP, dedup, pool.input_rows(), pool.ids)
    return rows_written


def count_tokens(
    examples: list[Example], config: SelectConfig, timer: Timer
) -> tuple[np.ndarray | None, str | None]:
    """Tokens of every row (see :mod:`kmq.tokens`) and the tokenizer's name, when the run has
    a token budget or names a tokenizer; ``(None, None)`` otherwise."""
    if config.budget_tokens is None and config.tokenizer is None:
        return None, None
    with timer.stage("tokens"):
        counter = load_token_counter(config.tokenizer or DEFAULT_TOKENIZER, config.cache_dir)
        tokens = counter.count(examples, cache_dir=config.cache_dir or default_cache_dir())
    log.info("%s tokens in %d rows (%s)", f"{int(tokens.sum()):,}", len(tokens), counter.name)
    return tokens, counter.name


def decontamination(examples: list[Example], config: SelectConfig) -> Contamination | None:
    """The rows ``--decontaminate`` drops (``None`` without evaluation files), logged."""
    if not config.decontaminate:
        return None
    found = find_contamination(examples, read_eval(config.decontaminate, config.ngram))
    log.info(
        "decontamination (%d-grams of %d evaluation texts; %d under 8 words left out) "
        "dropped %d rows",
        config.ngram,
        found.eval_texts,
        found.eval_too_short,
        len(found.removed),
    )
    return found


def selector_options(config: SelectConfig, clusters: Clusters | None) -> dict[str, Any]:
    """Options of the selector that come from the clustering: km-closest reads each row's cosine
    to its centre from the distances of a sample-then-assign clustering (the vectors of such a
    pool stay on disk)."""
    if config.method != "km-closest" or clusters is None or clusters.distances is None:
        return {}
    fitted = clusters.fitted
    return {
        "centroid_cosine": centroid_cosine(clusters.distances, fitted.labels_, fitted.centroids_)
    }
