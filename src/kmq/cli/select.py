"""``kmq select``: flags, the run, ``--config`` replays and ``--dry-run``."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from kmq.allocation import ALLOCATIONS
from kmq.cli.args import CONFIG, add_input_args, add_selection_args, one_or_many, select_config
from kmq.cli.inspect import print_summary
from kmq.clustering import SAMPLE_FLOOR, SAMPLE_PER_CENTROID
from kmq.config import SelectConfig
from kmq.dryrun import dry_run, dry_run_lines
from kmq.errors import KmqError
from kmq.export import OUTPUT_FORMATS
from kmq.pipeline import select_file
from kmq.replay import check_same_input, config_from_manifest, read_manifest
from kmq.report import write_report
from kmq.selectors import SELECTORS
from kmq.shares import parse_share
from kmq.streaming import IN_MEMORY_LIMIT, OUTPUT_SHARD_ROWS
from kmq.tokens import DEFAULT_TOKENIZER

stdout = Console()


def add_select(sub: Any) -> None:
    p = sub.add_parser(
        "select",
        help="select a budget-sized subset of an SFT pool",
        description="Embed, cluster and select; writes the picked rows in the "
        "input's own format, a per-row table and manifest.json to --out.",
    )
    add_input_args(p, several=True)
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
        default=CONFIG["output_format"],
        help="selected rows as read (native; default) or as messages / sharegpt / alpaca "
        "records a trainer reads",
    )
    p.add_argument("--method", choices=list(SELECTORS), default=CONFIG["method"])
    p.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="select from N of the valid rows, drawn uniformly with --seed (a quick first look "
        "at a big pool; in-memory runs only)",
    )
    t = p.add_argument_group(
        "token budgets and statistics",
        "A row's tokens are its whole conversation rendered by the tokenizer's chat template "
        "(as a trainer sees it), tokenised without extra special tokens. With either flag the "
        "manifest, kmq inspect and the report show tokens per source and per cluster.",
    )
    t.add_argument(
        "--budget-tokens",
        type=int,
        metavar="N",
        help="pick rows whose tokens sum to at most N (instead of --budget): per-cluster token "
        "quotas by --allocation, each cluster's rows in the method's order while they fit, the "
        "unused tokens pooled and handed out round-robin",
    )
    t.add_argument(
        "--tokenizer",
        metavar="smollm2|PATH",
        help=f"tokenizer that counts tokens: {DEFAULT_TOKENIZER} (SmolLM2-135M-Instruct's, "
        "shipped offline; default with --budget-tokens) or a local tokenizer folder",
    )
    m = p.add_argument_group(
        "several inputs and mixing",
        "Several inputs are read as one pool (see the input's help). --mix splits the budget "
        "(rows, or tokens with --budget-tokens) by source first, by largest remainder, then "
        "runs the method inside each source's rows on the clustering of the whole pool, so "
        "kMQ's per-cluster balance holds inside every source.",
    )
    m.add_argument(
        "--mix",
        nargs="+",
        metavar="SOURCE=SHARE",
        action=MixAction,
        help="per-source shares summing to 1 (e.g. --mix alpaca=0.5 dolly=0.3 oasst=0.2); "
        "a source left out gets no rows; unknown sources and shares a source cannot fill "
        "are errors",
    )
    p.add_argument(
        "--allocation",
        choices=ALLOCATIONS,
        default=CONFIG["allocation"],
        help="per-cluster quotas (default balanced; 'equal' is the official code, under-fills)",
    )
    add_selection_args(p)
    b = p.add_argument_group("baselines and pre-filters")
    b.add_argument(
        "--deita-threshold",
        type=float,
        default=CONFIG["deita_threshold"],
        help="deita: keep a row only if its squared L2 distance (unit vectors, [0, 4]) to "
        "every kept row is >= this (default 0.9, the official rule: cosine <= 0.55)",
    )
    b.add_argument(
        "--qdit-alpha",
        type=float,
        default=CONFIG["qdit_alpha"],
        help="qdit: alpha in [0, 1] of QDIT's (1 - alpha) * coverage + alpha * summed quality "
        "(the official definition; coverage = summed cosine of every row to its nearest pick)",
    )
    b.add_argument(
        "--knn",
        type=int,
        dest="n_neighbors",
        default=CONFIG["n_neighbors"],
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
        default=CONFIG["ngram"],
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


class MixAction(argparse.Action):
    """``--mix a=0.5 b=0.5`` as ``{"a": 0.5, "b": 0.5}``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        mix: dict[str, float] = {}
        for item in values:
            source, share = parse_share(item)
            if source in mix:
                raise KmqError(f"--mix names {source!r} twice")
            mix[source] = share
        setattr(namespace, self.dest, mix)


def run_select(args: argparse.Namespace) -> int:
    if args.config:
        return run_replay(args)
    if not args.input:
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
    defaults = select_defaults(args.out)
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
    config = config_from_manifest(manifest, out=args.out, input=one_or_many(args.input))
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


def select_defaults(out: str) -> argparse.Namespace:
    """Every ``kmq select`` flag at its default (with ``--out OUT``)."""
    parser = argparse.ArgumentParser(prog="kmq")
    add_select(parser.add_subparsers(dest="command"))
    return parser.parse_args(["select", "--out", out])


def print_dry_run(config: SelectConfig) -> int:
    for line in dry_run_lines(dry_run(config)):
        stdout.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0
