"""How ``kmq select --streaming`` scales with the pool: time per stage and peak memory, 10k → 10M.

Each size runs in a fresh Python process (so its peak RSS is its own) through
``kmq.select_file(SelectConfig(..., streaming=True))``, the code behind ``kmq select``, on a
synthetic pool: a folder of JSONL shards (at most 1M rows each) of short conversations with a
source and a quality column, embedded by a synthetic encoder that returns 384-dim unit vectors
around 1,000 random centres. "embed" therefore times the float16 memory-map cache (synthetic
vectors written shard by shard, then joined), not a model. The embedding cache starts cold
for every size and is deleted after it.

With ``--real`` (default on when the cache holds them) one more row replays the real MiniLM
vectors of ``mix.jsonl.gz`` (71,239 rows) from ``benchmarks/out/cache`` through the same path.
After each run the worker also times the selection alone for km-random, km-closest and random
on the same clusters (from ``clusters.npz``).

Generated pools, caches and outputs live under ``benchmarks/out/scale`` (never committed; the
10M pool is ~1.7 GB and its float16 embeddings 7.7 GB, twice that while the cache shards are
joined).

With ``--ray-rows`` (default 1M; on when ray is installed, 0 skips it) the script then compares
the engines in memory: the synthetic float16 embeddings of that many rows (the vectors the
streaming cache holds) loaded as float32, selected by ``kmq.pipeline.select`` with the local
engine and with the Ray engine on a local Ray runtime of ``--ray-workers`` CPUs, stage by stage,
checking that both pick the same rows. It writes ``scale_ray.md``; ``--only-ray`` runs only it.

    python benchmarks/scale.py --sizes 10000,100000,1000000,10000000
    python benchmarks/scale.py --only-ray
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    BENCH_DIR,
    DEFAULT_CACHE,
    DEFAULT_RESULTS,
    POOLS,
    command_line,
    log,
    markdown_table,
    save_figure,
    setup_logging,
    write_report,
)

DIM = 384
CENTRES = 1000
NOISE = 0.6  # norm of the noise added to a unit centre
SEED = 1234
SHARD_ROWS = 1_000_000
STAGES = ["read", "embed", "sample", "fit", "assign", "select", "write"]
EXTRA_METHODS = ["km-random", "km-closest", "random"]
WORK = BENCH_DIR / "out" / "scale"
REAL_POOL = POOLS / "mix.jsonl.gz"


def scramble(rows: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random 32-bit hash of row numbers (Knuth's multiplicative hash)."""
    return (rows.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(2**32)


def synthetic_quality(n: int) -> np.ndarray:
    """The quality column of the n-row synthetic pool (multiples of 0.001)."""
    return (scramble(np.arange(n)) % 1000) / 1000


class SyntheticEncoder:
    """Unit vectors around :data:`CENTRES` random centres, from the row number in the text
    (``"prompt <row>"``): no model, the same vectors for the same rows."""

    name = f"synthetic-blobs/v1(d={DIM},centres={CENTRES},noise={NOISE},seed={SEED})"

    def __init__(self) -> None:
        centres = np.random.default_rng(SEED).standard_normal((CENTRES, DIM), dtype=np.float32)
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        rows = np.array([int(text.rsplit(" ", 1)[1]) for text in texts], dtype=np.int64)
        rng = np.random.default_rng([SEED, int(rows[0])])
        noise = rng.standard_normal((len(rows), DIM), dtype=np.float32) * (NOISE / DIM**0.5)
        x = self.centres[scramble(rows) % CENTRES] + noise
        return x / np.linalg.norm(x, axis=1, keepdims=True)


class ReplayEncoder:
    """The rows of a stored embedding array, handed out in order (for a cold cache only)."""

    def __init__(self, path: Path) -> None:
        self.vectors = np.load(path, mmap_mode="r")
        self.name = f"replay:{path.stem}"
        self.next_row = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        stop = self.next_row + len(texts)
        if stop > len(self.vectors):
            raise RuntimeError(f"asked for row {stop}, {len(self.vectors)} stored")
        out = np.asarray(self.vectors[self.next_row : stop], dtype=np.float32)
        self.next_row = stop
        return out


def make_pool(n: int) -> Path:
    """``WORK/pool-<n>/part-00000.jsonl`` ...: n synthetic rows (made once, then reused)."""
    folder = WORK / f"pool-{n}"
    done = folder / "DONE"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    quality = synthetic_quality(n)
    for part, start in enumerate(range(0, n, SHARD_ROWS)):
        with (folder / f"part-{part:05d}.jsonl").open("w", encoding="utf-8") as fh:
            for i in range(start, min(start + SHARD_ROWS, n)):
                fh.write(
                    f'{{"id": "r{i}", "source": "s{i % 7}", "quality": {quality[i]:.3f}, '
                    f'"messages": [{{"role": "user", "content": "prompt {i}"}}, '
                    f'{{"role": "assistant", "content": "answer {i}"}}]}}\n'
                )
    done.write_text(str(n))
    log.info("made %s (%d rows) in %.0f s", folder, n, time.perf_counter() - started)
    return folder


def real_vectors(pool: Path) -> Path | None:
    """The cached MiniLM vectors of ``pool`` (one per non-blank line), if the cache holds them."""
    import gzip

    if not pool.exists():
        return None
    with gzip.open(pool, "rb") as fh:
        lines = sum(1 for line in fh if line.strip())
    for settings in sorted((DEFAULT_CACHE / "embeddings").glob("*/settings.json")):
        info = json.loads(settings.read_text())
        if not (
            str(info.get("encoder", "")).startswith("all-MiniLM-L6-v2")
            and info.get("view") == "user"
            and info.get("dtype") == "float32"
        ):
            continue
        for meta in sorted(settings.parent.glob("segments/pool-*/meta.json")):
            if json.loads(meta.read_text()).get("rows") == lines:
                return meta.parent / "values.npy"
    return None


# ---------------------------------------------------------------------------------------------
# one size, in its own process


def worker(args: argparse.Namespace) -> None:
    """Run one streaming selection and print what it measured as one JSON line."""
    from kmq.clustering import centroid_cosine
    from kmq.config import SelectConfig
    from kmq.pipeline import select_file
    from kmq.selectors import get_selector

    encoder: Any = ReplayEncoder(args.replay) if args.replay else SyntheticEncoder()
    config = SelectConfig(
        input=str(args.pool),
        out=str(args.out),
        budget=args.budget,
        method="kmq",
        k=args.k,
        seed=0,
        quality_field=None if args.replay else "quality",
        encoder=encoder,
        cache_dir=str(args.cache),
        streaming=True,
        progress=False,
    )
    run = select_file(config)
    manifest = run.manifest
    clusters = np.load(args.out / "clusters.npz")
    labels, distances = clusters["labels"], clusters["distances"]
    n, budget = len(labels), manifest.counts["budget"]
    placeholder = np.empty((n, 0), dtype=np.float32)
    methods = {}
    for method in EXTRA_METHODS:
        started = time.perf_counter()
        options = {}
        if method == "km-closest":
            options["centroid_cosine"] = centroid_cosine(distances, labels, clusters["centroids"])
        result = get_selector(method, **options).select(placeholder, budget, labels=labels, seed=0)
        assert len(result) == budget
        methods[method] = round(time.perf_counter() - started, 3)
    record = {
        "n": n,
        "real": bool(args.replay),
        "k": manifest.k,
        "budget": budget,
        "kmeans_sample": (manifest.streaming or {}).get("kmeans_sample"),
        "timings_s": manifest.timings_s,
        "peak_rss_mb": manifest.peak_rss_mb,
        "selected": manifest.counts["selected"],
        "output_files": len(manifest.outputs["rows"]),
        "selection_only_s": methods,
    }
    sys.stdout.write(json.dumps(record) + "\n")


def run_size(n: int, args: argparse.Namespace, replay: Path | None = None) -> dict[str, Any]:
    """One size in a fresh process (cold cache), its record plus the wall time from outside."""
    pool = REAL_POOL if replay else make_pool(n)
    name = "real" if replay else str(n)
    cache, out = WORK / f"cache-{name}", WORK / f"out-{name}"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--pool", str(pool)]
    cmd += ["--out", str(out), "--cache", str(cache), "--k", str(args.k)]
    cmd += ["--budget", str(args.budget)] + (["--replay", str(replay)] if replay else [])
    log.info("running %s", "the real MiniLM vectors of " + pool.name if replay else f"{n:,} rows")
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    (WORK / f"worker-{name}.log").write_text(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"worker for {name} failed:\n{proc.stderr[-3000:]}")
    shutil.rmtree(cache, ignore_errors=True)
    record: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    record["wall_s"] = round(wall, 1)
    log.info(
        "%s rows: %s; peak %.0f MB",
        f"{record['n']:,}",
        ", ".join(f"{k} {v:.1f}s" for k, v in record["timings_s"].items()),
        record["peak_rss_mb"],
    )
    return record


# ---------------------------------------------------------------------------------------------
# local vs Ray engine, in memory


RAY_STAGES = {
    "fit": "k-means fit (driver)",
    "assign": "assignment",
    "sample": "per-cluster sampling",
}


def synthetic_embeddings(n: int) -> np.ndarray:
    """The vectors the streaming cache holds for the n-row synthetic pool (the encoder fed the
    same 4,096-row shards of ``"prompt <row>"``, stored as float16), as float32 in memory."""
    from kmq.cache import SHARD_ROWS as CACHE_SHARD_ROWS

    encoder = SyntheticEncoder()
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, CACHE_SHARD_ROWS):
        stop = min(start + CACHE_SHARD_ROWS, n)
        vectors = encoder.encode([f"prompt {i}" for i in range(start, stop)])
        out[start:stop] = vectors.astype(np.float16)
    return out


