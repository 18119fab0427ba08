"""Read instruction pools in their native formats; write selected rows back unchanged.

Files: JSON Lines (``.jsonl``/``.ndjson``), JSON arrays (``.json``), Parquet, CSV (each
optionally gzipped), Hugging Face ``save_to_disk`` folders and Hub datasets (``owner/name``).
Records: OpenAI-style ``messages``, ShareGPT, Alpaca, prompt/completion, LIMA, self-instruct, or
fields named by a :class:`FieldMap`. Every record becomes an :class:`Example` or a
:class:`Reject` that names the file, the line or row, and the field at fault.

Turn text is kept exactly as read. User and system turns must hold text; assistant and tool
turns may be empty (real pools have empty responses).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import os
import re
import shlex
import shutil
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from kmq._imports import require
from kmq.atomic import atomic_path
from kmq.errors import FormatError, InputError, KmqError, ParameterError, Reject
from kmq.examples import Example, Message, Role
from kmq.inputs import input_files, load_several
from kmq.validate import Repair, describe_drop, invalid_rows_error, leading_replies

FORMATS: tuple[str, ...] = (
    "messages",
    "sharegpt",
    "alpaca",
    "prompt-completion",
    "lima",
    "self-instruct",
    "mapped",
)
DETECT_SAMPLE = 50  # records looked at to detect the format

_SUFFIX_KINDS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}
_SHARD_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
_HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_GZIP_MAGIC = b"\x1f\x8b"
_BATCH = 1024

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "function_call": "assistant",
    "tool": "tool",
    "observation": "tool",
    "function": "tool",
}
_FORMAT_KEYS = {
    "messages": '"messages": [{"role", "content"}, ...]',
    "sharegpt": '"conversations": [{"from", "value"}, ...]',
    "alpaca": '"instruction" + "output" or "response" (optional "input", "system", "history")',
    "prompt-completion": '"prompt" + "completion" or "response"',
    "lima": '"conversations": ["user text", "assistant text", ...]',
    "self-instruct": '"instruction" + "instances": [{"input", "output"}]',
    "mapped": "fields you name: --prompt-field and --response-field, or --messages-field",
}
_CONTAINERS = {"messages": "messages", "sharegpt": "conversations", "lima": "conversations"}
_PROMPT_NAMES = ("prompt", "question", "query", "instruction", "input", "problem", "text", "user")
_RESPONSE_NAMES = (
    "response",
    "answer",
    "output",
    "completion",
    "target",
    "solution",
    "reply",
    "assistant",
    "label",
)
_NOT_TEXT = ("id", "source")
_PAIR_ROLES: tuple[Role, Role] = ("user", "assistant")


@dataclass(frozen=True)
class FieldMap:
    """Which record fields hold what, for records in no known format (all optional)."""

    messages_field: str | None = None  # OpenAI-style messages or ShareGPT turns
    prompt_field: str | None = None
    response_field: str | None = None
    system_field: str | None = None
    id_field: str | None = None  # default: "id" if present, else "row-<index>"
    source_field: str | None = None  # default: "source" if it is a string

    def is_empty(self) -> bool:
        return all(value is None for value in vars(self).values())

    def is_mapped(self) -> bool:
        """Whether the turns come from named fields (format ``mapped``)."""
        return bool(self.messages_field or self.prompt_field or self.response_field)


@dataclass
class LoadedPool:
    """A pool as read: its valid examples in input order, the rejects, and where it came from."""

    path: Path
    file_kind: str  # "jsonl" | "json" | "parquet" | "csv" | "hf-disk" | "hf-hub"
    compressed: bool
    format: str
    examples: list[Example] = field(repr=False)
    rejects: list[Reject] = field(repr=False)
    n_records: int  # records read, valid + rejected
    sha256: str
    quality: npt.NDArray[np.float64] | None = field(default=None, repr=False, compare=False)
    repairs: list[Repair] = field(default_factory=list, repr=False, compare=False)
    data: Any = field(default=None, repr=False, compare=False)  # in-memory input, as given
    parts: list[dict[str, Any]] | None = field(default=None, compare=False)  # several inputs


@dataclass(frozen=True, slots=True)
class _Record:
    """One record as read, or why it could not be read."""

    row: int
    location: str
    value: Any = None
    problem: str | None = None


class _Invalid(Exception):
    """A record's field is at fault (internal: becomes a :class:`Reject`)."""

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


_Turn = tuple[Message, str]  # a message and the field path it came from


# ---------------------------------------------------------------------------------------------
# load_pool


def load_pool(
    path: str | Path | Any,
    *,
    fields: FieldMap | None = None,
    format: str | None = None,
    on_invalid: Literal["error", "skip"] = "error",
    quality_field: str | None = None,
) -> LoadedPool:
    """Read a pool file, folder or Hub dataset, or records in memory, into :class:`Example`
    records.

    In memory (file kind ``memory``): a list of record dicts, a ``datasets.Dataset``, a pandas
    ``DataFrame`` or a pyarrow ``Table``, read with the same detection and field mapping as a
    file; a reject names ``<records>, row N`` (0-based), and ``LoadedPool.data`` is the input.
    Several files (a list of paths, or a folder of JSON arrays) are read as one pool by
    :func:`kmq.inputs.load_several`.
    Every record is checked. ``on_invalid="error"`` then raises one :class:`InputError` that
    names the first bad record and counts them all by reason; ``"skip"`` keeps every reject in
    ``LoadedPool.rejects``. A file that cannot be read as a whole always raises. Repaired rows
    (see :mod:`kmq.validate`) are kept and listed in ``LoadedPool.repairs``.
    """
    fields = fields or FieldMap()
    _check_options(fields, format, on_invalid)
    files = input_files(path)
    if files is not None:
        return load_several(
            files,
            lambda file: load_pool(
                file,
                fields=fields,
                format=format,
                on_invalid=on_invalid,
                quality_field=quality_field,
            ),
        )
    if not isinstance(path, str | os.PathLike):
        return _load_memory(path, fields, format, on_invalid, quality_field)
    source, kind, compressed = _resolve(os.fspath(path))
    with _read_guard(source):
        dataset = _hf_dataset(source, kind) if kind.startswith("hf-") else None
        records = _read_records(source, kind, compressed, dataset)
        builder, records = _start(source, records, kind, fields, format, quality_field, on_invalid)
        for record in records:
            builder.add(record)
        builder.finish()
        digest = _digest(source, kind, dataset)
    return LoadedPool(
        path=source,
        file_kind=kind,
        compressed=compressed,
        format=builder.format,
        examples=builder.examples,
        rejects=builder.rejects,
        n_records=builder.n_records,
        sha256=digest,
        quality=builder.quality_array(),
        repairs=builder.repairs,
    )


