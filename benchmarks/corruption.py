"""Does the loop starve clusters of bad data? Corrupt the gold answers of 3 clusters (words
shuffled), run one round of iterative kMQ, score it with each feedback scorer, and report how
the corrupted clusters' weights move against the rest.

One round (select, LoRA-train SmolLM2, generate) is shared by every scorer: the scorers only
differ in how they score the same (prompt, gold, generated) triples. Writes
``results/corruption.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
from _common import (
    DEFAULT_CACHE,
    DEFAULT_RESULTS,
    POOLS,
    markdown_table,
    setup_logging,
    write_report,
)

from kmq.feedback import get_feedback_scorer
from kmq.formats import load_pool
from kmq.loop import IterateConfig, IterativeSelection
from kmq.pipeline import SelectConfig
from kmq.reweight import cluster_means, uniform, update


def shuffle_words(text: str, rng: random.Random) -> str:
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def corrupted_pool(source: Path, out: Path, bad_ids: set[str], seed: int) -> None:
    """A copy of the pool with the last assistant turn of every row in ``bad_ids`` shuffled."""
    rng = random.Random(seed)
    pool = load_pool(source)
    with out.open("w", encoding="utf-8") as fh:
        for ex in pool.examples:
            record = dict(ex.fields)
            if ex.id in bad_ids:
                messages = [dict(m) for m in record["messages"]]
                messages[-1]["content"] = shuffle_words(messages[-1]["content"], rng)
                record["messages"] = messages
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pool", type=Path, default=POOLS / "mix-small.jsonl.gz")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--rows", type=int, default=96, help="rows in the round")
    parser.add_argument("--corrupt", type=int, default=3, help="clusters whose gold is shuffled")
    parser.add_argument("--scorers", default="similarity,perplexity,judge")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-max-length", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--run", type=Path, default=Path("benchmarks/out/corruption"))
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    args = parser.parse_args()
    setup_logging()
    started = time.perf_counter()
    args.run.mkdir(parents=True, exist_ok=True)

    def config(pool: Path) -> IterateConfig:
        select = SelectConfig(
            input=str(pool),
            out=str(args.run),
            budget=args.rows,
            k=args.k,
            seed=args.seed,
            cache_dir=str(args.cache_dir),
            progress=False,
        )
        trainer = {
            "show_progress": False,
            "max_length": args.train_max_length,
            "generation": {"max_new_tokens": args.max_new_tokens, "batch_size": 16},
        }
        return IterateConfig(pool=select, rounds=1, feedback="similarity", trainer_options=trainer)

    probe = IterativeSelection(args.run / "probe", config(args.pool))
    probe.init()  # clusters of the clean pool (the user view is unchanged by corruption)
    labels = probe.labels
    sizes = np.bincount(labels, minlength=args.k)
    rng = np.random.default_rng(args.seed)
    bad = sorted(rng.choice(np.flatnonzero(sizes >= 20), size=args.corrupt, replace=False).tolist())
    bad_ids = {probe.pool.examples[i].id for i in np.flatnonzero(np.isin(labels, bad))}
    corrupted = args.run / "pool-corrupted.jsonl"
    if not corrupted.exists():
        corrupted_pool(args.pool, corrupted, bad_ids, args.seed)

    loop = IterativeSelection(args.run / "round", config(corrupted))
    loop.run()
    examples = loop.examples(loop.picked(1))
    generated = {r["id"]: r["generation"] for r in loop.dir.read_jsonl("generations.jsonl", 1)}
    prompts = [ex.prompt for ex in examples]
    gold = [ex.response for ex in examples]
    gens = [generated[ex.id] for ex in examples]
    picked_labels = loop.labels[loop.picked(1)]
    in_bad = np.isin(picked_labels, bad)
    rows, timings = [], {}
    for name in args.scorers.split(","):
        t0 = time.perf_counter()
        scores = np.asarray(get_feedback_scorer(name).score(prompts, gold, gens), dtype=np.float64)
        timings[name] = time.perf_counter() - t0
        means, present = cluster_means(picked_labels, scores, args.k)
        after = update(uniform(args.k), means, present)
        bad_w, other_w = after[bad].mean(), np.delete(after, bad).mean()
        rows.append(
            [
                name,
                f"{np.nanmean(scores[in_bad]):.3f}",
                f"{np.nanmean(scores[~in_bad]):.3f}",
                f"{bad_w * args.k:.3f}",
                f"{other_w * args.k:.3f}",
                "rose" if bad_w > 1 / args.k else "fell",
                f"{timings[name]:.0f}",
            ]
        )
    headers = [
        "scorer",
        "mean S, corrupted rows",
        "mean S, clean rows",
        "weight × k, corrupted clusters",
        "weight × k, other clusters",
        "corrupted clusters' weight",
        "scoring s",
    ]
    table = markdown_table(headers, rows)
    print(table)
    marker = loop.dir.marker("train", 1)
    body = (
        f"Pool `{args.pool.name}`, k = {args.k}, one round of {args.rows} rows (kMQ, uniform "
        f"weights), seed {args.seed}. Clusters {bad} ({int(np.isin(labels, bad).sum())} rows) had "
        f"the words of every gold answer shuffled; {int(in_bad.sum())} of the round's rows came "
        f"from them. SmolLM2-135M-Instruct, LoRA, 1 epoch on the round's rows at max length "
        f"{args.train_max_length} ({marker['seconds']:.0f} s), greedy generation of up to "
        f"{args.max_new_tokens} tokens. Weights after Eq. 6 from uniform "
        f"(1/k); 'weight × k' > 1 means the cluster gained weight.\n\n{table}"
    )
    write_report(
        args.out,
        "corruption",
        "Corrupted clusters and the feedback scorers",
        body,
        time.perf_counter() - started,
    )


if __name__ == "__main__":
    main()
