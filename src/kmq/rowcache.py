"""Per-row cache: values found by the hash of each row's content, in write-once segments.

One store holds the values of one model + settings (an encoder with its view and window, a
quality scorer with its options). A row's key is the first 16 bytes of the sha256 of its
content, so a subset, a superset or an appended pool finds every row already computed and
only the missing rows are computed. Layout of a store folder::

    settings.json          what the values were computed with (written once, checked on use)
    lock                   flock: shared while a pass computes, exclusive while compacting
    segments/<name>/       one segment, built in a temp folder and renamed into place (never
        keys.npy           rewritten): (m, 2) uint64 row keys in row order;
        values.npy         (m, *shape) values in row order, memory-mapped on read;
        meta.json          rows, row shape, dtype, the crc32 of the keys and of every block of
                           BLOCK_ROWS value rows

``pool-<hash>`` segments hold exactly one pool's rows in its order (the pool's array, used as
it is on a rerun); ``part-<unique>`` segments the rows one shard of a pass computed (saved as
they finish: an interrupted pass keeps them); ``merged-<unique>`` parts compacted after a pass.
Every segment read is checked against its ``meta.json`` (shape, dtype, checksums of the blocks
read); a mismatch raises :class:`CacheCorrupt` naming the segment and how to clear it.
Concurrent writers are safe: segment names are unique or content-determined and committed by
one rename that never replaces an existing segment; every writer holds the lock shared, and
compaction (which also removes the temp folders of killed writers) runs only when it can take
it exclusively.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from tqdm.auto import tqdm

from kmq.atomic import fsync_dir, write_json
from kmq.errors import KmqError
from kmq.progress import reporting

BLOCK_ROWS = 4096  # value rows per checksummed block
GATHER_ROWS = 65_536  # rows copied at a time when a segment is assembled
KEY_BYTES = 16

# compute(shards) yields (shard number, values of that shard's rows), in any order
Compute = Callable[[list[np.ndarray]], Iterable[tuple[int, np.ndarray]]]


class CacheCorrupt(KmqError):
    """A cache segment does not match its metadata (truncated, garbled, permuted, resized)."""


def row_key(text: str) -> bytes:
    """The 16-byte key of one row's content."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:KEY_BYTES]


def keys_array(raw: bytes) -> np.ndarray:
    """Concatenated 16-byte keys as an ``(n, 2)`` uint64 array."""
    return np.frombuffer(raw, dtype="<u8").reshape(-1, 2).copy()


def row_keys(texts: Iterable[str]) -> np.ndarray:
    """The keys of ``texts`` as an ``(n, 2)`` uint64 array, in order."""
    return keys_array(b"".join(row_key(text) for text in texts))


def keys_digest(keys: np.ndarray) -> str:
    """A digest of the rows' keys in order: names a pool (its rows and their order)."""
    return hashlib.sha256(np.ascontiguousarray(keys, dtype="<u8").tobytes()).hexdigest()[:32]


def clear_hint(path: Path) -> str:
    return f"delete {path} (or the whole cache folder) to clear it; the next run recomputes it"


@dataclass
class Segment:
    """One committed segment; ``values`` is memory-mapped and read blocks are checked."""

    path: Path
    keys: np.ndarray
    values: np.ndarray
    meta: dict[str, Any]
    _checked: set[int] = field(default_factory=set)
    _index: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def name(self) -> str:
        return self.path.name

    def __len__(self) -> int:
        return len(self.keys)

    def index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The keys sorted by their first word: first words, second words, and the row of
        each (for searchsorted look-ups)."""
        if self._index is None:
            order = np.argsort(self.keys[:, 0], kind="stable")
            self._index = (self.keys[order, 0], self.keys[order, 1], order)
        return self._index

    def check_rows(self, rows: np.ndarray) -> None:
        """Compare the checksum of every block holding one of ``rows`` with the metadata."""
        blocks = np.unique(np.asarray(rows, dtype=np.int64) // BLOCK_ROWS)
        for block in blocks.tolist():
            if block in self._checked:
                continue
            start = block * BLOCK_ROWS
            part = np.ascontiguousarray(self.values[start : start + BLOCK_ROWS])
            if zlib.crc32(part.tobytes()) != self.meta["block_crc32"][block]:
                raise CacheCorrupt(
                    f"cache segment {self.path}: rows {start}..{start + len(part) - 1} of "
                    f"values.npy do not match their checksum (garbled or reordered); "
                    + clear_hint(self.path)
                )
            self._checked.add(block)

    def check_all(self) -> None:
        self.check_rows(np.arange(0, len(self), BLOCK_ROWS))

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The values at ``rows`` (checked), as an in-memory array."""
        self.check_rows(rows)
        return np.asarray(self.values[np.asarray(rows, dtype=np.int64)])