def read_raw(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(location, record) of every record of a JSONL / JSON / CSV / Parquet file (optionally
    gzipped) or save_to_disk folder, as read, with no format applied; a record that cannot be
    read raises :class:`InputError` naming it."""
    source, kind, compressed = _resolve(os.fspath(path))
    with _read_guard(source):
        dataset = _hf_dataset(source, kind) if kind.startswith("hf-") else None
        for record in _read_records(source, kind, compressed, dataset):
            if record.problem:
                raise InputError(Reject(str(source), record.location, None, record.problem))
            yield record.location, record.value


MEMORY = Path("<records>")  # the "path" of an in-memory pool


def _load_memory(
    data: Any, fields: FieldMap, format: str | None, on_invalid: str, quality_field: str | None
) -> LoadedPool:
    batches = _memory_batches(data)
    records = (
        _arrow_records(batches)
        if batches is not None
        else (_Record(row, f"row {row}", value) for row, value in enumerate(data))
    )
    builder, records = _start(MEMORY, records, "memory", fields, format, quality_field, on_invalid)
    digest = hashlib.sha256()
    for record in records:
        builder.add(record)
        digest.update(json.dumps(record.value, sort_keys=True, default=str).encode() + b"\n")
    builder.finish()
    return LoadedPool(
        path=MEMORY,
        file_kind="memory",
        compressed=False,
        format=builder.format,
        examples=builder.examples,
        rejects=builder.rejects,
        n_records=builder.n_records,
        sha256=digest.hexdigest(),
        quality=builder.quality_array(),
        repairs=builder.repairs,
        data=data,
    )


def _memory_batches(data: Any) -> Iterable[pa.RecordBatch | pa.Table] | None:
    """``data`` (a Dataset, DataFrame or Table) as Arrow batches, or ``None`` for a list of
    records; anything else is an error naming what is accepted."""
    if isinstance(data, pa.Table):
        return data.to_batches(max_chunksize=_BATCH)
    module = type(data).__module__.split(".")[0]
    if module == "datasets":
        if not hasattr(data, "select"):
            raise KmqError(
                f"a {type(data).__name__} holds several splits ({', '.join(data)}); "
                "pass one of them, e.g. dataset['train']"
            )
        return cast(Iterable[pa.Table], data.with_format("arrow").iter(batch_size=_BATCH))
    if module == "pandas":
        return pa.Table.from_pandas(data, preserve_index=False).to_batches(max_chunksize=_BATCH)
    if isinstance(data, list | tuple):
        return None
    raise KmqError(
        f"cannot read a {type(data).__name__} as a pool: pass a path, a list of records "
        "(dicts), a datasets.Dataset, a pandas DataFrame or a pyarrow Table"
    )


class ExampleStream:
    """A pool read one record at a time, for pools larger than memory.

    ``path`` is a JSONL or Parquet file (optionally gzipped) or a folder of such shards, read in
    name order as one pool: record indices run on across the shards and a reject names the
    folder and ``<shard>, line N`` (or ``row N``). Records are parsed, detected and checked
    exactly as :func:`load_pool` does. Iterating yields ``(example, quality)`` of every valid
    record (quality ``None`` without ``quality_field``) and reads the input again each time;
    after a full iteration ``format``, ``rejects``, ``repairs`` and ``n_records`` hold what it
    read. With ``on_invalid="error"`` the iteration raises at its end, once every record has
    been checked.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        fields: FieldMap | None = None,
        format: str | None = None,
        on_invalid: Literal["error", "skip"] = "error",
        quality_field: str | None = None,
    ) -> None:
        self.fields = fields or FieldMap()
        _check_options(self.fields, format, on_invalid)
        self.path, self.file_kind, self.files = _stream_files(Path(path))
        self.compressed = self.files[0][1]
        self.requested_format = format
        self.on_invalid = on_invalid
        self.quality_field = quality_field
        self.format = format or "mapped"
        self.rejects: list[Reject] = []
        self.repairs: list[Repair] = []
        self.n_records = 0

    def __iter__(self) -> Iterator[tuple[Example, float | None]]:
        builder, records = _start(
            self.path,
            self._records(),
            self.file_kind,
            self.fields,
            self.requested_format,
            self.quality_field,
            self.on_invalid,
        )
        self.format = builder.format
        for record in records:
            parsed = builder.parse(record)
            if parsed is not None:
                yield parsed
        self.rejects, self.n_records = builder.rejects, builder.n_records
        self.repairs = builder.repairs
        builder.finish()

    def digest(self) -> str:
        """sha256 of the file; for a folder, of its shards in name order, names and sizes
        included."""
        if self.path.is_file():
            return _files_digest({"": self.path})
        return _files_digest({file.name: file for file, _ in self.files})

    def _records(self) -> Iterator[_Record]:
        offset = 0
        for file, compressed in self.files:
            with _read_guard(file):
                records = _read_records(file, self.file_kind, compressed, None)
                if file == self.path:
                    yield from records
                    return
                count = 0
                for record in records:
                    count += 1
                    location = f"{file.name}, {record.location}"
                    yield _Record(offset + record.row, location, record.value, record.problem)
                offset += count

    def raw_blocks(self) -> Iterator[tuple[int, list[bytes] | pa.RecordBatch]]:
        """The records as stored, in blocks, each with the index of its first record: lists of
        JSONL lines (bytes with their line ends), or Parquet record batches."""
        offset = 0
        for file, compressed in self.files:
            with _read_guard(file):
                if self.file_kind == "parquet":
                    for batch in _parquet_file(file, compressed).iter_batches(batch_size=_BATCH):
                        yield offset, batch
                        offset += batch.num_rows
                    continue
                with _open_binary(file, compressed) as fh:
                    lines = (line for _, line in _nonblank_lines(fh))
                    while block := list(islice(lines, _BATCH)):
                        yield offset, block
                        offset += len(block)


