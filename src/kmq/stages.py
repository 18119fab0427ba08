"""Steps of :func:`kmq.pipeline.select_file` that both kinds of pool (:mod:`kmq.pools`) run
the same way: the ``--exclude`` list, the feasibility checks before any embedding, the text
cap and the checks of the vectors."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kmq.config import SelectConfig, input_label, resolve_budget
from kmq.errors import KmqError, ParameterError, Reject
from kmq.exact import ExactDuplicates
from kmq.formats import write_rejects
from kmq.outdir import staged
from kmq.outputs import REJECTS

log = logging.getLogger("kmq")

# Characters of a row's text that are embedded at most (about 12,500 tokens, ~50 MiniLM
# windows); the longest row of the 71k-row mix pool has 26,253.
EMBED_MAX_CHARS = 50_000


def read_exclude(path: Path) -> list[str]:
    """Ids never to pick: a selection table (Parquet), a JSON array or JSONL of ids or of
    objects with an ``id``, or plain text with one id per line. A JSON object is refused (it
    holds no list of ids kmq could read without guessing)."""
    if not path.exists():
        raise ParameterError("exclude", f"{{param}} file not found: {path}")
    if not path.is_file():
        raise ParameterError("exclude", f"{{param}} {path} is a folder; give a file of ids")
    if path.suffix == ".parquet":
        try:
            names = pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as exc:
            raise ParameterError(
                "exclude", f"{{param}} {path}: not a readable Parquet file ({exc})"
            ) from None
        if "id" not in names:
            raise ParameterError(
                "exclude", f"{{param}} {path}: no 'id' column (it has {', '.join(names) or 'none'})"
            )
        return [str(v) for v in pq.read_table(path, columns=["id"]).column("id").to_pylist()]
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ParameterError(
            "exclude", f"{{param}} {path}: not UTF-8 text (byte {exc.start})"
        ) from None
    if path.suffix == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ParameterError(
                "exclude",
                f"{{param}} {path}, line {exc.lineno} column {exc.colno}: not valid JSON "
                f"({exc.msg})",
            ) from None
        if not isinstance(items, list):
            raise ParameterError(
                "exclude",
                f"{{param}} {path}: a JSON {json_kind(items)}, expected an array of ids "
                '(["a", "b"]) or of objects with an "id"',
            )
        return exclude_ids(path, "item", list(enumerate(items, start=1)))
    if path.suffix == ".jsonl":
        lines = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                lines.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ParameterError(
                    "exclude", f"{{param}} {path}, line {number}: not valid JSON ({exc.msg})"
                ) from None
        return exclude_ids(path, "line", lines)
    return [line.strip() for line in text.splitlines() if line.strip()]


def json_kind(value: Any) -> str:
    """What JSON calls the type of a parsed ``value``."""
    kinds = {dict: "object", str: "string", bool: "boolean", int: "number", float: "number"}
    return kinds.get(type(value), "null" if value is None else type(value).__name__)


def exclude_ids(path: Path, unit: str, items: list[tuple[int, Any]]) -> list[str]:
    """The id of every (number, item): the item itself or its ``id`` field."""
    ids = []
    for number, item in items:
        value = item.get("id") if isinstance(item, dict) else item
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ParameterError(
                "exclude",
                f"{{param}} {path}, {unit} {number}: expected an id (a string, or an object "
                f"with 'id'), got {json.dumps(item)[:80]}",
            )
        ids.append(str(value))
    return ids


def nothing_valid(config: SelectConfig, rejects: Sequence[Reject]) -> NoReturn:
    """Stop a run whose input has no valid row; with rejects, ``--out`` holds only
    ``rejects.jsonl`` (every row and why), which the error names."""
    if not rejects:
        raise KmqError(f"{input_label(config.input)}: no valid rows to select from")
    with staged(config.out) as folder:
        write_rejects(rejects, folder / REJECTS)
    raise KmqError(
        f"{input_label(config.input)}: every row was rejected ({len(rejects)}), nothing to select; "
        f"each row and its reason are in {Path(config.out) / REJECTS}"
    )


def check_feasible(config: SelectConfig, n: int, budget: int, excluded: int) -> None:
    """Before any embedding: the budget fits the rows left, and k (or the k grid) the pool."""
    left = n - excluded
    if left == 0:
        raise ParameterError(
            "exclude",
            f"{{param}} {config.exclude} names every one of the {n} valid rows: "
            "nothing is left to select",
        )
    if budget > left:
        named = f" ({excluded} excluded by {{exclude}} {config.exclude})" if excluded else ""
        raise ParameterError(
            "budget",
            f"{{param}} {budget} exceeds the {left} rows left to select of {n}{named}",
            "exclude",
        )
    if not config.needs_clusters():
        return
    if config.k != "auto" and config.k > n:
        raise ParameterError(
            "k", f"{{param}} {config.k} exceeds the {n} valid rows (k-means needs k <= rows)"
        )
    if config.k == "auto" and config.k_grid and max(config.k_grid) > n:
        raise ParameterError(
            "k_grid", f"{{param}} {config.k_grid} has a k above the {n} valid rows"
        )


def exact_mask(duplicates: ExactDuplicates | None, n: int) -> np.ndarray:
    """Mask of the rows removed as exact duplicates (none when dedup is off), logged."""
    if duplicates is None:
        return np.zeros(n, dtype=bool)
    log.info("removed %d exact duplicates (kept their first copies)", len(duplicates.removed))
    return duplicates.mask(n)


def column_quality_info(column: str) -> dict[str, Any]:
    """The manifest's ``quality`` for scores read from a column (``--quality-field``)."""
    return {"scorer": "column", "column": column, "direction": "as given; higher = better"}


