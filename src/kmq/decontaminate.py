"""Decontamination: drop pool rows whose prompt shares an n-gram with an evaluation item.

``--decontaminate FILE ...`` reads evaluation files (JSONL, JSON, CSV, Parquet, optionally
gzipped; any layout: every string in a record, at any depth, is evaluation text: questions,
turns, choices, answers). Texts are lower-cased and split into words (``\\w+``). A pool row is
contaminated when its prompt (system and user turns) contains one of the evaluation texts'
n-grams (n = 13 words by default, the common standard). An evaluation text shorter than n words
is matched whole, as GPT-3's contamination check did, if it has at least 8 words; shorter ones
(answers such as "18" or "True") are left out and counted. Every dropped row is recorded with
the file, location and words it matched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kmq.atomic import atomic_path
from kmq.errors import ParameterError
from kmq.examples import Example
from kmq.formats import read_raw

CONTAMINATION = "contamination.jsonl"
NGRAM = 13
MIN_WORDS = 8
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def strings(value: Any) -> Iterator[str]:
    """Every string in a record, at any depth (dict values, list items)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from strings(item)


@dataclass
class EvalNgrams:
    """The evaluation n-grams (and whole short texts), each with where it first occurs."""

    n: int
    origin: dict[str, tuple[str, str]] = field(default_factory=dict)  # words → (file, location)
    lengths: set[int] = field(default_factory=set)  # word counts to look for in the pool
    texts: int = 0
    too_short: int = 0

    def add(self, text: str, where: tuple[str, str]) -> None:
        tokens = words(text)
        if not tokens:
            return
        self.texts += 1
        if len(tokens) < MIN_WORDS:
            self.too_short += 1
            return
        size = min(self.n, len(tokens))
        self.lengths.add(size)
        for i in range(len(tokens) - size + 1):
            self.origin.setdefault(" ".join(tokens[i : i + size]), where)


def read_eval(paths: Sequence[str | Path], n: int = NGRAM) -> EvalNgrams:
    """The n-grams of every evaluation text in ``paths``."""
    if n < 1:
        raise ParameterError("n", f"{{param}} must be a positive integer, got {n}")
    grams = EvalNgrams(n)
    for path in paths:
        for location, record in read_raw(path):
            for text in strings(record):
                grams.add(text, (str(path), location))
    return grams


@dataclass(frozen=True)
class Contamination:
    """Pool positions dropped, each with the evaluation file, location and words it matched."""

    removed: np.ndarray  # ascending
    matches: list[tuple[str, str, str]]  # (file, location, words), one per removed row
    eval_texts: int
    eval_too_short: int

    def mask(self, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=bool)
        out[self.removed] = True
        return out


def find_contamination(examples: Sequence[Example], grams: EvalNgrams) -> Contamination:
    """The rows whose prompt holds an evaluation n-gram (the first one found is recorded)."""
    removed: list[int] = []
    matches: list[tuple[str, str, str]] = []
    for position, example in enumerate(examples):
        hit = _first_hit(words(example.text("user")), grams)
        if hit is not None:
            removed.append(position)
            matches.append((*grams.origin[hit], hit))
    return Contamination(
        removed=np.asarray(removed, dtype=np.int64),
        matches=matches,
        eval_texts=grams.texts,
        eval_too_short=grams.too_short,
    )


def _first_hit(tokens: list[str], grams: EvalNgrams) -> str | None:
    for size in sorted(grams.lengths, reverse=True):
        for i in range(len(tokens) - size + 1):
            key = " ".join(tokens[i : i + size])
            if key in grams.origin:
                return key
    return None


def write_contamination(
    path: Path, found: Contamination, rows: np.ndarray, ids: Sequence[str]
) -> None:
    """One line per dropped row: its input row and id, and the evaluation text it matched."""
    lines = [
        json.dumps(
            {
                "index": int(rows[position]),
                "id": ids[position],
                "eval_file": file,
                "eval_location": location,
                "matched": matched,
            },
            ensure_ascii=False,
        )
        + "\n"
        for position, (file, location, matched) in zip(
            found.removed.tolist(), found.matches, strict=True
        )
    ]
    with atomic_path(Path(path)) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")
