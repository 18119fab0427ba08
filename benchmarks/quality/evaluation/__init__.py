"""Evaluation primitives for comparing fine-tuned models: suites of items, and their scores.

:mod:`evaluation.suites` loads fixed, seeded subsets of the shared evaluation sets;
:mod:`evaluation.scoring` scores a causal LM on them (reference NLL, multiple choice).
Used by the quality benchmarks only: import it with ``benchmarks/quality`` on ``sys.path``, as
the benchmark scripts and their tests do.
"""

from .scoring import MCScores, NLLScores, mc, nll
from .suites import (
    MC_SUITES,
    NLL_SUITES,
    MCItem,
    NLLItem,
    load_arc_challenge,
    load_arc_easy,
    load_gsm8k,
    load_humaneval,
    load_mmlu,
    load_mt_bench,
    load_suite,
    load_truthfulqa,
)

__all__ = [
    "MC_SUITES",
    "NLL_SUITES",
    "MCItem",
    "MCScores",
    "NLLItem",
    "NLLScores",
    "load_arc_challenge",
    "load_arc_easy",
    "load_gsm8k",
    "load_humaneval",
    "load_mmlu",
    "load_mt_bench",
    "load_suite",
    "load_truthfulqa",
    "mc",
    "nll",
]
