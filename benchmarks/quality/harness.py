"""The selection-quality grid: select with each method, LoRA-train SmolLM2, evaluate; cached.

Every artefact is a file named by a hash of everything that made it, written atomically, so an
interrupted or extended run only computes what is missing:

- ``<out>/holdout-<h>.json``: the held-out rows (``holdout_per_source`` per source, seeded by
  ``holdout_seed``, fixed across seeds); every method excludes them;
- ``<out>/<method>/s<seed>/selection-<hs>.json``: the picked ids (``hs`` = pool sha256,
  hold-out, budget, k, quality, method, seed, and for iterative kMQ the loop's settings);
- ``<out>/<method>/s<seed>/model-<ht>/checkpoint``: the LoRA adapter (``ht`` = ``hs`` +
  training settings + seed);
- ``<out>/<method>/s<seed>/eval-<he>.json``: the scores (``he`` = ``ht`` + evaluation
  settings); ``<out>/base/eval-<he>.json`` for the model without fine-tuning.

Changing only the evaluation settings therefore re-evaluates without re-training, and adding a
seed or a method runs only the new jobs. Selection goes through :func:`kmq.pipeline.select_file`
(exactly what ``kmq select`` runs); iterative kMQ through :class:`kmq.loop.IterativeSelection`
(its own resumable run folder). Every method's picks are then trained the same way (same
trainer, same hyper-parameters, from the base model), so the comparison is about the data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from kmq.atomic import write_json, write_text
from kmq.config import SelectConfig
from kmq.examples import Example
from kmq.formats import LoadedPool, load_pool
from kmq.loop import IterateConfig, IterativeSelection
from kmq.outputs import Manifest
from kmq.pipeline import select_file

log = logging.getLogger("kmq.benchmarks")

METHODS: dict[str, dict[str, Any]] = {
    "random": {"method": "random"},
    "km-closest-proportional": {"method": "km-closest", "allocation": "proportional"},
    "km-closest-balanced": {"method": "km-closest", "allocation": "balanced"},
    "km-random-proportional": {"method": "km-random", "allocation": "proportional"},
    "km-random-balanced": {"method": "km-random", "allocation": "balanced"},
    "kmq-proportional": {"method": "kmq", "allocation": "proportional"},
    "kmq-balanced": {"method": "kmq", "allocation": "balanced"},
    "iterative-kmq": {"method": "iterative-kmq"},
    "deita": {"method": "deita"},
    "qdit": {"method": "qdit"},
    "k-center": {"method": "k-center"},
}
"""Method names of the grid → ``kmq select`` settings (iterative kMQ runs the loop instead)."""

CLUSTERED = {"km-closest", "km-random", "kmq", "iterative-kmq"}
WITH_QUALITY = {"kmq", "iterative-kmq", "deita", "qdit"}

NLL_SUITES = ("gsm8k", "humaneval", "mt-bench", "truthfulqa")
MC_SUITES = ("arc-easy", "arc-challenge", "mmlu")

ORDERING: tuple[tuple[str, str], ...] = (
    ("iterative-kmq", "kmq-proportional"),
    ("iterative-kmq", "kmq-balanced"),
    ("kmq-proportional", "km-random-proportional"),
    ("kmq-balanced", "km-random-balanced"),
    ("km-random-proportional", "random"),
    ("km-random-balanced", "random"),
    ("kmq-proportional", "deita"),
    ("kmq-proportional", "qdit"),
    ("kmq-balanced", "deita"),
    ("kmq-balanced", "qdit"),
)
"""The paper's claimed ordering, pair by pair (first should beat second)."""


@dataclass(frozen=True)
class Protocol:
    """Everything that decides the numbers; written into the results."""

    pool: str
    eval_dir: str
    pool_sample: int | None = None
    holdout_per_source: int = 10
    holdout_seed: int = 0
    budget: int = 128
    k: int = 16
    quality: str = "length"
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = tuple(METHODS)
    rounds: int = 3
    feedback: str = "perplexity"
    max_new_tokens: int = 128
    gen_batch_size: int = 16
    model: str = "smollm2"
    epochs: float = 1.0
    learning_rate: float = 2e-4
    lora_r: int = 16
    train_batch_size: int = 8
    train_max_length: int = 256
    suites: tuple[str, ...] = NLL_SUITES + MC_SUITES
    eval_items: int = 25
    eval_seed: int = 0
    eval_max_length: int = 384
    eval_batch_size: int = 8
    device: str = "cpu"

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
        suites = [s for s in self.suites if s not in NLL_SUITES + MC_SUITES]
        if suites:
            raise ValueError(f"unknown suites {suites}; known: {NLL_SUITES + MC_SUITES}")
        if not self.seeds:
            raise ValueError("at least one seed is needed")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def train_settings(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "method": "lora",
            "epochs": self.epochs,
            "learning_rate": self.learning_rate,
            "lora_r": self.lora_r,
            "batch_size": self.train_batch_size,
            "max_length": self.train_max_length,
            "device": self.device,
        }

    def eval_settings(self) -> dict[str, Any]:
        return {
            "suites": list(self.suites),
            "eval_items": self.eval_items,
            "eval_seed": self.eval_seed,
            "eval_max_length": self.eval_max_length,
            "device": self.device,
        }


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-able parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass
class Job:
    """One (method, seed) cell of the grid, or the base model (``method == "base"``)."""

    method: str
    seed: int | None
    folder: Path
    select_key: str = ""
    train_key: str = ""
    eval_key: str = ""

    @property
    def name(self) -> str:
        return self.method if self.seed is None else f"{self.method} seed {self.seed}"

    @property
    def selection_path(self) -> Path:
        return self.folder / f"selection-{self.select_key}.json"

    @property
    def model_dir(self) -> Path:
        return self.folder / f"model-{self.train_key}"

    @property
    def checkpoint(self) -> Path:
        return self.model_dir / "checkpoint"

    @property
    def eval_path(self) -> Path:
        return self.folder / f"eval-{self.eval_key}.json"


