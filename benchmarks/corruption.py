"""Does the loop starve bad data? Plant noise in a pool (``noise.py``: word-shuffled, swapped or
truncated gold answers, in 3 whole clusters of 16 or in 20 % of every cluster's rows), run
iterative kMQ's feedback on it, and compare how each feedback scorer moves the noisy clusters'
weights, and how many noisy rows the later rounds pick, against static kMQ on the same pool.

One command, resumable: every finished stage is cached atomically under ``--run`` (the pool
subset and its clusters, the noisy pools, every reference-LM NLL, each simulated run, each
round-1 training), so a rerun computes only what is missing, and the report is rewritten after
every stage from whatever is done (``--report-only`` just tabulates). Progress goes to
``RUN/progress.log``.

What runs where:
- Round 1 draws the same rows for every scorer (uniform weights), as the loop does.
- Generation-free scorers (``gold-fit``, the default; ``gold-pmi``; and, for round 1 only,
  ``gold-fit``'s two parts and ``gold-pmi`` per token) score the gold answers with the fixed
  reference LM only, so the loop's rounds 2-3 do not depend on the model trained in between:
  the benchmark replays the loop's selection and reweighting exactly (same seeds, same Eq. 6),
  without training (``--stages replay``).
- ``--stages cost`` times ``gold-pmi`` and ``gold-fit`` as ``kmq iterate`` runs them (the
  product classes, not the benchmark's cache) on one round's rows, and checks they give the
  cached scores.
- Scorers that need the trained model (``similarity``, Eq. 7 ``perplexity``, ``pmi-gap`` need
  its generations; ``learning-gain`` its NLL on rows of each cluster not trained on) get one
  real LoRA round per noisy pool with ``--stages trained`` (and ``proxy``), reported after
  round 1; not in the default stages (over 40 minutes a round on a shared 2-core CPU).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import DEFAULT_RESULTS, POOLS, markdown_table, setup_logging, write_report
from noise import NoiseSpec, plant, read_records, write_atomic, write_outputs

from kmq.atomic import write_json, write_npy
from kmq.examples import Example, Message
from kmq.feedback import DEFAULT_FEEDBACK
from kmq.formats import load_pool
from kmq.reweight import cluster_means, uniform, update
from kmq.selectors import KMQSelector

log = logging.getLogger("kmq.benchmarks")

KINDS = ("shuffle", "swap", "truncate")
WHERES = ("clusters", "spread")
FREE_SCORERS = ("gold-sound", "gold-fit", "gold-pmi", "gold-pmi/token", "on-topic", "end")
# replayed for every round; the others for round 1 only
FULL_SCORERS = ("gold-sound", "gold-fit", "gold-pmi")
DEFAULT = DEFAULT_FEEDBACK
TRAINED_SCORERS = ("similarity", "perplexity", "pmi-gap", "learning-gain")
GATE_BAD, GATE_CLEAN = 0.8, 1.0


def config_name(kind: str, where: str, seed: int) -> str:
    return f"{kind}-{where}-s{seed}"


def parse_name(name: str) -> tuple[str, str, int]:
    """(kind, where, seed) of a noisy pool's name; ``clean-sN`` has kind and where "clean"."""
    parts = name.split("-")
    seed = int(parts[-1].removeprefix("s"))
    return (parts[0], parts[0], seed) if len(parts) == 2 else (parts[0], parts[1], seed)


def progress(run: Path, message: str) -> None:
    log.info(message)
    with (run / "progress.log").open("a", encoding="utf-8") as fh:
        fh.write(f"{time.strftime('%H:%M:%S')} {message}\n")


# -- the pool, its clusters, the noisy pools ---------------------------------------------------


def prepare(args: argparse.Namespace) -> tuple[Path, np.ndarray, np.ndarray]:
    """The (subset) pool, its user-view MiniLM embeddings and k-means labels (cached)."""
    pool_path = args.run / "pool.jsonl.gz"
    clusters = args.run / "labels.npy"
    if not pool_path.exists():
        records = read_records(args.pool)
        if args.subset and args.subset < len(records):
            records = stratified(records, args.subset, seed=0)

        def lines(fh: Any) -> None:
            for r in records:
                fh.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))

        write_atomic(pool_path, lines, binary_gzip=True)
        progress(args.run, f"pool: {len(records)} rows of {args.pool.name} -> {pool_path}")
    if not clusters.exists():
        pool = load_pool(pool_path)
        vectors = embeddings(pool, args)
        from kmq.pipeline import cluster

        fitted, _ = cluster(vectors, args.k, seed=0)
        write_npy(args.run / "embeddings.npy", vectors.astype(np.float32))
        write_npy(clusters, np.asarray(fitted.labels_, dtype=np.int64))
        progress(args.run, f"clusters: k = {args.k}, sizes {np.bincount(fitted.labels_).tolist()}")
    labels = np.load(clusters).astype(np.int64)
    return pool_path, np.load(args.run / "embeddings.npy"), labels


