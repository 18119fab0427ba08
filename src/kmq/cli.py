"""The ``kmq`` command line: each subcommand parses its flags and calls one API function."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from kmq._version import __version__
from kmq.allocation import ALLOCATIONS
from kmq.backends import COMPUTE_TYPES, LM_BACKENDS
from kmq.cli_iterate import EXTERNAL_VERBS, add_iterate, print_state
from kmq.config import SelectConfig
from kmq.dryrun import dry_run, dry_run_lines
from kmq.engines import ENGINES
from kmq.errors import KmqError
from kmq.examples import TEXT_VIEWS
from kmq.export import OUTPUT_FORMATS
from kmq.formats import FORMATS, FieldMap
from kmq.loop import IterativeSelection
from kmq.outdir import not_an_output
from kmq.outputs import MANIFEST, TABLE
from kmq.pipeline import select_file
from kmq.progress import quiet_libraries
from kmq.quality import QUALITY_SCORERS
from kmq.replay import check_same_input, config_from_manifest, read_manifest
from kmq.report import write_report
from kmq.scoring import ScoreConfig, score_file
from kmq.selectors import SELECTORS
from kmq.selectors.kmq import DEFAULT_CANDIDATES, WEIGHTINGS
from kmq.streaming import IN_MEMORY_LIMIT, OUTPUT_SHARD_ROWS, SAMPLE_FLOOR, SAMPLE_PER_CENTROID

console = Console(stderr=True)
stdout = Console()


def budget_arg(text: str) -> int | float:
    """``940`` is a count, ``0.05`` a fraction of the pool."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a fraction, got {text!r}") from None


def k_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'auto', got {text!r}"
        ) from None


def candidates_arg(text: str) -> int | str:
    """``--quality-candidates``: M >= 1, or 0 / 'all' (score every row)."""
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer M, or 0 / 'all' (score every row); got {text!r}"
        )
    return value


def grid_arg(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def add_input_args(p: argparse.ArgumentParser, *, optional: bool = False) -> None:
    """How to read the pool: shared by every subcommand that takes one."""
    p.add_argument(
        "input",
        nargs="?" if optional else None,
        help="JSONL/JSON/Parquet/CSV (optionally .gz) or a save_to_disk folder",
    )
    g = p.add_argument_group("reading the input")
    g.add_argument(
        "--on-invalid",
        choices=["error", "skip"],
        default="error",
        help="stop at the first bad row (default) or skip it into rejects.jsonl",
    )
    g.add_argument("--format", choices=FORMATS, default=None, help="skip format detection")
    for name in ("prompt", "response", "system", "messages", "id", "source"):
        g.add_argument(
            f"--{name}-field", dest=f"{name}_field", default=None, help=f"field holding the {name}"
        )
    p.add_argument("--cache-dir", help="embedding/score cache ($KMQ_CACHE_DIR or ~/.cache/kmq)")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="hide progress bars (kmq's and those of the libraries that load models)",
    )


def field_map(args: argparse.Namespace) -> FieldMap:
    return FieldMap(
        messages_field=args.messages_field,
        prompt_field=args.prompt_field,
        response_field=args.response_field,
        system_field=args.system_field,
        id_field=args.id_field,
        source_field=args.source_field,
    )


