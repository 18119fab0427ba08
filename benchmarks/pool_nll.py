"""The two IFD passes of every row of ``mix-small`` and of its planted-noise twins, in one table.

The selection benchmarks need a real LM quality score for every row of several pools (the clean
pool, the noisy pool of ``benchmarks/selection.py`` and the spread-noise pools of
``benchmarks/candidates.py``); most rows are shared between the pools, so each distinct
(prompt, response) is scored once and looked up by its key.

    python benchmarks/pool_nll.py rows --out ROWS.jsonl.gz     # the distinct rows (CPU, seconds)
    python benchmarks/pool_nll.py score ROWS.jsonl.gz --out NLL.npz --device cuda \\
        --dtype bfloat16                                        # the NLLs (a GPU: minutes)

``rows`` writes the clean pool's rows first (18,794 distinct of 18,814), then each noisy pool's
new ones (the downstream noisy pool's 5,522 next), so the first lines alone (``zcat
ROWS.jsonl.gz | head -18794``) make the table of a clean-pool run: ≈ 1 h 20 min in bfloat16 on
a 2-core CPU (``--device cpu --dtype bfloat16 --batch-size 16``). ``score`` writes ``NLL.npz``
(``key``, ``nll_cond`` = mean NLL(y|x), ``nll_uncond`` = mean NLL(y), nats/token, ``scorer`` =
what scored it) every ``--checkpoint`` rows, so an interrupted run keeps what it scored and
resumes from a longer rows file with the same first lines, never under other settings.
:func:`lookup` gives any pool's rows their two NLLs by key, and :func:`table_quality` kmq's
scores from them (``pmi`` = NLL(y) − NLL(y|x), ``ifd`` = Cherry LLM's IFD).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import POOLS

NOISE_SEEDS = (0, 1, 2)
NOISE_FRACTION = 0.25


def row_key(example: Any) -> str:
    """sha256 (24 hex) of the example's prompt turns and response."""
    prompt = [[m.role, m.content] for m in (example.prompt or [])]
    payload = json.dumps([prompt, example.response], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]


def row_line(example: Any) -> str:
    """The example's line in a rows file: its :func:`row_key` as ``id`` and its messages."""
    messages = [{"role": m.role, "content": m.content} for m in example.messages]
    return json.dumps({"id": row_key(example), "messages": messages}, ensure_ascii=False) + "\n"


def pools(pool: Path, embeddings: Path | None, work: Path) -> dict[str, Any]:
    """name → kmq Pool: ``clean``, ``selection-noisy`` and ``candidates-<kind>-s<seed>``."""
    from candidates import noisy_pools
    from noise import plant, read_records, write_outputs
    from selection import DEFAULT_NOISE

    from kmq.formats import load_pool
    from kmq.pipeline import cluster

    records = read_records(pool)
    out = {"clean": load_pool(pool)}
    if embeddings is not None:
        x = np.ascontiguousarray(np.load(embeddings), dtype=np.float32)
        labels = cluster(x, 16, seed=0)[0].labels_
        noisy, rows, summary = plant(records, labels, DEFAULT_NOISE, 0)
        path = work / "selection-noisy.jsonl.gz"
        write_outputs(path, noisy, rows, summary)
        out["selection-noisy"] = load_pool(path)
    for seed in NOISE_SEEDS:
        for kind, (noisy_records, _) in noisy_pools(records, NOISE_FRACTION, seed).items():
            path = work / f"candidates-{kind}-s{seed}.jsonl.gz"
            write_outputs(path, noisy_records, {}, {})
            out[f"candidates-{kind}-s{seed}"] = load_pool(path)
    return out


def write_rows(args: argparse.Namespace) -> None:
    work = args.out.parent / (args.out.name + ".pools")
    work.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    with gzip.open(args.out, "wt", encoding="utf-8") as fh:
        for name, pool in pools(args.pool, args.embeddings, work).items():
            fresh = 0
            for ex in pool.examples:
                key = row_key(ex)
                if key in seen:
                    continue
                seen.add(key)
                fresh += 1
                fh.write(row_line(ex))
            print(f"{name}: {len(pool.examples)} rows, {fresh} new", file=sys.stderr)
    print(f"{len(seen)} distinct rows → {args.out}", file=sys.stderr)