def open_segment(path: Path) -> Segment:
    """A committed segment, its files checked against ``meta.json`` (shape, dtype, keys)."""

    def corrupt(why: str) -> CacheCorrupt:
        return CacheCorrupt(f"cache segment {path}: {why}; " + clear_hint(path))

    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        rows, shape, dtype = int(meta["rows"]), tuple(meta["shape"]), np.dtype(meta["dtype"])
        crcs = meta["block_crc32"]
        keys_crc = int(meta["keys_crc32"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise corrupt(f"meta.json is missing or unreadable ({exc})") from None
    try:
        keys = np.load(path / "keys.npy")
        values = np.load(path / "values.npy", mmap_mode="r")
    except (OSError, ValueError, EOFError) as exc:
        raise corrupt(f"a data file is missing, truncated or not a .npy file ({exc})") from None
    if keys.shape != (rows, 2) or keys.dtype != np.dtype("<u8"):
        raise corrupt(f"keys.npy holds {keys.shape} {keys.dtype}; meta.json says ({rows}, 2)")
    if zlib.crc32(np.ascontiguousarray(keys).tobytes()) != keys_crc:
        raise corrupt("keys.npy does not match its checksum")
    if values.shape != (rows, *shape) or values.dtype != dtype:
        raise corrupt(
            f"values.npy holds {values.shape} {values.dtype}; meta.json says "
            f"{(rows, *shape)} {dtype}"
        )
    if len(crcs) != -(-rows // BLOCK_ROWS):
        raise corrupt(f"meta.json lists {len(crcs)} block checksums for {rows} rows")
    return Segment(path=path, keys=keys, values=values, meta=meta)


class SegmentWriter:
    """Writes one segment into a temp folder, block checksums computed on the way;
    :meth:`commit` renames it into place unless a segment of that name already exists."""

    def __init__(self, segments: Path, rows: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        segments.mkdir(parents=True, exist_ok=True)
        self.segments = segments
        self.tmp = segments / f".tmp-{uuid.uuid4().hex}"
        self.tmp.mkdir()
        self.rows, self.shape, self.dtype = rows, shape, np.dtype(dtype)
        self.written = 0
        self.crcs: list[int] = []
        self._crc = 0
        self._fh: IO[bytes] = (self.tmp / "values.npy").open("wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False}
        np.lib.format.write_array_header_1_0(self._fh, header | {"shape": (rows, *shape)})

    def write(self, values: np.ndarray) -> None:
        """The next rows' values, in row order."""
        values = np.ascontiguousarray(values, dtype=self.dtype)
        if values.shape[1:] != self.shape:
            raise KmqError(f"rows of shape {values.shape[1:]} for a segment of {self.shape}")
        done = 0
        while done < len(values):
            take = min(BLOCK_ROWS - self.written % BLOCK_ROWS, len(values) - done)
            data = values[done : done + take].tobytes()
            self._fh.write(data)
            self._crc = zlib.crc32(data, self._crc)
            self.written += take
            done += take
            if self.written % BLOCK_ROWS == 0:
                self.crcs.append(self._crc)
                self._crc = 0
        if self.written > self.rows:
            raise KmqError(f"{self.written} rows written to a segment of {self.rows}")

    def commit(self, name: str, keys: np.ndarray) -> bool:
        """Move the segment into place as ``name``; False if one of that name exists (the
        same rows, written by another process): this one is dropped."""
        if self.written != self.rows:
            raise KmqError(f"{self.written} rows written to a segment of {self.rows}")
        if self.written % BLOCK_ROWS:
            self.crcs.append(self._crc)
        _close_synced(self._fh)
        keys = np.ascontiguousarray(keys, dtype="<u8")
        with (self.tmp / "keys.npy").open("wb") as fh:
            np.save(fh, keys)
            fh.flush()
            os.fsync(fh.fileno())
        write_json(
            self.tmp / "meta.json",
            {
                "rows": self.rows,
                "shape": list(self.shape),
                "dtype": self.dtype.str,
                "keys_crc32": zlib.crc32(keys.tobytes()),
                "block_rows": BLOCK_ROWS,
                "block_crc32": self.crcs,
            },
        )
        try:
            os.rename(self.tmp, self.segments / name)
        except OSError:
            if not (self.segments / name).is_dir():
                raise
            self.abort()
            return False
        fsync_dir(self.segments)
        return True

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _close_synced(fh: IO[bytes]) -> None:
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()


@dataclass
class Located:
    """Where each asked-for row is stored: ``segment[i]`` (-1: not stored) and ``row[i]``."""

    segments: list[Segment]
    segment: np.ndarray
    row: np.ndarray

    @property
    def missing(self) -> np.ndarray:
        return np.flatnonzero(self.segment < 0)

    def gather(self, rows: np.ndarray, out: np.ndarray) -> None:
        """``out[i]`` = the stored value of row ``rows[i]`` (every one of them is stored)."""
        where = self.segment[rows]
        for s in np.unique(where).tolist():
            pick = np.flatnonzero(where == s)
            out[pick] = self.segments[s].read(self.row[rows[pick]])


class RowStore:
    """The per-row cache of one model + settings (see the module doc)."""

    def __init__(self, folder: Path, settings: dict[str, Any]) -> None:
        self.folder = folder
        self.settings = settings
        self.segment_dir = folder / "segments"
        self._segments: dict[str, Segment] = {}

    def _check_settings(self) -> None:
        path = self.folder / "settings.json"
        if not path.exists():
            write_json(path, self.settings)
            return
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CacheCorrupt(f"{path} is unreadable ({exc}); {clear_hint(self.folder)}") from None
        if stored != json.loads(json.dumps(self.settings, default=str)):
            raise CacheCorrupt(
                f"{path} records other settings ({stored}) than its key stands for "
                f"({self.settings}); {clear_hint(self.folder)}"
            )

    @contextmanager
    def locked(self, exclusive: bool = False, *, wait: bool = True) -> Iterator[bool]:
        """Hold the store's lock (shared for a pass, exclusive for compaction); yields False
        without waiting when ``wait`` is off and the lock is taken."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "lock").open("a+b") as fh:
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            try:
                fcntl.flock(fh.fileno(), mode | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def segment(self, name: str) -> Segment | None:
        """The committed segment ``name`` (checked), None if there is none."""
        path = self.segment_dir / name
        if name not in self._segments:
            if not path.is_dir():
                return None
            self._segments[name] = open_segment(path)
        return self._segments[name]

    def segments(self) -> list[Segment]:
        """Every committed segment, pools first (they hold most rows), then by name."""
        if not self.segment_dir.is_dir():
            return []
        names = sorted(
            (p.name for p in self.segment_dir.iterdir() if not p.name.startswith(".")),
            key=lambda n: (not n.startswith("pool-"), n),
        )
        found = []
        for name in names:
            try:
                seg = self.segment(name)
            except CacheCorrupt:
                if (self.segment_dir / name).is_dir():
                    raise
                seg = None  # compacted away by another process while we listed
            if seg is not None:
                found.append(seg)
        return found

    def locate(self, keys: np.ndarray, segments: list[Segment] | None = None) -> Located:
        """Where the rows with ``keys`` are stored (in ``segments``, default all)."""
        segments = self.segments() if segments is None else segments
        where = np.full(len(keys), -1, dtype=np.int64)
        rows = np.zeros(len(keys), dtype=np.int64)
        for s, seg in enumerate(segments):
            todo = np.flatnonzero(where < 0)
            if not len(todo) or not len(seg):
                continue
            first, second, order = seg.index()
            wanted = keys[todo]
            ascending = np.argsort(wanted[:, 0], kind="stable")  # sorted needles: cache-friendly
            todo, wanted = todo[ascending], wanted[ascending]
            pos = np.searchsorted(first, wanted[:, 0])
            for _ in range(8):  # rows whose first key word collides: try the next equal word
                at = np.minimum(pos, len(first) - 1)
                same_first = (pos < len(first)) & (first[at] == wanted[:, 0])
                hit = same_first & (second[at] == wanted[:, 1])
                where[todo[hit]], rows[todo[hit]] = s, order[at[hit]]
                again = same_first & ~hit
                if not again.any():
                    break
                todo, wanted, pos = todo[again], wanted[again], pos[again] + 1
        return Located(segments=segments, segment=where, row=rows)

    def compute(
        self,
        keys: np.ndarray,
        compute: Compute,
        *,
        shape: tuple[int, ...] | None,
        dtype: np.dtype,
        shard_rows: int,
        keep: Callable[[np.ndarray], np.ndarray] | None = None,
        desc: str = "computing",
        show_progress: bool = True,
    ) -> tuple[Located, dict[int, np.ndarray], int]:
        """Compute the rows of ``keys`` the store lacks, in shards of ``shard_rows`` rows,
        each saved as a segment as soon as it is done (under the shared lock: an interrupted
        pass keeps every finished shard).

        ``shape`` is the expected row shape (None: whatever the first stored or computed
        rows have; when this pass's own rows disagree, the parts it saved are removed);
        ``keep(values)`` marks the rows worth storing (default: all), the others are returned
        but not stored. Returns where every stored row is, the values of computed rows that
        were not stored (by row), and how many rows were computed.
        """
        self._check_settings()
        with self.locked():
            located = self.locate(keys)
            missing = located.missing
            if not len(missing):
                return located, {}, 0
            stored = [seg.values.shape[1:] for seg in located.segments if len(seg)]
            expected = shape if shape is not None else (stored[0] if stored else None)
            shards = [missing[i : i + shard_rows] for i in range(0, len(missing), shard_rows)]
            unkept: dict[int, np.ndarray] = {}
            written: list[Path] = []
            with tqdm(
                total=len(keys),
                initial=len(keys) - len(missing),
                desc=desc,
                unit="row",
                disable=not show_progress,
                smoothing=0.1,
            ) as bar:
                advance = _BarAdvance(bar)
                for number, values in _in_order(compute, shards, advance):
                    shard = shards[number]
                    values = np.asarray(values)
                    if len(values) != len(shard):
                        raise KmqError(f"{desc}: {len(values)} results for {len(shard)} rows")
                    if expected is not None and values.shape[1:] != tuple(expected):
                        if not stored and shape is None:
                            for part in written:  # which shape is right cannot be told
                                shutil.rmtree(part, ignore_errors=True)
                            raise KmqError(
                                f"{desc}: the model gave rows of shape {tuple(expected)}, then "
                                f"{values.shape[1:]}; nothing from this pass is kept in the "
                                f"cache {self.folder}"
                            )
                        raise KmqError(
                            f"{desc}: rows of shape {values.shape[1:]} where the cache "
                            f"{self.folder} holds {tuple(expected)} for the same settings; "
                            "is the model still the one that filled it? " + clear_hint(self.folder)
                        )
                    expected = values.shape[1:]
                    good = np.ones(len(shard), bool) if keep is None else keep(values)
                    for i in np.flatnonzero(~good).tolist():
                        unkept[int(shard[i])] = values[i]
                    if good.any():
                        writer = SegmentWriter(
                            self.segment_dir, int(good.sum()), values.shape[1:], dtype
                        )
                        writer.write(values[good])
                        name = f"part-{uuid.uuid4().hex}"
                        writer.commit(name, keys[shard[good]])
                        written.append(self.segment_dir / name)
                    advance.finish_shard(len(shard))
            return self.locate(keys), unkept, len(missing)

    def write_pool(self, name: str, keys: np.ndarray, located: Located) -> Segment:
        """A segment ``name`` of the rows of ``keys`` in their order (each of them stored),
        written chunk by chunk; the existing one if another process wrote it first."""
        with self.locked():
            return self._write_pool(name, keys, located)

    def _write_pool(self, name: str, keys: np.ndarray, located: Located) -> Segment:
        seg = self.segment(name)
        if seg is not None:
            return seg
        source = next(s for s in located.segments if len(s))
        writer = SegmentWriter(
            self.segment_dir, len(keys), source.values.shape[1:], source.values.dtype
        )
        try:
            for start in range(0, len(keys), GATHER_ROWS):
                rows = np.arange(start, min(start + GATHER_ROWS, len(keys)))
                out = np.empty((len(rows), *writer.shape), dtype=writer.dtype)
                located.gather(rows, out)
                writer.write(out)
        except BaseException:
            writer.abort()
            raise
        writer.commit(name, keys)
        seg = self.segment(name)
        assert seg is not None
        return seg

    def adopt(self, name: str, keys: np.ndarray, values: np.ndarray) -> Segment | None:
        """A segment ``name`` holding ``values`` (one row per key, e.g. an earlier version's
        cache file), copied chunk by chunk."""
        self._check_settings()
        with self.locked():
            writer = SegmentWriter(self.segment_dir, len(keys), values.shape[1:], values.dtype)
            try:
                for start in range(0, len(keys), GATHER_ROWS):
                    writer.write(values[start : start + GATHER_ROWS])
            except BaseException:
                writer.abort()
                raise
            writer.commit(name, keys)
            return self.segment(name)

    def compact(self) -> None:
        """Merge every ``part-``/``merged-`` segment into one, leaving out rows a ``pool-``
        segment holds, and remove the temp folders of writers that were killed; skipped while
        another pass holds the lock (every writer holds it)."""
        with self.locked(exclusive=True, wait=False) as got:
            if not got:
                return
            for stale in self.segment_dir.glob(".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            segments = self.segments()
            pools = [s for s in segments if s.name.startswith("pool-")]
            loose = [s for s in segments if not s.name.startswith("pool-")]
            if not loose or (len(loose) == 1 and loose[0].name.startswith("merged-")):
                return
            kept: list[tuple[Segment, np.ndarray]] = []
            for seg in loose:
                rows = np.arange(len(seg))
                if pools:
                    rows = rows[self.locate(seg.keys, pools).segment < 0]
                if len(rows):
                    kept.append((seg, rows))
            if kept:
                first = kept[0][0].values
                total = sum(len(rows) for _, rows in kept)
                writer = SegmentWriter(self.segment_dir, total, first.shape[1:], first.dtype)
                try:
                    for seg, rows in kept:
                        for start in range(0, len(rows), GATHER_ROWS):
                            writer.write(seg.read(rows[start : start + GATHER_ROWS]))
                except BaseException:
                    writer.abort()
                    raise
                writer.commit(
                    f"merged-{uuid.uuid4().hex}", np.concatenate([s.keys[r] for s, r in kept])
                )
            for seg in loose:
                shutil.rmtree(seg.path, ignore_errors=True)
                self._segments.pop(seg.name, None)


class _BarAdvance:
    """Moves a row bar as an encoder reports finished batches (fractions of its shard),
    and to the shard's exact end when the shard is saved."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.partial = 0.0
        self.shown = 0

    def __call__(self, rows: float) -> None:
        self.partial += rows
        step = int(self.partial) - self.shown
        if step > 0:
            self.bar.update(step)
            self.shown += step

    def finish_shard(self, rows: int) -> None:
        if rows > self.shown:
            self.bar.update(rows - self.shown)
        self.partial, self.shown = 0.0, 0


def _in_order(
    compute: Compute, shards: list[np.ndarray], advance: Callable[[float], None]
) -> Iterator[tuple[int, np.ndarray]]:
    """``compute``'s shards as they finish, with batch progress reported to ``advance``."""
    with reporting(advance):
        yield from compute(shards)