def add_scorer_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    """The quality scorer and its settings: shared by ``select`` and ``score``."""
    g = p.add_argument_group("quality scorer")
    g.add_argument(
        "--quality",
        choices=QUALITY_SCORERS,
        required=required,
        help="compute quality with this scorer (cached); higher = better",
    )
    g.add_argument(
        "--quality-model", help="model for ifd/perplexity/judge (default smollm2)/reward"
    )
    g.add_argument("--quality-max-length", type=int, help="tokens per scored row")
    g.add_argument("--quality-batch-size", type=int, help="rows per forward pass")
    g.add_argument(
        "--lm-backend",
        choices=LM_BACKENDS,
        help="inference engine of the LM scores (ifd/pmi/perplexity) and the perplexity "
        "feedback: torch (default, the reference) or ctranslate2 (pip install ctranslate2)",
    )
    g.add_argument(
        "--lm-compute-type",
        choices=COMPUTE_TYPES,
        help="ctranslate2: weights and arithmetic (default int8)",
    )
    g.add_argument(
        "--lm-dtype",
        choices=["float32", "bfloat16", "float16"],
        help="torch: weights and arithmetic of the model-based scorers (default float32; "
        "bfloat16 is much faster on CPUs with AMX/AVX512-BF16, see lm_backend.md)",
    )
    g.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        help="torch device of the encoder, the model-based scorers and the built-in trainer "
        "(default: the encoder on cpu, the rest on cuda when available)",
    )
    g.add_argument("--judge-backend", choices=["local", "http"], help="judge: local model or HTTP")
    g.add_argument("--judge-base-url", help="judge: OpenAI-compatible base URL, e.g. http://h/v1")
    g.add_argument("--judge-api-key-env", help="judge: env var holding the API key")
    g.add_argument("--judge-concurrency", type=int, help="judge: requests in flight at most")
    g.add_argument("--judge-timeout", type=float, help="judge: seconds per request")


def scorer_options(args: argparse.Namespace) -> dict[str, Any]:
    """Scorer settings by the names the scorers take (unset ones stay at their defaults)."""
    return {
        "model": args.quality_model,
        "max_length": args.quality_max_length,
        "batch_size": args.quality_batch_size,
        "lm_backend": args.lm_backend,
        "compute_type": args.lm_compute_type,
        "dtype": args.lm_dtype,
        "device": args.device,
        "backend": args.judge_backend,
        "base_url": args.judge_base_url,
        "api_key_env": args.judge_api_key_env,
        "max_concurrency": args.judge_concurrency,
        "timeout": args.judge_timeout,
    }


def add_select(sub: Any) -> None:
    p = sub.add_parser(
        "select",
        help="select a budget-sized subset of an SFT pool",
        description="Embed, cluster and select; writes the picked rows in the "
        "input's own format, a per-row table and manifest.json to --out.",
    )
    add_input_args(p, optional=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--config",
        metavar="MANIFEST",
        help="replay the selection a manifest.json records (same picks on the same input); "
        "only --out, --cache-dir and the input (when moved) may be given with it",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="read and check the input, print rows, tokens, sources, duplicates and the "
        "estimated embedding time, and stop (nothing is written)",
    )
    p.add_argument(
        "--output-format",
        choices=OUTPUT_FORMATS,
        default="native",
        help="selected rows as read (native; default) or as messages / sharegpt / alpaca "
        "records a trainer reads",
    )
    p.add_argument("--method", choices=list(SELECTORS), default="kmq")
    p.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="select from N of the valid rows, drawn uniformly with --seed (a quick first look "
        "at a big pool; in-memory runs only)",
    )
    p.add_argument(
        "--allocation",
        choices=ALLOCATIONS,
        default="balanced",
        help="per-cluster quotas (default balanced; 'equal' is the official code, under-fills)",
    )
    add_selection_args(p)
    b = p.add_argument_group("baselines and pre-filters")
    b.add_argument(
        "--deita-threshold",
        type=float,
        default=0.9,
        help="deita: keep a row only if its squared L2 distance (unit vectors, [0, 4]) to "
        "every kept row is >= this (default 0.9, the official rule: cosine <= 0.55)",
    )
    b.add_argument(
        "--qdit-alpha",
        type=float,
        default=0.5,
        help="qdit: alpha in [0, 1] of QDIT's (1 - alpha) * coverage + alpha * summed quality "
        "(the official definition; coverage = summed cosine of every row to its nearest pick)",
    )
    b.add_argument(
        "--knn",
        type=int,
        default=50,
        help="qdit/facility-location: neighbours per row in the similarity graph",
    )
    b.add_argument(
        "--keep-duplicates",
        action="store_true",
        help="do not remove exact duplicates (same conversation after normalising case, "
        "whitespace and Unicode; on by default, recorded in duplicates.jsonl)",
    )
    b.add_argument(
        "--decontaminate",
        nargs="+",
        metavar="FILE",
        help="drop pool rows whose prompt shares an --ngram word n-gram with any text of these "
        "evaluation files (recorded in contamination.jsonl)",
    )
    b.add_argument(
        "--ngram",
        type=int,
        default=13,
        help="words per n-gram for --decontaminate (default 13)",
    )
    b.add_argument(
        "--dedup",
        type=float,
        metavar="EPS",
        help="SemDeDup first: drop rows with cosine > 1 - EPS to a kept row of their "
        "cluster (recorded in dedup.jsonl)",
    )
    s = p.add_argument_group(
        "large pools (streaming)",
        "Read, embed and write the pool in shards instead of in memory; on by itself when the "
        "input is a folder of shards (*.jsonl, *.jsonl.gz, *.parquet). kmq, km-random, "
        "km-closest and random run at any size; k-center, deita, qdit and facility-location "
        f"up to {IN_MEMORY_LIMIT:,} rows; --quality scorers and --dedup not at all.",
    )
    s.add_argument(
        "--streaming",
        action="store_true",
        help="stream a big JSONL/Parquet file (or a folder of shards) instead of loading it",
    )
    s.add_argument(
        "--kmeans-sample",
        type=int,
        metavar="N",
        help="rows k-means is fitted on, drawn with --seed; every row is then assigned "
        f"(default max({SAMPLE_PER_CENTROID}·k, {SAMPLE_FLOOR}), k the largest tried; all rows "
        "of a smaller pool)",
    )
    s.add_argument(
        "--embedding-dtype",
        choices=["float16", "float32"],
        help="embedding memory map on disk (default float16: half the disk and I/O; float32 "
        "reproduces the in-memory selection exactly when the sample holds every row)",
    )
    s.add_argument(
        "--output-shard-rows",
        type=int,
        metavar="N",
        help="picked rows per output shard selected-00000.jsonl, ... "
        f"(default {OUTPUT_SHARD_ROWS})",
    )
    p.add_argument("--report", action="store_true", help="also write OUT/report.html")
    p.set_defaults(handler=run_select)


