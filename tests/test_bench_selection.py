"""benchmarks/selection.py: one arm per quality for the methods that read one, and the headline
compares each arm with random and with balanced km-random inside one Holm family."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import selection


def test_arms_split_the_quality_methods_by_quality() -> None:
    arms = selection.make_arms(["random", "kmq-balanced", "qdit"], ["pmi", "ifd"])
    assert [a.label for a in arms] == [
        "random",
        "kmq-balanced (pmi)",
        "kmq-balanced (ifd)",
        "qdit (pmi)",
        "qdit (ifd)",
    ]
    assert [a.quality for a in arms] == [None, "pmi", "ifd", "pmi", "ifd"]
    one = selection.make_arms(["kmq-balanced"], ["length"])
    assert one == [selection.Arm("kmq-balanced", "kmq-balanced", "length")]


def fake_rows(shares: dict[str, list[float]]) -> list[dict[str, Any]]:
    rows = []
    for method, values in shares.items():
        for seed, share in enumerate(values):
            metrics = {m: 0.5 + 0.01 * seed for m in selection.METRICS}
            metrics |= {"noisy share": share, "swap share": share}
            rows += [
                {"pool": pool, "method": method, "seed": seed, **metrics}
                for pool in ("clean", "noisy")
            ]
    return rows


def test_headline_tests_each_arm_against_random_and_km_random(tmp_path: Path) -> None:
    shares = {
        "random": [0.30, 0.28, 0.29, 0.31],
        "km-random-balanced": [0.29, 0.29, 0.30, 0.30],
        "kmq-balanced (pmi)": [0.10, 0.11, 0.09, 0.12],
    }
    args = argparse.Namespace(
        pool=Path("pool.jsonl"), budget=8, k=2, seeds=4, holdout=1, out=tmp_path
    )
    summary = {
        "rows": 100,
        "noisy": 30,
        "specs": [{"kind": "swap", "where": "spread", "noisy": 30}],
    }
    selection.report(args, "sel", fake_rows(shares), list(shares), "`pmi`", summary, 1.0)
    text = (tmp_path / "sel.md").read_text(encoding="utf-8")
    headline = text.split("### Headline")[1].split("###")[0]
    row = next(line for line in headline.splitlines() if line.startswith("| kmq-balanced (pmi)"))
    assert "| 0.105 | 0.36 |" in row  # of which swap; × random's: 0.105 / 0.295
    assert row.count(" *") == 2  # beats both baselines after Holm
    # the noisy share of 2 methods vs random and of kMQ vs km-random; the other metrics are
    # equal across methods seed by seed (zero spread: no test)
    assert "over the 3 comparisons" in text
    assert "kmq-balanced (pmi) − km-random-balanced | noisy share | -0.1900" in text
    assert (tmp_path / "sel.png").exists()
    assert np.isclose(float(row.split("|")[2].split("±")[0]), 0.105)
