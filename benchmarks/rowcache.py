"""Per-row cache at scale: write, open + check, and look up N row keys (default up to 10M).

For each size N, in a fresh store under --scratch: one N-row segment is written (as a pool's
segment is: keys + float64 values, block checksums computed on the way), opened and checked in
full (the check a rerun on the same pool makes), then N keys are looked up in a shuffled order
(a reordered pool), 10% of them are gathered (a subset), and N keys of which 10% are new are
looked up (an appended pool: the new ones must come back missing). Keys are random 16-byte
digests, as :func:`kmq.rowcache.row_key` gives; hashing texts is timed separately on 200,000
texts. Writes ``benchmarks/results/rowcache.md`` and ``rowcache.png``.

    python benchmarks/rowcache.py                 # 100k, 1M, 10M rows (needs ~1 GB of disk)
    python benchmarks/rowcache.py --sizes 100000  # quick
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from kmq.rowcache import RowStore, SegmentWriter, row_keys

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def one_size(n: int, scratch: Path, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    folder = scratch / f"store-{n}"
    shutil.rmtree(folder, ignore_errors=True)
    store = RowStore(folder, {"kind": "benchmark"})
    keys = rng.integers(0, 2**63, size=(n, 2), dtype=np.int64).astype(np.uint64)
    values = rng.normal(size=n)

    def write() -> None:
        writer = SegmentWriter(store.segment_dir, n, (), np.dtype(np.float64))
        for start in range(0, n, 1 << 20):
            writer.write(values[start : start + (1 << 20)])
        writer.commit("pool-benchmark", keys)

    _, t_write = timed(write)

    def open_and_check() -> None:
        fresh = RowStore(folder, {"kind": "benchmark"})
        segment = fresh.segment("pool-benchmark")
        assert segment is not None
        segment.check_all()

    _, t_open = timed(open_and_check)
    store = RowStore(folder, {"kind": "benchmark"})
    shuffled = rng.permutation(n)
    located, t_lookup = timed(lambda: store.locate(keys[shuffled]))
    assert (located.segment == 0).all()
    subset = np.sort(rng.choice(n, size=max(n // 10, 1), replace=False))
    found = np.empty(len(subset))
    sub_located = store.locate(keys[subset])
    _, t_gather = timed(lambda: sub_located.gather(np.arange(len(subset)), found))
    assert np.array_equal(found, values[subset])
    new = rng.integers(0, 2**63, size=(n // 10, 2), dtype=np.int64).astype(np.uint64)
    appended = np.concatenate([keys[: n - len(new)], new])
    located_app, t_append = timed(lambda: store.locate(appended))
    assert len(located_app.missing) == len(new)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "rows": n,
        "write_s": t_write,
        "open_check_s": t_open,
        "lookup_s": t_lookup,
        "gather_10pct_s": t_gather,
        "lookup_append_s": t_append,
        "mb": size / 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000,10000000")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/kmq-rowcache-bench"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    texts = [f"row {i}: " + "some instruction text " * 8 for i in range(200_000)]
    _, t_hash = timed(lambda: row_keys(texts))
    rows = [one_size(int(n), args.scratch, args.seed) for n in args.sizes.split(",")]
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [
        "# Per-row cache at scale",
        "",
        f"`{' '.join(['python', *sys.argv])}` on {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"load average at the end {load} (a shared machine: read times as indicative).",
        "",
        "One N-row segment of float64 values (a score store; a lookup costs the same for "
        "embeddings, whose values are only read for the rows gathered). Times in seconds.",
        "",
        "| rows | write | open + full check | look up all (shuffled) | gather 10% "
        "| look up append (10% new) | disk MB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rows']:,} | {r['write_s']:.2f} | {r['open_check_s']:.2f} | "
            f"{r['lookup_s']:.2f} | {r['gather_10pct_s']:.2f} | {r['lookup_append_s']:.2f} | "
            f"{r['mb']:.0f} |"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines += [
        "",
        f"Hashing texts into row keys: {len(texts) / t_hash:,.0f} texts/s "
        f"(200,000 texts of ~180 characters). Peak RSS of the whole run {peak:.0f} MB.",
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rowcache.md").write_text("\n".join(lines))
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 0
    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = [r["rows"] for r in rows]
    for key, label in [
        ("write_s", "write"),
        ("open_check_s", "open + check"),
        ("lookup_s", "look up all"),
        ("lookup_append_s", "look up append"),
    ]:
        ax.loglog(sizes, [r[key] for r in rows], marker="o", label=label)
    ax.set_xlabel("rows")
    ax.set_ylabel("seconds")
    ax.set_title("per-row cache: one segment")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "rowcache.png", dpi=100)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