def save(
    path: Path,
    keys: Sequence[str],
    cond: np.ndarray,
    uncond: np.ndarray,
    scorer: str,
    scored: int,
) -> None:
    """Write the table atomically; ``scored`` = how many of its first rows are scored (a scored
    row may still be NaN: an empty response has no token to score)."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(  # its 24-hex keys compress ≈ 3.5×: the table is committed
        tmp,
        key=np.array(keys),
        nll_cond=cond,
        nll_uncond=uncond,
        scorer=np.array(scorer),
        scored=np.array(scored),
    )
    tmp.replace(path)


def scored_rows(data: Any) -> int:
    """How many first rows of a loaded table are scored: its ``scored`` count, or for a table
    written before that was recorded, up to its last non-NaN row."""
    if "scored" in data.files:
        return int(data["scored"])
    finite = np.flatnonzero(~np.isnan(data["nll_cond"]))
    return int(finite[-1]) + 1 if finite.size else 0


def table_scorer(data: Any) -> str | None:
    """What scored a loaded table (model, max length, dtype, device); None for a table written
    before this was recorded."""
    return str(data["scorer"]) if "scorer" in data.files else None


def scored_by(table: Path) -> str | None:
    """:func:`table_scorer` of the table at ``table``."""
    with np.load(table) as data:
        return table_scorer(data)


def score(args: argparse.Namespace) -> None:
    from kmq.formats import load_pool
    from kmq.quality.lm_scorers import PMIScorer

    examples = load_pool(args.rows).examples
    keys = [ex.id for ex in examples]
    cond = np.full(len(examples), np.nan)
    uncond = np.full(len(examples), np.nan)
    scorer = PMIScorer(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        max_length=args.max_length,
        show_progress=False,
    )
    identity = f"{scorer.fingerprint()}/device={args.device or 'auto'}"
    start = 0
    if args.out.exists():
        with np.load(args.out) as done:
            before = table_scorer(done)
            if before is not None and before != identity:
                raise SystemExit(
                    f"error: {args.out} was scored by {before}, not {identity}; resuming would "
                    "mix the two in one table (give another --out, or the same settings)"
                )
            if before is None:
                print(
                    f"{args.out}: its scorer is not recorded; resuming as {identity}",
                    file=sys.stderr,
                )
            start = scored_rows(done)
            if [str(k) for k in done["key"][:start]] != keys[:start]:
                raise SystemExit(
                    f"error: {args.out}: its first {start} keys are not the first rows of "
                    f"{args.rows}; resume with the rows file it was scored from"
                )
            cond[:start], uncond[:start] = done["nll_cond"][:start], done["nll_uncond"][:start]
    began = time.perf_counter()
    for lo in range(start, len(examples), args.checkpoint):
        hi = min(lo + args.checkpoint, len(examples))
        scorer.score(examples[lo:hi])
        cond[lo:hi], uncond[lo:hi] = scorer.results_[0].nll, scorer.results_[1].nll
        save(args.out, keys, cond, uncond, identity, hi)
        rate = (hi - start) / (time.perf_counter() - began)
        print(f"{hi}/{len(examples)} rows, {rate:.1f} rows/s", file=sys.stderr, flush=True)


QUALITIES = ("pmi", "pmi-total", "ifd", "perplexity")
HOW_TO_MAKE = (
    "make it with `python benchmarks/pool_nll.py rows --embeddings POOL-MINILM.npy --out "
    "ROWS.jsonl.gz` (here, seconds) and `python benchmarks/pool_nll.py score ROWS.jsonl.gz "
    "--out NLL.npz --device cuda` (float32 on a GPU: minutes; ≈ 8 h on a 2-core CPU; the "
    "clean pool alone in bfloat16 on a 2-core CPU: ≈ 1 h 20 min, see the module's docstring)"
)


def table_rows(table: Path, examples: Sequence[Any]) -> tuple[Any, np.ndarray]:
    """The loaded table and the row of each example in it (−1 where it has none)."""
    data = np.load(table)
    where = {str(k): i for i, k in enumerate(data["key"])}
    return data, np.array([where.get(row_key(ex), -1) for ex in examples], dtype=np.int64)


def lookup(table: Path, examples: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(NLL(y|x), NLL(y)) of each example from a ``score`` table; NaN where it has none."""
    data, idx = table_rows(table, examples)
    cond = np.where(idx >= 0, data["nll_cond"][idx], np.nan)
    uncond = np.where(idx >= 0, data["nll_uncond"][idx], np.nan)
    return cond, uncond