@dataclass
class Stages:
    """The expensive operations, swappable so the grid's own logic is testable without models.

    ``select(job, grid)`` → (picked ids, info); ``train(job, grid, examples)`` → checkpoint;
    ``evaluate(job, grid, checkpoint or None)`` → scores (``{"suites": {name: value}, ...}``).
    """

    select: Callable[[Job, Grid], tuple[list[str], dict[str, Any]]]
    train: Callable[[Job, Grid, list[Example]], Path]
    evaluate: Callable[[Job, Grid, Path | None], dict[str, Any]]


@dataclass
class Grid:
    """The whole comparison: the pool, its hold-out, and the jobs of the protocol."""

    protocol: Protocol
    out: Path
    cache_dir: Path
    stages: Stages | None = None
    log_file: Path | None = None
    _pool: LoadedPool | None = field(default=None, repr=False)
    _pool_path: Path | None = field(default=None, repr=False)

    # -- pool and hold-out -------------------------------------------------------------------

    @property
    def pool_path(self) -> Path:
        """The pool file the methods select from (a seeded sample of it with ``pool_sample``)."""
        if self._pool_path is None:
            source = Path(self.protocol.pool)
            if self.protocol.pool_sample is None:
                self._pool_path = source
            else:
                self._pool_path = self._sample_pool(source, self.protocol.pool_sample)
        return self._pool_path

    def _sample_pool(self, source: Path, n: int) -> Path:
        path = self.out / f"pool-{digest(str(source), n, self.protocol.holdout_seed)}.jsonl"
        if not path.exists():
            pool = load_pool(source)
            rng = np.random.default_rng(self.protocol.holdout_seed)
            rows = np.sort(rng.choice(len(pool.examples), min(n, len(pool.examples)), False))
            lines = "".join(
                json.dumps(pool.examples[i].fields, ensure_ascii=False) + "\n" for i in rows
            )
            write_text(path, lines)
        return path

    @property
    def pool(self) -> LoadedPool:
        if self._pool is None:
            self._pool = load_pool(self.pool_path)
        return self._pool

    @property
    def holdout_path(self) -> Path:
        p = self.protocol
        key = digest(self.pool.sha256, p.holdout_per_source, p.holdout_seed)
        path = self.out / f"holdout-{key}.json"
        if not path.exists():
            write_json(path, holdout_ids(self.pool.examples, p.holdout_per_source, p.holdout_seed))
        return path

    @property
    def holdout(self) -> list[Example]:
        ids = set(read_json(self.holdout_path))
        return [ex for ex in self.pool.examples if ex.id in ids]

    # -- jobs ------------------------------------------------------------------------------------

    def jobs(self) -> list[Job]:
        """The base model first, then seed by seed, every method (so partial runs are balanced)."""
        p = self.protocol
        train = p.train_settings()
        evaluation = p.eval_settings() | {"holdout": self.holdout_path.name}
        base = Job("base", None, self.out / "base")
        base.eval_key = digest("base", train["model"], evaluation)
        jobs = [base]
        common = {
            "pool": self.pool.sha256,
            "holdout": self.holdout_path.name,
            "budget": p.budget,
            "k": p.k,
            "quality": p.quality,
        }
        for seed in p.seeds:
            for method in p.methods:
                job = Job(method, seed, self.out / method / f"s{seed}")
                selecting = common | METHODS[method] | {"seed": seed}
                if method == "iterative-kmq":
                    selecting |= {
                        "rounds": p.rounds,
                        "feedback": p.feedback,
                        "max_new_tokens": p.max_new_tokens,
                        "train": train,
                    }
                job.select_key = digest(selecting)
                job.train_key = digest(job.select_key, train, seed)
                job.eval_key = digest(job.train_key, evaluation)
                jobs.append(job)
        return jobs

    def pending(self) -> list[Job]:
        return [job for job in self.jobs() if not job.eval_path.exists()]

    # -- running ---------------------------------------------------------------------------------

    def run(self) -> None:
        """Run every job whose evaluation is missing, logging progress as it goes."""
        if self.stages is None:
            raise ValueError("no stages: pass Stages (see real_stages) to run the grid")
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "protocol.json", self.protocol.to_dict())
        run_pending(self.jobs(), self.run_job, self.say)

    def run_job(self, job: Job) -> None:
        assert self.stages is not None
        timings: dict[str, float] = {}
        checkpoint: Path | None = None
        if job.method != "base":
            if not job.selection_path.exists():
                started = time.perf_counter()
                ids, info = self.stages.select(job, self)
                seconds = time.perf_counter() - started
                write_json(job.selection_path, {"ids": ids, "info": info, "seconds": seconds})
            selection = read_json(job.selection_path)
            timings["select"] = selection["seconds"]
            if not (job.checkpoint / "DONE").exists():
                started = time.perf_counter()
                examples = self.examples(selection["ids"])
                shutil.rmtree(job.model_dir, ignore_errors=True)
                checkpoint = self.stages.train(job, self, examples)
                write_json(checkpoint / "DONE", {"seconds": time.perf_counter() - started})
            checkpoint = job.checkpoint
            timings["train"] = read_json(checkpoint / "DONE")["seconds"]
        started = time.perf_counter()
        scores = self.stages.evaluate(job, self, checkpoint)
        timings["evaluate"] = time.perf_counter() - started
        write_json(
            job.eval_path,
            {"method": job.method, "seed": job.seed, "seconds": timings} | scores,
        )

    def examples(self, ids: Sequence[str]) -> list[Example]:
        by_id = {ex.id: ex for ex in self.pool.examples}
        return [by_id[i] for i in ids]

    def say(self, message: str) -> None:
        say(message, self.log_file)

    # -- results ---------------------------------------------------------------------------------

    def results(self) -> list[dict[str, Any]]:
        """Every finished job's evaluation (in job order)."""
        return [read_json(job.eval_path) for job in self.jobs() if job.eval_path.exists()]


