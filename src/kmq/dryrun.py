"""``kmq select --dry-run``: read and check the input, estimate the long step, write nothing.

It reads the pool as the run would (every row checked; invalid rows counted, not raised),
counts exact duplicates and sources, counts tokens with the encoder's own tokenizer when it has
one (sentence-transformers models; other encoders report none) and, with ``--budget-tokens`` or
``--tokenizer``, the tokens of the whole conversations that a token budget counts, and times the
encoder on a sample of the texts to estimate the embedding time of the whole pool if nothing is
cached.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from kmq.config import SelectConfig, make_encoder, resolve_budget
from kmq.exact import exact_duplicates
from kmq.formats import load_pool
from kmq.outputs import source_counts
from kmq.tokens import DEFAULT_TOKENIZER, load_token_counter
from kmq.validate import reason_counts

SAMPLE = 64  # texts timed through the encoder


def dry_run(config: SelectConfig, *, sample: int = SAMPLE) -> dict[str, Any]:
    """What ``config`` would read and embed, as a dict (see the module docstring)."""
    config.validate()
    pool = load_pool(
        config.input,
        fields=config.fields,
        format=config.format,
        on_invalid="skip",
        quality_field=config.quality_field,
    )
    n = len(pool.examples)
    duplicates = None if config.keep_duplicates else len(exact_duplicates(pool.examples).removed)
    texts = [example.text(config.view) for example in pool.examples]  # type: ignore[arg-type]
    report: dict[str, Any] = {
        "input": str(pool.path),
        "format": pool.format,
        "records": pool.n_records,
        "valid": n,
        "rejected": len(pool.rejects),
        "rejected_by_reason": reason_counts(pool.rejects),
        "would_stop": config.on_invalid == "error" and bool(pool.rejects),
        "repaired": len(pool.repairs),
        "exact_duplicates": duplicates,
        "budget": resolve_budget(config.budget, n) if n else None,
        "sources": source_counts(pool),
        "characters": int(sum(len(text) for text in texts)),
        "view": config.view,
    } | conversation_tokens(config, pool.examples)
    if not config.needs_embeddings() or not n:
        return report | {"tokens": None, "tokenizer": None, "embed_seconds_estimate": 0.0}
    encoder = make_encoder(replace(config, progress=False))
    tokens, tokenizer = count_tokens(encoder, texts)
    picked = np.random.default_rng(config.seed).choice(n, size=min(sample, n), replace=False)
    started = time.perf_counter()
    encoder.encode([texts[i] for i in picked])
    per_text = (time.perf_counter() - started) / len(picked)
    return report | {
        "tokens": tokens,
        "tokenizer": tokenizer,
        "encoder": encoder.name,
        "sample_texts": len(picked),
        "embed_seconds_estimate": round(per_text * n, 1),
    }


def count_tokens(encoder: Any, texts: list[str]) -> tuple[int | None, str | None]:
    """Tokens of ``texts`` by the encoder's tokenizer (special tokens left out) and its name;
    ``(None, None)`` when the encoder has no tokenizer kmq can reach."""
    model = getattr(encoder, "st", None)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return None, None
    total = 0
    for start in range(0, len(texts), 1024):
        batch = tokenizer(texts[start : start + 1024], add_special_tokens=False)["input_ids"]
        total += sum(len(ids) for ids in batch)
    return total, str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def conversation_tokens(config: SelectConfig, examples: list[Any]) -> dict[str, Any]:
    """The tokens of the whole conversations (:mod:`kmq.tokens`), what ``--budget-tokens`` is
    counted in, when the run has a token budget or names a tokenizer."""
    if config.budget_tokens is None and config.tokenizer is None:
        return {"conversation_tokens": None, "conversation_tokenizer": None}
    counter = load_token_counter(config.tokenizer or DEFAULT_TOKENIZER, config.cache_dir)
    return {
        "conversation_tokens": int(counter.count(examples).sum()),
        "conversation_tokenizer": counter.name,
    }


def dry_run_lines(report: dict[str, Any]) -> list[str]:
    """The report in a few lines for the terminal."""
    lines = [
        f"{report['input']} ({report['format']}): {report['valid']:,} valid of "
        f"{report['records']:,} records; budget {report['budget']}",
    ]
    if report["rejected"]:
        why = ", ".join(f"{kind} {n}" for kind, n in report["rejected_by_reason"].items())
        stop = " (the run would stop: add --on-invalid skip)" if report["would_stop"] else ""
        lines.append(f"invalid rows: {report['rejected']:,} ({why}){stop}")
    if report["repaired"]:
        lines.append(f"repaired conversations: {report['repaired']:,}")
    duplicates = report["exact_duplicates"]
    lines.append(
        "exact duplicates: kept (--keep-duplicates)"
        if duplicates is None
        else f"exact duplicates to remove: {duplicates:,}"
    )
    if report["sources"]:
        lines.append("sources: " + ", ".join(f"{k} {v:,}" for k, v in report["sources"].items()))
    size = f"{report['characters']:,} characters"
    if report["tokens"] is not None:
        size += f", {report['tokens']:,} tokens ({report['tokenizer']})"
    lines.append(f"text ({report['view']} view): {size}")
    if report.get("conversation_tokens") is not None:
        lines.append(
            f"conversations: {report['conversation_tokens']:,} tokens "
            f"({report['conversation_tokenizer']}; what --budget-tokens counts)"
        )
    if "encoder" in report:
        lines.append(
            f"embedding with {report['encoder']}: about {report['embed_seconds_estimate']:,.0f} s "
            f"if nothing is cached (timed on {report['sample_texts']} texts)"
        )
    else:
        lines.append("nothing to embed (random selection)")
    return lines