def response_tokens(examples: Sequence[Any], max_length: int = 512) -> np.ndarray:
    """Response tokens each row's windows scored: its rendered response (SmolLM2's template),
    cut to ``max_length − 1`` as :func:`kmq.quality.lm.fit_window` does."""
    from kmq.models import ChatFormat, converted_model_dir
    from kmq.quality.lm import token_ids
    from kmq.training.generate import load_tokenizer

    tokenizer = load_tokenizer(converted_model_dir("smollm2"))
    chat = ChatFormat(tokenizer)
    ids = token_ids(tokenizer, [chat.response(ex.response) for ex in examples])
    return np.minimum(np.array([len(i) for i in ids], dtype=np.float64), max_length - 1)


def table_quality(table: Path, examples: Sequence[Any], quality: str) -> np.ndarray:
    """kmq's ``<quality>_score`` of each example from the table's two NLLs.

    ``pmi`` = NLL(y) − NLL(y|x) (higher = the prompt helps more; kmq's ``PMIScorer``);
    ``pmi-total`` = ``pmi`` × the response tokens the window scored (kmq's ``PMITotalScorer``);
    ``ifd`` = Cherry LLM's IFD = exp(NLL(y|x) − NLL(y)) where < 1, else 0 (kmq's ``IFDScorer``);
    ``perplexity`` = −NLL(y|x).
    A row whose NLLs are NaN (an empty response) gets the lowest finite score, as ``kmq select``
    gives rows its scorer could not score. Every example must be in the table.
    """
    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {', '.join(QUALITIES)}; got {quality!r}")
    data, idx = table_rows(table, examples)
    absent = np.flatnonzero(idx < 0)
    if len(absent):
        raise ValueError(
            f"{table}: {len(absent)} of the {len(examples)} rows are not in the table (first: row "
            f"{absent[0]}); the table must cover this pool — {HOW_TO_MAKE}"
        )
    cond, uncond = data["nll_cond"][idx], data["nll_uncond"][idx]
    if quality == "pmi":
        values = uncond - cond
    elif quality == "pmi-total":
        values = (uncond - cond) * response_tokens(examples)
    elif quality == "perplexity":
        values = -cond
    else:
        ifd = np.exp(cond - uncond)
        values = np.where(ifd < 1, ifd, np.where(np.isnan(ifd), np.nan, 0.0))
    from kmq.scoring import fill_missing

    return fill_missing(np.asarray(values, dtype=np.float64))


def require_table(table: Path | None, flag: str = "--nll-table") -> Path:
    """``table``, or exit with how to make it when it is not given or not there."""
    if table is None:
        raise SystemExit(f"error: {flag} PATH is required (the per-row NLL table); {HOW_TO_MAKE}")
    if not table.is_file():
        raise SystemExit(f"error: {flag} {table}: no such file; {HOW_TO_MAKE}")
    return table


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rows = sub.add_parser("rows", help="write the distinct rows of every pool")
    rows.add_argument("--pool", type=Path, default=POOLS / "mix-small.jsonl.gz")
    rows.add_argument("--embeddings", type=Path, help="user-view .npy (selection's noisy pool)")
    rows.add_argument("--out", type=Path, required=True)
    run = sub.add_parser("score", help="score the rows' two IFD passes")
    run.add_argument("rows", type=Path)
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--model", default="smollm2", help="smollm2 or a local model folder")
    run.add_argument("--device", default=None)
    run.add_argument("--dtype", default="float32")
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument("--max-length", type=int, default=512)
    run.add_argument("--checkpoint", type=int, default=4096)
    args = parser.parse_args(argv)
    write_rows(args) if args.command == "rows" else score(args)


if __name__ == "__main__":
    main()
