"""Replay a recorded selection: ``kmq select --config manifest.json --out NEW``.

``manifest.json`` holds the whole :class:`~kmq.config.SelectConfig` of a run. Rebuilt from it
(output folder new, input optionally moved), the run makes the same picks on the same input:
every random draw derives from the recorded seed. :func:`check_same_input` says when the input
is not the bytes the manifest recorded.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path

from kmq.config import SelectConfig
from kmq.errors import KmqError, ParameterError
from kmq.formats import FieldMap
from kmq.outputs import Manifest

log = logging.getLogger("kmq")


def read_manifest(path: str | Path) -> Manifest:
    """The :class:`Manifest` given to ``--config`` (a ``manifest.json`` or its folder)."""
    try:
        return Manifest.read(path)
    except KmqError as exc:
        raise ParameterError("config", f"{{param}} {exc}") from None


def config_from_manifest(
    manifest: Manifest, *, out: str, input: str | list[str] | None = None
) -> SelectConfig:
    """The recorded config with ``out`` (and ``input``, when given) replaced."""
    recorded = dict(manifest.config)
    known = {f.name for f in fields(SelectConfig)}
    unknown = sorted(set(recorded) - known)
    if unknown:
        raise KmqError(
            f"the manifest was written by kmq {manifest.version} and has settings this "
            f"kmq does not know: {', '.join(unknown)}"
        )
    source = input if input is not None else manifest.input["path"]
    if input is None and str(source).startswith("<records"):
        raise KmqError(
            f"the recorded input was records in memory ({source}); name the file to replay on"
        )
    recorded["fields"] = FieldMap(**(recorded.get("fields") or {}))
    return SelectConfig(**(recorded | {"input": source, "out": out}))


def check_same_input(manifest: Manifest, replayed: Manifest) -> bool:
    """Whether the replay read the input the manifest recorded (same sha256); warns if not."""
    before, now = manifest.input["sha256"], replayed.input["sha256"]
    if before != now:
        log.warning(
            "the input differs from the recorded one (sha256 %s…, recorded %s…): the picks "
            "need not be the same",
            now[:12],
            before[:12],
        )
    return bool(before == now)