class TimedEngine:
    """An engine's steps, each timed: the k-means centres fitted on the driver (as both engines
    fit them), every row assigned by ``assign`` (the engine's), the per-cluster picks drawn by
    the engine's ``select``. ``fit`` then ``assign`` is what both engines' ``kmeans`` run."""

    def __init__(self, engine: Any, assign: Callable[..., tuple[np.ndarray, np.ndarray]]) -> None:
        self.engine = engine
        self.name = engine.name
        self.assign = assign
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - started

    def embed(self, *args: Any, **kwargs: Any) -> tuple[np.ndarray, bool]:
        result: tuple[np.ndarray, bool] = self.engine.embed(*args, **kwargs)
        return result

    def kmeans(self, embeddings: np.ndarray, k: int, **options: Any) -> Any:
        from kmq.clustering import Clustering, fit_centroids

        with self.stage("fit"):
            centroids = fit_centroids(embeddings, k, **options)
        with self.stage("assign"):
            labels, distances = self.assign(embeddings, centroids)
        return Clustering(
            labels_=labels.astype(np.int64),
            centroids_=centroids,
            inertia_=float(distances.astype(np.float64).sum()),
        )

    def select(self, *args: Any, **kwargs: Any) -> Any:
        with self.stage("sample"):
            return self.engine.select(*args, **kwargs)


