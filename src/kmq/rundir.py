"""The run folder of an iterative selection: config, per-round state, DONE markers.

Layout (every file written atomically; a step whose ``DONE.<step>`` marker exists is never
redone)::

    RUN/config.json                  the whole configuration (written once, by init)
    RUN/prepare.json, clusters.npz   pool fingerprint, k, silhouette; labels and centroids
    RUN/DONE.prepare
    RUN/round-01/picked.json         pool indices and ids picked, quotas, weights before
    RUN/round-01/selected.<ext>      those rows in the input's own format (for any trainer)
    RUN/round-01/train/checkpoint    the built-in trainer's checkpoint
    RUN/round-01/generations.jsonl   {"id", "generation"} per row trained on (not written
                                     when the feedback reads none, e.g. gold-pmi)
    RUN/round-01/feedback.jsonl      {"id", "cluster", "score"} per row trained on
    RUN/round-01/weights.json        cluster means, weights before and after
    RUN/round-01/DONE.<step>         select, train, generate, score, reweight (with timings)
    RUN/final/                       selected rows, selection.parquet; RUN/manifest.json
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from kmq.atomic import atomic_path, write_json
from kmq.errors import KmqError

ROUND_STEPS = ("select", "train", "generate", "score", "reweight")


class RunDir:
    """Reads and writes one run folder; knows nothing about how steps are computed."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def round_dir(self, r: int) -> Path:
        return self.path / f"round-{r:02d}"

    def folder(self, r: int | None) -> Path:
        return self.path if r is None else self.round_dir(r)

    def done(self, step: str, r: int | None = None) -> bool:
        return (self.folder(r) / f"DONE.{step}").exists()

    def mark_done(self, step: str, r: int | None = None, **info: Any) -> None:
        write_json(self.folder(r) / f"DONE.{step}", {"step": step, "finished": time.time(), **info})

    def marker(self, step: str, r: int | None = None) -> dict[str, Any]:
        return self.read(f"DONE.{step}", r)

    def read(self, name: str, r: int | None = None) -> Any:
        path = self.folder(r) / name
        if not path.exists():
            raise KmqError(f"{path} is missing: is {self.path} a kmq iterate run folder?")
        return json.loads(path.read_text(encoding="utf-8"))

    def write(self, name: str, obj: Any, r: int | None = None) -> Path:
        path = self.folder(r) / name
        write_json(path, obj)
        return path

    def write_jsonl(self, name: str, rows: list[dict[str, Any]], r: int | None = None) -> Path:
        path = self.folder(r) / name
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        return path

    def read_jsonl(self, name: str, r: int | None = None) -> list[dict[str, Any]]:
        path = self.folder(r) / name
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]

    def read_arrays(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.path / name) as data:
            return {key: data[key] for key in data.files}

    def scratch(self, r: int, name: str) -> Path:
        """A fresh sub-folder for a step that writes many files (left-overs of a crash removed)."""
        path = self.round_dir(r) / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def sweep(self) -> int:
        """Remove temp files a killed process left behind (their targets were never touched)."""
        stale = [p for p in self.path.rglob(".*.tmp") if p.is_file()]
        for path in stale:
            path.unlink()
        return len(stale)

    def rounds_started(self) -> list[int]:
        return sorted(int(p.name.split("-")[1]) for p in self.path.glob("round-*") if p.is_dir())