def is_shard_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder but not a Hugging Face save_to_disk one: a folder of shards,
    which only :class:`ExampleStream` reads."""
    folder = Path(path)
    return folder.is_dir() and not any((folder / marker).is_file() for marker in _HF_MARKERS)


def _stream_files(path: Path) -> tuple[Path, str, list[tuple[Path, bool]]]:
    """(path, kind, [(file, gzipped), ...]) of a JSONL/Parquet file or a folder of shards."""
    if path.is_dir():
        if any((path / marker).is_file() for marker in _HF_MARKERS):
            raise ParameterError(
                "streaming",
                f"{path}: a Hugging Face save_to_disk folder; streaming reads JSONL or Parquet "
                "files (one, or a folder of shards): export it with dataset.to_json(...) or "
                "dataset.to_parquet(...), or drop {param}",
            )
        files = sorted(
            p
            for p in path.iterdir()
            if p.is_file() and not p.name.startswith(".") and _plain_suffix(p) in _SHARD_KINDS
        )
        if not files:
            raise KmqError(
                f"{path}: a folder with neither shards to read (*.jsonl, *.ndjson or *.parquet, "
                f"each optionally .gz) nor a Hugging Face save_to_disk dataset "
                f"({', '.join(_HF_MARKERS)})"
            )
        kinds = {_SHARD_KINDS[_plain_suffix(p)] for p in files}
        if len(kinds) > 1:
            raise KmqError(f"{path}: the folder mixes JSONL and Parquet shards; keep one kind")
        with _read_guard(path):
            return path, kinds.pop(), [(p, _is_gzip(p)) for p in files]
    source, kind, compressed = _resolve(path)
    if kind not in _SHARD_KINDS.values():
        raise ParameterError(
            "streaming",
            f"{source}: streaming reads JSONL or Parquet files (one, or a folder of shards), "
            f"not {kind}; convert it, or drop {{param}}",
        )
    return source, kind, [(source, compressed)]


def _start(
    source: Path,
    records: Iterator[_Record],
    kind: str,
    fields: FieldMap,
    format: str | None,
    quality_field: str | None,
    on_invalid: str,
) -> tuple[_Builder, Iterator[_Record]]:
    """A builder for the format of ``records`` (named, or detected from the first ones) and
    every record, the looked-at ones included."""
    head, records = _peek(records)
    if not head:
        raise KmqError(f"{source}: empty (no records)")
    detected = format is None and not fields.is_mapped()
    fmt = _detect(source, head) if detected else format or "mapped"
    builder = _Builder(str(source), fmt, fields, quality_field, kind, on_invalid, detected=detected)
    return builder, records


def _check_options(fields: FieldMap, fmt: str | None, on_invalid: str) -> None:
    if on_invalid not in ("error", "skip"):
        raise KmqError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    if fmt is not None and fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if fields.messages_field and (fields.prompt_field or fields.response_field):
        raise ParameterError(
            "messages_field",
            "{param} cannot be combined with {prompt_field}/{response_field}",
            "prompt_field",
            "response_field",
        )
    if bool(fields.prompt_field) != bool(fields.response_field):
        raise ParameterError(
            "prompt_field", "{param} and {response_field} must be given together", "response_field"
        )
    if fmt == "mapped" and not fields.is_mapped():
        raise ParameterError(
            "format",
            "{param} 'mapped' needs {prompt_field} and {response_field}, or {messages_field}",
            "prompt_field",
            "response_field",
            "messages_field",
        )
    if fields.is_mapped() and fmt not in (None, "mapped"):
        raise ParameterError(
            "format",
            f"a field mapping ({{messages_field}}, {{prompt_field}}, {{response_field}}) reads "
            f"records as format 'mapped', not {fmt!r}; drop {{param}} or the mapping",
            "messages_field",
            "prompt_field",
            "response_field",
        )


@contextmanager
def _read_guard(path: Path) -> Iterator[None]:
    try:
        yield
    except (OSError, EOFError, zlib.error, pa.ArrowException) as exc:
        raise KmqError(f"{path}: cannot read the file: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# what the path is


def _resolve(target: str | Path) -> tuple[Path, str, bool]:
    """(path, file kind, gzipped) of a file, a save_to_disk folder or a Hub dataset name."""
    path = Path(target)
    if path.is_dir():
        return path, _dir_kind(path), False
    if path.is_file():
        with _read_guard(path):
            compressed = _is_gzip(path)
            kind = _suffix_kind(path)
            if kind == "json" and _first_byte(path, compressed) == b"{":
                kind = "jsonl"  # JSON Lines in a .json file
        return path, kind, compressed
    if _HUB_NAME.fullmatch(str(target)) and not _has_data_suffix(path):
        return path, "hf-hub", False
    raise KmqError(f"{target}: no such file or directory")


def _dir_kind(path: Path) -> str:
    if any((path / marker).is_file() for marker in _HF_MARKERS):
        return "hf-disk"
    raise KmqError(
        f"{path}: a folder, but not a Hugging Face dataset saved with save_to_disk "
        f"(none of {', '.join(_HF_MARKERS)} in it)"
    )


def _has_data_suffix(path: Path) -> bool:
    return _plain_suffix(path) in _SUFFIX_KINDS


def _plain_suffix(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    return Path(name).suffix


def _suffix_kind(path: Path) -> str:
    suffix = _plain_suffix(path)
    if suffix not in _SUFFIX_KINDS:
        raise KmqError(
            f"{path}: unsupported file type {suffix or '(no suffix)'!r}; kmq reads "
            ".jsonl/.ndjson, .json, .parquet and .csv files (optionally .gz) and "
            "Hugging Face save_to_disk folders"
        )
    return _SUFFIX_KINDS[suffix]


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _open_binary(path: Path, compressed: bool) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if compressed else path.open("rb")


def _first_byte(path: Path, compressed: bool) -> bytes:
    """The first byte that is not whitespace or a byte-order mark (b"" for an empty file)."""
    with _open_binary(path, compressed) as fh:
        while chunk := fh.read(4096):
            stripped = chunk.lstrip().removeprefix(b"\xef\xbb\xbf").lstrip()
            if stripped:
                return stripped[:1]
    return b""


def _read_bytes(path: Path, compressed: bool) -> bytes:
    with _open_binary(path, compressed) as fh:
        return fh.read()


def _decode(path: Path, data: bytes, compressed: bool) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        where = f"byte offset {exc.start}" + (" (after gunzip)" if compressed else "")
        raise InputError(Reject(str(path), where, None, f"not valid UTF-8 ({exc.reason})")) from exc


# ---------------------------------------------------------------------------------------------
# reading records


def _read_records(path: Path, kind: str, compressed: bool, dataset: Any) -> Iterator[_Record]:
    if kind == "jsonl":
        return _jsonl_records(path, compressed)
    if kind == "json":
        return _json_records(path, compressed)
    if kind == "csv":
        return _csv_records(path, compressed)
    if kind == "parquet":
        return _arrow_records(_parquet_file(path, compressed).iter_batches(batch_size=_BATCH))
    return _arrow_records(dataset.with_format("arrow").iter(batch_size=_BATCH))


def _nonblank_lines(fh: io.BufferedIOBase) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, bytes with line end) of each line that is not blank."""
    for number, line in enumerate(fh, start=1):
        if line.strip():
            yield number, line