def add_selection_args(p: argparse.ArgumentParser, *, budget: bool = True) -> None:
    """Budget, seed, clustering, quality and embedding: shared by ``select`` and ``iterate``."""
    if budget:
        p.add_argument(
            "--budget",
            type=budget_arg,
            default=0.05,
            help="rows to pick: a count (940) or a fraction of the pool (0.05; default)",
        )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--exclude", help="file of ids never to pick (text, JSON(L) or a selection.parquet)"
    )
    c = p.add_argument_group("clustering")
    c.add_argument(
        "--k",
        type=k_arg,
        default="auto",
        help="number of clusters, or 'auto' to choose by silhouette (default)",
    )
    c.add_argument(
        "--k-grid",
        type=grid_arg,
        default=None,
        help="k values tried by --k auto (default: powers of 2 from 8 to min(4096, n/4, budget))",
    )
    c.add_argument("--niter", type=int, default=10, help="k-means Lloyd iterations")
    c.add_argument("--silhouette-sample", type=int, default=5000)
    q = p.add_argument_group("quality inside clusters (kmq)")
    q.add_argument("--quality-field", help="numeric field of the input holding a quality score")
    q.add_argument(
        "--quality-weighting",
        choices=WEIGHTINGS,
        default="auto",
        help="draw ∝ q^(1/T) (linear), ∝ exp(q/T) (softmax); auto: linear if every q >= 0",
    )
    q.add_argument("--temperature", type=float, default=1.0, help="quality weighting temperature")
    q.add_argument(
        "--quality-candidates",
        type=candidates_arg,
        default=DEFAULT_CANDIDATES,
        metavar="M",
        help=f"kmq with a --quality scorer: score only M × quota uniformly drawn candidates per "
        f"cluster and draw the quota among them (default {DEFAULT_CANDIDATES}; 0 or 'all': "
        "score every row)",
    )
    add_scorer_args(p, required=False)
    e = p.add_argument_group("embedding")
    e.add_argument(
        "--encoder",
        default="minilm",
        help="'minilm' (packaged, offline; default), 'static' (model2vec distilled from it), "
        "'causal:MODEL[,pooling=mean|last,layer=N]', 'api:MODEL,base_url=URL', "
        "or a sentence-transformers path/name",
    )
    e.add_argument(
        "--view",
        choices=TEXT_VIEWS,
        default="user",
        help="text embedded: 'user' (system+user turns; default) or 'full' (all turns)",
    )
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="encoder window in tokens (minilm/sentence-transformers: longer texts are "
        "chunked and mean-pooled; causal: longer texts are cut)",
    )
    r = p.add_argument_group(
        "engine",
        "Where embedding, the assignment to k-means centres and the per-cluster draws run. "
        "Every engine selects the same rows for the same seed and embeddings.",
    )
    r.add_argument(
        "--engine",
        choices=list(ENGINES),
        default="local",
        help="local (this process; default) or ray (a Ray cluster; pip install 'kmq[ray]')",
    )
    r.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="a running Ray cluster: 'auto' (the one this node joined) or ray://HOST:10001 "
        "(default: start a local one)",
    )
    r.add_argument(
        "--ray-workers",
        type=int,
        metavar="N",
        help="at most N encoder replicas and tasks at a time (default: every CPU)",
    )


