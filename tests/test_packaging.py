"""The install metadata: extras must not replace a user's torch build."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def extras() -> dict[str, list[str]]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)["project"]["optional-dependencies"]


def test_no_extra_pins_torch_exactly_and_the_cpu_build_satisfies_every_range() -> None:
    torch_reqs = {
        extra: Requirement(req)
        for extra, reqs in extras().items()
        for req in reqs
        if Requirement(req).name == "torch"
    }
    assert set(torch_reqs) >= {"embed", "lm", "static"}
    for extra, req in torch_reqs.items():
        operators = {spec.operator for spec in req.specifier}
        assert not operators & {"==", "==="}, f"extra {extra!r} pins torch exactly: {req}"
        assert req.specifier.contains("2.13.0+cpu"), f"extra {extra!r}: {req} rejects 2.13.0"


def test_the_project_install_puts_the_cpu_torch_in_first() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    lines = [line.strip() for line in makefile.splitlines()]
    torch_line = next(i for i, line in enumerate(lines) if re.search(r"torch==2\.13\.0", line))
    dev_line = next(i for i, line in enumerate(lines) if "-e '.[dev]'" in line)
    assert torch_line < dev_line
