"""Plant noise in a pool, reproducibly: ``noise.py POOL --kind shuffle --fraction 0.2 --where
spread --seed 0`` writes the noisy pool and, beside it, the ids of the rows that were changed.

The last assistant turn (the gold answer) of a chosen row is corrupted; prompts are untouched, so
the user-view embeddings and the clusters of the noisy pool are the clean pool's.

Kinds (each row is corrupted at most once):
- ``shuffle``: the answer's words in a random order;
- ``swap``: the answer replaced by the answer of a random row of another cluster (of another
  row when no clusters are known), so it no longer answers its prompt; the donor is unchanged;
- ``truncate``: the answer cut after its first sentence (or first line).

Where:
- ``spread``: ``fraction`` of the rows of every cluster (k-means on the pool's embeddings),
  rounded per cluster; ``--k 0`` spreads uniformly without clustering;
- ``clusters``: whole clusters, ``--clusters N`` of them drawn among clusters of at least
  ``MIN_CLUSTER`` (20) clean rows, or (without ``--clusters``) clusters in a random order
  while their rows fit in ``fraction`` of the pool.

A row is eligible for a kind only if the corruption changes it (a one-word answer cannot be
shuffled, a one-sentence answer cannot be truncated): ``spread`` draws its rows among eligible
ones, ``clusters`` leaves the ineligible rows of its clusters clean; both count them
(``ineligible``) in the summary. Several ``--kind``/``--fraction``/``--where`` triples may be
given (the lists are zipped); later specs draw only among rows still clean. Output: ``OUT``
(JSONL, gzipped when the name ends in ``.gz``) and ``OUT``'s name with ``.noise.json`` (the
arguments, counts, and every noisy id with its kind).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("shuffle", "swap", "truncate")
WHERE = ("spread", "clusters")
MIN_CLUSTER = 20
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass(frozen=True)
class NoiseSpec:
    kind: str
    fraction: float
    where: str
    clusters: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if self.where not in WHERE:
            raise ValueError(f"where must be one of {', '.join(WHERE)}; got {self.where!r}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.clusters is not None and self.clusters < 1:
            raise ValueError(f"clusters must be >= 1, got {self.clusters}")


def shuffle_words(text: str, rng: np.random.Generator) -> str | None:
    """The words of ``text`` in a random order different from the original; None if impossible."""
    words = text.split()
    if len(set(words)) < 2:
        return None
    for _ in range(20):
        out = [words[i] for i in rng.permutation(len(words))]
        if out != words:
            return " ".join(out)
    return None


def first_sentence(text: str) -> str | None:
    """``text`` cut after its first sentence or line; None when that changes nothing."""
    stripped = text.strip()
    head = _SENTENCE_END.split(stripped, maxsplit=1)[0].strip()
    if not head or head == stripped:
        return None
    return head


def last_answer(record: dict[str, Any], where: str) -> str:
    messages = record.get("messages")
    if not isinstance(messages, list) or not any(
        isinstance(m, dict) and m.get("role") == "assistant" for m in messages
    ):
        raise ValueError(
            f"{where}: field 'messages' must be a list with an assistant turn (noise.py reads "
            "pools in kmq's messages layout, like ../shared/data/pools/*.jsonl.gz)"
        )
    return next(m["content"] for m in reversed(messages) if m.get("role") == "assistant")


def with_answer(record: dict[str, Any], answer: str) -> dict[str, Any]:
    messages = [dict(m) for m in record["messages"]]
    last = max(i for i, m in enumerate(messages) if m.get("role") == "assistant")
    messages[last]["content"] = answer
    return {**record, "messages": messages}


def cluster_rows(labels: np.ndarray) -> list[np.ndarray]:
    k = int(labels.max()) + 1 if len(labels) else 0
    return [np.flatnonzero(labels == c) for c in range(k)]


def eligible_rows(kind: str, answers: Sequence[str]) -> np.ndarray:
    """Rows whose answer ``kind`` can change."""
    if kind == "shuffle":
        return np.array([len(set(a.split())) >= 2 for a in answers], dtype=bool)
    if kind == "truncate":
        return np.array([first_sentence(a) is not None for a in answers], dtype=bool)
    return np.ones(len(answers), dtype=bool)


def choose_rows(
    spec: NoiseSpec,
    labels: np.ndarray,
    free: np.ndarray,
    eligible: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, int]:
    """Rows for ``spec`` (in a random order) among rows still clean (``free``), and how many
    chosen rows ``spec`` cannot change (whole clusters) or could not find (spread)."""
    n = len(labels)
    groups = cluster_rows(labels)
    if spec.where == "spread":
        picked, short = [], 0
        for rows in groups:
            rows = rows[free[rows]]
            m = round(spec.fraction * len(rows))
            usable = rng.permutation(rows[eligible[rows]])
            short += max(0, m - len(usable))
            picked.append(usable[:m])
        return (np.concatenate(picked) if picked else np.empty(0, dtype=np.int64)), short
    order = rng.permutation(len(groups))
    chosen: list[np.ndarray] = []
    if spec.clusters is not None:
        big = [c for c in order if free[groups[c]].sum() >= MIN_CLUSTER]
        if len(big) < spec.clusters:
            raise ValueError(
                f"clusters={spec.clusters} but only {len(big)} clusters have >= {MIN_CLUSTER} "
                "clean rows"
            )
        chosen = [groups[c][free[groups[c]]] for c in big[: spec.clusters]]
    else:
        room = spec.fraction * n
        for c in order:
            rows = groups[c][free[groups[c]]]
            if 0 < len(rows) <= room:
                chosen.append(rows)
                room -= len(rows)
        if not chosen:
            raise ValueError(
                f"no whole cluster fits in fraction={spec.fraction} of the {n} rows; "
                "give --clusters N or a larger fraction"
            )
    rows = np.concatenate(chosen)
    return rng.permutation(rows[eligible[rows]]), int((~eligible[rows]).sum())


def plant(
    records: Sequence[dict[str, Any]],
    labels: np.ndarray,
    specs: Sequence[NoiseSpec],
    seed: int,
) -> tuple[list[dict[str, Any]], dict[int, str], dict[str, Any]]:
    """The records with noise planted by ``specs`` (in order), the noisy rows (index → kind) and
    counts. ``labels`` are the rows' clusters (all zero for none). Same seed ⇒ same output."""
    labels = np.asarray(labels)
    answers = [last_answer(r, f"row {i}") for i, r in enumerate(records)]
    out = list(records)
    noisy: dict[int, str] = {}
    free = np.ones(len(records), dtype=bool)
    counts: list[dict[str, Any]] = []
    for spec, child in zip(specs, np.random.SeedSequence(seed).spawn(len(specs)), strict=True):
        rng = np.random.default_rng(child)
        rows, skipped = choose_rows(spec, labels, free, eligible_rows(spec.kind, answers), rng)
        done = 0
        for i in rows.tolist():
            new = corrupt(spec.kind, i, answers, labels, rng)
            if new is None:
                skipped += 1
                continue
            out[i] = with_answer(records[i], new)
            noisy[i] = spec.kind
            free[i] = False
            done += 1
        counts.append({**spec.__dict__, "noisy": done, "ineligible": skipped})
    return out, noisy, {"specs": counts, "noisy": len(noisy), "rows": len(records)}