class PeakMemory:
    """Peak memory (MB) while the block runs, sampled every ``interval`` s: this process' RSS,
    and the summed PSS of its child processes (the local Ray runtime: raylet with the object
    store, GCS, workers; PSS shares the object store's pages out instead of counting them in
    every process that maps them). Without psutil: the process' maximum RSS so far."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.driver_mb = 0.0
        self.children_mb = 0.0
        self.sampled = importlib.util.find_spec("psutil") is not None
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.sampled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.sampled:
            self._stop.set()
            self._thread.join()
        else:
            self.driver_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while True:
            self.driver_mb = max(self.driver_mb, me.memory_info().rss / 2**20)
            total = 0
            for child in me.children(recursive=True):
                with suppress(psutil.Error):
                    info = child.memory_full_info()
                    total += getattr(info, "pss", info.rss)
            self.children_mb = max(self.children_mb, total / 2**20)
            if self._stop.wait(self.interval):
                return


def engine_worker(args: argparse.Namespace) -> None:
    """In a fresh process: select with one engine (``args.engine``), save the picks under
    ``WORK`` and print what it measured as one JSON line."""
    from kmq.clustering import assign
    from kmq.engines import LocalEngine
    from kmq.pipeline import select

    n, workers = args.ray_rows, args.ray_workers
    started = time.perf_counter()
    embeddings = synthetic_embeddings(n)
    quality = synthetic_quality(n)
    record: dict[str, Any] = {"load_s": round(time.perf_counter() - started, 3)}
    engine = TimedEngine(LocalEngine(), assign)
    if args.engine == "ray":
        import ray

        from kmq.engines.ray import RayEngine

        started = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING)
        record["ray_init_s"] = round(time.perf_counter() - started, 3)
        remote = RayEngine(workers=workers)
        engine = TimedEngine(remote, remote.assign)
    with PeakMemory() as memory:
        started = time.perf_counter()
        result = select(
            embeddings, args.budget, method="kmq", k=args.k, quality=quality, seed=0, engine=engine
        )
        record["end_to_end_s"] = round(time.perf_counter() - started, 3)
    record |= {
        "seconds": {key: round(value, 3) for key, value in engine.seconds.items()},
        "driver_peak_mb": round(memory.driver_mb, 1),
        "children_peak_mb": round(memory.children_mb, 1),
        "memory_sampled": memory.sampled,
        "selected": len(result),
    }
    np.savez(
        WORK / f"picks-{args.engine}.npz",
        indices=result.indices,
        reasons=np.array(result.reasons, dtype=str),
        scores=result.scores,
        quotas=np.array([] if result.quotas is None else result.quotas),
    )
    sys.stdout.write(json.dumps(record) + "\n")


def run_engine(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`engine_worker` for the engine ``name`` in a fresh process; its record."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--engine", name]
    cmd += ["--ray-rows", str(args.ray_rows), "--ray-workers", str(args.ray_workers)]
    cmd += ["--k", str(args.k), "--budget", str(args.budget)]
    log.info("selecting %s of %s rows with the %s engine", args.budget, f"{args.ray_rows:,}", name)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    (WORK / f"worker-{name}.log").write_text(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"the {name} engine's run failed:\n{proc.stderr[-3000:]}")
    record: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    log.info("%s engine: %s", name, record)
    return record


def same_picks() -> bool:
    """Both engines picked the same rows in the same order, for the same reasons, with the same
    scores and quotas."""
    local, remote = (np.load(WORK / f"picks-{name}.npz") for name in ("local", "ray"))
    return all(
        np.array_equal(local[key], remote[key], equal_nan=key == "scores")
        for key in ("indices", "reasons", "scores", "quotas")
    )


def ray_section(args: argparse.Namespace) -> bool:
    """Local vs Ray engine on ``args.ray_rows`` rows in memory, each in a fresh process; writes
    ``scale_ray.md``. False (with a printed note) when it is switched off or ray is missing."""
    if args.ray_rows <= 0:
        return False
    if importlib.util.find_spec("ray") is None:
        print("ray is not installed (pip install 'kmq[ray]'): the local vs Ray section is skipped")
        return False
    started = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    local, remote = run_engine("local", args), run_engine("ray", args)
    identical = same_picks()
    print(f"identical: {identical}")
    record = {
        "rows": args.ray_rows,
        "workers": args.ray_workers,
        "k": args.k,
        "budget": args.budget,
        "selected": local["selected"],
        "load_s": local["load_s"],
        "ray_init_s": remote["ray_init_s"],
        "local": local,
        "ray": remote,
        "identical": identical,
    }
    (WORK / "ray.json").write_text(json.dumps(record, indent=2))
    ray_report(record, args, time.perf_counter() - started)
    return True


def ray_report(record: dict[str, Any], args: argparse.Namespace, total_s: float) -> None:
    from kmq.engines.ray import TASKS_PER_WORKER

    local, remote, workers = record["local"], record["ray"], record["workers"]

    def ratio(a: float, b: float) -> float | str:
        return round(b / a, 2) if a > 0 else ""

    rows: list[list[object]] = [
        ["ray.init (s; not in the rows below)", "", record["ray_init_s"], ""]
    ]
    for key, label in RAY_STAGES.items():
        a, b = local["seconds"][key], remote["seconds"][key]
        rows.append([f"{label} (s)", a, b, ratio(a, b)])
    a, b = local["end_to_end_s"], remote["end_to_end_s"]
    rows.append(["select end to end (s)", a, b, ratio(a, b)])
    rows.append(["peak RSS, driver (MB)", local["driver_peak_mb"], remote["driver_peak_mb"], ""])
    if remote["memory_sampled"]:
        rows.append(["peak PSS, Ray processes (MB)", "", remote["children_peak_mb"], ""])
    memory = (
        "Memory is sampled every 0.5 s during the select: the driver's RSS (it holds the "
        f"{record['rows'] * DIM * 4 / 1e9:.1f} GB float32 array throughout), and the summed PSS "
        "of its child processes: the Ray runtime's raylet (with the object store), GCS and "
        "workers, each shared page counted once."
        if remote["memory_sampled"]
        else "Without psutil only the driver's maximum RSS so far is known (no Ray workers)."
    )
    body = f"""
