"""The README's "From your data to your trainer" section, run as written."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from kmq.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## From your data to your trainer"


def blocks(language: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    section = text[start : text.index("\n## ", start + len(SECTION))]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)


@pytest.mark.slow
def test_from_your_data_to_your_trainer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("trl")
    pytest.importorskip("sentence_transformers")
    monkeypatch.chdir(tmp_path)
    select_code, train_code, _ = blocks("python")
    namespace: dict[str, object] = {}
    exec(compile(select_code, "README: select", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "1"
    assert printed[1].startswith("[{'role': 'user', 'content': ")
    train = namespace["train"]
    assert len(train) == 3 and train.column_names == ["id", "messages"]  # type: ignore[attr-defined]
    assert "row-1" not in train["id"]  # type: ignore[index]
    exec(compile(train_code, "README: train", "exec"), namespace)
    assert namespace["trainer"].state.global_step == 1  # type: ignore[attr-defined]

    rows = namespace["rows"]
    assert isinstance(rows, list)
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    [command] = blocks("bash")
    args = shlex.split(command)
    assert args[0] == "kmq"
    assert main(args[1:]) == 0
    written = [json.loads(line) for line in Path("picked/selected.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in written) == sorted(train["id"])  # type: ignore[index]


@pytest.mark.slow
def test_token_budgets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The token-budget block, after the block that defines ``rows``."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    select_code, _, tokens_code = blocks("python")
    namespace: dict[str, object] = {}
    exec(compile(select_code, "README: select", "exec"), namespace)
    capsys.readouterr()
    exec(compile(tokens_code, "README: token budgets", "exec"), namespace)
    assert capsys.readouterr().out.splitlines() == ["2 True", "[50, 50]"]