def corrupt(
    kind: str, i: int, answers: Sequence[str], labels: np.ndarray, rng: np.random.Generator
) -> str | None:
    if kind == "shuffle":
        return shuffle_words(answers[i], rng)
    if kind == "truncate":
        return first_sentence(answers[i])
    donors = np.flatnonzero(labels != labels[i]) if labels.max() > 0 else np.arange(len(labels))
    donors = donors[donors != i]
    for _ in range(20):
        if not len(donors):
            return None
        j = int(donors[rng.integers(len(donors))])
        if answers[j].strip() != answers[i].strip():
            return answers[j]
    return None


def read_records(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    records = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not JSON ({e.msg})") from None
            if not isinstance(record, dict) or "id" not in record:
                raise ValueError(f"{path}:{line_no}: expected an object with an 'id' field")
            records.append(record)
    return records


def write_atomic(path: Path, write: Any, binary_gzip: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as raw:
            if binary_gzip:
                with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
                    write(gz)
            else:
                write(raw)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def noise_path(out: Path) -> Path:
    name = out.name.removesuffix(".gz").removesuffix(".jsonl")
    return out.with_name(name + ".noise.json")


def write_outputs(
    out: Path, records: Sequence[dict[str, Any]], noisy: dict[int, str], summary: dict[str, Any]
) -> Path:
    def lines(fh: Any) -> None:
        for r in records:
            fh.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))

    write_atomic(out, lines, binary_gzip=out.suffix == ".gz")
    meta = {**summary, "ids": {records[i]["id"]: kind for i, kind in sorted(noisy.items())}}
    side = noise_path(out)
    write_atomic(side, lambda fh: fh.write(json.dumps(meta, indent=1).encode("utf-8")))
    return side