def say(message: str, log_file: Path | None) -> None:
    """Log ``message`` and append it, time-stamped, to ``log_file`` (when there is one)."""
    log.info(message)
    if log_file is not None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with log_file.open("a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {message}\n")


def run_pending(
    jobs: Sequence[Any],
    run_job: Callable[[Any], Any],
    tell: Callable[[str], None],
    *,
    done: Callable[[Any], bool] = lambda job: job.eval_path.exists(),
    what: str = "jobs",
    tag: str = "",
) -> None:
    """Run every job not ``done`` (by default: whose ``eval_path`` is missing), in order,
    telling the progress (``what`` names the jobs, ``tag`` prefixes each job's count)."""
    todo = [job for job in jobs if not done(job)]
    tell(f"{len(jobs) - len(todo)} of {len(jobs)} {what} already done; {len(todo)} to run")
    for number, job in enumerate(todo, 1):
        started = time.perf_counter()
        tell(f"[{tag}{number}/{len(todo)}] {job.name}")
        run_job(job)
        seconds = time.perf_counter() - started
        tell(f"[{tag}{number}/{len(todo)}] {job.name} done in {seconds:.0f} s")


def holdout_ids(examples: Sequence[Example], per_source: int, seed: int) -> list[str]:
    """``per_source`` ids from every source (all of a smaller source), seeded, in pool order.

    Only rows with a non-empty last answer are eligible (their NLL is what gets measured).
    """
    by_source: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        if ex.response.strip():
            by_source.setdefault(ex.source or "(none)", []).append(i)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for source in sorted(by_source):
        rows = by_source[source]
        take = min(per_source, len(rows))
        chosen += rng.choice(rows, size=take, replace=False).tolist()
    return [examples[i].id for i in sorted(chosen)]


# ---------------------------------------------------------------------------------------------
# The real stages


def real_stages() -> Stages:
    """Selection with kmq, LoRA training with :class:`~kmq.training.trl.TRLTrainer`, and the
    evaluation suites of :mod:`evaluation` (``benchmarks/quality/evaluation``)."""
    return Stages(select=_select, train=_train, evaluate=_evaluate)


def _select_config(job: Job, grid: Grid, out: Path) -> SelectConfig:
    p = grid.protocol
    settings = METHODS[job.method]
    clustered = settings["method"] in CLUSTERED
    return SelectConfig(
        input=str(grid.pool_path),
        out=str(out),
        budget=p.budget,
        method=settings["method"],
        k=p.k if clustered else "auto",
        seed=int(job.seed or 0),
        allocation=settings.get("allocation", "balanced"),
        quality=p.quality if settings["method"] in WITH_QUALITY else None,
        cache_dir=str(grid.cache_dir),
        exclude=str(grid.holdout_path),
        progress=False,
    )


