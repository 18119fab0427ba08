"""Does the paper's ordering hold here? Select with every method, LoRA-train SmolLM2-135M on
each selection, and evaluate on external suites and a held-out slice of the pool (the v1 grid,
``results/quality_v1.md``: every method selecting through ``kmq select`` with a kmq scorer; the
powered clean-vs-noisy comparison is ``downstream.py``, ``results/quality.md``).

    python benchmarks/quality/run.py                   # the published grid (hours; resumable)
    python benchmarks/quality/run.py --preset smoke    # every method once, small (minutes)
    nohup python benchmarks/quality/run.py > benchmarks/out/quality.log 2>&1 &

Every (method, seed) result is cached under ``--out``; rerunning (or extending ``--seeds`` /
``--methods``) computes only what is missing. ``--report-only`` writes the tables from what is
finished so far. Progress goes to the console and to ``<out>/progress.log``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import (  # noqa: E402
    DEFAULT_CACHE,
    DEFAULT_RESULTS,
    POOLS,
    REPO,
    command_line,
    setup_logging,
)
from harness import METHODS, Grid, Protocol, real_stages  # noqa: E402
from report import write_results  # noqa: E402

EVAL_DIR = REPO.parent / "shared" / "data" / "eval"

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "smoke": {
        "pool": str(POOLS / "mix-small.jsonl.gz"),
        "pool_sample": 2000,
        "holdout_per_source": 1,
        "budget": 12,
        "k": 4,
        "seeds": (0,),
        "rounds": 2,
        "max_new_tokens": 16,
        "train_max_length": 128,
        "eval_items": 4,
        "eval_max_length": 256,
    },
}


def protocol_from(args: argparse.Namespace) -> Protocol:
    base = Protocol(pool=str(POOLS / "mix.jsonl.gz"), eval_dir=str(EVAL_DIR))
    protocol = replace(base, **PRESETS[args.preset])
    overrides: dict[str, Any] = {}
    if args.pool:
        overrides["pool"] = str(args.pool)
    if args.seeds:
        overrides["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    if args.methods:
        overrides["methods"] = tuple(args.methods.split(","))
    for name in ("budget", "k", "eval_items", "device", "quality", "feedback"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    return replace(protocol, **overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--pool", type=Path, default=None)
    parser.add_argument("--seeds", default=None, help="comma-separated, e.g. 0,1,2")
    parser.add_argument("--methods", default=None, help=f"comma-separated of {', '.join(METHODS)}")
    parser.add_argument("--budget", type=int, default=None)
    parser.add_argument("--k", type=int, default=None)
    parser.add_argument("--eval-items", type=int, default=None)
    parser.add_argument("--quality", default=None, help="quality scorer for kMQ/Deita/QDIT")
    parser.add_argument("--feedback", default=None, help="feedback scorer for iterative kMQ")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument("--out", type=Path, default=None, help="cache of every job")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--results", type=Path, default=None, help="where quality_v1.md/png go")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    setup_logging()
    protocol = protocol_from(args)
    out = args.out or REPO / "benchmarks" / "out" / f"quality-{args.preset}"
    results = args.results or (DEFAULT_RESULTS if args.preset == "default" else out)
    grid = Grid(
        protocol,
        out,
        args.cache_dir,
        stages=real_stages(),
        log_file=out / "progress.log",
    )
    started = time.perf_counter()
    if not args.report_only:
        out.mkdir(parents=True, exist_ok=True)
        grid.run()
    write_results(
        grid,
        results,
        preset=args.preset,
        seconds=time.perf_counter() - started,
        command=grid_command(),
    )


def grid_command() -> str:
    """This command line without ``--report-only`` / ``--results``: the one that computes what
    the tables show."""
    kept: list[str] = []
    skip = False
    for word in sys.argv[1:]:
        if skip:
            skip = False
        elif word == "--report-only" or word.startswith("--results="):
            continue
        elif word == "--results":
            skip = True
        else:
            kept.append(word)
    return command_line(kept)


if __name__ == "__main__":
    main()