`kmq.pipeline.select(embeddings, {args.budget:g}, method="kmq", k={record["k"]},
quality=..., seed=0)` on the {record["rows"]:,}-row synthetic pool of [scale.md](scale.md),
in memory: the float16 vectors its embedding cache holds, as float32 ({record["load_s"]:.1f} s
to make), and its quality column; {record["selected"]:,} rows selected. Each engine ran in a
fresh process that made the array first: the local engine, then the Ray engine on a local Ray
runtime started by `ray.init(num_cpus={workers})` ({workers} workers; timed apart, not counted
in the other rows). Both engines fit k-means on the driver (the same faiss call); the Ray
engine assigns the rows in one task per 65,536-row chunk and draws the per-cluster picks in
{TASKS_PER_WORKER * workers} tasks, at most {workers} in flight; its first tasks also wait for
the workers to start and import kmq. "Ray / local" divides the times.

**identical: {record["identical"]}** (same indices in the same order, same reasons, scores and
quotas).

{markdown_table(["stage", "local", f"Ray, {workers} workers", "Ray / local"], rows)}

{memory} The machine is shared (see the load average below): both runs compete with that
load, so the times are noisy; the fit, the same call on the driver in both runs, shows by how
much.
"""
    title = f"Local vs Ray engine ({workers} workers) at {record['rows']:,} rows"
    write_report(args.results, "scale_ray", title, body, total_s)


# ---------------------------------------------------------------------------------------------
# report


def slopes(records: list[dict[str, Any]]) -> dict[str, float]:
    """Log-log slope of each stage's time (and of peak RSS) over the synthetic sizes."""
    synthetic = [r for r in records if not r["real"]]
    if len(synthetic) < 2:
        return {}
    n = np.log10([r["n"] for r in synthetic])
    out = {}
    for stage in [*STAGES, "total"]:
        t = np.array([stage_time(r, stage) for r in synthetic])
        out[stage] = float(np.polyfit(n, np.log10(np.maximum(t, 1e-3)), 1)[0])
    out["peak RSS"] = float(np.polyfit(n, np.log10([r["peak_rss_mb"] for r in synthetic]), 1)[0])
    return out


