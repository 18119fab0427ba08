"""Write the selected rows in the layout a trainer reads: ``--output-format``.

``native`` copies the rows unchanged in the input's own format (:func:`kmq.formats.
write_selected`). The other formats write the conversation kmq read (every row normalised to
role/content turns, repairs applied), one record per row in input order, with the row's ``id``
and, when it has one, its ``source``:

- ``messages``: ``{"id", "source", "messages": [{"role", "content"}, ...]}`` (roles ``system``,
  ``user``, ``assistant``, ``tool``), what TRL's ``SFTTrainer`` and chat templates take as is;
- ``sharegpt``: ``{"id", "source", "conversations": [{"from", "value"}, ...]}`` with ``from``
  ``system``, ``human``, ``gpt`` or ``observation`` (LLaMA-Factory's names);
- ``alpaca``: ``{"id", "source", "instruction", "input", "output", "system", "history"}``: the
  last user turn and its answer, the turns before them as ``[user, assistant]`` pairs in
  ``history``, a leading system turn in ``system``. ``instruction`` holds the whole user turn
  (for Alpaca inputs, instruction and input joined as kmq read them) and ``input`` is empty.
  A conversation that is not alternating user/assistant pairs (tool turns, two user turns in a
  row, a turn after the last answer) has no Alpaca form: it is an error naming the row.

The file follows the input: ``selected.parquet`` for Parquet, a ``selected/`` save_to_disk
folder for Hugging Face datasets, else ``selected.jsonl`` (``.gz`` when the input is gzipped).
Records given in memory have no file to copy, and several inputs (:mod:`kmq.inputs`) need not
share a format: ``native`` writes their records as read, as JSON lines.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kmq._imports import require
from kmq.atomic import atomic_path
from kmq.errors import KmqError, ParameterError
from kmq.examples import Example, Message
from kmq.formats import LoadedPool, save_dataset, write_selected

OUTPUT_FORMATS: tuple[str, ...] = ("native", "messages", "sharegpt", "alpaca")
SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}


def check_output_format(output_format: str) -> None:
    if output_format not in OUTPUT_FORMATS:
        raise ParameterError(
            "output_format",
            f"{{param}} must be one of {', '.join(OUTPUT_FORMATS)}; got {output_format!r}",
        )


def write_output(pool: LoadedPool, rows: Sequence[int], out_dir: Path, output_format: str) -> Path:
    """Write the examples at ``rows`` (0-based record indices) in ``output_format``; returns the
    file (or folder) written."""
    check_output_format(output_format)
    if output_format == "native" and pool.file_kind not in ("memory", "several"):
        return write_selected(pool, rows, out_dir)
    wanted = set(int(row) for row in rows)
    records = [
        dict(ex.fields) if output_format == "native" else to_record(ex, output_format)
        for ex in pool.examples
        if ex.row in wanted
    ]
    if len(records) != len(wanted):
        raise KmqError(
            f"{pool.path}: {len(wanted) - len(records)} of the rows to write are not valid "
            "examples of this pool (rejected or out of range)"
        )
    return write_records(records, out_dir, pool.file_kind, compressed=pool.compressed)


def to_record(example: Example, output_format: str) -> dict[str, Any]:
    """One example as a record of ``output_format`` (not ``native``)."""
    check_output_format(output_format)
    if output_format == "native":
        raise KmqError("native output copies the input rows; there is no record to build")
    head: dict[str, Any] = {"id": example.id}
    if example.source is not None:
        head["source"] = example.source
    return head | _BUILDERS[output_format](example)


def _messages(example: Example) -> dict[str, Any]:
    return {"messages": [{"role": m.role, "content": m.content} for m in example.messages]}


def _sharegpt(example: Example) -> dict[str, Any]:
    turns = [{"from": SHAREGPT_ROLES[m.role], "value": m.content} for m in example.messages]
    return {"conversations": turns}


def _alpaca(example: Example) -> dict[str, Any]:
    turns: list[Message] = list(example.messages)
    system = turns.pop(0).content if turns and turns[0].role == "system" else ""
    roles = [m.role for m in turns]
    if len(turns) % 2 or roles != ["user", "assistant"] * (len(turns) // 2):
        raise ParameterError(
            "output_format",
            f"row {example.row} (id {example.id!r}) has no Alpaca form: its turns are "
            f"{', '.join(m.role for m in example.messages)}, not an optional system turn and "
            "then user/assistant pairs; write it with {param} messages or sharegpt",
        )
    pairs = [[turns[i].content, turns[i + 1].content] for i in range(0, len(turns), 2)]
    instruction, output = pairs.pop()
    return {
        "instruction": instruction,
        "input": "",
        "output": output,
        "system": system,
        "history": pairs,
    }


_BUILDERS: dict[str, Callable[[Example], dict[str, Any]]] = {
    "messages": _messages,
    "sharegpt": _sharegpt,
    "alpaca": _alpaca,
}


def write_records(
    records: list[dict[str, Any]], out_dir: Path, file_kind: str, *, compressed: bool
) -> Path:
    """``records`` as ``selected.parquet`` (Parquet input), a ``selected/`` save_to_disk folder
    (Hugging Face input) or ``selected.jsonl[.gz]`` (anything else), written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if file_kind == "parquet":
        target = out_dir / "selected.parquet"
        with atomic_path(target) as tmp:
            pq.write_table(pa.Table.from_pylist(records), tmp)
        return target
    if file_kind.startswith("hf-"):
        datasets = require("datasets")
        return save_dataset(datasets.Dataset.from_list(records), out_dir)
    target = out_dir / ("selected.jsonl.gz" if compressed else "selected.jsonl")
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    with atomic_path(target) as tmp:
        tmp.write_bytes(gzip.compress(lines, mtime=0) if compressed else lines)
    return target
