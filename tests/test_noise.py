"""benchmarks/noise.py: planted noise is deterministic, placed where asked, and always a change."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import noise


def pool(n_clusters: int = 4, per: int = 30) -> tuple[list[dict[str, Any]], np.ndarray]:
    records = []
    for c in range(n_clusters):
        for j in range(per):
            answer = f"Topic {c} answer {j} starts here. Then a second sentence {j} follows."
            if j % 10 == 0:
                answer = "yes"  # neither shufflable nor truncatable
            records.append(
                {
                    "id": f"r{c}-{j}",
                    "source": f"s{c}",
                    "messages": [
                        {"role": "user", "content": f"question {c}-{j}"},
                        {"role": "assistant", "content": answer},
                    ],
                }
            )
    return records, np.repeat(np.arange(n_clusters), per)


def answer(record: dict[str, Any]) -> str:
    return str(record["messages"][-1]["content"])


@pytest.mark.parametrize("kind", noise.KINDS)
def test_spread_changes_only_the_named_rows_and_spreads_over_clusters(kind: str) -> None:
    records, labels = pool()
    out, noisy, summary = noise.plant(records, labels, [noise.NoiseSpec(kind, 0.2, "spread")], 3)
    changed = {i for i, (a, b) in enumerate(zip(records, out, strict=True)) if a != b}
    assert changed == set(noisy)
    assert summary["noisy"] == len(noisy) > 0
    per_cluster = np.bincount(labels[sorted(noisy)], minlength=4)
    assert per_cluster.tolist() == [6, 6, 6, 6]  # round(0.2 * 30) per cluster, all eligible
    for i in noisy:
        assert out[i]["messages"][0] == records[i]["messages"][0]  # prompt untouched
        assert out[i]["id"] == records[i]["id"]


def test_kinds_do_what_they_say() -> None:
    records, labels = pool()
    for kind in noise.KINDS:
        out, noisy, _ = noise.plant(records, labels, [noise.NoiseSpec(kind, 0.5, "spread")], 0)
        for i in noisy:
            old, new = answer(records[i]), answer(out[i])
            if kind == "shuffle":
                assert sorted(new.split()) == sorted(old.split()) and new != old
            elif kind == "truncate":
                assert old.startswith(new) and new.endswith(".") and len(new) < len(old)
            else:
                donors = [j for j, r in enumerate(records) if answer(r) == new]
                assert any(labels[j] != labels[i] for j in donors)


def test_ineligible_rows_stay_clean_and_are_counted() -> None:
    records, labels = pool()
    _, noisy, summary = noise.plant(
        records, labels, [noise.NoiseSpec("shuffle", 1.0, "clusters", clusters=1)], 0
    )
    (spec,) = summary["specs"]
    assert spec["noisy"] == 27 and spec["ineligible"] == 3  # the three "yes" rows
    assert all(answer(records[i]) != "yes" for i in noisy)
    assert len({int(labels[i]) for i in noisy}) == 1


def test_whole_clusters_by_fraction_fit_the_fraction() -> None:
    records, labels = pool(n_clusters=5, per=30)
    _, noisy, _ = noise.plant(records, labels, [noise.NoiseSpec("swap", 0.45, "clusters")], 1)
    hit = {int(labels[i]) for i in noisy}
    assert len(hit) == 2  # two whole clusters of 30 fit in 0.45 * 150 = 67.5 rows, three do not
    assert all((labels[sorted(noisy)] == c).sum() == 30 for c in hit)


def test_specs_do_not_overlap_and_same_seed_same_bytes(tmp_path: Path) -> None:
    records, labels = pool()
    specs = [
        noise.NoiseSpec("swap", 1.0, "clusters", clusters=1),
        noise.NoiseSpec("shuffle", 0.3, "spread"),
        noise.NoiseSpec("truncate", 0.3, "spread"),
    ]
    a = noise.plant(records, labels, specs, 7)
    b = noise.plant(records, labels, specs, 7)
    c = noise.plant(records, labels, specs, 8)
    assert a[1] == b[1] and a[0] == b[0]
    assert a[1] != c[1]
    assert sum(s["noisy"] for s in a[2]["specs"]) == len(a[1])
    noise.write_outputs(tmp_path / "a.jsonl.gz", *a)
    noise.write_outputs(tmp_path / "b.jsonl.gz", *b)
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    meta = json.loads((tmp_path / "a.noise.json").read_text())
    assert set(meta["ids"]) == {records[i]["id"] for i in a[1]}


def test_cli_writes_pool_and_ids_and_rejects_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records, _ = pool()
    src = tmp_path / "pool.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = [str(src), "--kind", "shuffle", "--fraction", "0.25", "--where", "spread", "--k", "0"]
    assert noise.main(args) == 0
    with gzip.open(tmp_path / "pool.noisy.jsonl.gz", "rt") as fh:
        written = [json.loads(line) for line in fh]
    meta = json.loads((tmp_path / "pool.noisy.noise.json").read_text())
    assert len(written) == len(records)
    assert len(meta["ids"]) == 30  # round(0.25 * 120), drawn among the 108 shufflable rows
    assert {r["id"] for r, o in zip(written, records, strict=True) if r != o} == set(meta["ids"])

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "messages": []}\n{oops\n')
    assert noise.main([str(bad), "--kind", "swap", "--fraction", "0.5", "--where", "spread"]) == 2
    assert "bad.jsonl:2: not JSON" in capsys.readouterr().err
    assert (
        noise.main(
            [
                str(src),
                "--kind",
                "swap",
                "--fraction",
                "0.5",
                "--where",
                "spread",
                "--kind",
                "shuffle",
            ]
        )
        == 2
    )
    assert "as many --fraction" in capsys.readouterr().err