def run_select(args: argparse.Namespace) -> int:
    if args.config:
        return run_replay(args)
    if args.input is None:
        raise KmqError("kmq select needs an input file (or --config MANIFEST to replay a run)")
    if args.dry_run:
        return print_dry_run(select_config(args, out=args.out, method=args.method))
    run = select_file(select_config(args, out=args.out, method=args.method))
    print_summary(run.manifest, run.out)
    if args.report:
        stdout.print(f"report: {write_report(run.out)}")
    return 0


REPLAY_FREE = {
    "command",
    "handler",
    "config",
    "out",
    "input",
    "cache_dir",
    "no_progress",
    "quiet",
    "report",
    "dry_run",
}


def run_replay(args: argparse.Namespace) -> int:
    """``kmq select --config MANIFEST``: the recorded config, a new ``--out``."""
    defaults = build_parser().parse_args(["select", "--out", args.out])
    changed = [
        "--" + name.replace("_", "-")
        for name, value in vars(args).items()
        if name not in REPLAY_FREE and value != getattr(defaults, name, value)
    ]
    if changed:
        raise KmqError(
            f"--config replays the recorded settings; drop {', '.join(sorted(changed))} "
            "(or run without --config)"
        )
    manifest = read_manifest(args.config)
    config = config_from_manifest(manifest, out=args.out, input=args.input)
    config.progress = not args.no_progress
    config.cache_dir = args.cache_dir or config.cache_dir
    if args.dry_run:
        return print_dry_run(config)
    run = select_file(config)
    check_same_input(manifest, run.manifest)
    print_summary(run.manifest, run.out)
    if args.report:
        stdout.print(f"report: {write_report(run.out)}")
    return 0


def print_dry_run(config: SelectConfig) -> int:
    for line in dry_run_lines(dry_run(config)):
        stdout.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0


def select_config(args: argparse.Namespace, *, out: str, method: str) -> SelectConfig:
    return SelectConfig(
        input=args.input,
        out=out,
        budget=args.budget,
        method=method,
        k=args.k,
        k_grid=args.k_grid,
        seed=args.seed,
        allocation=getattr(args, "allocation", "balanced"),
        quality_field=args.quality_field,
        quality=args.quality,
        quality_options=scorer_options(args),
        quality_weighting=args.quality_weighting,
        temperature=args.temperature,
        quality_candidates=args.quality_candidates,
        encoder=args.encoder,
        view=args.view,
        batch_size=args.batch_size,
        max_length=args.max_length,
        device=args.device,
        cache_dir=args.cache_dir,
        exclude=args.exclude,
        on_invalid=args.on_invalid,
        fields=field_map(args),
        format=args.format,
        niter=args.niter,
        silhouette_sample=args.silhouette_sample,
        deita_threshold=getattr(args, "deita_threshold", 0.9),
        qdit_alpha=getattr(args, "qdit_alpha", 0.5),
        n_neighbors=getattr(args, "knn", 50),
        dedup=getattr(args, "dedup", None),
        progress=not args.no_progress,
        engine=args.engine,
        engine_options={
            key: value
            for key, value in {"address": args.ray_address, "workers": args.ray_workers}.items()
            if value is not None
        },
        streaming=getattr(args, "streaming", False),
        kmeans_sample=getattr(args, "kmeans_sample", None),
        sample=getattr(args, "sample", None),
        embedding_dtype=getattr(args, "embedding_dtype", None),
        output_shard_rows=getattr(args, "output_shard_rows", None),
        output_format=getattr(args, "output_format", "native"),
        keep_duplicates=getattr(args, "keep_duplicates", False),
        decontaminate=getattr(args, "decontaminate", None),
        ngram=getattr(args, "ngram", 13),
    )


