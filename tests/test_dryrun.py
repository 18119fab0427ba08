"""kmq select --dry-run: read, check and estimate; nothing written."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kmq.cli import main
from kmq.dryrun import count_tokens, dry_run, dry_run_lines
from tests.conftest import FakeEncoder
from tests.test_pipeline import config
from tests.test_validate import ROWS, write_rows


def test_dry_run_reports_and_writes_nothing(tmp_path: Path) -> None:
    rows = [*ROWS, {**ROWS[0], "id": "copy"}]  # one exact duplicate of ok-0
    path = write_rows(tmp_path / "chat.jsonl", rows)
    report = dry_run(config(tmp_path, path, k=2, budget=0.5))
    assert report["records"] == 9 and report["valid"] == 5 and report["budget"] == 2
    assert report["rejected_by_reason"] == {
        "unknown role": 2,
        "empty turn": 1,
        "no assistant turn": 1,
    }
    assert report["would_stop"] and report["repaired"] == 2
    assert report["exact_duplicates"] == 2  # the copy, and "lead" once repaired
    assert report["tokens"] is None  # the fake encoder has no tokenizer
    assert report["encoder"] == "fake-encoder/v1" and report["sample_texts"] == 5
    assert report["embed_seconds_estimate"] >= 0
    assert not (tmp_path / "out").exists()
    lines = dry_run_lines(report)
    assert lines[0].endswith("(sharegpt): 5 valid of 9 records; budget 2")
    assert "the run would stop: add --on-invalid skip" in lines[1]
    assert "exact duplicates to remove: 2" in lines
    assert lines[-1].startswith("embedding with fake-encoder/v1: about ")


class Tokenizer:
    name_or_path = "words"

    def __call__(self, texts: Sequence[str], add_special_tokens: bool) -> dict[str, Any]:
        assert not add_special_tokens
        return {"input_ids": [text.split() for text in texts]}


class TokenizingEncoder(FakeEncoder):
    class Model:
        tokenizer = Tokenizer()

    st = Model()


def test_tokens_come_from_the_encoders_tokenizer() -> None:
    assert count_tokens(TokenizingEncoder(), ["a b c", "d e"]) == (5, "words")
    assert count_tokens(FakeEncoder(), ["a b c"]) == (None, None)


def test_dry_run_counts_tokens(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "chat.jsonl", [ROWS[0], ROWS[3]])
    report = dry_run(config(tmp_path, path, k=1, encoder=TokenizingEncoder(), view="full"))
    assert report["tokens"] == 14  # "What is 2 + 2?" and "4" twice, "Be brief." once
    assert "tokens (words)" in dry_run_lines(report)[-2]


def test_cli_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_rows(tmp_path / "chat.jsonl", [ROWS[0], ROWS[3]])
    out = tmp_path / "o"
    args = ["select", str(path), "--out", str(out), "--method", "random", "--budget", "1"]
    assert main([*args, "--dry-run"]) == 0
    shown = capsys.readouterr().out
    assert "2 valid of 2 records; budget 1" in shown and "nothing to embed" in shown
    assert not out.exists()
    assert main(args) == 0
    assert main(["select", "--config", str(out), "--out", str(tmp_path / "p"), "--dry-run"]) == 0
    assert "2 valid of 2 records; budget 1" in capsys.readouterr().out
    assert not (tmp_path / "p").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert np.isclose(manifest["config"]["budget"], 1)