def stage_time(record: dict[str, Any], stage: str) -> float:
    timings = record["timings_s"]
    return float(sum(timings.values()) if stage == "total" else timings.get(stage, 0.0))


def report(
    records: list[dict[str, Any]], args: argparse.Namespace, total_s: float, ray: bool = False
) -> None:
    headers = ["rows", "k", "fit on", *[f"{s} (s)" for s in STAGES], "total (s)", "peak RSS (MB)"]
    rows = [
        [
            f"{r['n']:,}" + (" (real MiniLM)" if r["real"] else ""),
            r["k"],
            r["kmeans_sample"],
            *[stage_time(r, s) for s in STAGES],
            stage_time(r, "total"),
            r["peak_rss_mb"],
        ]
        for r in records
    ]
    fitted = slopes(records)
    if fitted:
        rows.append(
            [
                "log-log slope",
                "",
                "",
                *[round(fitted[s], 2) for s in STAGES],
                round(fitted["total"], 2),
                round(fitted["peak RSS"], 2),
            ]
        )
    extra = [
        [f"{r['n']:,}" + (" (real)" if r["real"] else ""), *r["selection_only_s"].values()]
        for r in records
    ]
    biggest = max(records, key=lambda r: r["n"])
    body = f"""
`kmq select --streaming` with kmq (quality from a column), k = {args.k}, budget
{args.budget:g} of the pool, seed 0, default k-means sample (max(256·k, 100,000) rows, all rows
of a smaller pool), float16 embeddings, 65,536-row chunks. Each size ran in a fresh process on a
cold embedding cache; "embed" is the synthetic encoder plus the float16 memory-map cache (write
shards, join), not a model: MiniLM itself runs at roughly 20–35 rows/s on this machine's two
cores (see select_full.md), i.e. about 4–6 days for 10M rows. The "real" row replays the cached
MiniLM vectors of `mix.jsonl.gz` (no quality column there: kmq draws uniformly inside clusters).

{markdown_table(headers, rows)}

Stages: **read** (one pass over the shards: parse, check, hash the embedded text), **embed**
(cache miss: a second pass feeding the encoder, float16 shards joined into one `.npy`),
**sample** (the k-means sample read from the memory map), **fit** (faiss k-means, AFK-MC²,
10 iterations), **assign** (every row to its nearest centre, chunk by chunk), **select** (kmq's
per-cluster draws), **write** (selected rows copied into `selected-*.jsonl` shards, the table,
clusters.npz, manifest). Peak RSS is the process' maximum resident set (Python, numpy and faiss
included). The slope is fitted over the synthetic sizes; 1 means linear.

Selection alone (s) for the other methods on the same clusters and budget, timed after the run:

{markdown_table(["rows", *EXTRA_METHODS], extra)}

At {biggest["n"]:,} rows: {biggest["selected"]:,} rows selected into {biggest["output_files"]}
output shard(s); the float16 embeddings take {biggest["n"] * DIM * 2 / 1e9:.1f} GB on disk
(plus the same again while the cache shards are joined), and peak memory was
{biggest["peak_rss_mb"] / 1024:.1f} GB.
"""
    if ray:
        body += (
            f"\nThe local and Ray engines on {args.ray_rows:,} rows in memory: "
            "[scale_ray.md](scale_ray.md).\n"
        )
    write_report(args.results, "scale", "Scaling kmq select --streaming to 10M rows", body, total_s)
    plot(records, args.results)