def add_score(sub: Any) -> None:
    p = sub.add_parser(
        "score",
        help="compute quality scores for a pool (cached, resumable)",
        description="Score every valid row; writes index, id and <scorer>_score as Parquet.",
    )
    add_input_args(p)
    p.add_argument("--out", required=True, help="output Parquet file")
    add_scorer_args(p, required=True)
    p.add_argument("--quality-field", help="the field read by --quality column")
    p.set_defaults(handler=run_score)


def run_score(args: argparse.Namespace) -> int:
    options = scorer_options(args) | {"field": args.quality_field}
    config = ScoreConfig(
        input=args.input,
        out=args.out,
        quality=args.quality,
        options=options,
        fields=field_map(args),
        format=args.format,
        on_invalid=args.on_invalid,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
    )
    scores = score_file(config)
    summary = scores.summary()
    stdout.print(f"[bold]{summary['column']}[/] for {summary['rows']} rows → {args.out}")
    stdout.print(f"direction: {summary['direction']}")
    if "mean" in summary:
        stdout.print(
            f"mean {summary['mean']:.4g}; min {summary['min']:.4g}, p25 {summary['p25']:.4g}, "
            f"median {summary['median']:.4g}, p75 {summary['p75']:.4g}, max {summary['max']:.4g}"
        )
    cached = "from the cache" if summary["cache_hit"] else "computed"
    stdout.print(f"{cached}; {summary['missing']} rows could not be scored")
    return 0


def add_report(sub: Any) -> None:
    p = sub.add_parser("report", help="write a self-contained HTML report")
    p.add_argument(
        "path", help="a kmq select output, a kmq iterate run, or a benchmark results folder"
    )
    p.add_argument("-o", "--out", help="HTML file to write (default PATH/report.html)")
    p.add_argument("--max-clusters", type=int, default=300, help="rows of the cluster table")
    p.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    path = write_report(args.path, args.out, max_clusters=args.max_clusters)
    stdout.print(f"report: {path} ({path.stat().st_size / 1024:.0f} KB)")
    return 0


