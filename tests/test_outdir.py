"""The output folder of ``kmq select`` is all of one run: a rerun leaves nothing of the earlier
one, and a failure or a kill while writing leaves the earlier one whole."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kmq import pipeline
from kmq.cli import main
from kmq.errors import KmqError
from kmq.outdir import check_out, is_output_name
from kmq.pipeline import select_file
from tests.test_pipeline import config, write_pool


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def hidden_beside(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.fixture
def earlier(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """A finished run into ``out`` with every optional file: rejects, dedup, clusters, report."""
    pool = tmp_path / "pool.jsonl"
    write_pool(pool, bad_line=True)
    out = tmp_path / "out"
    select_file(config(tmp_path, pool, on_invalid="skip", dedup=0.01))
    (out / "report.html").write_text("<html>report of the earlier run</html>")
    assert {"rejects.jsonl", "dedup.jsonl", "clusters.npz", "selected.jsonl"} <= set(
        p.name for p in out.iterdir()
    )
    return pool, out, snapshot(out)


def test_a_rerun_leaves_no_file_of_the_earlier_run(
    tmp_path: Path, earlier: tuple[Path, Path, dict[str, bytes]]
) -> None:
    pool, out, _ = earlier
    table = pa.Table.from_pylist([json.loads(line) for line in pool.read_text().splitlines()[:9]])
    parquet = tmp_path / "pool.parquet"
    pq.write_table(table, parquet)
    select_file(
        config(tmp_path, parquet, method="random", k="auto", budget=3, keep_duplicates=True)
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "selected.parquet",
        "selection.parquet",
    ]
    assert hidden_beside(out) == []


WRITERS = [
    "pools.write_output",
    "pipeline.write_selection_table",
    "pipeline.write_clusters",
    "outputs.write_json",  # the manifest, written last
]


@pytest.mark.parametrize("writer", WRITERS)
def test_a_failure_while_writing_leaves_the_earlier_run_whole(
    tmp_path: Path,
    earlier: tuple[Path, Path, dict[str, bytes]],
    monkeypatch: pytest.MonkeyPatch,
    writer: str,
) -> None:
    pool, out, before = earlier

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("interrupted while writing")

    monkeypatch.setattr(f"kmq.{writer}", fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        select_file(config(tmp_path, pool, on_invalid="skip", seed=1, budget=20))
    assert snapshot(out) == before
    assert hidden_beside(out) == []


def test_a_full_disk_is_one_error_line_and_the_earlier_run_stays(
    tmp_path: Path,
    earlier: tuple[Path, Path, dict[str, bytes]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pool, out, before = earlier
    real = pipeline.write_selection_table

    def full(path: Path, *args: object, **kwargs: object) -> None:
        real(path, *args, **kwargs)  # type: ignore[arg-type]
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pipeline, "write_selection_table", full)
    args = ["select", str(pool), "--out", str(out), "--method", "random", "--budget", "5"]
    assert main([*args, "--on-invalid", "skip", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"error: could not write the selection into {out}: No space left on device" in err
    assert f"({out / 'selection.parquet'}); {out} is left as it was" in err
    assert "Traceback" not in err
    assert snapshot(out) == before
    assert hidden_beside(out) == []


KILL_WHILE_WRITING = """
import os, signal, sys
from kmq import pipeline
from kmq.cli import main

real = pipeline.write_selection_table

def killed(*args, **kwargs):
    real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

pipeline.write_selection_table = killed
main(sys.argv[1:])
"""


def test_a_kill_while_writing_leaves_the_earlier_run_and_inspect_reads_it(
    tmp_path: Path, earlier: tuple[Path, Path, dict[str, bytes]]
) -> None:
    pool, out, before = earlier
    args = ["select", str(pool), "--out", str(out), "--on-invalid", "skip", "--no-progress"]
    killed = subprocess.run(
        [sys.executable, "-c", KILL_WHILE_WRITING, *args, "--method", "random", "--seed", "1"],
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -9
    assert snapshot(out) == before
    left = hidden_beside(out)
    assert len(left) == 1 and left[0].startswith(".out.kmq-partial-")
    inspected = subprocess.run(
        [sys.executable, "-m", "kmq.cli", "inspect", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert inspected.returncode == 0, inspected.stderr
    state = json.loads(inspected.stdout)
    written = [json.loads(line)["id"] for line in (out / "selected.jsonl").read_text().splitlines()]
    assert state["seed"] == 0 and sorted(state["selected_ids"]) == sorted(written)
    again = subprocess.run(
        [sys.executable, "-m", "kmq.cli", *args, "--method", "random", "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert hidden_beside(out) == []
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1


def test_inspect_names_an_unfinished_run_when_out_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".sel.kmq-partial-abc123").mkdir()
    assert main(["inspect", str(tmp_path / "sel")]) == 2
    err = capsys.readouterr().err
    assert "sel does not exist" in err and ".sel.kmq-partial-abc123 is an unfinished run" in err


def test_out_with_files_kmq_did_not_write_is_refused_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "pool.jsonl").write_text("{}\n")
    (out / "manifest.json").write_text("{}\n")
    with pytest.raises(KmqError, match=r"holds 1 files that kmq select did not write \(pool.jsonl"):
        check_out(out)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "pool.jsonl"]


@pytest.mark.parametrize(
    ("name", "ours"),
    [
        ("selected.jsonl.gz", True),
        ("selected-00012.parquet", True),
        ("selected", True),
        ("report.html", True),
        ("selected.txt", False),
        ("notes.md", False),
    ],
)
def test_output_names(name: str, ours: bool) -> None:
    assert is_output_name(name) is ours
