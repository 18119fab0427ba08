"""Score one model (the base, or a trained checkpoint) on the protocol's suites and hold-out."""

from __future__ import annotations

import gc
import logging
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluation import MC_SUITES
from evaluation.scoring import mc, nll
from evaluation.suites import MCItem, NLLItem, load_suite

from kmq.models import load_causal_lm
from kmq.training.generate import load_checkpoint

if TYPE_CHECKING:
    from harness import Grid

log = logging.getLogger("kmq.benchmarks")


@cache
def suite_items(name: str, data_dir: str, n: int, seed: int) -> tuple[NLLItem | MCItem, ...]:
    """A suite's items, read and checked once per process (every model sees the same ones)."""
    return tuple(load_suite(name, data_dir, n=n, seed=seed))


def evaluate_model(grid: Grid, checkpoint: Path | None) -> dict[str, Any]:
    """``{"suites": {suite: NLL or accuracy}, "holdout": {source: NLL}, "details": {...}}``.

    NLL suites: token-weighted mean NLL of the reference (nats per token). MC suites: accuracy
    by summed log-likelihood (``details`` adds the per-character variant). Hold-out: the same
    NLL on the pool rows held out before selection, per source.
    """
    p = grid.protocol
    if checkpoint is None:
        model, tokenizer = load_causal_lm(p.model, device=p.device)
    else:
        model, tokenizer = load_checkpoint(checkpoint, device=p.device)
    settings = {"max_length": p.eval_max_length, "batch_size": p.eval_batch_size}
    suites: dict[str, float] = {}
    details: dict[str, dict[str, float]] = {}
    for name in p.suites:
        items = suite_items(name, p.eval_dir, p.eval_items, p.eval_seed)
        if name in MC_SUITES:
            scores = mc(model, tokenizer, items, show_progress=False, desc=name, **settings)
            suites[name] = scores.accuracy
            details[name] = {
                "items": len(items),
                "accuracy_per_char": scores.accuracy_norm,
                "truncated": int(scores.truncated.sum()),
            }
        else:
            result = nll(model, tokenizer, items, show_progress=False, desc=name, **settings)
            suites[name] = result.mean_nll
            details[name] = {
                "items": len(items),
                "tokens": int(result.tokens.sum()),
                "truncated": int(result.truncated.sum()),
            }
        log.info("  %s: %.4f", name, suites[name])
    by_source: dict[str, list[NLLItem]] = defaultdict(list)
    for ex in grid.holdout:
        by_source[ex.source or "(none)"].append(NLLItem(ex.id, ex.prompt, ex.response))
    holdout: dict[str, float] = {}
    for source, items in sorted(by_source.items()):
        holdout[source] = nll(
            model, tokenizer, items, show_progress=False, desc=source, **settings
        ).mean_nll
    log.info("  held-out: %s", ", ".join(f"{s} {v:.3f}" for s, v in holdout.items()))
    del model
    gc.collect()
    return {"suites": suites, "holdout": holdout, "details": details}