def add_inspect(sub: Any) -> None:
    p = sub.add_parser("inspect", help="summarise a selection folder or an iterate run")
    p.add_argument("out", help="a folder written by kmq select, or a kmq iterate run folder")
    p.add_argument(
        "--json",
        action="store_true",
        help="select: the manifest plus the selected ids in pick order; iterate: the whole state "
        "(per round: picked ids, weights before/after), as JSON",
    )
    p.set_defaults(handler=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if (out / "config.json").exists():
        state = IterativeSelection(out).state()
        if args.json:
            sys.stdout.write(json.dumps(state, ensure_ascii=False) + "\n")
        else:
            print_state(state)
        return 0
    path = out / MANIFEST
    if not path.exists():
        raise KmqError(not_an_output(out))
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if args.json:
        ids = pq.read_table(out / TABLE, columns=["id"]).column("id").to_pylist()
        sys.stdout.write(json.dumps(manifest | {"selected_ids": ids}, ensure_ascii=False) + "\n")
        return 0
    print_summary(manifest, out)
    return 0


def print_summary(manifest: dict[str, Any], out: Path) -> None:
    """The run in a few lines, then pool vs selection per source (or per cluster)."""
    counts = manifest["counts"]
    clusters = manifest.get("clusters")
    lines = [
        f"[bold]{manifest['method']}[/] selected {counts['selected']} of {counts['valid']} rows "
        f"(budget {counts['budget']}, seed {manifest['seed']}) → {out}",
        f"input {manifest['input']['path']} ({manifest['input']['format']}, "
        f"{manifest['input']['kind']}); rejected {counts['rejected']}, "
        f"excluded {counts['excluded']}",
    ]
    lines.extend(checks_lines(manifest.get("checks")))
    if clusters:
        sil = clusters.get("silhouette")
        best = f", silhouette {sil[str(clusters['k'])]:.4f}" if sil else ""
        lines.append(f"k = {clusters['k']}{best}; allocation {manifest['config']['allocation']}")
    if counts["shortfall"]:
        lines.append(f"[yellow]shortfall: {counts['shortfall']} rows under budget[/]")
    for note in manifest.get("notes", []):
        lines.append(f"[yellow]note: {note}[/]")
    quality = manifest.get("quality") or {}
    if "rows_scored" in quality:
        how = (
            f"{quality['candidates']} × quota candidates per cluster"
            if quality.get("candidates")
            else "every row"
        )
        lines.append(
            f"quality {quality['column']}: {quality['rows_scored']} of {quality['rows']} rows "
            f"scored ({how})"
        )
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in manifest["timings_s"].items())
    lines.append(f"time: {timings}; peak memory {manifest['peak_rss_mb']:.0f} MB")
    for line in lines:
        stdout.print(line)
    if manifest.get("sources") or manifest.get("clusters"):
        stdout.print(composition_table(manifest))


def checks_lines(checks: dict[str, Any] | None) -> list[str]:
    """Rejects per reason and repaired rows, when there were any."""
    if not checks:
        return []
    lines = []
    if checks["rejected_by_reason"]:
        why = ", ".join(f"{kind} {n}" for kind, n in checks["rejected_by_reason"].items())
        lines.append(f"rejected by reason: {why} (rejects.jsonl)")
    if checks["repaired"]:
        lines.append(f"repaired {checks['repaired']} conversations ({checks['repairs']})")
    return lines


def composition_table(manifest: dict[str, Any]) -> Table:
    sources = manifest.get("sources")
    if sources:
        title, pool, picked = "source", sources["pool"], sources["selected"] or {}
    else:
        clusters = manifest.get("clusters") or {"pool": [], "selected": []}
        order = sorted(range(len(clusters["pool"])), key=lambda j: -clusters["pool"][j])[:20]
        title = "cluster (20 largest)"
        pool = {str(j): clusters["pool"][j] for j in order}
        picked = {str(j): clusters["selected"][j] for j in order}
    n_pool = sum(pool.values()) or 1
    n_pick = manifest["counts"]["selected"] or 1
    table = Table(title="pool vs selection")
    for col in (title, "pool", "pool %", "selected", "selected %"):
        table.add_column(col, justify="left" if col == title else "right")
    for key, count in sorted(pool.items(), key=lambda kv: -kv[1]):
        got = picked.get(key, 0)
        table.add_row(
            key, str(count), f"{100 * count / n_pool:.1f}", str(got), f"{100 * got / n_pick:.1f}"
        )
    if sources:
        table.caption = (
            f"source entropy: pool {sources['entropy_pool']:.3f}, "
            f"selection {sources['entropy_selected']:.3f} nats"
        )
    return table


QUIET_HELP = (
    "only warnings and errors; hides the progress bars of the libraries that load models "
    "(--no-progress hides kmq's bars too)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kmq", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kmq {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    add_select(sub)
    add_score(sub)
    add_iterate(sub)
    add_inspect(sub)
    add_report(sub)
    for command in sub.choices.values():
        # after the subcommand too (SUPPRESS: an absent -q there keeps the one given before)
        command.add_argument(
            "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[0] == "iterate" and argv[1] in EXTERNAL_VERBS:
        argv = [f"iterate-{argv[1]}", *argv[2:]]
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_time=False, show_path=False)],
        force=True,
    )
    quiet = args.quiet or getattr(args, "no_progress", False)
    try:
        with quiet_libraries() if quiet else contextlib.nullcontext():
            return int(args.handler(args))
    except KmqError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
