"""Atomic writes: temp file in the same folder, fsync, rename."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success fsync it and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with tmp_path.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def build_folder(folder: Path, marker: str, build: Callable[[Path], None]) -> None:
    """Make ``folder`` by ``build(tmp)`` in a temporary sibling that is then renamed into place:
    an interrupted build leaves nothing behind, and when another process finished the same
    folder first (its ``marker`` file is there) that copy is kept."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / marker).is_file():  # not a concurrent build: re-raise
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fsync_dir(path: Path) -> None:
    """fsync the folder ``path`` (so a rename or a new file in it survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask() -> int:
    """The process's umask (read without changing it for longer than a call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_with(path: Path, writer: Callable[[IO[Any]], None], *, binary: bool = False) -> None:
    """Write ``path`` atomically through ``writer(fh)``."""
    with (
        atomic_path(path) as tmp,
        tmp.open("wb" if binary else "w", encoding=None if binary else "utf-8") as fh,
    ):
        writer(fh)


def write_text(path: Path, text: str) -> None:
    def write(fh: IO[Any]) -> None:
        fh.write(text)

    write_with(path, write)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_jsonable) + "\n")


def write_npy(path: Path, array: np.ndarray) -> None:
    write_with(path, lambda fh: np.save(fh, array), binary=True)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
