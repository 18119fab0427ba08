"""Engine options are checked (and a missing Ray named) without Ray installed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kmq.config import SelectConfig
from kmq.engines import get_engine
from kmq.errors import KmqError, ParameterError
from tests.test_pipeline import write_pool


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    path = tmp_path / "pool.jsonl"
    write_pool(path)
    return path


def test_bad_engine_options_are_named() -> None:
    address = r"^engine_options\['address'\] is an option of the ray engine; got engine 'local'"
    with pytest.raises(ParameterError, match=address):
        get_engine("local", address="auto")
    with pytest.raises(ParameterError, match=r"^engine must be one of local, ray; got 'spark'"):
        get_engine("spark")
    with pytest.raises(ParameterError, match=r"^engine_options\['workers'\] is an option of"):
        SelectConfig(input="x", out="y", engine_options={"workers": 2}).validate()
    with pytest.raises(ParameterError, match=r"^engine_options\['port'\] is not an option"):
        get_engine("local", port=1)


def test_cli_refuses_ray_flags_without_the_ray_engine(
    tmp_path: Path, pool: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kmq.cli import main

    argv = ["select", str(pool), "--out", str(tmp_path / "out"), "--ray-address", "auto"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == "error: --ray-address is an option of the ray engine; got --engine 'local'\n"
    assert not (tmp_path / "out").exists()


def test_a_missing_ray_names_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(KmqError, match=r"pip install 'kmq\[ray\]'"):
        get_engine("ray")