def cap_texts(texts: list[str], ids: Sequence[str]) -> list[str]:
    """``texts`` with each cut to its first :data:`EMBED_MAX_CHARS` characters (a warning names
    how many were cut and the longest), so one huge row cannot take hours and gigabytes."""
    long = [i for i, text in enumerate(texts) if len(text) > EMBED_MAX_CHARS]
    if not long:
        return texts
    longest = max(long, key=lambda i: len(texts[i]))
    log.warning(
        "%d rows are longer than %s characters: only their first %s are embedded "
        "(the longest: id %s, %s characters)",
        len(long),
        f"{EMBED_MAX_CHARS:,}",
        f"{EMBED_MAX_CHARS:,}",
        ids[longest],
        f"{len(texts[longest]):,}",
    )
    return [text[:EMBED_MAX_CHARS] for text in texts]


def check_vectors(vectors: np.ndarray, encoder: str, cache_dir: str | None) -> None:
    """Refuse vectors that cannot be clustered: any NaN/inf, or every row all-zero (an API
    that answers zeros); a few all-zero rows only warn (e.g. a static model that knows none of
    a text's tokens)."""
    n = len(vectors)
    where = f"{{param}} {cache_dir}" if cache_dir else "the kmq cache ($KMQ_CACHE_DIR)"
    fix = f"; they may be cached in {where}: remove that entry or give another {{param}}"
    broken = n - int(np.isfinite(vectors).all(axis=1).sum())
    if broken:
        raise ParameterError(
            "cache_dir",
            f"the encoder {encoder} returned {broken} of {n} vectors with NaN/inf{fix}",
        )
    zero = int((~np.any(vectors != 0, axis=1)).sum())
    if zero == n:
        raise ParameterError(
            "cache_dir",
            f"the encoder {encoder} returned an all-zero vector for every one of the {n} rows: "
            f"nothing to cluster{fix}",
        )
    if zero:
        log.warning("the encoder %s returned %d all-zero vectors of %d", encoder, zero, n)


def exclusion(ids: list[str], path: str | None) -> tuple[np.ndarray, int]:
    """Mask of the pool rows named in ``--exclude``, and how many named ids are not in the pool."""
    mask = np.zeros(len(ids), dtype=bool)
    if path is None:
        return mask, 0
    wanted = set(read_exclude(Path(path)))
    position = {id_: i for i, id_ in enumerate(ids)}
    hits = [position[w] for w in wanted if w in position]
    mask[hits] = True
    unknown = len(wanted) - len(hits)
    if unknown:
        log.warning("%d ids in %s are not in the pool", unknown, path)
    return mask, unknown


@dataclass
class Exclusions:
    """What a run leaves out before it selects: ``mask``, the rows never to pick (named by
    ``--exclude``, exact duplicates); how many ``--exclude`` named in and out of the pool; the
    exact duplicates found (None when kept); and the budget in rows."""

    budget: int
    mask: np.ndarray
    excluded: int
    not_in_pool: int
    duplicates: ExactDuplicates | None

    def counts(self, **more: int | None) -> dict[str, int | None]:
        """The manifest's counts of the rows left out (``more``: those one path adds)."""
        found = None if self.duplicates is None else len(self.duplicates.removed)
        return {
            "excluded": self.excluded,
            "excluded_not_in_pool": self.not_in_pool,
            "deduplicated": 0,
            "exact_duplicates": found,
        } | more


def exclusions(
    config: SelectConfig, ids: list[str], find_duplicates: Callable[[], ExactDuplicates]
) -> Exclusions:
    """The budget in rows and the rows left out: those ``--exclude`` names (the budget checked
    against the rest before any other work), then the exact duplicates ``find_duplicates``
    finds unless ``keep_duplicates``."""
    n = len(ids)
    budget = resolve_budget(config.budget, n)
    mask, not_in_pool = exclusion(ids, config.exclude)
    excluded = int(mask.sum())  # by --exclude; the masks below are counted apart
    check_feasible(config, n, budget, excluded)
    duplicates = None if config.keep_duplicates else find_duplicates()
    mask |= exact_mask(duplicates, n)
    return Exclusions(budget, mask, excluded, not_in_pool, duplicates)