def _jsonl_records(path: Path, compressed: bool) -> Iterator[_Record]:
    with _open_binary(path, compressed) as fh:
        for row, (number, line) in enumerate(_nonblank_lines(fh)):
            yield _parse_line(line, row, f"line {number}")


def _parse_line(line: bytes, row: int, location: str) -> _Record:
    try:
        text = line.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        return _Record(row, location, problem=f"not valid UTF-8 (byte {exc.start} of the line)")
    try:
        return _Record(row, location, json.loads(text))
    except json.JSONDecodeError as exc:
        return _Record(row, location, problem=f"not valid JSON: {exc.msg} (column {exc.colno})")


def _json_records(path: Path, compressed: bool) -> Iterator[_Record]:
    text = _decode(path, _read_bytes(path, compressed), compressed)
    if not text.strip():
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise InputError(Reject(str(path), where, None, f"not valid JSON: {exc.msg}")) from exc
    if not isinstance(data, list):
        raise KmqError(
            f"{path}: expected a JSON array of records or JSON Lines, got a JSON {_json_type(data)}"
        )
    for row, value in enumerate(data):
        yield _Record(row, f"row {row}", value)


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, list[str], str]]:
    """(first line, values, raw text) of each CSV record, header first; blank lines skipped."""
    raw: list[str] = []

    def lines() -> Iterator[str]:
        for line in io.StringIO(text, newline=""):
            raw.append(line)
            yield line

    reader = csv.reader(lines(), strict=True)
    start = 1
    try:
        for values in reader:
            chunk = "".join(raw)
            raw.clear()
            if values:
                yield start, values, chunk
            start = reader.line_num + 1
    except csv.Error as exc:
        where = f"line {start}"  # where the record at fault starts
        raise InputError(Reject(str(path), where, None, f"not valid CSV: {exc}")) from exc


def _csv_records(path: Path, compressed: bool) -> Iterator[_Record]:
    rows = _csv_rows(path, _decode(path, _read_bytes(path, compressed), compressed))
    header = next(rows, None)
    if header is None:
        return
    names = header[1]
    for row, (line, values, _) in enumerate(rows):
        location = f"row {row} (line {line})"
        if len(values) == len(names):
            yield _Record(row, location, dict(zip(names, values, strict=True)))
        else:
            problem = f"{len(values)} values, but the header has {len(names)} columns"
            yield _Record(row, location, problem=problem)


def _parquet_file(path: Path, compressed: bool) -> pq.ParquetFile:
    return pq.ParquetFile(pa.BufferReader(_read_bytes(path, True)) if compressed else path)


def _arrow_records(batches: Iterable[pa.RecordBatch | pa.Table]) -> Iterator[_Record]:
    row = 0
    for batch in batches:
        for value in batch.to_pylist():
            yield _Record(row, f"row {row}", value)
            row += 1


def _hf_dataset(path: Path, kind: str) -> Any:
    """The ``datasets.Dataset`` of a save_to_disk folder or a Hub dataset (its train split)."""
    datasets = require("datasets")
    if kind == "hf-disk":
        return _pick_split(path, datasets.load_from_disk(str(path)), datasets.DatasetDict)
    try:
        return datasets.load_dataset(str(path), split="train")
    except Exception as exc:
        raise KmqError(
            f"{path}: not a local file or folder, and loading it from the Hugging Face Hub "
            f"failed ({type(exc).__name__}: {exc}). The network or the Hub may be unreachable, "
            "or the name may be wrong; local files and save_to_disk folders load offline."
        ) from exc


def _pick_split(path: Path, loaded: Any, dict_type: Any) -> Any:
    if not isinstance(loaded, dict_type):
        return loaded
    splits = list(loaded)
    if "train" in splits:
        return loaded["train"]
    if len(splits) == 1:
        return loaded[splits[0]]
    raise KmqError(
        f"{path}: a DatasetDict with splits {', '.join(splits)} and no 'train'; "
        "save the split to use on its own: dataset[split].save_to_disk(...)"
    )


