"""Exact de-duplication: rows whose normalised conversation is the same as an earlier row's.

On by default (``--keep-duplicates`` turns it off), before selection: nearly free, and a pool
with copies otherwise spends budget on them. A row's key is the 128-bit BLAKE2b digest of its
conversation, every turn as ``role`` + text, each text normalised: Unicode NFKC, case folded,
runs of whitespace made one space, stripped. So rows that differ only in case, spacing or
Unicode form are duplicates; rows with the same prompt and different responses are not. The
first row of each group (in input order) is kept; every other row is removed and recorded with
its kept twin. ``--dedup EPS`` (SemDeDup) is the separate, semantic pass.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kmq.atomic import atomic_path
from kmq.examples import Example

DUPLICATES = "duplicates.jsonl"
KEY_DTYPE = np.dtype("S16")
_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """NFKC, case folded, whitespace runs made one space, stripped."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def text_key(example: Example) -> bytes:
    """16-byte digest of the normalised conversation (roles included)."""
    digest = hashlib.blake2b(digest_size=KEY_DTYPE.itemsize)
    for message in example.messages:
        digest.update(f"{message.role}\0{normalize_text(message.content)}\0".encode())
    return digest.digest()


@dataclass(frozen=True)
class ExactDuplicates:
    """Positions (rows of the valid pool) removed as duplicates, each with its kept twin."""

    removed: np.ndarray  # ascending
    twin: np.ndarray  # the first row with the same key, for each removed row

    def mask(self, n: int) -> np.ndarray:
        """Boolean mask over ``n`` rows, true where a row was removed."""
        out = np.zeros(n, dtype=bool)
        out[self.removed] = True
        return out


def find_duplicates(keys: np.ndarray) -> ExactDuplicates:
    """Every row whose key an earlier row has, and that earlier (first) row."""
    keys = np.asarray(keys, dtype=KEY_DTYPE)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    twin = first[inverse.reshape(-1)]
    removed = np.flatnonzero(twin != np.arange(len(keys)))
    return ExactDuplicates(removed=removed, twin=twin[removed])


def exact_duplicates(examples: Sequence[Example]) -> ExactDuplicates:
    """:func:`find_duplicates` over the examples' :func:`text_key`."""
    keys = np.array([text_key(example) for example in examples], dtype=KEY_DTYPE)
    return find_duplicates(keys)


def write_duplicates(
    path: Path, found: ExactDuplicates, rows: np.ndarray, ids: Sequence[str]
) -> None:
    """One line per removed row: its input row and id, and its kept twin's. ``rows`` and
    ``ids`` give each pool position's input row and id."""
    lines = [
        json.dumps(
            {
                "index": int(rows[r]),
                "id": ids[r],
                "twin_index": int(rows[t]),
                "twin_id": ids[t],
            },
            ensure_ascii=False,
        )
        + "\n"
        for r, t in zip(found.removed.tolist(), found.twin.tolist(), strict=True)
    ]
    with atomic_path(Path(path)) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")