def pool_labels(pool: Path, k: int, seed: int, embeddings: Path | None, n: int) -> np.ndarray:
    """k-means labels of the pool's user-view MiniLM embeddings (``--embeddings`` or kmq's
    cached embedding); all zeros for ``k`` = 0."""
    if k == 0:
        return np.zeros(n, dtype=np.int64)
    from kmq.pipeline import cluster

    if embeddings is not None:
        vectors = np.load(embeddings, mmap_mode="r")
        if len(vectors) != n:
            raise ValueError(f"{embeddings}: {len(vectors)} rows, the pool has {n}")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    else:
        from kmq.config import SelectConfig
        from kmq.formats import load_pool
        from kmq.pools import embed_pool

        loaded = load_pool(pool)
        if len(loaded.examples) != n:
            raise ValueError(f"{pool}: {n} records but {len(loaded.examples)} valid rows")
        config = SelectConfig(input=str(pool), out="", cache_dir=str(DEFAULT_CACHE))
        vectors, _ = embed_pool(loaded, config)
    fitted, _ = cluster(vectors, k, seed=seed)
    return np.asarray(fitted.labels_, dtype=np.int64)


DEFAULT_CACHE = Path(__file__).resolve().parent / "out" / "cache"


def parse_specs(args: argparse.Namespace) -> list[NoiseSpec]:
    kinds, fractions, wheres = args.kind, args.fraction, args.where
    if not (len(kinds) == len(fractions) == len(wheres)):
        raise ValueError(
            f"give as many --fraction and --where as --kind (got {len(kinds)} kinds, "
            f"{len(fractions)} fractions, {len(wheres)} wheres)"
        )
    clusters = args.clusters or [None] * len(kinds)
    if len(clusters) != len(kinds):
        raise ValueError("give --clusters once per --kind, or not at all")
    return [
        NoiseSpec(kind, fraction, where, None if where == "spread" else c)
        for kind, fraction, where, c in zip(kinds, fractions, wheres, clusters, strict=True)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("pool", type=Path, help="JSONL(.gz) pool in kmq's messages layout")
    parser.add_argument("--kind", action="append", required=True, choices=KINDS)
    parser.add_argument("--fraction", action="append", type=float, required=True)
    parser.add_argument("--where", action="append", required=True, choices=WHERE)
    parser.add_argument(
        "--clusters", action="append", type=int, help="whole clusters per spec (where=clusters)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    parser.add_argument("--k", type=int, default=16, help="clusters of the pool (0: none)")
    parser.add_argument("--cluster-seed", type=int, default=0, help="seed of the k-means")
    parser.add_argument(
        "--embeddings", type=Path, help=".npy of the pool's user-view embeddings, rows in order"
    )
    parser.add_argument("--out", type=Path, help="default: POOL's name + .noisy.jsonl.gz")
    args = parser.parse_args(argv)
    try:
        specs = parse_specs(args)
        records = read_records(args.pool)
        labels = pool_labels(args.pool, args.k, args.cluster_seed, args.embeddings, len(records))
        noisy_records, noisy, summary = plant(records, labels, specs, args.seed)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or args.pool.with_name(
        args.pool.name.removesuffix(".gz").removesuffix(".jsonl") + ".noisy.jsonl.gz"
    )
    summary.update(
        {"pool": str(args.pool), "seed": args.seed, "k": args.k, "cluster_seed": args.cluster_seed}
    )
    side = write_outputs(out, noisy_records, noisy, summary)
    print(f"{summary['noisy']} of {summary['rows']} rows noisy → {out} (ids in {side})")
    for s in summary["specs"]:
        print(
            f"  {s['kind']:8s} {s['where']:8s} fraction {s['fraction']}: {s['noisy']} noisy, "
            f"{s['ineligible']} rows it could not change"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
