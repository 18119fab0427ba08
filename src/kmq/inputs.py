"""Several inputs read as one pool: ``kmq select a.jsonl b.parquet …``, or a folder of JSON
arrays (``*.json``, read in name order).

Each file is read on its own (its own format detection; ``--format`` and the field flags apply
to every file) and the valid rows are concatenated in the order the files are given:

- a row's *source* is its own (``--source-field``, or the ``source`` field) or, when it has
  none, the file's name without its suffixes (``data/alpaca.jsonl.gz`` → ``alpaca``);
- ids stay unique: an id that occurs in more than one file gets that file's name and a colon
  in front wherever it occurs (``alpaca:row-3``, ``dolly:row-3``); ids found in one file only
  are kept as they are;
- a row's index (the ``index`` column of ``selection.parquet``) is its position in the
  concatenation of the files' records, rejected records included;
- ``native`` output writes every picked record as read, one JSON line each (the files need not
  share a format); the manifest's ``input.files`` lists each file with its sha256, format and
  rows, and ``input.sha256`` hashes those.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from kmq.errors import KmqError


def input_name(path: str | Path) -> str:
    """A file's name without its suffixes: what its rows' source defaults to."""
    name = Path(path).name
    return name.split(".", 1)[0] or name


def is_json_folder(path: Any) -> bool:
    """Whether ``path`` is a folder of JSON arrays (``*.json``) and holds no shards."""
    if not isinstance(path, str | os.PathLike):
        return False
    folder = Path(path)
    if not folder.is_dir():
        return False
    names = [p.name.lower() for p in folder.iterdir() if p.is_file()]
    shards = (".jsonl", ".jsonl.gz", ".ndjson", ".parquet", ".parquet.gz")
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")  # save_to_disk folders
    return (
        any(n.endswith(".json") for n in names)
        and not any(n.endswith(shards) for n in names)
        and not any(n in markers for n in names)
    )


def input_files(value: Any) -> list[str] | None:
    """The files of an input that is several of them: a list or tuple of paths, or a folder of
    JSON arrays; None for one input (a path, or records in memory)."""
    if (
        isinstance(value, list | tuple)
        and value
        and all(isinstance(v, str | os.PathLike) for v in value)
    ):
        return [os.fspath(v) for v in value]
    if is_json_folder(value):
        folder = Path(value)
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(".json"))
        return [str(p) for p in files]
    return None


def load_several(files: Sequence[str], load: Callable[[str], Any]) -> Any:
    """One :class:`~kmq.formats.LoadedPool` of ``files`` (see the module docstring), each
    read by ``load``."""
    names = [input_name(f) for f in files]
    twice = sorted(name for name, n in Counter(names).items() if n > 1)
    if twice:
        raise KmqError(
            f"two inputs have the same name {twice[0]!r} (the default source of their rows): "
            "rename one of them"
        )
    pools = [load(f) for f in files]
    seen = Counter(id_ for pool in pools for id_ in {ex.id for ex in pool.examples})
    shared = {id_ for id_, n in seen.items() if n > 1}
    examples, rejects, repairs, quality, parts = [], [], [], [], []
    offset = 0
    for name, pool in zip(names, pools, strict=True):
        for ex in pool.examples:
            examples.append(
                replace(
                    ex,
                    id=f"{name}:{ex.id}" if ex.id in shared else ex.id,
                    row=offset + ex.row,
                    source=ex.source if ex.source is not None else name,
                )
            )
        rejects.extend(pool.rejects)
        repairs.extend(pool.repairs)
        if pool.quality is not None:
            quality.append(pool.quality)
        parts.append(
            {
                "path": str(pool.path.resolve()),
                "sha256": pool.sha256,
                "kind": pool.file_kind,
                "format": pool.format,
                "records": pool.n_records,
                "valid": len(pool.examples),
                "source": name,
            }
        )
        offset += pool.n_records
    digest = hashlib.sha256("".join(p["sha256"] for p in parts).encode()).hexdigest()
    formats = sorted({p["format"] for p in parts})
    return replace(
        pools[0],
        path=Path(f"<{len(files)} inputs>"),
        file_kind="several",
        compressed=False,
        format="+".join(formats),
        examples=examples,
        rejects=rejects,
        n_records=offset,
        sha256=digest,
        quality=np.concatenate(quality) if len(quality) == len(pools) else None,
        repairs=repairs,
        parts=parts,
    )
