"""kmq's encoder path against raw sentence-transformers, same texts, model and batch size.

A: ``SentenceTransformerEncoder("minilm", batch_size=B, show_progress=False).encode(texts)``
(texts longer than the window are chunked and mean-pooled); B:
``SentenceTransformer(packaged_minilm_path()).encode(texts, batch_size=B,
normalize_embeddings=True)`` (long texts truncated). Both models are loaded and warmed up
before timing; A and B alternate block by block (``--block`` texts); the median of the repeats
is reported.

    python benchmarks/embedding.py --n 5000 --batch-size 64 --repeats 3 --block 500
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from _common import (
    DEFAULT_RESULTS,
    POOLS,
    log,
    markdown_table,
    pool_texts,
    save_figure,
    setup_logging,
    write_report,
)

RATIO_TARGET = 0.95


def timed_pair(
    fns: dict[str, Callable[[list[str]], np.ndarray]],
    texts: list[str],
    repeats: int,
    block: int,
    label: str,
) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Encode ``texts`` ``repeats`` times with every function; seconds per repeat, last outputs.

    The texts go in blocks of ``block`` (0: all at once); each block is encoded by every
    function back to back, the order alternating from block to block and repeat to repeat, so
    load from other processes hits both paths alike.
    """
    names = list(fns)
    step = block if block > 0 else len(texts)
    starts = range(0, len(texts), step)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    outputs: dict[str, np.ndarray] = {}
    for r in range(repeats):
        spent = dict.fromkeys(names, 0.0)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for b, start in enumerate(starts):
            chunk = texts[start : start + step]
            for name in names if (r + b) % 2 == 0 else names[::-1]:
                started = time.perf_counter()
                parts[name].append(np.asarray(fns[name](chunk)))
                spent[name] += time.perf_counter() - started
        for name in names:
            seconds[name].append(spent[name])
            outputs[name] = np.concatenate(parts[name])
        log.info("%s run %d: %s", label, r + 1, ", ".join(f"{n} {spent[n]:.1f} s" for n in names))
    return seconds, outputs


def token_lengths(tokenizer: object, texts: Sequence[str]) -> np.ndarray:
    enc = tokenizer(  # type: ignore[operator]
        list(texts),
        add_special_tokens=False,
        return_attention_mask=False,
        truncation=False,
        verbose=False,
    )
    return np.array([len(ids) for ids in enc["input_ids"]], dtype=np.int64)