def _peek(records: Iterator[_Record]) -> tuple[list[_Record], Iterator[_Record]]:
    """The first records, up to :data:`DETECT_SAMPLE` objects, and an iterator over all records."""
    head: list[_Record] = []
    objects = 0
    for record in records:
        head.append(record)
        objects += isinstance(record.value, dict)
        if objects == DETECT_SAMPLE:
            break
    return head, chain(head, records)


# ---------------------------------------------------------------------------------------------
# format detection


def _matches(record: Mapping[str, Any]) -> dict[str, bool]:
    conversations = record.get("conversations")
    lima = (
        isinstance(conversations, list)
        and bool(conversations)
        and isinstance(conversations[0], str)
    )
    return {
        "messages": "messages" in record,
        "sharegpt": "conversations" in record and not lima,
        "alpaca": "instruction" in record and ("output" in record or "response" in record),
        "prompt-completion": "prompt" in record
        and ("completion" in record or "response" in record),
        "lima": lima,
        "self-instruct": "instruction" in record and "instances" in record,
    }


def _detect(path: Path, head: list[_Record]) -> str:
    """The format most of the first records match (ties go to the earlier one in FORMATS)."""
    objects = [record for record in head if isinstance(record.value, dict)]
    if not objects:
        first = head[0]
        reason = first.problem or f"not a JSON object (got {_json_type(first.value)})"
        raise InputError(
            Reject(str(path), first.location, None, reason, first.row),
            hint="no record in the file could be read as an object",
        )
    scores = dict.fromkeys(FORMATS[:-1], 0)
    for record in objects:
        for name, matched in _matches(record.value).items():
            scores[name] += matched
    best = max(scores, key=scores.__getitem__)
    if scores[best] == 0:
        raise FormatError(_unrecognised(path, objects[0]))
    return best


def _unrecognised(path: Path, record: _Record) -> str:
    items = list(record.value.items())
    shown = ", ".join(f"{key} ({_json_type(value)})" for key, value in items[:20])
    more = f", ... ({len(items)} fields)" if len(items) > 20 else ""
    tried = [f"  {name:<18} {keys}" for name, keys in _FORMAT_KEYS.items()]
    return "\n".join(
        [
            f"{path}: could not recognise the record format.",
            "Tried these formats (and the fields each expects):",
            *tried,
            f"The first record ({record.location}) has: {shown or 'no fields'}{more}",
            f"Name the fields to read, e.g.: {_suggest_flags(record.value)}",
        ]
    )


def _suggest_flags(record: Mapping[str, Any]) -> str:
    strings = [k for k, v in record.items() if isinstance(v, str) and k.lower() not in _NOT_TEXT]
    prompt = _pick(strings, _PROMPT_NAMES)
    response = _pick([name for name in strings if name != prompt], _RESPONSE_NAMES)
    if prompt and response:
        return f"--prompt-field {shlex.quote(prompt)} --response-field {shlex.quote(response)}"
    turns = [
        k for k, v in record.items() if isinstance(v, list) and v and isinstance(v[0], dict | str)
    ]
    if turns:
        return f"--messages-field {shlex.quote(turns[0])}"
    return "--prompt-field FIELD --response-field FIELD"


def _pick(names: list[str], preferred: tuple[str, ...]) -> str | None:
    lowered = {name.lower(): name for name in names}
    for wanted in preferred:
        if wanted in lowered:
            return lowered[wanted]
    return names[0] if names else None


# ---------------------------------------------------------------------------------------------
# records → examples


class _Builder:
    """Turns records into examples and rejects, in input order."""

    def __init__(
        self,
        path: str,
        fmt: str,
        fields: FieldMap,
        quality_field: str | None,
        kind: str,
        on_invalid: str,
        *,
        detected: bool,
    ) -> None:
        self.path = path
        self.format = fmt
        self.fields = fields
        self.quality_field = quality_field
        self.numeric_strings = kind == "csv"
        self.on_invalid = on_invalid
        self.hint = f"records are read as format '{fmt}'" + (
            " (detected from the first records; give the format to override)" if detected else ""
        )
        self.examples: list[Example] = []
        self.rejects: list[Reject] = []
        self.repairs: list[Repair] = []
        self.quality: list[float] = []
        self.n_records = 0
        self.seen: dict[str, str] = {}  # id → location of its first occurrence

    def add(self, record: _Record) -> None:
        parsed = self.parse(record)
        if parsed is None:
            return
        example, quality = parsed
        self.examples.append(example)
        if quality is not None:
            self.quality.append(quality)

    def parse(self, record: _Record) -> tuple[Example, float | None] | None:
        """The example of ``record`` and its quality (``None`` without a quality field), or
        ``None`` when the record is rejected (kept in ``rejects``; :meth:`finish` raises)."""
        self.n_records += 1
        try:
            example, repair = self._example(record)
            quality = self._quality(record.value)
        except _Invalid as bad:
            self.rejects.append(
                Reject(self.path, record.location, bad.field, bad.reason, record.row)
            )
            return None
        self.seen[example.id] = record.location
        if repair is not None:
            self.repairs.append(Repair(self.path, record.location, record.row, *repair))
        return example, quality

    def finish(self) -> None:
        """With ``on_invalid="error"``: raise if any record was rejected, counting them all."""
        if self.on_invalid == "error" and self.rejects:
            hint = self.hint if any(r.field for r in self.rejects) else None
            raise invalid_rows_error(self.rejects, self.n_records, hint)

    def quality_array(self) -> npt.NDArray[np.float64] | None:
        if self.quality_field is None:
            return None
        return np.asarray(self.quality, dtype=np.float64)

    def _example(self, record: _Record) -> tuple[Example, tuple[str | None, str] | None]:
        """The example and, when its turns were repaired, (field, what was done)."""
        if record.problem:
            raise _Invalid(None, record.problem)
        value = record.value
        if not isinstance(value, dict):
            raise _Invalid(None, f"not a JSON object (got {_json_type(value)})")
        messages, repair = _messages(value, self.format, self.fields)
        ident = _record_id(value, self.fields, record.row)
        if ident in self.seen:
            raise _Invalid(
                self.fields.id_field or "id",
                f"duplicate id {ident!r} (first seen at {self.seen[ident]})",
            )
        source = _record_source(value, self.fields)
        return Example(ident, messages, record.row, source, value), repair

    def _quality(self, record: dict[str, Any]) -> float | None:
        if self.quality_field is None:
            return None
        return _quality(record, self.quality_field, numeric_strings=self.numeric_strings)