def stratified(records: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` records, each source's share kept (largest remainder), in pool order."""
    rng = np.random.default_rng(seed)
    sources = np.array([str(r.get("source")) for r in records])
    names, counts = np.unique(sources, return_counts=True)
    exact = counts / counts.sum() * n
    take = np.floor(exact).astype(int)
    take[np.argsort(-(exact - take))[: n - take.sum()]] += 1
    keep = np.concatenate(
        [
            rng.choice(np.flatnonzero(sources == s), size=t, replace=False)
            for s, t in zip(names, take, strict=True)
        ]
    )
    return [records[i] for i in np.sort(keep)]


def embeddings(pool: Any, args: argparse.Namespace) -> np.ndarray:
    """Rows of ``--embeddings`` (ids in the ``.ids`` file beside it) or kmq's cached MiniLM."""
    if args.embeddings is not None:
        ids = Path(str(args.embeddings) + ".ids").read_text(encoding="utf-8").split("\n")
        where = {i: n for n, i in enumerate(ids)}
        rows = [where[ex.id] for ex in pool.examples]
        return np.ascontiguousarray(np.load(args.embeddings, mmap_mode="r")[rows], np.float32)
    from kmq.config import SelectConfig
    from kmq.pools import embed_pool

    config = SelectConfig(input="", out="", cache_dir=str(args.cache_dir), progress=False)
    vectors, _ = embed_pool(pool, config)
    return np.asarray(vectors, dtype=np.float32)


def noisy_pool(run: Path, pool_path: Path, labels: np.ndarray, name: str) -> Path:
    """``RUN/noise/<name>.jsonl.gz`` and its ``.noise.json`` (``clean-sN``: the pool itself)."""
    kind, where, seed = parse_name(name)
    out = run / "noise" / f"{name}.jsonl.gz"
    if not out.exists():
        spec = (
            NoiseSpec(kind, 1.0, "clusters", clusters=3)
            if where == "clusters"
            else NoiseSpec(kind, 0.2, "spread")
        )
        records, noisy, summary = plant(read_records(pool_path), labels, [spec], seed)
        write_outputs(out, records, noisy, summary)
    return out


def noisy_ids(path: Path) -> set[str]:
    side = path.with_name(path.name.removesuffix(".jsonl.gz") + ".noise.json")
    meta = json.loads(side.read_text())
    return set(meta["ids"])


# -- cached reference-LM NLLs -----------------------------------------------------------------


class FeatureCache:
    """Per-row values of (prompt, answer) rows under the reference LM, computed by ``compute``
    for the rows not cached yet and kept in atomic shard files (one per computed batch)."""

    def __init__(
        self,
        folder: Path,
        compute: Callable[[list[Sequence[Message]], list[str]], np.ndarray],
        *,
        tag: str,
        max_length: int,
    ):
        self.folder = folder
        self.compute = compute
        self.tag, self.max_length = tag, max_length
        folder.mkdir(parents=True, exist_ok=True)
        self.values: dict[str, list[float]] = {}
        for shard in sorted(folder.glob("*.json")):
            self.values.update(json.loads(shard.read_text()))

    def key(self, prompt: Sequence[Message], answer: str) -> str:
        turns = [[m.role, m.content] for m in prompt]
        text = json.dumps([self.tag, self.max_length, turns, answer], ensure_ascii=False)
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def missing(self, prompts: Sequence[Sequence[Message]], answers: Sequence[str]) -> int:
        keys = {self.key(p, a) for p, a in zip(prompts, answers, strict=True)}
        return len(keys - self.values.keys())

    def get(self, prompts: Sequence[Sequence[Message]], answers: Sequence[str]) -> np.ndarray:
        """(rows, values) array; rows not cached are computed and stored first."""
        keys = [self.key(p, a) for p, a in zip(prompts, answers, strict=True)]
        todo = sorted({k: i for i, k in enumerate(keys) if k not in self.values}.values())
        if todo:
            values = self.compute([prompts[i] for i in todo], [answers[i] for i in todo])
            new = {keys[i]: [float(v) for v in row] for i, row in zip(todo, values, strict=True)}
            shard = f"{os.getpid()}-{len(list(self.folder.glob('*.json'))):06d}.json"
            write_json(self.folder / shard, new)
            self.values.update(new)
        return np.array([self.values[k] for k in keys], dtype=np.float64).reshape(len(keys), -1)


class Reference:
    """The reference LM's per-row values behind every scorer: NLL(y | x), NLL(y) and the
    scored tokens in ``gold-pmi``'s windows (``RUN/nll``), and −log P(end of turn | x, y),
    −log P(end of turn | y) (``RUN/end``); see :mod:`kmq.feedback.pmi`."""

    def __init__(self, run: Path, backend: Any, tokenizer: Any, *, max_length: int):
        from kmq.feedback.pmi import end_nll, pmi_nll, reordered_nll

        def pmi(prompts: list[Sequence[Message]], answers: list[str]) -> np.ndarray:
            return np.stack(
                pmi_nll(backend, tokenizer, prompts, answers, max_length=max_length), axis=1
            )

        def end(prompts: list[Sequence[Message]], answers: list[str]) -> np.ndarray:
            ends = end_nll(
                backend, tokenizer, prompts, answers, max_length=max_length, unconditional=False
            )
            return np.stack(ends, axis=1)

        def stripped_ends(prompts: list[Sequence[Message]], answers: list[str]) -> np.ndarray:
            ends = end_nll(
                backend, tokenizer, prompts, answers, max_length=max_length, strip_markers=True
            )
            return np.stack(ends, axis=1)

        def order(prompts: list[Sequence[Message]], answers: list[str]) -> np.ndarray:
            out = reordered_nll(backend, tokenizer, prompts, answers, max_length=max_length)
            return out[:, None]

        self.nll = FeatureCache(run / "nll", pmi, tag="smollm2", max_length=max_length)
        self.order = FeatureCache(run / "order", order, tag="smollm2-order", max_length=max_length)
        self.end = FeatureCache(run / "end", end, tag="smollm2-end", max_length=max_length)
        self.stripped = FeatureCache(
            run / "end-stripped", stripped_ends, tag="smollm2-end-stripped", max_length=max_length
        )

    def missing(self, prompts: Sequence[Sequence[Message]], answers: Sequence[str]) -> int:
        """How many of these rows still need a reference-LM pass (PMI or end of turn)."""
        caches = (self.nll, self.end, self.stripped, self.order)
        return max(c.missing(prompts, answers) for c in caches)

    def get(
        self, prompts: Sequence[Sequence[Message]], answers: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(NLL(y | x), NLL(y), tokens) per row (see :func:`kmq.feedback.pmi.pmi_nll`)."""
        values = self.nll.get(prompts, answers)
        return values[:, 0], values[:, 1], values[:, 2]

    def pmi(
        self, prompts: Sequence[Sequence[Message]], answers: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """PMI summed over the answer's tokens and per token (``gold-pmi``'s two readings)."""
        given, alone, tokens = self.get(prompts, answers)
        return (alone - given) * tokens, alone - given

    def ends(
        self, prompts: Sequence[Sequence[Message]], answers: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(−log P(end | x, y), −log P(end | y)) per row (see :func:`kmq.feedback.pmi.end_nll`)."""
        values = self.end.get(prompts, answers)
        return values[:, 0], values[:, 1]

    def stripped_ends(
        self, prompts: Sequence[Sequence[Message]], answers: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(−log P(end | x, y), −log P(end | y)) with the special-token strings that end y
        removed first (``gold-sound``'s; see :func:`kmq.feedback.pmi.strip_end_markers`)."""
        values = self.stripped.get(prompts, answers)
        return values[:, 0], values[:, 1]


# -- the loop, replayed -----------------------------------------------------------------------


def pick(
    vectors: np.ndarray,
    labels: np.ndarray,
    size: int,
    weights: np.ndarray | None,
    exclude: np.ndarray,
    seed: int,
    r: int,
) -> np.ndarray:
    """The loop's draw of round ``r`` (kMQ, no quality: uniform inside clusters)."""
    result = KMQSelector().select(
        vectors,
        size,
        labels=labels,
        weights=weights,
        exclude=exclude,
        seed=np.random.SeedSequence(seed, spawn_key=(r,)),
    )
    return np.asarray(result.indices, dtype=np.int64)


def free_scores(cache: Reference, examples: list[Example], scorer: str) -> np.ndarray:
    """A generation-free scorer's S for ``examples`` (see ``FREE_SCORERS``)."""
    from kmq.feedback.pmi import fit_probability, sound_probability

    prompts, answers = [ex.prompt for ex in examples], [ex.response for ex in examples]
    total, per_token = cache.pmi(prompts, answers)
    if scorer == "gold-sound":
        _, alone, tokens = cache.get(prompts, answers)
        gain = (cache.order.get(prompts, answers)[:, 0] - alone) * tokens
        return sound_probability(total, *cache.stripped_ends(prompts, answers), gain)
    if scorer == "gold-pmi":
        return total
    if scorer == "gold-pmi/token":
        return per_token
    if scorer == "on-topic":
        return fit_probability(total, np.zeros(len(total)))
    end, _ = cache.ends(prompts, answers)
    if scorer == "end":
        return np.exp(-end)
    return fit_probability(total, end)


def replay(
    cache: Reference,
    examples: list[Example],
    vectors: np.ndarray,
    labels: np.ndarray,
    *,
    scorer: str,
    rounds: int,
    rows: int,
    seed: int,
) -> dict[str, Any]:
    """The loop with a generation-free scorer: picks, cluster means and weights per round."""
    k = int(labels.max()) + 1
    weights, picked, history = uniform(k), np.zeros(0, dtype=np.int64), []
    for r in range(1, rounds + 1):
        rows_r = pick(vectors, labels, rows, weights, picked, seed, r)
        started = time.perf_counter()
        chosen = [examples[i] for i in rows_r]
        computed = cache.missing([ex.prompt for ex in chosen], [ex.response for ex in chosen])
        scores = free_scores(cache, chosen, scorer)
        means, present = cluster_means(labels[rows_r], scores, k)
        after = update(weights, means, present)
        history.append(
            {
                "round": r,
                "picked": rows_r.tolist(),
                "scores": scores.tolist(),
                "weights_after": after.tolist(),
                "seconds": round(time.perf_counter() - started, 1),
                "computed": computed,
            }
        )
        weights, picked = after, np.concatenate([picked, rows_r])
    return {"scorer": scorer, "rounds": history}


def measure_cost(cache: Reference, examples: list[Example]) -> dict[str, Any]:
    """Seconds of each generation-free product scorer on ``examples``, one after the other, and
    its largest difference from the benchmark's cached scores of the same rows."""
    from kmq.feedback import get_feedback_scorer

    prompts, gold = [ex.prompt for ex in examples], [ex.response for ex in examples]
    out: dict[str, Any] = {"rows": len(examples), "load": round(os.getloadavg()[0], 1)}
    out["scorers"] = {}
    for name, passes in (("gold-pmi", 2), ("gold-fit", 3), ("gold-sound", 5)):
        scorer = get_feedback_scorer(name, device="cpu")
        scorer.score(prompts[:1], gold[:1], [])  # loads the model
        t = time.perf_counter()
        scores = scorer.score(prompts, gold, [])
        seconds = time.perf_counter() - t
        expected = free_scores(cache, examples, name)
        out["scorers"][name] = {
            "passes": passes,
            "seconds": round(seconds, 1),
            "rows": len(examples),
            "max_abs_diff": float(np.nanmax(np.abs(scores - expected))),
        }
    return out


# -- one real round, for the scorers that need the trained model ------------------------------


def trained_round(
    args: argparse.Namespace,
    cache: Reference,
    examples: list[Example],
    round1: np.ndarray,
    labels: np.ndarray,
    folder: Path,
    seed: int,
) -> dict[str, Any]:
    from kmq.feedback.pmi import pmi_windows
    from kmq.quality.lm import windows_nll
    from kmq.training.generate import load_checkpoint
    from kmq.training.trl import TRLTrainer

    trainer = TRLTrainer(
        max_length=args.train_max_length,
        show_progress=False,
        generation={"max_new_tokens": args.max_new_tokens, "batch_size": 16},
        cache_dir=None,
    )
    rows = [examples[i] for i in round1]
    prompts, gold = [ex.prompt for ex in rows], [ex.response for ex in rows]
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    checkpoint = folder / "train" / "checkpoint"
    if not checkpoint.exists():
        (folder / "train").mkdir(parents=True, exist_ok=True)
        checkpoint = trainer.train(rows, folder / "train", init=None, seed=seed)
    seconds["train"] = time.perf_counter() - t
    t = time.perf_counter()
    generations_file = folder / "generations.json"
    if not generations_file.exists():
        write_json(generations_file, trainer.generate(checkpoint, prompts, seed=seed))
    generated = json.loads(generations_file.read_text())
    seconds["generate"] = time.perf_counter() - t
    scores = generation_scores(cache, prompts, gold, generated, seconds)
    t = time.perf_counter()
    unseen = unseen_rows(labels, round1, args.gain_rows, seed)
    held = [examples[i] for i in unseen]
    held_prompts, held_gold = [ex.prompt for ex in held], [ex.response for ex in held]
    before = cache.get(held_prompts, held_gold)[0]
    model, tokenizer = load_checkpoint(checkpoint)
    scored, windows, _ = pmi_windows(tokenizer, held_prompts, held_gold, args.max_length)
    after = np.full(len(held), np.nan)
    after[scored] = windows_nll(model, windows, pad_id=tokenizer.pad_token_id, batch_size=8)
    seconds["learning-gain"] = time.perf_counter() - t
    return {
        "scores": scores,
        "gain_rows": unseen.tolist(),
        "gain": (before - after).tolist(),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def generation_scores(
    cache: Reference,
    prompts: list[tuple[Message, ...]],
    gold: list[str],
    generated: list[str],
    seconds: dict[str, float],
) -> dict[str, list[float]]:
    """``similarity``, Eq. 7 ``perplexity`` and ``pmi-gap`` of each row (timings into
    ``seconds``)."""
    from kmq.feedback.similarity import SimilarityFeedback

    scores: dict[str, list[float]] = {}
    t = time.perf_counter()
    scores["similarity"] = SimilarityFeedback().score(prompts, gold, generated).tolist()
    seconds["similarity"] = time.perf_counter() - t
    t = time.perf_counter()
    gold_nll = cache.get(prompts, gold)[0]
    gen_nll = cache.get(prompts, generated)[0]
    scores["perplexity"] = (gold_nll - gen_nll).tolist()
    seconds["perplexity"] = time.perf_counter() - t
    t = time.perf_counter()
    gold_pmi, _ = cache.pmi(prompts, gold)
    gen_pmi, _ = cache.pmi(prompts, generated)
    scores["pmi-gap"] = (gold_pmi - gen_pmi).tolist()
    seconds["pmi-gap"] = time.perf_counter() - t
    return scores


def proxy_round(
    cache: Reference, examples: list[Example], round1: np.ndarray, generated: list[str]
) -> dict[str, Any]:
    """The generation scorers on a pool with another pool's round-1 generations (same rows,
    same seed; its model was trained on the other pool's gold answers)."""
    rows = [examples[i] for i in round1]
    seconds: dict[str, float] = {}
    prompts, gold = [ex.prompt for ex in rows], [ex.response for ex in rows]
    scores = generation_scores(cache, prompts, gold, generated, seconds)
    return {"scores": scores, "seconds": {k: round(v, 1) for k, v in seconds.items()}}


def unseen_rows(labels: np.ndarray, trained: np.ndarray, per_cluster: int, seed: int) -> np.ndarray:
    """``per_cluster`` rows of every cluster not trained on (learning gain is measured there)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(99,)))
    free = np.ones(len(labels), dtype=bool)
    free[trained] = False
    out = []
    for c in range(int(labels.max()) + 1):
        rows = np.flatnonzero((labels == c) & free)
        out.append(np.sort(rng.choice(rows, size=min(per_cluster, len(rows)), replace=False)))
    return np.concatenate(out)


# -- the report --------------------------------------------------------------------------------


def cluster_noise(labels: np.ndarray, noisy: np.ndarray) -> np.ndarray:
    k = int(labels.max()) + 1
    return np.bincount(labels, weights=noisy.astype(float), minlength=k) / np.bincount(
        labels, minlength=k
    )


def weight_stats(weights: np.ndarray, share: np.ndarray, where: str) -> tuple[float, float]:
    """(bad, clean) mean weight × k for whole clusters (bad = any noisy row: the chosen
    clusters); for spread noise, (Pearson r of weight and the cluster's noisy share, NaN)."""
    k = len(weights)
    if where == "clusters":
        bad = share > 0
        return float(weights[bad].mean() * k), float(weights[~bad].mean() * k)
    if np.std(share) == 0:
        return float("nan"), float("nan")
    return float(np.corrcoef(weights, share)[0, 1]), float("nan")


def mean_sd(values: Sequence[float]) -> str:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if not len(v):
        return "–"
    return f"{v.mean():.2f} ± {v.std():.2f}" if len(v) > 1 else f"{v[0]:.2f}"


def report(args: argparse.Namespace, started: float) -> None:
    run = args.run
    if not (run / "labels.npy").exists():
        return
    labels = np.load(run / "labels.npy")
    k = int(labels.max()) + 1
    pool = load_pool(run / "pool.jsonl.gz")
    ids = [ex.id for ex in pool.examples]
    rows_by_scorer: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    gates: dict[tuple[str, str], list[str]] = {}
    share_rows: list[list[object]] = []
    for where in WHERES:
        for kind in KINDS:
            for seed in args.seeds:
                name = config_name(kind, where, seed)
                path = run / "noise" / f"{name}.jsonl.gz"
                if not path.exists():
                    continue
                bad_ids = noisy_ids(path)
                noisy = np.array([i in bad_ids for i in ids])
                share = cluster_noise(labels, noisy)
                static_file = run / "static" / f"{name}.json"
                static = (
                    float(np.mean(noisy[json.loads(static_file.read_text())]))
                    if static_file.exists()
                    else float("nan")
                )
                for scorer in FREE_SCORERS:
                    f = run / "replay" / name / f"{scorer.replace('/', '-')}.json"
                    if not f.exists():
                        continue
                    history = json.loads(f.read_text())["rounds"]
                    entry = rows_by_scorer.setdefault((where, kind, scorer), {})
                    for h in history:
                        bad, clean = weight_stats(np.array(h["weights_after"]), share, where)
                        entry.setdefault(f"bad{h['round']}", []).append(bad)
                        entry.setdefault(f"clean{h['round']}", []).append(clean)
                    if len(history) < args.rounds:
                        continue
                    later = np.concatenate([h["picked"] for h in history[1:]])
                    entry.setdefault("later", []).append(float(noisy[later].mean()))
                    entry.setdefault("static", []).append(static)
                    share_rows.append(
                        [
                            name,
                            scorer,
                            f"{noisy[history[0]['picked']].mean():.3f}",
                            f"{noisy[later].mean():.3f}",
                            f"{static:.3f}",
                        ]
                    )
                    if scorer in FULL_SCORERS and where == "clusters":
                        bad1, clean1 = weight_stats(
                            np.array(history[0]["weights_after"]), share, where
                        )
                        share_later = float(noisy[later].mean())
                        ok = bad1 < GATE_BAD and clean1 > GATE_CLEAN and share_later <= 0.5 * static
                        gates.setdefault((scorer, kind), []).append(
                            f"s{seed} {'pass' if ok else 'FAIL'} ({bad1:.2f} / {clean1:.2f}; "
                            f"{share_later:.3f} vs {static:.3f})"
                        )
                trained_rows(run, name, labels, share, where, rows_by_scorer)
    table_rows = [
        [
            where,
            kind,
            scorer,
            len(e.get("bad1", [])),
            mean_sd(e.get("bad1", [])),
            mean_sd(e.get("clean1", [])),
            mean_sd(e.get(f"bad{args.rounds}", [])),
            mean_sd(e.get(f"clean{args.rounds}", [])),
            mean_sd(e.get("later", [])),
            mean_sd(e.get("static", [])),
        ]
        for (where, kind, scorer), e in sorted(
            rows_by_scorer.items(), key=lambda item: (item[0][0], item[0][1], order_of(item[0][2]))
        )
    ]
    headers = [
        "noise",
        "kind",
        "scorer",
        "seeds",
        "round 1: noisy clusters' weight×k (spread: r)",
        "round 1: clean clusters' weight×k",
        f"round {args.rounds}: noisy weight×k (spread: r)",
        f"round {args.rounds}: clean weight×k",
        f"noisy share of picks, rounds 2-{args.rounds}",
        "static kMQ's noisy share",
    ]
    clean_rows = []
    for scorer in FULL_SCORERS:
        for seed in args.seeds:
            f = run / "replay" / f"clean-s{seed}" / f"{scorer}.json"
            if not f.exists():
                continue
            history = json.loads(f.read_text())["rounds"]
            sources = source_shares(pool, labels, np.array(history[-1]["weights_after"]))
            top = max(sources, key=sources.get)  # type: ignore[arg-type]
            clean_rows.append(
                [scorer, f"s{seed}", top, f"{sources[top]:.3f}"]
                + [f"{sources.get(s, 0):.3f}" for s in sorted(sources)]
            )
    source_names = sorted(source_shares(pool, labels, uniform(k)))
    uniform_shares = source_shares(pool, labels, uniform(k))
    body = [
        f"Pool: `{args.pool.name}`"
        + (
            f", a stratified subset of {len(ids)} rows (each source's share kept)"
            if args.subset
            else ""
        )
        + f"; user-view MiniLM embeddings, k-means k = {k} (seed 0). "
        "Noise (`benchmarks/noise.py`): "
        "`clusters` = every gold answer of 3 whole clusters (drawn among clusters of ≥ 20 rows), "
        "`spread` = 20 % of every cluster's rows; kinds `shuffle` (words in random order), `swap` "
        "(another cluster's answer), `truncate` (first sentence only). Seeds "
        f"{', '.join(map(str, args.seeds))} (noise and selection). Iterative kMQ: {args.rounds} "
        f"rounds of {args.rows} rows, balanced quotas ∝ weights, uniform draw inside clusters, "
        "Eq. 6 update (`paper`, `shift`, floor 1e-3) — the loop's defaults. Reference LM for every "
        f"score: SmolLM2-135M-Instruct (torch, float32, CPU), windows of {args.max_length} tokens.",
        "",
        "Scorers (all generation-free; `kmq.feedback.pmi`): `gold-sound` = σ(PMI(x; y_gold)) · "
        "σ(log P(end | x, y_gold) − log P(end | y_gold) + 1) · σ(12 + log P(end | x, y_gold)) · "
        "σ(NLL(y') − NLL(y_gold)) (y' = the answer's words reordered, summed nats; answers under 8 "
        "words skip it), in [0, 1], with any special-token string that ends the answer removed "
        "before the end-of-turn marker (the loop's default); `gold-fit` = σ(PMI(x; y_gold)) · "
        "P(end of turn | x, y_gold), in [0, 1]; `gold-pmi` = PMI(x; y_gold) "
        "summed over the answer's tokens; and, after round 1 only, its parts and a variant: "
        "`on-topic` = σ(PMI) alone, `end` = P(end of turn | x, y_gold) alone, `gold-pmi/token` = "
        "PMI per token. None of them needs the round's trained model, so the loop is replayed "
        "exactly without training (same draws, same Eq. 6): "
        f"{args.rounds} rounds for {', '.join(f'`{s}`' for s in FULL_SCORERS)}, round 1 for "
        "the others.",
        "",
        "Reading: weight×k > 1 = the cluster gained weight. For `clusters` the noisy clusters' "
        "mean should fall below 0.8 and the clean ones' rise above 1.0; for `spread` (every "
        "cluster ~20 % noisy) the column is Pearson r between a cluster's weight and its noisy "
        "share (negative = noisier clusters lose weight). 'noisy share, rounds 2-3' is the share "
        "of noisy rows among the rows picked after round 1, against static kMQ's share of the "
        f"same {args.rounds * args.rows}-row budget (balanced quotas) on the same pool. "
        "Mean ± sd over seeds.",
        "",
        markdown_table(headers, table_rows) if table_rows else "(nothing finished yet)",
        "",
        f"## Gate (whole clusters; the loop's default is `{DEFAULT}`)",
        "",
        f"Round 1: noisy clusters' weight×k < {GATE_BAD} and clean > {GATE_CLEAN}; over "
        f"{args.rounds} rounds: noisy share of rounds 2-{args.rounds}'s picks ≤ half static "
        "kMQ's. Per seed: (noisy / clean weight×k after round 1; noisy share of rounds "
        f"2-{args.rounds} vs static kMQ).",
        "",
        "\n".join(
            f"- `{scorer}`, {kind}: {', '.join(v)}"
            for (scorer, kind), v in sorted(gates.items(), key=lambda g: (order_of(g[0][0]), g))
        )
        or "(not run)",
        "",
        "## Noisy share of picks per pool",
        "",
        markdown_table(["pool", "scorer", "round 1", "rounds 2-3", "static kMQ"], share_rows)
        if share_rows
        else "(not run)",
        "",
        f"## Clean pool: where the weight goes after {args.rounds} rounds",
        "",
        "Source weight = Σ_j w_j · (share of cluster j's rows from the source). Uniform weights "
        "give: " + ", ".join(f"{s} {uniform_shares[s]:.3f}" for s in source_names) + ".",
        "",
        markdown_table(["scorer", "seed", "largest", "its weight", *source_names], clean_rows)
        if clean_rows
        else "(not run)",
        "",
        "## Cost per round",
        "",
        cost_text(run, args.rows),
    ]
    missing = [
        f"{name}:{scorer}"
        for name in [
            *(config_name(k_, w, s_) for w in WHERES for s_ in args.seeds for k_ in KINDS),
            *(f"clean-s{s_}" for s_ in args.seeds),
        ]
        for scorer in FULL_SCORERS
        if not (run / "replay" / name / f"{scorer}.json").exists()
    ]
    trained_done = sorted(p.parent.name for p in (run / "trained").glob("*/result.json"))
    body += [
        "",
        "## Status of this run",
        "",
        f"Not finished: {', '.join(missing) or 'none'}. Real LoRA rounds (for the scorers that "
        "need the trained model, `--stages trained`) finished: "
        f"{', '.join(trained_done) or 'none'}. Everything computed is cached under `{run}`; "
        f"`python benchmarks/corruption.py --run {run}` resumes the rest (stages may also run in "
        "parallel processes: `--stages replay|cost|trained|proxy`, `--pools NAME,...`) and "
        "`--report-only` rewrites this file.",
    ]
    write_report(
        args.out,
        "corruption",
        "Which feedback starves bad data? Noisy pools and the feedback scorers",
        "\n".join(body),
        time.perf_counter() - started,
        command=f"python benchmarks/corruption.py --run {run} --stages replay,cost",
        run_time_note="Stages cached by an earlier run were not recomputed; seconds were "
        "measured when each stage ran, on a machine shared with other jobs.",
    )


def order_of(scorer: str) -> int:
    names = [*FREE_SCORERS, *TRAINED_SCORERS]
    base = scorer.removesuffix(" (proxy)")
    return names.index(base) if base in names else len(names)


def trained_rows(
    run: Path,
    name: str,
    labels: np.ndarray,
    share: np.ndarray,
    where: str,
    rows_by_scorer: dict[tuple[str, str, str], dict[str, list[float]]],
) -> None:
    """Round-1 weights of the scorers that need the trained model (``--stages trained``)."""
    kind, _, seed = parse_name(name)
    k = int(labels.max()) + 1
    trained = run / "trained" / name / "result.json"
    proxy = run / "trained" / name / "proxy.json"
    if not (trained.exists() or proxy.exists()):
        return
    result = json.loads((trained if trained.exists() else proxy).read_text())
    picked = np.array(json.loads((run / "round1" / f"s{seed}.json").read_text()))
    for scorer in TRAINED_SCORERS:
        if scorer not in result["seconds"]:
            continue
        label = scorer if trained.exists() else f"{scorer} (proxy)"
        if scorer == "learning-gain":
            rows, scores = np.array(result["gain_rows"]), np.array(result["gain"])
        else:
            rows, scores = picked, np.array(result["scores"][scorer])
        means, present = cluster_means(labels[rows], scores, k)
        bad, clean = weight_stats(update(uniform(k), means, present), share, where)
        entry = rows_by_scorer.setdefault((where, kind, label), {})
        entry.setdefault("bad1", []).append(bad)
        entry.setdefault("clean1", []).append(clean)


def cost_text(run: Path, rows: int) -> str:
    """The ``cost`` stage's timings of the product scorers, as a table with its note."""
    path = run / "cost.json"
    if not path.exists():
        return "(not measured: `--stages cost`)"
    cost = json.loads(path.read_text())
    table = [
        [
            name,
            c["passes"],
            f"{c['seconds'] / c['rows'] * rows:.0f}",
            f"{c['max_abs_diff']:.1e}",
        ]
        for name, c in cost["scorers"].items()
    ]
    headers = [
        "scorer",
        "LM passes per row",
        f"s per {rows}-row round",
        "largest difference from the benchmark's scores",
    ]
    return (
        f"Each scorer as `kmq iterate` runs it (`get_feedback_scorer(name).score`, model load "
        f"excluded) on the {cost['rows']} rows of round 1 (clean pool, seed 0), one after the "
        f"other in one process on the machine below (load average {cost['load']} when it "
        "started: the 2 cores were shared, so read the ratio, not the seconds). None generates; "
        "a generation-based scorer adds the round's generation (≈ 140 s per 100 rows with the "
        "default trainer on this CPU, README). The last column checks that the product class "
        "gives the benchmark's cached values.\n\n" + markdown_table(headers, table)
    )


def source_shares(pool: Any, labels: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    k = len(weights)
    sources = np.array([str(ex.source) for ex in pool.examples])
    out = {}
    for s in np.unique(sources):
        per = np.bincount(labels[sources == s], minlength=k) / np.bincount(labels, minlength=k)
        out[str(s)] = float(per @ weights)
    return out


# -- driver ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pool", type=Path, default=POOLS / "mix-small.jsonl.gz")
    parser.add_argument("--subset", type=int, default=2400, help="stratified rows (0: all)")
    parser.add_argument("--embeddings", type=Path, help="pool's user-view .npy, ids in NPY.ids")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--rows", type=int, default=32, help="rows per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-length", type=int, default=96, help="reference-LM window")
    parser.add_argument("--train-max-length", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--gain-rows", type=int, default=2, help="unseen rows per cluster")
    parser.add_argument("--trained", type=int, default=3, help="pools given a real round")
    parser.add_argument("--run", type=Path, default=Path("benchmarks/out/corruption"))
    parser.add_argument("--cache-dir", type=Path, default=Path("benchmarks/out/cache"))
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument(
        "--stages",
        default="replay,cost",
        help="replay (generation-free scorers), cost (their time per round as kmq runs them), "
        "trained (one real LoRA round), proxy (the "
        "generation scorers on the other seed-0 pools with the first trained pool's "
        "generations); processes may run different stages on the same --run",
    )
    parser.add_argument("--pools", help="only these pools (comma-separated names, e.g. clean-s0)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    setup_logging()
    started = time.perf_counter()
    args.run.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        report(args, started)
        return
    pool_path, vectors, labels = prepare(args)
    from kmq.backends import get_lm_backend

    backend = get_lm_backend("torch", "smollm2", device="cpu")
    cache = Reference(args.run, backend, backend.tokenizer, max_length=args.max_length)
    names = [config_name(kind, where, s) for where in WHERES for s in args.seeds for kind in KINDS]
    pools: dict[str, list[Example]] = {}
    for name in names:
        pools[name] = load_pool(noisy_pool(args.run, pool_path, labels, name)).examples
        static = args.run / "static" / f"{name}.json"
        if not static.exists():
            none = np.zeros(0, dtype=np.int64)
            budget = args.rounds * args.rows
            picks = pick(vectors, labels, budget, None, none, parse_name(name)[2], 0)
            write_json(static, picks.tolist())
    for seed in args.seeds:
        write_json(
            args.run / "round1" / f"s{seed}.json",
            pick(vectors, labels, args.rows, None, np.zeros(0, np.int64), seed, 1).tolist(),
        )
    clean = load_pool(pool_path).examples
    order = sorted(names, key=lambda n: (parse_name(n)[2], WHERES.index(parse_name(n)[1])))
    trained = order[: args.trained]
    first = [n for n in trained if parse_name(n)[2] == args.seeds[0]]
    # Most needed first: each full scorer (the default first) on whole clusters and the clean
    # pool, the round-1 ablations on whole clusters, then spread noise.
    whole = [n for n in names if parse_name(n)[1] == "clusters"]
    spread = [n for n in names if parse_name(n)[1] == "spread"]
    cleans = [f"clean-s{s}" for s in args.seeds]
    ablations = [s for s in FREE_SCORERS if s not in FULL_SCORERS]
    jobs: list[tuple[str, str]] = [(n, s) for s in FULL_SCORERS for n in [*whole, *cleans]]
    jobs += [(n, a) for n in whole for a in ablations]
    jobs += [(n, s) for s in FULL_SCORERS for n in spread]
    jobs += [(n, a) for n in spread for a in ablations]
    jobs += [(n, "trained") for n in first]
    jobs += [(n, "trained") for n in trained if n not in first]
    source = args.run / "trained" / order[0] / "generations.json"
    jobs += [(n, "proxy") for n in order if parse_name(n)[2] == args.seeds[0] and n != order[0]]
    stages = set(args.stages.split(","))
    if "cost" in stages and not (args.run / "cost.json").exists():
        round1 = np.array(json.loads((args.run / "round1" / f"s{args.seeds[0]}.json").read_text()))
        write_json(args.run / "cost.json", measure_cost(cache, [clean[i] for i in round1]))
        progress(args.run, "cost: done")
        report(args, started)
    for name, job in jobs:
        if (job if job in ("trained", "proxy") else "replay") not in stages:
            continue
        if args.pools and name not in args.pools.split(","):
            continue
        seed = parse_name(name)[2]
        examples = clean if name.startswith("clean") else pools[name]
        if job == "trained":
            out = args.run / "trained" / name / "result.json"
        elif job == "proxy":
            out = args.run / "trained" / name / "proxy.json"
            if not source.exists():
                continue
        else:
            out = args.run / "replay" / name / f"{job.replace('/', '-')}.json"
        if out.exists():
            continue
        t = time.perf_counter()
        round1 = np.array(json.loads((args.run / "round1" / f"s{seed}.json").read_text()))
        if job == "trained":
            result = trained_round(args, cache, examples, round1, labels, out.parent, seed)
        elif job == "proxy":
            generated = json.loads(source.read_text())
            result = proxy_round(cache, examples, round1, generated) | {"generations": str(source)}
        else:
            result = replay(
                cache,
                examples,
                vectors,
                labels,
                scorer=job,
                rounds=args.rounds if job in FULL_SCORERS else 1,
                rows=args.rows,
                seed=seed,
            )
        write_json(out, result)
        progress(args.run, f"{job} {name}: {time.perf_counter() - t:.0f} s")
        report(args, started)
    report(args, started)
    progress(args.run, "all stages done")


if __name__ == "__main__":
    main()