def plot(rows: list[dict[str, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(pos - 0.2, [r["kmq"] for r in rows], 0.4, label="kmq encoder (chunk + mean-pool)")
    ax.bar(pos + 0.2, [r["raw"] for r in rows], 0.4, label="raw sentence-transformers")
    for p, r in zip(pos, rows, strict=True):
        ax.annotate(
            f"ratio {r['ratio']:.3f}",
            (p, max(r["kmq"], r["raw"])),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(pos, [r["label"] for r in rows])
    ax.set_ylabel("texts / s (median)")
    ax.set_ylim(0, 1.2 * max(max(r["kmq"], r["raw"]) for r in rows))
    ax.set_title("MiniLM encode throughput (CPU)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, out, "embedding")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=Path, default=POOLS / "mix-small.jsonl.gz")
    parser.add_argument("--n", type=int, default=5000, help="texts in the seeded sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--block",
        type=int,
        default=500,
        help="texts per A/B block inside a repeat (0: each path encodes all texts in one call)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    args = parser.parse_args()
    setup_logging()
    started = time.perf_counter()

    import torch
    from sentence_transformers import SentenceTransformer

    from kmq.encoders.sentence_transformers import (
        SentenceTransformerEncoder,
        packaged_minilm_path,
    )

    all_texts, _ = pool_texts(args.pool, "user")
    rng = np.random.default_rng(args.seed)
    sample = rng.choice(len(all_texts), size=min(args.n, len(all_texts)), replace=False)
    texts = [all_texts[i] for i in sample]

    enc = SentenceTransformerEncoder("minilm", batch_size=args.batch_size, show_progress=False)
    enc.st  # noqa: B018 - load the model before timing
    raw = SentenceTransformer(str(packaged_minilm_path()), device="cpu")
    window = enc.window
    log.info(
        "window %d tokens (max_seq_length %d); torch threads %d",
        window,
        raw.max_seq_length,
        torch.get_num_threads(),
    )

    def run_kmq(ts: list[str]) -> np.ndarray:
        return enc.encode(ts)

    def run_raw(ts: list[str]) -> np.ndarray:
        return raw.encode(
            ts,
            batch_size=args.batch_size,
            normalize_embeddings=True,
            show_progress_bar=False,
            convert_to_numpy=True,
        )

    warm = texts[:64]
    run_kmq(warm)
    run_raw(warm)

    pieces, owners, _ = enc.split(texts)
    n_pieces = np.bincount(owners, minlength=len(texts))
    chunked = n_pieces > 1
    fits = [t for t, c in zip(texts, chunked, strict=True) if not c]
    lengths = token_lengths(raw.tokenizer, texts)
    long_pieces = [p for p, o in zip(pieces, owners, strict=True) if chunked[o]]
    piece_lengths = token_lengths(raw.tokenizer, long_pieces) if long_pieces else np.zeros(0)
    over_window = int((piece_lengths > window).sum())

    fns = {"kmq": run_kmq, "raw": run_raw}
    sec_all, out_all = timed_pair(fns, texts, args.repeats, args.block, "all")
    sec_fit, _ = timed_pair(fns, fits, args.repeats, args.block, "fit")

    a, b = out_all["kmq"].astype(np.float64), out_all["raw"].astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    cos_fit, cos_long = cos[~chunked], cos[chunked]

    rows = []
    for label, secs, n in (
        ("all sampled texts", sec_all, len(texts)),
        ("texts that fit the window", sec_fit, len(fits)),
    ):
        kmq_tps = n / statistics.median(secs["kmq"])
        raw_tps = n / statistics.median(secs["raw"])
        rows.append(
            {
                "label": label,
                "n": n,
                "kmq": kmq_tps,
                "raw": raw_tps,
                "ratio": kmq_tps / raw_tps,
                "best_ratio": min(secs["raw"]) / min(secs["kmq"]),
                "kmq_s": secs["kmq"],
                "raw_s": secs["raw"],
            }
        )
    headers = [
        "texts",
        "n",
        "kmq texts/s",
        "raw ST texts/s",
        "ratio kmq/raw (≥ 0.95)",
        "ratio, fastest runs",
        "kmq s (runs)",
        "raw s (runs)",
    ]
    table = markdown_table(
        headers,
        [
            [
                r["label"],
                r["n"],
                round(r["kmq"], 1),
                round(r["raw"], 1),
                f"{r['ratio']:.3f}",
                f"{r['best_ratio']:.3f}",
                ", ".join(f"{s:.1f}" for s in r["kmq_s"]),
                ", ".join(f"{s:.1f}" for s in r["raw_s"]),
            ]
            for r in rows
        ],
    )
    truncated_tokens = int(np.maximum(lengths - window, 0).sum())
    n_tokens = int(lengths.sum())
    stats = markdown_table(
        ["measure", "value"],
        [
            [
                "texts longer than the window (chunked by kmq, truncated by raw ST)",
                f"{int(chunked.sum())} of {len(texts)} ({100 * chunked.mean():.1f}%)",
            ],
            ["pieces kmq encodes for them", int(n_pieces[chunked].sum())],
            ["total pieces kmq encodes / texts", f"{len(pieces)} / {len(texts)}"],
            ["longest text (tokens, no specials)", int(lengths.max())],
            [
                "tokens beyond the window (dropped by raw ST, encoded by kmq)",
                f"{truncated_tokens:,} of {n_tokens:,} ({100 * truncated_tokens / n_tokens:.1f}%)",
            ],
            [
                "kmq pieces whose re-tokenised length exceeds the window (ST truncates them)",
                f"{over_window} of {len(long_pieces)}",
            ],
            [
                "cosine kmq vs raw, un-chunked texts: mean / min",
                f"{cos_fit.mean():.6f} / {cos_fit.min():.6f}",
            ],
            [
                "cosine kmq vs raw, chunked texts: mean / min",
                f"{cos_long.mean():.4f} / {cos_long.min():.4f}" if len(cos_long) else "n/a",
            ],
        ],
    )
    print(table)
    print()
    print(stats)
    verdict = [
        f"- {r['label']}: ratio {r['ratio']:.3f} "
        f"{'meets' if r['ratio'] >= RATIO_TARGET else 'MISSES'} the ≥ 0.95 target"
        for r in rows
    ]
    body = f"""
{len(texts):,} texts sampled with seed {args.seed} from the user view of `{args.pool.name}`
({len(all_texts):,} rows); MiniLM ({enc.name}), batch size {args.batch_size}, CPU,
torch threads {torch.get_num_threads()}. Both models loaded and warmed up on 64 texts before
timing. Each run encodes all texts with both paths, in blocks of {args.block or "all"} texts:
every block goes through kmq and raw back to back, the order alternating block by block, so
load from other processes hits both alike; a run's time is the sum over its blocks. Median of
{args.repeats} runs.
Throughput = texts / median seconds; "ratio, fastest runs" compares each path's fastest run
(less sensitive to other processes on a shared machine; see the load average below).

{table}

{chr(10).join(verdict)}

On the full sample the two paths do not do the same work: texts longer than the model window
({window} tokens plus 2 special tokens) are split by kmq into windows that are all embedded and
mean-pooled by token count, while raw sentence-transformers truncates them to the first window.
kmq therefore encodes more tokens there; the second row (texts that fit the window, where both
encode the same tokens) is the like-for-like overhead of kmq's path.

{stats}
"""
    total = time.perf_counter() - started
    write_report(
        args.out, "embedding", "Embedding: kmq encoder vs raw sentence-transformers", body, total
    )
    plot(rows, args.out)


if __name__ == "__main__":
    main()
