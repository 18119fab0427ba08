from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kmq.cli import main


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kmq.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=900,
    )


def test_bad_input_is_one_clear_line_not_a_traceback(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    proc = run_cli("select", str(pool), "--out", str(tmp_path / "o"), "--budget", "1")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "pool.jsonl, line 1" in proc.stderr and "assistant" in proc.stderr


def test_bad_flag_values_are_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["select", "x.jsonl", "--out", "o", "--k", "many"])
    assert "expected a positive integer or 'auto'" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_with_real_minilm_on_mix_small(tmp_path: Path, shared_data: Path) -> None:
    """`kmq select` end to end with the packaged MiniLM on 2,000 rows of mix-small."""
    with gzip.open(shared_data / "pools" / "mix-small.jsonl.gz", "rt", encoding="utf-8") as fh:
        lines = [line for i, line in enumerate(fh) if i % 9 == 0][:2000]
    pool = tmp_path / "slice.jsonl.gz"
    with gzip.open(pool, "wt", encoding="utf-8") as fh:
        fh.writelines(lines)
    out = tmp_path / "out"
    args = [
        "select",
        str(pool),
        "--budget",
        "0.05",
        "--method",
        "kmq",
        "--k",
        "auto",
        "--seed",
        "0",
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-progress",
    ]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "pool vs selection" in proc.stdout and "gsm8k" in proc.stdout
    with gzip.open(out / "selected.jsonl.gz", "rt", encoding="utf-8") as fh:
        picked = fh.readlines()
    assert len(picked) == 100
    assert set(picked) <= set(lines)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["embedding"]["encoder"].startswith("all-MiniLM-L6-v2@")
    assert manifest["embedding"]["dim"] == 384
    assert len(manifest["clusters"]["silhouette"]) >= 3
    assert sum(manifest["sources"]["selected"].values()) == 100

    inspected = run_cli("inspect", str(out), "--json")
    assert inspected.returncode == 0, inspected.stderr
    data = json.loads(inspected.stdout)
    table_ids = pq.read_table(out / "selection.parquet", columns=["id"]).column("id").to_pylist()
    assert data["selected_ids"] == table_ids
    assert data["counts"]["selected"] == 100

    again = run_cli(*[str(tmp_path / "again") if a == str(out) else a for a in args])
    assert again.returncode == 0, again.stderr
    second = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert second["embedding"]["cache_hit"]
    assert (
        pq.read_table(tmp_path / "again" / "selection.parquet", columns=["id"])
        .column("id")
        .to_pylist()
        == table_ids
    )


def test_score_command_writes_the_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = tmp_path / "pool.jsonl"
    rows = [
        {"instruction": f"task {i}", "output": "x" * (i + 1), "quality": float(i)} for i in range(5)
    ]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scores.parquet"
    common = ["--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(["score", str(pool), "--quality", "length", "--out", str(out), *common]) == 0
    table = pq.read_table(out).to_pylist()
    assert [r["length_score"] for r in table] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert [r["id"] for r in table] == [f"row-{i}" for i in range(5)]
    printed = capsys.readouterr().out
    assert "length_score" in printed and "computed" in printed
    column = tmp_path / "column.parquet"
    args = ["score", str(pool), "--quality", "column", "--quality-field", "quality"]
    assert main([*args, "--out", str(column), *common]) == 0
    assert pq.read_table(column).column("column_score").to_pylist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_backend_and_device_flags_reach_every_model() -> None:
    from kmq.cli import build_parser
    from kmq.cli.args import scorer_options, select_config
    from kmq.cli.iterate import loop_config

    flags = ["--lm-backend", "ctranslate2", "--lm-compute-type", "float32", "--device", "cuda"]
    flags += ["--lm-dtype", "bfloat16"]
    args = build_parser().parse_args(["select", "pool.jsonl", "--out", "o", "--quality", "ifd"])
    assert scorer_options(args)["lm_backend"] is None  # the scorer's default: torch
    args = build_parser().parse_args(
        ["select", "pool.jsonl", "--out", "o", "--quality", "ifd", *flags]
    )
    options = scorer_options(args)
    assert (options["lm_backend"], options["compute_type"], options["device"]) == (
        "ctranslate2",
        "float32",
        "cuda",
    )
    assert options["dtype"] == "bfloat16"
    assert select_config(args, out="o", method="kmq").device == "cuda"
    args = build_parser().parse_args(["iterate", "pool.jsonl", "--run", "r", *flags])
    config = loop_config(args, external=False)
    assert config.feedback_options["lm_backend"] == "ctranslate2"
    assert config.feedback_options["device"] == "cuda"
    assert config.feedback_options["dtype"] == "bfloat16"
    assert config.trainer_options["device"] == "cuda"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["select", "p", "--out", "o", "--lm-backend", "vllm"])


def test_iterate_allocation_flag_sets_the_loops_prior(capsys: pytest.CaptureFixture[str]) -> None:
    from kmq.cli import build_parser
    from kmq.cli.iterate import loop_config

    for verb in (["iterate"], ["iterate-init"]):
        external = verb == ["iterate-init"]
        args = build_parser().parse_args([*verb, "pool.jsonl", "--run", "r"])
        assert loop_config(args, external=external).pool.allocation == "balanced"
        args = build_parser().parse_args(
            [*verb, "pool.jsonl", "--run", "r", "--allocation", "proportional"]
        )
        assert loop_config(args, external=external).pool.allocation == "proportional"
        with pytest.raises(SystemExit):
            build_parser().parse_args([*verb, "pool.jsonl", "--run", "r", "--allocation", "equal"])
        assert "invalid choice: 'equal'" in capsys.readouterr().err
