"""The output folder of ``kmq select``: built beside ``--out``, then swapped into place whole.

A finished ``--out`` is therefore all of one run: a kill, Ctrl-C or a full disk while writing
leaves the previous folder untouched (the unfinished one sits beside it as the hidden
``.NAME.kmq-partial-*``, removed by the next run into the same ``--out``), and no file of an
earlier run (``rejects.jsonl``, ``dedup.jsonl``, ``clusters.npz``, ``report.html``, a
``selected.*`` of another format) survives a rerun. The swap is one atomic ``renameat2``
exchange where the kernel offers it (Linux), else two renames microseconds apart.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kmq.atomic import fsync_dir, umask
from kmq.errors import KmqError, ParameterError

OUTPUT_NAMES = frozenset(
    {
        "manifest.json",
        "selection.parquet",
        "rejects.jsonl",
        "dedup.jsonl",
        "duplicates.jsonl",
        "repairs.jsonl",
        "contamination.jsonl",
        "clusters.npz",
        "report.html",
        "selected",  # a save_to_disk folder
    }
)
SELECTED = re.compile(r"selected(-\d{5})?\.(jsonl|json|csv|parquet)(\.gz)?")
PARTIAL = ".kmq-partial-"
OLD = ".kmq-old-"
RENAME_EXCHANGE = 2  # linux/fs.h


def is_output_name(name: str) -> bool:
    """Whether ``name`` is a file that ``kmq select`` writes into its output folder."""
    return name in OUTPUT_NAMES or SELECTED.fullmatch(name) is not None


def check_out(out: str | Path) -> None:
    """Refuse, before any work, an ``--out`` that names a file, lies under one, cannot be
    written, or holds files that kmq did not write (they would be lost in the swap)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ParameterError(
            "out", f"{{param}} {out} is a file; give a folder (new, empty or a kmq select output)"
        )
    parent = Path(os.path.abspath(path)).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ParameterError(
            "out", f"{{param}} {out} lies under {parent}, which is a file, not a folder"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ParameterError(
            "out", f"{{param}} {out}: cannot write in {parent} (permission denied)"
        )
    if path.is_dir():
        foreign = sorted(p.name for p in path.iterdir() if not is_output_name(p.name))
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise ParameterError(
                "out",
                f"{{param}} {out} holds {len(foreign)} files that kmq select did not write "
                f"({shown}); the whole folder is replaced by the new selection, so give a new "
                "or empty folder, or a kmq select output",
            )


def unfinished(out: str | Path) -> list[Path]:
    """Hidden folders beside ``out`` that a stopped run into it left unfinished."""
    return _beside(Path(os.path.abspath(out)), PARTIAL)


def _beside(path: Path, infix: str) -> list[Path]:
    if not path.parent.is_dir():
        return []
    prefix = f".{path.name}{infix}"
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(prefix))


def not_an_output(out: str | Path) -> str:
    """Why ``out`` is no finished ``kmq select`` output: what is there (or beside it) instead."""
    path = Path(out)
    left = unfinished(path)
    stopped = f"; {left[-1]} is an unfinished run into it (stopped while writing)" if left else ""
    if not path.exists():
        return f"{out} does not exist{stopped}"
    if (path / "rejects.jsonl").exists():
        return (
            f"{out} holds no manifest.json, only rejects.jsonl: its run stopped because every "
            "input row was rejected"
        )
    return f"{out} holds no manifest.json: is it a kmq select output folder?{stopped}"


@contextmanager
def staged(out: str | Path) -> Iterator[Path]:
    """Yield an empty folder beside ``out``; when the block ends without error it replaces
    ``out`` whole. On any error ``out`` is left as it was and the folder is removed; an
    ``OSError`` (disk full, permission) becomes a :class:`KmqError` that says so."""
    target = Path(os.path.realpath(out))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in [*_beside(target, PARTIAL), *_beside(target, OLD)]:
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}{PARTIAL}", dir=target.parent))
    except OSError as exc:
        raise unwritten(out, exc) from exc
    try:
        tmp.chmod(0o777 & ~umask())
        yield tmp
        fsync_dir(tmp)
        swap(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        raise unwritten(out, exc, tmp) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def unwritten(out: str | Path, exc: OSError, tmp: Path | None = None) -> KmqError:
    """The error for an ``OSError`` while building ``out`` (in ``tmp``), naming the file."""
    where = ""
    if exc.filename:
        name = Path(os.fsdecode(exc.filename))
        if tmp is not None and name.is_relative_to(tmp):
            name = Path(out) / name.relative_to(tmp)
        where = f" ({name})"
    return KmqError(
        f"could not write the selection into {out}: {exc.strerror or exc}{where}; "
        f"{out} is left as it was"
    )


def swap(new: Path, target: Path) -> None:
    """Put the folder ``new`` at ``target``; an earlier ``target`` ends up at ``new``'s path
    (atomically, where the kernel can exchange two names) or is removed."""
    if not target.exists():
        os.replace(new, target)
        return
    if _exchange(new, target):
        return
    old = target.parent / f".{target.name}{OLD}{uuid.uuid4().hex[:8]}"
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """``renameat2(a, b, RENAME_EXCHANGE)``: True if the kernel swapped the two names."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name, use_errno=True) if name else None
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    done = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), RENAME_EXCHANGE) == 0
    return bool(done)