def _messages(
    record: dict[str, Any], fmt: str, fields: FieldMap
) -> tuple[tuple[Message, ...], tuple[str | None, str] | None]:
    """The turns, less any :func:`~kmq.validate.leading_replies`, and the repair made
    (its field and action; ``None`` when none was)."""
    turns = _read_turns(record, fmt, fields)
    system = _system_turn(record, fields.system_field or "system")
    if system:
        turns.insert(0, system)
    container = fields.messages_field if fmt == "mapped" else _CONTAINERS.get(fmt)
    messages = [message for message, _ in turns]
    dropped = leading_replies(messages)
    repair = None
    if dropped:
        repair = (container, describe_drop(messages, [path for _, path in turns], dropped))
        turns = [turn for i, turn in enumerate(turns) if i not in dropped]
    _check_turns(turns, container)
    return tuple(message for message, _ in turns), repair


def _read_turns(record: dict[str, Any], fmt: str, fields: FieldMap) -> list[_Turn]:
    if fmt in _CONTAINERS:
        key = _CONTAINERS[fmt]
        return _turn_list(_require(record, key), key)
    if fmt == "alpaca":
        return _alpaca_turns(record)
    if fmt == "self-instruct":
        return _self_instruct_turns(record)
    if fmt == "prompt-completion":
        prompt = _text_turn(record, "prompt", "user")
        return [prompt, _text_turn(record, _either(record, "completion", "response"), "assistant")]
    if fields.messages_field:
        return _turn_list(_require(record, fields.messages_field), fields.messages_field)
    pairs: tuple[tuple[str | None, Role], ...] = (
        (fields.prompt_field, "user"),
        (fields.response_field, "assistant"),
    )
    return [_text_turn(record, key, role) for key, role in pairs if key]


def _check_turns(turns: list[_Turn], container: str | None) -> None:
    for message, path in turns:
        if message.role in ("system", "user") and not message.content.strip():
            raise _Invalid(path, "empty turn")
    roles = {message.role for message, _ in turns}
    if "user" not in roles:
        raise _Invalid(container, "no user turn")
    if "assistant" not in roles:
        raise _Invalid(container, "no assistant turn")


def _turn_list(value: Any, path: str) -> list[_Turn]:
    """Turns from OpenAI messages, ShareGPT turns, or plain strings (user, assistant, ...)."""
    if not isinstance(value, list):
        raise _Invalid(path, f"expected a list of turns, got {_json_type(value)}")
    if value and isinstance(value[0], str):
        return [_plain_turn(item, f"{path}[{i}]", i) for i, item in enumerate(value)]
    return [_dict_turn(item, f"{path}[{i}]") for i, item in enumerate(value)]


def _plain_turn(item: Any, path: str, index: int) -> _Turn:
    if not isinstance(item, str):
        raise _Invalid(path, f"expected a string like the first turn, got {_json_type(item)}")
    return Message("user" if index % 2 == 0 else "assistant", item), path


def _dict_turn(item: Any, path: str) -> _Turn:
    if not isinstance(item, dict):
        raise _Invalid(path, f"expected an object with role and content, got {_json_type(item)}")
    role_key, text_key = ("from", "value") if "from" in item else ("role", "content")
    role = _role(_require(item, role_key, path), f"{path}.{role_key}")
    text_path = f"{path}.{text_key}"
    return Message(role, _content(_require(item, text_key, path), text_path)), text_path


def _role(value: Any, path: str) -> Role:
    if not isinstance(value, str):
        raise _Invalid(path, f"expected a string, got {_json_type(value)}")
    role = _ROLES.get(value.lower())
    if role is None:
        raise _Invalid(path, f"unknown role {value!r} (known: {', '.join(_ROLES)})")
    return role


