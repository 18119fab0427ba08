"""Rows of big arrays a chunk at a time, as float32.

A memory map (``np.load(..., mmap_mode="r")``, as the embedding cache returns) is read through a
short-lived mapping of just the rows asked for, so the pages read do not pile up in the
process' resident memory: a pass over a 7.7 GB float16 file holds one chunk at a time.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import numpy as np
from tqdm.auto import tqdm

# Rows per chunk: a multiple of faiss' 4096-row query blocks, so a chunked nearest-centroid
# search computes every distance exactly as one search over all rows does.
CHUNK_ROWS = 65_536
# faiss searches fewer queries than this without BLAS (other rounding): a shorter last chunk
# joins the one before it.
MIN_TAIL = 20


def spans(n: int, chunk_rows: int = CHUNK_ROWS) -> list[tuple[int, int]]:
    """``(start, stop)`` of each chunk of ``n`` rows; the last one may hold up to
    ``chunk_rows + MIN_TAIL - 1`` rows."""
    bounds = [(start, min(start + chunk_rows, n)) for start in range(0, n, chunk_rows)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < MIN_TAIL:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def read_rows(
    array: np.ndarray, start: int, stop: int, take: np.ndarray | None = None
) -> np.ndarray:
    """Rows ``start:stop`` of ``array`` (or those at the sorted indices ``take``, which lie in
    that range) as a float32 copy."""
    mapped = _mapped(array, start, stop)
    part = array[start:stop] if mapped is None else mapped
    rows = part if take is None else part[np.asarray(take) - start]
    return np.array(rows, dtype=np.float32)


def take_rows(
    array: np.ndarray,
    rows: np.ndarray,
    *,
    chunk_rows: int = CHUNK_ROWS,
    show_progress: bool = False,
    desc: str = "reading rows",
) -> np.ndarray:
    """The rows at the sorted indices ``rows`` as one float32 array, read chunk by chunk."""
    out = np.empty((len(rows), *array.shape[1:]), dtype=np.float32)
    filled = 0
    for start, stop in tqdm(spans(len(array), chunk_rows), desc=desc, disable=not show_progress):
        lo, hi = np.searchsorted(rows, [start, stop])
        if hi > lo:
            out[filled : filled + hi - lo] = read_rows(array, start, stop, rows[lo:hi])
            filled += hi - lo
    return out


def iter_rows(
    array: np.ndarray,
    *,
    chunk_rows: int = CHUNK_ROWS,
    show_progress: bool = False,
    desc: str = "reading rows",
) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, float32 rows)`` of every chunk, in order."""
    for start, stop in tqdm(spans(len(array), chunk_rows), desc=desc, disable=not show_progress):
        yield start, read_rows(array, start, stop)


def _mapped(array: np.ndarray, start: int, stop: int) -> np.memmap | None:
    """A fresh read-only mapping of rows ``start:stop`` of a top-level memory map, else None."""
    if not (isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap)):
        return None
    if array.filename is None or not array.flags.c_contiguous:
        return None
    row_bytes = array.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))
    return np.memmap(
        array.filename,
        dtype=array.dtype,
        mode="r",
        offset=array.offset + start * row_bytes,
        shape=(stop - start, *array.shape[1:]),
    )