def plot(records: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    synthetic = [r for r in records if not r["real"]]
    real = [r for r in records if r["real"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    n = [r["n"] for r in synthetic]
    for stage in [*STAGES, "total"]:
        style = {"color": "black", "linewidth": 2} if stage == "total" else {}
        left.plot(
            n, [max(stage_time(r, stage), 1e-3) for r in synthetic], "o-", label=stage, **style
        )
    for r in real:
        left.plot([r["n"]], [stage_time(r, "total")], "k*", markersize=12, label="total (real)")
    left.set(xscale="log", yscale="log", xlabel="rows", ylabel="seconds", title="time per stage")
    left.legend(fontsize=7, ncol=2)
    right.plot(n, [r["peak_rss_mb"] / 1024 for r in synthetic], "o-", color="tab:red")
    for r in real:
        right.plot([r["n"]], [r["peak_rss_mb"] / 1024], "k*", markersize=12)
    right.axhline(24, color="gray", linestyle="--", linewidth=1)
    right.text(n[0], 24 * 0.8, "24 GB target", fontsize=8, color="gray")
    right.set(xscale="log", yscale="log", xlabel="rows", ylabel="GB", title="peak RSS")
    fig.suptitle("kmq select --streaming (k-means on a sample, float16 memory map)")
    save_figure(fig, out, "scale")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000,10000000")
    parser.add_argument("--k", type=int, default=1024)
    parser.add_argument("--budget", type=float, default=0.05)
    parser.add_argument("--real", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument(
        "--ray-rows",
        type=int,
        default=1_000_000,
        help="rows of the local vs Ray engine section (0: skip it; skipped without ray)",
    )
    parser.add_argument("--ray-workers", type=int, default=2)
    parser.add_argument("--only-ray", action="store_true", help="run the Ray section only")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pool", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--replay", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--engine", choices=["local", "ray"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.engine:
        engine_worker(args)
        return
    setup_logging()
    log.info("%s", command_line())
    if args.only_ray:
        ray_section(args)
        return
    started = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    records = [run_size(int(n), args) for n in args.sizes.split(",")]
    replay = real_vectors(REAL_POOL) if args.real else None
    if replay is not None:
        records.append(run_size(0, args, replay=replay))
    elif args.real:
        log.info("no cached MiniLM vectors of %s: the real row is skipped", REAL_POOL.name)
    (WORK / "results.json").write_text(json.dumps(records, indent=2))
    report(records, args, time.perf_counter() - started, ray_section(args))


if __name__ == "__main__":
    main()
