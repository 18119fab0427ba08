"""IFD scoring throughput of ``IFDScorer("smollm2")`` by batch size, on a seeded pool sample.

The model is loaded once (and warmed up on a few rows, untimed); then the same ``--n`` rows
are scored once per batch size (both passes: with and without the prompt). Token counts come
from the scorer's passes: response tokens are counted once per row, total tokens are context +
response tokens fed in both passes. The last column extrapolates to every row of the pool.

    python benchmarks/ifd_throughput.py --n 200 --batch-sizes 1,4,8,16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import (
    DEFAULT_CACHE,
    DEFAULT_RESULTS,
    POOLS,
    log,
    markdown_table,
    setup_logging,
    write_report,
)

from kmq.examples import Example
from kmq.formats import load_pool
from kmq.quality.lm_scorers import IFDScorer

WARMUP_ROWS = 4


def sample(examples: list[Example], n: int, seed: int) -> list[Example]:
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(examples), size=min(n, len(examples)), replace=False)
    return [examples[i] for i in picks]


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run(scorer: IFDScorer, rows: list[Example], batch_size: int) -> tuple[float, np.ndarray]:
    """Seconds to score ``rows`` at ``batch_size``, and the scores."""
    scorer.batch_size = batch_size
    started = time.perf_counter()
    scores = scorer.score(rows)
    seconds = time.perf_counter() - started
    log.info("batch size %d: %d rows in %.1f s", batch_size, len(rows), seconds)
    return seconds, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=Path, default=POOLS / "mix-small.jsonl.gz")
    parser.add_argument("--n", type=int, default=200, help="rows in the seeded sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-sizes", default="1,4,8,16", help="comma-separated")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    args = parser.parse_args()
    setup_logging()
    started = time.perf_counter()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    pool = load_pool(args.pool)
    rows = sample(pool.examples, args.n, args.seed)
    scorer = IFDScorer(
        max_length=args.max_length,
        cache_dir=args.cache_dir,
        device=args.device,
        show_progress=False,
    )
    loading = time.perf_counter()
    scorer.score(rows[:WARMUP_ROWS])
    log.info("model loaded and warmed up in %.1f s", time.perf_counter() - loading)

    table = []
    reference: np.ndarray | None = None
    for batch_size in batch_sizes:
        seconds, scores = run(scorer, rows, batch_size)
        response_tokens = int(scorer.results_[0].response_tokens.sum())
        total_tokens = sum(
            int(r.context_tokens.sum() + r.response_tokens.sum()) for r in scorer.results_
        )
        reference = scores if reference is None else reference
        table.append(
            [
                batch_size,
                len(rows) / seconds,
                response_tokens / seconds,
                total_tokens / seconds,
                duration(len(pool.examples) * seconds / len(rows)),
                float(np.nanmax(np.abs(scores - reference))),
            ]
        )
    headers = [
        "batch size",
        "rows/s",
        "response tokens/s",
        "total tokens/s",
        f"time for all {len(pool.examples):,} rows",
        "max abs Δ score vs first",
    ]
    result = markdown_table(headers, table)
    print(result)
    body = (
        f"{len(rows)} rows sampled (seed {args.seed}) from `{args.pool.name}`; "
        f"`IFDScorer('smollm2', max_length={args.max_length})` "
        f"on {args.device or 'the default device'}, "
        f"model {scorer.fingerprint()}.\n\n{result}\n\n"
        f"Rows cut to max_length: {len(scorer.truncated_)}; NaN rows: {len(scorer.failures_)}. "
        "Response tokens are counted once per row; total tokens are context + response tokens "
        "of both passes (with and without the prompt)."
    )
    write_report(
        args.out, "ifd_throughput", "IFD scoring throughput", body, time.perf_counter() - started
    )


if __name__ == "__main__":
    main()
