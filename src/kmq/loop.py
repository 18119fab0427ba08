"""Iterative kMQ (the paper's Algorithm 1) as a resumable state machine over a run folder.

Round r (1..N) takes b/N rows (the remainder spread over the first rounds, so the total is
exactly b) from the rows not yet picked, with per-cluster quotas ∝ the current cluster weights
(capped by what is left, water-filled) and a quality-weighted draw inside each cluster (kMQ);
round 1's weights are uniform (w⁰ = 1/k; ``allocation="proportional"`` makes them ∝ each
cluster's rows instead, the quotas of the paper's text). Then: train on the picked rows,
generate answers for their prompts (skipped when the feedback scorer reads no generation, like
``gold-pmi``), score each (x, y_gold, y_gen) with a feedback scorer, and update the weights from
the per-cluster means (:mod:`kmq.reweight`). A feedback scorer that reads no generation reads
nothing of the trained model either, so with it the selection does not depend on the training:
``train=False`` (``--no-train``) skips it and picks the same rows. Every step is saved with a
DONE marker, so a run killed at any point resumes where it stopped and ends with the same
selection.

The built-in trainer is one client of this state machine; ``init`` / ``feedback`` / ``next``
let any other training stack drive it (see :class:`IterativeSelection`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from kmq._version import __version__
from kmq.config import SelectConfig, make_engine, quality_multiple, resolve_budget
from kmq.engines import Engine
from kmq.errors import KmqError, ParameterError
from kmq.examples import Example
from kmq.feedback import (
    DEFAULT_FEEDBACK,
    FeedbackScorer,
    check_feedback_options,
    get_feedback_scorer,
    needs_generation,
    reads_generation,
)
from kmq.formats import FieldMap, LoadedPool, load_pool, write_selected
from kmq.outputs import CLUSTERS, write_clusters, write_table
from kmq.pipeline import cluster
from kmq.pools import embed_pool, pool_quality
from kmq.registry import choose
from kmq.reweight import POSITIVE_MAPS, PRIORS, RULES, cluster_means, initial_weights, update
from kmq.rundir import RunDir
from kmq.selectors import KMQSelector, SelectionResult
from kmq.selectors.base import available_mask
from kmq.stages import check_feasible, exclusion
from kmq.training import Trainer

log = logging.getLogger("kmq")


@dataclass
class IterateConfig:
    """Everything ``kmq iterate`` takes; saved as ``RUN/config.json`` and reloaded on resume."""

    pool: SelectConfig  # input, budget, k, seed, quality, embedding, engine (method: kmq)
    rounds: int = 3
    rule: str = "paper"
    positive: str = "shift"
    reweight_temperature: float = 1.0
    floor: float = 1e-3
    feedback: str = DEFAULT_FEEDBACK
    feedback_options: dict[str, Any] = field(default_factory=dict)
    trainer_options: dict[str, Any] = field(default_factory=dict)
    external: bool = False  # True: rounds are trained elsewhere (init / feedback / next)
    train: bool = True  # False: no round is trained (only with a feedback that reads no generation)

    def validate(self, *, feedback: bool = True) -> None:
        """Check every setting before any work (the feedback scorer's too unless ``feedback``
        is False: one was handed in); errors name the field (``kmq iterate`` names its flag
        instead)."""
        self.pool.validate()
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ParameterError(
                "rounds", f"{{param}} must be an integer >= 1, got {self.rounds!r}"
            )
        choose("rule", self.rule, RULES)
        if self.pool.allocation not in PRIORS:
            raise ParameterError(
                "allocation",
                f"{{param}} must be balanced (w⁰ = 1/k) or proportional (w⁰ ∝ cluster size) "
                f"in the iterative loop; got {self.pool.allocation!r}",
            )
        choose("positive", self.positive, POSITIVE_MAPS)
        if not 0 <= self.floor < 1:
            raise ParameterError("floor", f"{{param}} must be in [0, 1), got {self.floor!r}")
        if not self.reweight_temperature > 0:
            raise ParameterError(
                "reweight_temperature", f"{{param}} must be > 0, got {self.reweight_temperature!r}"
            )
        if not isinstance(self.train, bool):
            raise ParameterError("train", f"{{param}} must be True or False, got {self.train!r}")
        if not feedback:
            return
        try:
            check_feedback_options(self.feedback, self.feedback_options)
        except ParameterError as exc:
            if exc.parameter == "feedback":
                raise
            raise exc.renamed(f"feedback_options[{exc.parameter!r}]") from None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        encoder = self.pool.encoder
        data["pool"]["encoder"] = encoder if isinstance(encoder, str) else encoder.name
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IterateConfig:
        pool = dict(data["pool"])
        pool["fields"] = FieldMap(**pool["fields"])
        pool.setdefault("quality_candidates", None)  # runs saved before it scored every row
        known = {f.name for f in fields(SelectConfig)}
        rest = {k: v for k, v in data.items() if k not in ("pool", "version")}
        return cls(pool=SelectConfig(**{k: v for k, v in pool.items() if k in known}), **rest)


def round_sizes(budget: int, rounds: int) -> list[int]:
    """b/N per round, the remainder spread over the first rounds (sums to ``budget`` exactly)."""
    if rounds < 1:
        raise KmqError(f"rounds must be >= 1, got {rounds}")
    if budget < rounds:
        raise KmqError(f"budget={budget} is smaller than rounds={rounds}: every round needs a row")
    return [budget // rounds + (1 if r < budget % rounds else 0) for r in range(rounds)]


class IterativeSelection:
    """One method per step of Algorithm 1, each skipped when its DONE marker exists."""

    def __init__(
        self,
        run: str | Path,
        config: IterateConfig | None = None,
        *,
        trainer: Trainer | None = None,
        feedback: FeedbackScorer | None = None,
    ) -> None:
        self.dir = RunDir(run)
        self.config = config or IterateConfig.from_dict(self.dir.read("config.json"))
        self._trainer = trainer
        self._feedback = feedback
        self._pool: LoadedPool | None = None
        self._embeddings: np.ndarray | None = None
        self._quality: np.ndarray | None = None
        self._engine: Engine | None = None

    # -- setup ------------------------------------------------------------------------------

    def init(self) -> None:
        """Write the config (or check it matches) and prepare the pool's clusters."""
        # the feedback scorer of an external run is built only if it hands in generations
        self.config.validate(feedback=self._feedback is None and not self.config.external)
        self.check_untrained()
        path = self.dir.path / "config.json"
        wanted = absolute_paths(self.config.to_dict()) | {"version": __version__}
        if path.exists():
            self.dir.sweep()
            saved = self.dir.read("config.json")
            differences = config_differences(saved, wanted)
            if differences:
                raise ParameterError(
                    "run",
                    f"{self.dir.path} holds a run with another configuration: "
                    + "; ".join(differences)
                    + " (start a new {param}, or give the run's settings)",
                )
        else:
            self.dir.path.mkdir(parents=True, exist_ok=True)
            self.dir.write("config.json", wanted)
        self.prepare()

    def check_untrained(self) -> None:
        """Refuse ``train=False`` with a feedback scorer that reads the trained model's
        generations (it would have none to read)."""
        if self.config.train:
            return
        scorer = self._feedback
        reads = (
            needs_generation(scorer)
            if scorer is not None
            else reads_generation(self.config.feedback)
        )
        if reads:
            raise ParameterError(
                "train",
                f"{{param}} applies only to feedback that reads no generation (gold-sound, "
                f"gold-fit, gold-pmi): {self.config.feedback} scores the trained model's answers",
            )

    @property
    def pool(self) -> LoadedPool:
        if self._pool is None:
            cfg = self.config.pool
            self._pool = load_pool(
                cfg.input,
                fields=cfg.fields,
                format=cfg.format,
                on_invalid=cfg.on_invalid,
                quality_field=cfg.quality_field,
            )
            if self.dir.done("prepare"):
                expected = self.dir.read("prepare.json")["sha256"]
                if self._pool.sha256 != expected:
                    raise KmqError(f"{cfg.input} changed since this run started (sha256 differs)")
        return self._pool

    @property
    def engine(self) -> Engine:
        """Where the embedding, the assignment and each round's picks run (``pool.engine``)."""
        if self._engine is None:
            self._engine = make_engine(self.config.pool)
        return self._engine

    @property
    def embeddings(self) -> np.ndarray:
        if self._embeddings is None:
            self._embeddings, _ = embed_pool(self.pool, self.config.pool)
        return self._embeddings

    @property
    def quality(self) -> np.ndarray | None:
        if self._quality is None:
            self._quality, _ = pool_quality(self.pool, self.config.pool)
        return self._quality

    @property
    def excluded(self) -> np.ndarray:
        """Rows named in ``--exclude`` (never picked in any round)."""
        mask, _ = exclusion([ex.id for ex in self.pool.examples], self.config.pool.exclude)
        return np.flatnonzero(mask)

    @property
    def labels(self) -> np.ndarray:
        return self.dir.read_arrays(CLUSTERS)["labels"]

    @property
    def budget(self) -> int:
        return resolve_budget(self.config.pool.budget, len(self.pool.examples))

    def prepare(self) -> None:
        if self.dir.done("prepare"):
            return
        started = time.perf_counter()
        cfg = self.config.pool
        round_sizes(self.budget, self.config.rounds)
        check_feasible(cfg, len(self.pool.examples), self.budget, len(self.excluded))
        fitted, silhouette = cluster(
            self.embeddings,
            cfg.k,
            engine=self.engine,
            **cfg.k_search(self.budget // self.config.rounds),
        )
        write_clusters(self.dir.path / CLUSTERS, fitted)
        self.dir.write(
            "prepare.json",
            {
                "sha256": self.pool.sha256,
                "rows": len(self.pool.examples),
                "k": fitted.k,
                "budget": self.budget,
                "round_sizes": round_sizes(self.budget, self.config.rounds),
                "silhouette": {str(k): s for k, s in (silhouette or {}).items()} or None,
                "sizes": fitted.sizes_.tolist(),
                "cluster_sources": cluster_sources(self.pool, fitted.labels_, fitted.k),
            },
        )
        self.dir.mark_done("prepare", seconds=round(time.perf_counter() - started, 3))

    # -- state ------------------------------------------------------------------------------

    def weights_before(self, r: int) -> np.ndarray:
        if r == 1:
            k = int(self.dir.read("prepare.json")["k"])
            if self.config.pool.allocation == "balanced":  # needs no pool
                return initial_weights("balanced", np.ones(k))
            labels = self.labels
            capacity = np.bincount(labels[available_mask(len(labels), self.excluded)], minlength=k)
            return initial_weights(self.config.pool.allocation, capacity)
        return np.asarray(self.dir.read("weights.json", r - 1)["after"], dtype=np.float64)

    def picked(self, r: int) -> np.ndarray:
        return np.asarray(self.dir.read("picked.json", r)["indices"], dtype=np.int64)

    def require_drawn(self, r: int) -> None:
        """Refuse feedback for a round that is out of range or whose rows were never drawn."""
        if not 1 <= r <= self.config.rounds:
            raise KmqError(f"round must be in 1..{self.config.rounds}, got {r}")
        if not self.dir.done("select", r):
            raise KmqError(
                f"round {r} of {self.dir.path} has not been drawn yet: draw it with advance() "
                f"(`kmq iterate next --run {self.dir.path}`)"
            )

    def picked_before(self, r: int) -> np.ndarray:
        parts = [self.picked(q) for q in range(1, r)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def examples(self, rows: np.ndarray) -> list[Example]:
        return [self.pool.examples[i] for i in rows]

    def next_round(self) -> int | None:
        """The first round whose reweight step is not done (None once every round is done)."""
        for r in range(1, self.config.rounds + 1):
            if not self.dir.done("reweight", r):
                return r
        return None

    # -- the steps of a round ---------------------------------------------------------------

    def select(self, r: int) -> None:
        if self.dir.done("select", r):
            return
        started = time.perf_counter()
        cfg = self.config.pool
        weights = self.weights_before(r)
        excluded = np.union1d(self.picked_before(r), self.excluded)
        size = round_sizes(self.budget, self.config.rounds)[r - 1]
        multiple = quality_multiple(cfg)
        selector = KMQSelector(
            weighting=cfg.quality_weighting, temperature=cfg.temperature, candidates=multiple
        )
        seed = np.random.SeedSequence(cfg.seed, spawn_key=(r,))
        if multiple is None:
            quality = self.quality
            scored = None if quality is None else len(quality)
        else:
            rows = selector.candidate_rows(
                len(self.pool.examples),
                size,
                labels=self.labels,
                weights=weights,
                exclude=excluded,
                seed=seed,
            )
            quality, _ = pool_quality(self.pool, cfg, rows=rows)
            scored = len(rows)
        result = self.engine.select(
            selector,
            self.embeddings,
            size,
            labels=self.labels,
            quality=quality,
            weights=weights,
            exclude=excluded,
            seed=seed,
        )
        self.dir.round_dir(r).mkdir(parents=True, exist_ok=True)
        rows_path = write_selected(
            self.pool, [self.pool.examples[i].row for i in result.indices], self.dir.round_dir(r)
        )
        self.dir.write(
            "picked.json",
            {
                "round": r,
                "size": size,
                "indices": result.indices.tolist(),
                "ids": [self.pool.examples[i].id for i in result.indices],
                "quotas": None if result.quotas is None else result.quotas.tolist(),
                "weights_before": weights.tolist(),
                "rows_file": rows_path.name,
                "reasons": result.reasons,
                "quality": None if quality is None else quality[result.indices].tolist(),
                "quality_scored": scored,
            },
            r,
        )
        self.dir.mark_done("select", r, seconds=round(time.perf_counter() - started, 3))

    def trained_rows(self, r: int) -> np.ndarray:
        """The rows round ``r`` trains on, and so generates answers for and scores: the rows new
        this round (``continue``, the paper), or every row picked so far (``restart``, the
        official code, which also scores its whole cumulative set)."""
        if self.config.trainer_options.get("mode", "continue") == "restart":
            return np.concatenate([self.picked_before(r), self.picked(r)])
        return self.picked(r)

    def training_set(self, r: int) -> tuple[np.ndarray, Path | None]:
        """Rows to train on and the checkpoint to start from: ``continue`` (the paper) trains the
        previous round's model on the new rows; ``restart`` (the official code) trains the base
        model on every row picked so far."""
        mode = self.config.trainer_options.get("mode", "continue")
        if mode == "restart" or r == 1:
            return self.trained_rows(r), None
        previous = Path(self.dir.marker("train", r - 1)["checkpoint"])
        return self.trained_rows(r), previous

    def train(self, r: int) -> None:
        if self.dir.done("train", r):
            return
        if not self.config.train:
            self.dir.mark_done("train", r, skipped="train=False: the feedback reads no model")
            return
        started = time.perf_counter()
        rows, init = self.training_set(r)
        out = self.dir.scratch(r, "train")
        checkpoint = self.trainer.train(self.examples(rows), out, init=init, seed=self.seed(r, 1))
        self.dir.mark_done(
            "train",
            r,
            checkpoint=str(checkpoint),
            rows=len(rows),
            seconds=round(time.perf_counter() - started, 3),
        )

    def generate(self, r: int) -> None:
        if self.dir.done("generate", r):
            return
        if not needs_generation(self.feedback):
            self.dir.mark_done("generate", r, skipped=f"{self.config.feedback} reads no generation")
            return
        started = time.perf_counter()
        examples = self.examples(self.trained_rows(r))
        checkpoint = Path(self.dir.marker("train", r)["checkpoint"])
        outputs = self.trainer.generate(
            checkpoint, [ex.prompt for ex in examples], seed=self.seed(r, 2)
        )
        self.dir.write_jsonl(
            "generations.jsonl",
            [{"id": ex.id, "generation": text} for ex, text in zip(examples, outputs, strict=True)],
            r,
        )
        self.dir.mark_done("generate", r, seconds=round(time.perf_counter() - started, 3))

    def score(self, r: int, generations: dict[str, str | None] | None = None) -> None:
        """Feedback per row from the generations (the built-in trainer's, or ``generations``);
        a row whose generation is None (null) gets no score, recorded as null."""
        if self.dir.done("score", r):
            return
        self.require_drawn(r)
        started = time.perf_counter()
        examples = self.examples(self.trained_rows(r))
        if generations is None and not needs_generation(self.feedback):
            generations = {ex.id: "" for ex in examples}
        if generations is None:
            saved = self.dir.read_jsonl("generations.jsonl", r)
            generations = {row["id"]: row["generation"] for row in saved}
        missing = [ex.id for ex in examples if ex.id not in generations]
        if missing:
            raise KmqError(
                f"no generation for {len(missing)} rows of round {r}, e.g. {missing[:3]}"
            )
        texts = [generations[ex.id] for ex in examples]
        given = [i for i, text in enumerate(texts) if text is not None]
        scores = np.full(len(examples), np.nan)
        if given:
            scores[given] = self.feedback.score(
                [examples[i].prompt for i in given],
                [examples[i].response for i in given],
                [text for text in texts if text is not None],
            )
        self.save_feedback(r, examples, scores, started)

    def save_feedback(
        self, r: int, examples: list[Example], scores: np.ndarray, started: float
    ) -> None:
        """``feedback.jsonl`` and the step's marker. A score that is not finite (NaN, inf, or no
        generation) is recorded as null, counted as ``missing`` and left out of its cluster's
        mean."""
        labels = self.labels
        finite = np.isfinite(scores)
        rows = [
            {"id": ex.id, "cluster": int(labels[i]), "score": float(s) if ok else None}
            for ex, i, s, ok in zip(examples, self.trained_rows(r), scores, finite, strict=True)
        ]
        missing = int((~finite).sum())
        if missing:
            log.warning(
                "%d of %d rows of round %d have no finite feedback score (NaN, inf or no "
                "generation): recorded as null, left out of their cluster's mean",
                missing,
                len(rows),
                r,
            )
        self.dir.write_jsonl("feedback.jsonl", rows, r)
        self.dir.mark_done(
            "score",
            r,
            scorer=self.config.feedback,
            missing=missing,
            seconds=round(time.perf_counter() - started, 3),
        )

    def reweight(self, r: int) -> None:
        if self.dir.done("reweight", r):
            return
        started = time.perf_counter()
        feedback = self.dir.read_jsonl("feedback.jsonl", r)
        labels = np.array([row["cluster"] for row in feedback], dtype=np.int64)
        scores = np.array([np.nan if row["score"] is None else row["score"] for row in feedback])
        before = self.weights_before(r)
        means, present = cluster_means(labels, scores, len(before))
        cfg = self.config
        after = update(
            before,
            means,
            present,
            rule=cfg.rule,
            positive=cfg.positive,
            temperature=cfg.reweight_temperature,
            floor=cfg.floor,
        )
        self.dir.write(
            "weights.json",
            {
                "round": r,
                "before": before.tolist(),
                "after": after.tolist(),
                "means": [None if np.isnan(m) else float(m) for m in means],
                "present": present.tolist(),
            },
            r,
        )
        self.dir.mark_done("reweight", r, seconds=round(time.perf_counter() - started, 3))

    # -- drivers ----------------------------------------------------------------------------

    def run(self) -> SelectionResult:
        """Every remaining step with the built-in trainer, then the final selection."""
        self.init()
        for r in range(1, self.config.rounds + 1):
            for step in (self.select, self.train, self.generate, self.score, self.reweight):
                step(r)
            log.info("round %d/%d done", r, self.config.rounds)
        return self.finalize()

    def start_external(self) -> Path:
        """``kmq iterate init``: prepare and write round 1's rows for an outside trainer."""
        self.init()
        return self.draw(1)

    def take_scores(self, r: int, scores: dict[str, float]) -> None:
        """``kmq iterate feedback ROUND --scores``: ready-made feedback per id."""
        if self.dir.done("score", r):
            raise KmqError(f"round {r} already has its feedback")
        self.require_drawn(r)
        examples = self.examples(self.trained_rows(r))
        missing = [ex.id for ex in examples if ex.id not in scores]
        if missing:
            raise KmqError(f"no score for {len(missing)} rows of round {r}, e.g. {missing[:3]}")
        values = np.array([scores[ex.id] for ex in examples], dtype=np.float64)
        bad = [ex.id for ex, value in zip(examples, values, strict=True) if not np.isfinite(value)]
        if bad:
            raise KmqError(
                f"round {r}: {len(bad)} scores are not finite numbers (NaN or inf), e.g. id "
                f"{bad[0]!r}; give a finite score for every row"
            )
        self.save_feedback(r, examples, values, time.perf_counter())

    def advance(self) -> Path | None:
        """``kmq iterate next``: reweight the round that has feedback and pick the next one.

        Returns the next round's rows file, or None when the last round is done (the final
        selection is then written).

        Reweighting round r and drawing round r + 1 are one step: when a stop (a kill, Ctrl-C,
        an unreadable pool) came between them, the next call draws round r + 1 first (and
        likewise finishes an ``init`` that stopped before round 1 was drawn).
        """
        r = self.next_round()
        if r is None:
            self.finalize()
            return None
        if not self.dir.done("select", r):
            self.prepare()
            return self.draw(r)
        if not self.dir.done("score", r):
            raise KmqError(f"round {r} has no feedback yet: run `kmq iterate feedback {r}` first")
        self.reweight(r)
        if r == self.config.rounds:
            self.finalize()
            return None
        return self.draw(r + 1)

    def draw(self, r: int) -> Path:
        """Round ``r``'s picks (drawn unless done), as the path of its rows file."""
        self.select(r)
        return self.dir.round_dir(r) / self.dir.read("picked.json", r)["rows_file"]

    def finalize(self) -> SelectionResult:
        """The union of every round's picks, in pick order, written like ``kmq select``'s output."""
        rounds = self.config.rounds
        indices = np.concatenate([self.picked(r) for r in range(1, rounds + 1)])
        reasons = [
            f"round {r}: {reason}"
            for r in range(1, rounds + 1)
            for reason in self.dir.read("picked.json", r)["reasons"]
        ]
        labels = self.labels
        result = SelectionResult(
            method="iterative-kmq",
            budget=self.budget,
            indices=indices,
            scores=np.full(len(indices), np.nan),
            score_name="none",
            reasons=reasons,
            labels=labels,
            counts=np.bincount(labels[indices], minlength=int(labels.max()) + 1),
        )
        if not self.dir.done("final"):
            out = self.dir.path / "final"
            out.mkdir(exist_ok=True)
            write_selected(self.pool, [self.pool.examples[i].row for i in indices], out)
            write_table(out / "selection.parquet", self.pool, result, self.picked_quality())
            self.dir.write("state.json", self.state())
            self.dir.mark_done("final")
        return result

    def picked_quality(self) -> np.ndarray | None:
        """Quality of every pool row as the rounds read it, NaN for rows never picked (with
        candidate-only scoring no round scores the whole pool)."""
        rounds = [self.dir.read("picked.json", r) for r in range(1, self.config.rounds + 1)]
        if any("quality" not in picked for picked in rounds):
            return self.quality  # a run from before candidate-only scoring
        if any(picked["quality"] is None for picked in rounds):
            return None
        quality = np.full(len(self.pool.examples), np.nan)
        for picked in rounds:
            quality[picked["indices"]] = picked["quality"]
        return quality

    def state(self) -> dict[str, Any]:
        """The whole run as one JSON-able dict (``kmq inspect RUN --json``)."""
        prepare = self.dir.read("prepare.json") if self.dir.done("prepare") else None
        rounds = []
        for r in self.dir.rounds_started():
            entry: dict[str, Any] = {
                "round": r,
                "done": [
                    s
                    for s in ("select", "train", "generate", "score", "reweight")
                    if self.dir.done(s, r)
                ],
            }
            if self.dir.done("select", r):
                picked = self.dir.read("picked.json", r)
                entry |= {
                    "size": picked["size"],
                    "picked_ids": picked["ids"],
                    "quotas": picked["quotas"],
                    "weights_before": picked["weights_before"],
                    "quality_scored": picked.get("quality_scored"),
                }
            if self.dir.done("reweight", r):
                weights = self.dir.read("weights.json", r)
                entry |= {"weights_after": weights["after"], "cluster_means": weights["means"]}
                if prepare and prepare.get("cluster_sources"):
                    entry["source_weights_after"] = source_weights(
                        weights["after"], prepare["cluster_sources"]
                    )
            entry["seconds"] = {s: self.dir.marker(s, r).get("seconds") for s in entry["done"]}
            rounds.append(entry)
        return {
            "kind": "iterate",
            "run": str(self.dir.path),
            "config": self.dir.read("config.json"),
            "prepare": prepare,
            "rounds": rounds,
            "finished": self.dir.done("final"),
        }

    # -- collaborators ----------------------------------------------------------------------

    @property
    def trainer(self) -> Trainer:
        if self._trainer is None:
            if self.config.external:
                raise KmqError("this run is trained externally: use kmq iterate feedback / next")
            from kmq.training.trl import TRLTrainer

            options = {k: v for k, v in self.config.trainer_options.items() if v is not None}
            self._trainer = TRLTrainer(**options)
        return self._trainer

    @property
    def feedback(self) -> FeedbackScorer:
        if self._feedback is None:
            self._feedback = get_feedback_scorer(
                self.config.feedback,
                shared={"encoder": self.config.pool.encoder},
                **self.config.feedback_options,
            )
        return self._feedback

    def seed(self, r: int, step: int) -> int:
        """A per-round, per-step int seed derived from the run seed."""
        sequence = np.random.SeedSequence(self.config.pool.seed, spawn_key=(r, step))
        return int(sequence.generate_state(1)[0])


PATH_SETTINGS = ("input", "exclude")
# Pool settings that cannot change the selection: where it runs (every engine selects the same
# rows), where the cache lives (keyed by content) and whether progress bars show.
NOT_SELECTION = ("engine", "engine_options", "cache_dir", "progress")


def absolute_paths(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the pool's input and exclude files as absolute paths (when they are
    files or folders here; a hub name stays as given), so a run resumes from any folder."""
    pool = dict(config["pool"])
    for key in PATH_SETTINGS:
        value = pool.get(key)
        if isinstance(value, str) and Path(value).exists():
            pool[key] = str(Path(value).resolve())
    return config | {"pool": pool}


def selection_settings(config: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config without what cannot change its selection: the kmq version, the
    settings in :data:`NOT_SELECTION`, the trainer's progress bars; paths made absolute."""
    config = absolute_paths(config)
    pool = {k: v for k, v in config["pool"].items() if k not in NOT_SELECTION}
    pool = {"quality_candidates": None} | pool  # runs saved before it scored every row
    trainer = {k: v for k, v in config["trainer_options"].items() if k != "show_progress"}
    rest = {k: v for k, v in config.items() if k != "version"}
    return rest | {"pool": pool, "trainer_options": trainer}


def config_differences(saved: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """``"pool.seed: 0 in the run, 1 given"`` for every setting that would change the selection."""
    old, new = flatten(selection_settings(saved)), flatten(selection_settings(given))
    return [
        f"{key}: {json.dumps(old.get(key))} in the run, {json.dumps(new.get(key))} given"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    ]


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def cluster_sources(pool: LoadedPool, labels: np.ndarray, k: int) -> dict[str, list[int]] | None:
    """Rows per cluster for every source (None when the pool has no source field)."""
    sources = [ex.source for ex in pool.examples]
    if all(s is None for s in sources):
        return None
    table: dict[str, np.ndarray] = {}
    for source, label in zip(sources, labels, strict=True):
        key = source if source is not None else "(none)"
        table.setdefault(key, np.zeros(k, dtype=np.int64))[label] += 1
    return {key: counts.tolist() for key, counts in sorted(table.items())}


def source_weights(weights: list[float], sources: dict[str, list[int]]) -> dict[str, float]:
    """Σ_j w_j · (share of cluster j's rows from each source): where the weight sits, by source."""
    counts = np.array(list(sources.values()), dtype=np.float64)
    share = counts / np.maximum(counts.sum(0, keepdims=True), 1.0)
    return dict(zip(sources, (share @ np.asarray(weights)).tolist(), strict=True))
