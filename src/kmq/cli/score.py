"""``kmq score``: quality scores of a pool as a Parquet file."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from kmq.cli.args import add_input_args, add_scorer_args, field_map, scorer_options
from kmq.scoring import ScoreConfig, score_file

stdout = Console()


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
