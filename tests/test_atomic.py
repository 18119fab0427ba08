"""kmq.atomic.build_folder: a folder appears whole or not at all, and a concurrent copy wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmq.atomic import build_folder


def test_the_folder_appears_whole(tmp_path: Path) -> None:
    folder = tmp_path / "cache" / "model"

    def build(tmp: Path) -> None:
        assert tmp.parent == folder.parent and tmp.name.startswith(".model.")
        (tmp / "config.json").write_text("{}")
        (tmp / "weights.bin").write_bytes(b"12")

    build_folder(folder, "config.json", build)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "weights.bin"]
    assert [p.name for p in folder.parent.iterdir()] == ["model"]  # no temporary left


def test_an_interrupted_build_leaves_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "model"

    def build(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"1")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_folder(folder, "config.json", build)
    assert list(tmp_path.iterdir()) == []


def test_a_copy_finished_first_by_another_process_is_kept(tmp_path: Path) -> None:
    folder = tmp_path / "model"

    def build(tmp: Path) -> None:
        (tmp / "config.json").write_text("mine")
        folder.mkdir()  # another process renamed its copy into place meanwhile
        (folder / "config.json").write_text("theirs")
        (folder / "weights.bin").write_bytes(b"1")  # a non-empty folder: rename fails

    build_folder(folder, "config.json", build)
    assert (folder / "config.json").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]

    def without_marker(tmp: Path) -> None:
        (tmp / "x").write_text("1")

    other = tmp_path / "other"
    other.mkdir()
    (other / "stray").write_text("1")  # in the way, and not a finished copy
    with pytest.raises(OSError, match=r"not empty|exists"):
        build_folder(other, "config.json", without_marker)