def _content(value: Any, path: str) -> str:
    """A string, or the text parts of a list of content parts joined by newlines."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(_text_part(part, f"{path}[{i}]") for i, part in enumerate(value))
    raise _Invalid(path, f"expected a string or a list of text parts, got {_json_type(value)}")


def _text_part(part: Any, path: str) -> str:
    if not isinstance(part, dict):
        raise _Invalid(path, f"expected a content part object, got {_json_type(part)}")
    kind = part.get("type")
    if kind != "text":
        raise _Invalid(path, f"unsupported content part type {kind!r} (only text parts are read)")
    return _string(part, "text", path)


def _alpaca_turns(record: dict[str, Any]) -> list[_Turn]:
    return [
        *_history_turns(record),
        _instruction_turn(record, record, ""),
        _text_turn(record, _either(record, "output", "response"), "assistant"),
    ]


def _self_instruct_turns(record: dict[str, Any]) -> list[_Turn]:
    instances = _require(record, "instances")
    if not isinstance(instances, list) or not instances:
        raise _Invalid("instances", f"expected a non-empty list, got {_describe(instances)}")
    first = instances[0]
    if not isinstance(first, dict):
        raise _Invalid("instances[0]", f"expected an object, got {_json_type(first)}")
    return [
        _instruction_turn(record, first, "instances[0]"),
        (Message("assistant", _string(first, "output", "instances[0]")), "instances[0].output"),
    ]


def _instruction_turn(record: dict[str, Any], holder: dict[str, Any], prefix: str) -> _Turn:
    """Instruction + blank line + input (when the input has text), as Alpaca builds prompts;
    ``holder`` is the object with the input (``prefix`` its path: "" for the record itself)."""
    instruction = _string(record, "instruction")
    extra = _optional_string(holder, "input", prefix)
    text = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return Message("user", text), "instruction"


def _history_turns(record: dict[str, Any]) -> list[_Turn]:
    history = record.get("history")
    if history is None:
        return []
    if not isinstance(history, list):
        raise _Invalid(
            "history", f"expected a list of [user, assistant] pairs, got {_json_type(history)}"
        )
    turns: list[_Turn] = []
    for i, pair in enumerate(history):
        path = f"history[{i}]"
        if not isinstance(pair, list) or len(pair) != 2:
            raise _Invalid(path, f"expected a [user, assistant] pair, got {_describe(pair)}")
        for j, role in enumerate(_PAIR_ROLES):
            if not isinstance(pair[j], str):
                raise _Invalid(f"{path}[{j}]", f"expected a string, got {_json_type(pair[j])}")
            turns.append((Message(role, pair[j]), f"{path}[{j}]"))
    return turns


def _text_turn(record: dict[str, Any], key: str, role: Role) -> _Turn:
    return Message(role, _string(record, key)), key


def _system_turn(record: dict[str, Any], key: str) -> _Turn | None:
    """A top-level system prompt, prepended as a system turn when it has text."""
    value = record.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise _Invalid(key, f"expected a string, got {_json_type(value)}")
    return Message("system", value), key


def _record_id(record: dict[str, Any], fields: FieldMap, row: int) -> str:
    key = fields.id_field or "id"
    value = record.get(key)
    if value is None or value == "":
        if fields.id_field is None:
            return f"row-{row}"
        raise _Invalid(key, "empty id" if key in record else "missing required field")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _Invalid(key, f"expected a string or an integer, got {_json_type(value)}")
    return str(value)


def _record_source(record: dict[str, Any], fields: FieldMap) -> str | None:
    if fields.source_field is None:
        value = record.get("source")
        return value if isinstance(value, str) and value else None
    value = _require(record, fields.source_field)
    if value is not None and not isinstance(value, str):
        raise _Invalid(fields.source_field, f"expected a string, got {_json_type(value)}")
    return value or None


def _quality(record: dict[str, Any], key: str, *, numeric_strings: bool) -> float:
    value = _require(record, key)
    if numeric_strings and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _Invalid(key, f"expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(key, f"expected a number, got {_json_type(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise _Invalid(key, f"expected a finite number, got {number}")
    return number


def _require(holder: Mapping[str, Any], key: str, prefix: str = "") -> Any:
    if key not in holder:
        raise _Invalid(f"{prefix}.{key}" if prefix else key, "missing required field")
    return holder[key]


def _either(record: Mapping[str, Any], key: str, alternative: str) -> str:
    """``key`` if the record has it, else ``alternative`` if it has that."""
    if key in record:
        return key
    if alternative in record:
        return alternative
    raise _Invalid(key, f"missing required field (or {alternative!r})")


def _string(holder: Mapping[str, Any], key: str, prefix: str = "") -> str:
    value = _require(holder, key, prefix)
    if not isinstance(value, str):
        path = f"{prefix}.{key}" if prefix else key
        raise _Invalid(path, f"expected a string, got {_json_type(value)}")
    return value


def _optional_string(holder: Mapping[str, Any], key: str, prefix: str = "") -> str:
    """A string field that may be missing or null (read as "")."""
    if holder.get(key) is None:
        return ""
    return _string(holder, key, prefix)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return f"an array of {len(value)}"
    return _json_type(value)


# ---------------------------------------------------------------------------------------------
# sha256


def _digest(path: Path, kind: str, dataset: Any) -> str:
    """sha256 of a file's bytes; for a folder (or a Hub dataset's cache files), of its files in
    name order, each name and size included."""
    if kind == "hf-disk":
        files = {p.relative_to(path).as_posix(): p for p in path.rglob("*") if p.is_file()}
    elif kind == "hf-hub":
        files = {Path(f["filename"]).name: Path(f["filename"]) for f in dataset.cache_files}
    else:
        files = {"": path}
    return _files_digest(files)


def _files_digest(files: Mapping[str, Path]) -> str:
    """sha256 of the files' bytes in name order, each name and size included (none for "")."""
    digest = hashlib.sha256()
    for name in sorted(files):
        if name:
            digest.update(f"{name}\0{files[name].stat().st_size}\0".encode())
        for chunk in _chunks(files[name]):
            digest.update(chunk)
    return digest.hexdigest()


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            yield chunk


# ---------------------------------------------------------------------------------------------
# writing


def write_selected(pool: LoadedPool, rows: Sequence[int], out_dir: Path) -> Path:
    """Write the records at ``rows`` (0-based record indices) unchanged, in input order, in the
    input's own kind: ``selected.jsonl[.gz]``, ``selected.json[.gz]``, ``selected.csv[.gz]``,
    ``selected.parquet`` or a ``selected/`` save_to_disk folder. Returns the path written."""
    wanted = _wanted_rows(pool, rows)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = _hf_dataset(pool.path, pool.file_kind) if pool.file_kind.startswith("hf-") else None
    if _digest(pool.path, pool.file_kind, dataset) != pool.sha256:
        raise KmqError(
            f"{pool.path} changed since it was loaded; load it again before writing the selection"
        )
    if dataset is not None:
        return _write_dataset(dataset, wanted, out_dir)
    if pool.file_kind == "parquet":
        return _write_parquet(pool, wanted, out_dir)
    suffix = ".gz" if pool.compressed else ""
    target = out_dir / f"selected.{pool.file_kind}{suffix}"
    with atomic_path(target) as tmp, _output(tmp, pool.compressed) as out:
        if pool.file_kind == "jsonl":
            _copy_jsonl_lines(pool, wanted, out)
        elif pool.file_kind == "json":
            kept = set(wanted)
            records = [dict(ex.fields) for ex in pool.examples if ex.row in kept]
            out.write((json.dumps(records, ensure_ascii=False, indent=2) + "\n").encode())
        else:
            _copy_csv_rows(pool, wanted, out)
    return target


