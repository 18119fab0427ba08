"""Evaluation primitives for comparing fine-tuned models: suites of items, and their scores.

:mod:`kmq.evaluation.suites` loads fixed, seeded subsets of the shared evaluation sets;
:mod:`kmq.evaluation.scoring` scores a causal LM on them (reference NLL, multiple choice).
"""

from kmq.evaluation.scoring import MCScores, NLLScores, mc, nll
from kmq.evaluation.suites import (
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