def _select(job: Job, grid: Grid) -> tuple[list[str], dict[str, Any]]:
    if job.method == "iterative-kmq":
        return _iterate(job, grid)
    out = job.folder / f"select-{job.select_key}"
    run = select_file(_select_config(job, grid, out))
    ids = [run.pool.examples[i].id for i in run.result.indices]
    return ids, selection_info(run.manifest)


def selection_info(manifest: Manifest) -> dict[str, Any]:
    """What a job records of ``kmq select``'s manifest: the k it clustered with (None for a
    method without clusters) and the seconds of each of its stages."""
    return {"k": manifest.k, "stages": manifest.timings_s}


def _trainer(grid: Grid) -> Any:
    from kmq.training.trl import TRLTrainer

    p = grid.protocol
    return TRLTrainer(
        p.model,
        epochs=p.epochs,
        learning_rate=p.learning_rate,
        lora_r=p.lora_r,
        batch_size=p.train_batch_size,
        max_length=p.train_max_length,
        device=p.device,
        generation={"max_new_tokens": p.max_new_tokens, "batch_size": p.gen_batch_size},
        show_progress=False,
    )


def _iterate(job: Job, grid: Grid) -> tuple[list[str], dict[str, Any]]:
    """The loop's picks: select and train every round; generate, score and reweight every round
    but the last (the last round's feedback would steer nothing)."""
    p = grid.protocol
    pool = replace(_select_config(job, grid, job.folder), method="kmq")
    config = IterateConfig(pool=pool, rounds=p.rounds, feedback=p.feedback)
    loop = IterativeSelection(job.folder / f"loop-{job.select_key}", config, trainer=_trainer(grid))
    loop.init()
    for r in range(1, p.rounds + 1):
        loop.select(r)
        if r < p.rounds:
            loop.train(r)
            loop.generate(r)
            loop.score(r)
            loop.reweight(r)
    result = loop.finalize()
    ids = [loop.pool.examples[i].id for i in result.indices]
    weights = [loop.dir.read("weights.json", r)["after"] for r in range(1, p.rounds)]
    return ids, {"k": p.k, "weights_after": weights}


def _train(job: Job, grid: Grid, examples: list[Example]) -> Path:
    return Path(_trainer(grid).train(examples, job.model_dir, init=None, seed=int(job.seed or 0)))


def _evaluate(job: Job, grid: Grid, checkpoint: Path | None) -> dict[str, Any]:
    from evaluate import evaluate_model

    return evaluate_model(grid, checkpoint)


# ---------------------------------------------------------------------------------------------
# Aggregation


@dataclass
class Cell:
    mean: float
    std: float
    n: int


def metric_table(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """method → metric → values over seeds (the base model's single value for ``base``)."""
    table: dict[str, dict[str, list[float]]] = {}
    for row in results:
        metrics = table.setdefault(row["method"], {})
        for name, value in flat_metrics(row).items():
            metrics.setdefault(name, []).append(value)
    return table


def flat_metrics(row: dict[str, Any]) -> dict[str, float]:
    """One evaluation as ``{metric: value}``, with the aggregates over suites added."""
    suites: dict[str, float] = dict(row["suites"])
    metrics = dict(suites)
    nll = [suites[s] for s in NLL_SUITES if s in suites]
    mc = [suites[s] for s in MC_SUITES if s in suites]
    if nll:
        metrics["mean NLL"] = float(np.mean(nll))
    if mc:
        metrics["mean acc"] = float(np.mean(mc))
    held = row.get("holdout") or {}
    if held:
        for source, value in held.items():
            metrics[f"held-out {source}"] = value
        metrics["held-out NLL"] = float(np.mean(list(held.values())))
    metrics["seconds"] = float(sum(row.get("seconds", {}).values()))
    return metrics


def summarise(values: Sequence[float]) -> Cell:
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else math.nan
    return Cell(float(arr.mean()), std, len(arr))


def paired_differences(
    results: Sequence[dict[str, Any]], first: str, second: str, metric: str
) -> np.ndarray | None:
    """``first − second`` on ``metric`` per seed, over the seeds both have (None if none)."""
    by_seed: dict[str, dict[int, float]] = {first: {}, second: {}}
    for row in results:
        if row["method"] in by_seed:
            value = flat_metrics(row).get(metric)
            if value is not None:
                by_seed[row["method"]][row["seed"]] = value
    seeds = sorted(set(by_seed[first]) & set(by_seed[second]))
    if not seeds:
        return None
    return np.array([by_seed[first][s] - by_seed[second][s] for s in seeds])