def _wanted_rows(pool: LoadedPool, rows: Sequence[int]) -> list[int]:
    valid = {example.row for example in pool.examples}
    wanted = sorted({int(row) for row in rows})
    bad = [row for row in wanted if row not in valid]
    if bad:
        raise KmqError(
            f"{pool.path}: rows {bad[:10]} are not valid examples of this pool "
            "(rejected or out of range)"
        )
    return wanted


@contextmanager
def _output(tmp: Path, compressed: bool) -> Iterator[io.BufferedIOBase]:
    with tmp.open("wb") as raw:
        if not compressed:
            yield raw
            return
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed:
            yield packed


def _copy_jsonl_lines(pool: LoadedPool, rows: list[int], out: io.BufferedIOBase) -> None:
    kept, last = set(rows), rows[-1] if rows else -1
    with _open_binary(pool.path, pool.compressed) as fh:
        for row, (_, line) in enumerate(_nonblank_lines(fh)):
            if row > last:
                break
            if row in kept:
                out.write(line)


def _copy_csv_rows(pool: LoadedPool, rows: list[int], out: io.BufferedIOBase) -> None:
    text = _decode(pool.path, _read_bytes(pool.path, pool.compressed), pool.compressed)
    kept = set(rows)
    for index, (_, _, raw) in enumerate(_csv_rows(pool.path, text)):
        if index == 0 or index - 1 in kept:  # the header, then the data rows
            out.write(raw.encode())


def _write_parquet(pool: LoadedPool, rows: list[int], out_dir: Path) -> Path:
    table = _parquet_file(pool.path, pool.compressed).read()
    target = out_dir / "selected.parquet"
    with atomic_path(target) as tmp:
        pq.write_table(table.take(pa.array(rows, type=pa.int64())), tmp)
    return target


def _write_dataset(dataset: Any, rows: list[int], out_dir: Path) -> Path:
    return save_dataset(dataset.select(rows), out_dir)


def save_dataset(dataset: Any, out_dir: Path) -> Path:
    """``dataset`` saved to ``out_dir/selected`` via a temp folder and a rename."""
    target = out_dir / "selected"
    tmp = Path(tempfile.mkdtemp(prefix=".selected.", dir=out_dir))
    try:
        dataset.save_to_disk(str(tmp / "data"))
        old = tmp / "old"
        if target.exists():
            os.replace(target, old)
        os.replace(tmp / "data", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_selected_shards(
    stream: ExampleStream,
    rows: npt.NDArray[np.int64],
    out_dir: Path,
    *,
    sha256: str,
    shard_rows: int,
    show_progress: bool = False,
) -> list[Path]:
    """Copy the records at ``rows`` (sorted record indices) unchanged, in input order, into
    ``selected-00000.jsonl[.gz]`` (JSONL lines byte for byte, gzipped if the input is) or
    ``selected-00000.parquet`` (the input's schema), ..., each of ``shard_rows`` records at most,
    in one pass over the input. Stale shards of an earlier run are removed. Returns the files."""
    if stream.digest() != sha256:
        raise KmqError(
            f"{stream.path} changed since it was read; run the selection again on it as it is now"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    picked = _picked(stream, np.asarray(rows, dtype=np.int64), show_progress)
    written: list[Path] = []
    if stream.file_kind == "jsonl":
        suffix = ".jsonl.gz" if stream.compressed else ".jsonl"
        for shard in range(-(-len(rows) // shard_rows)):
            target = out_dir / f"selected-{shard:05d}{suffix}"
            with atomic_path(target) as tmp, _output(tmp, stream.compressed) as out:
                for line in islice(picked, shard_rows):
                    out.write(cast(bytes, line))
            written.append(target)
    else:
        batches = cast(Iterator[pa.RecordBatch], picked)
        for shard, group in enumerate(_regroup(batches, shard_rows)):
            target = out_dir / f"selected-{shard:05d}.parquet"
            with atomic_path(target) as tmp:
                pq.write_table(_concat(stream.path, group), tmp)
            written.append(target)
    for stale in set(out_dir.glob("selected-[0-9]*")) - set(written):
        stale.unlink()
    return written


def _picked(
    stream: ExampleStream, rows: npt.NDArray[np.int64], show_progress: bool
) -> Iterator[bytes | pa.RecordBatch]:
    """The JSONL lines at ``rows``, or the Parquet batches cut down to them, in input order."""
    position = 0
    with tqdm(
        total=stream.n_records or None, desc="writing", unit="row", disable=not show_progress
    ) as bar:
        for start, block in stream.raw_blocks():
            size = len(block) if isinstance(block, list) else block.num_rows
            bar.update(size)
            stop = int(np.searchsorted(rows, start + size, side="left"))
            offsets = rows[position:stop] - start
            if isinstance(block, list):
                yield from (block[i] for i in offsets)
            elif len(offsets):
                yield block.take(pa.array(offsets))
            position = stop
            if position == len(rows):
                return


def _regroup(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[list[pa.RecordBatch]]:
    """Lists of batches of ``size`` rows in all (the last may hold fewer), split where needed."""
    group: list[pa.RecordBatch] = []
    have = 0
    for batch in batches:
        while batch.num_rows:
            cut = min(size - have, batch.num_rows)
            group.append(batch.slice(0, cut))
            batch = batch.slice(cut)
            have += cut
            if have == size:
                yield group
                group, have = [], 0
    if group:
        yield group


def _concat(path: Path, batches: list[pa.RecordBatch]) -> pa.Table:
    try:
        return pa.Table.from_batches(batches)
    except pa.ArrowInvalid as exc:
        raise KmqError(f"{path}: the Parquet shards have different schemas ({exc})") from exc


def write_rejects(rejects: Sequence[Reject], path: Path) -> None:
    """One JSON object per reject: path, location, row, field, reason."""
    lines = [
        json.dumps(
            {
                "path": r.path,
                "location": r.location,
                "row": r.row,
                "field": r.field,
                "reason": r.reason,
            },
            ensure_ascii=False,
        )
        + "\n"
        for r in rejects
    ]
    with atomic_path(Path(path)) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")
