from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from kmq.config import SelectConfig
from kmq.errors import KmqError
from kmq.loop import IterativeSelection, source_weights
from kmq.outputs import CLUSTERS, SelectRun
from kmq.pipeline import select_file
from kmq.report import write_report
from kmq.report.markdown import markdown_html
from kmq.report.terms import distinctive_terms
from kmq.reweight import uniform
from tests.test_loop import (
    TOPICS,
    TopicEncoder,
    WordOverlapFeedback,
    make_config,
    run_loop,
)

SECTIONS = ("summary", "composition", "cluster-map", "clusters", "quality")
WORDS = {
    "math": "integer fraction equation sum",
    "code": "python function compile loop",
    "poem": "rhyme stanza verse sonnet",
    "trivia": "capital river country famous",
    "cooking": "recipe oven flour bake",
    "travel": "flight hotel passport beach",
}
HOSTILE = r'<script>alert("x")</script> & <b>bold</b> $\nomath$'


# -- fixtures -----------------------------------------------------------------------------------


def write_pool(path: Path, n: int = 120) -> None:
    """Six topics (the topic word first, for TopicEncoder), a quality field, one bad row and one
    row whose source and prompt are full of HTML."""
    lines = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        prompt = f"{topic} question {i} about {WORDS[topic]}"
        if i == 7:
            prompt += " " + HOSTILE
        row = {
            "id": f"ex-{i}",
            "source": HOSTILE if i == 7 else topic,
            "quality": round((i % 10) / 10, 1),
            "messages": [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": f"{topic} answer {i}"},
            ],
        }
        lines.append(json.dumps(row))
    lines.insert(5, json.dumps({"id": "broken", "messages": []}))
    path.write_text("\n".join(lines) + "\n")


def select_run(tmp_path: Path, method: str = "kmq") -> SelectRun:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    config = SelectConfig(
        input=str(pool),
        out=str(tmp_path / "sel"),
        budget=0.2,
        method=method,
        k=6 if method != "random" else "auto",
        seed=0,
        quality_field="quality",
        encoder=TopicEncoder(),
        cache_dir=str(tmp_path / "cache"),
        on_invalid="skip",
        progress=False,
    )
    return select_file(config)


@pytest.fixture
def selected(tmp_path: Path) -> SelectRun:
    return select_run(tmp_path)


@pytest.fixture
def iterated(tmp_path: Path) -> IterativeSelection:
    return run_loop(tmp_path, "run")


class Page(HTMLParser):
    """Section ids, tables (cell texts, with the section they are in) and image sources."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.tables: list[tuple[str | None, list[list[str]]]] = []
        self.kv_tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self.scripts = 0
        self._section: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if attr.get("id"):
            self.ids.append(str(attr["id"]))
        if tag == "section":
            self._section = attr.get("id")
        elif tag == "table":
            self.tables.append((self._section, []))
            if attr.get("class") == "kv":
                self.kv_tables.append(self.tables[-1][1])
        elif tag == "tr":
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(str(attr.get("src")))
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def table(self, section: str, first_header: str) -> list[list[str]]:
        """The rows (header first) of the table in ``section`` whose first header matches."""
        for where, rows in self.tables:
            if where == section and rows and rows[0] and rows[0][0] == first_header:
                return rows
        raise AssertionError(f"no table starting with {first_header!r} in #{section}")

    def kv(self) -> dict[str, str]:
        """The summary's key-value table."""
        (rows,) = self.kv_tables
        return dict(rows)


def read_page(path: Path) -> tuple[str, Page]:
    text = path.read_text(encoding="utf-8")
    return text, Page(text)


# -- select output ------------------------------------------------------------------------------


def test_select_report_matches_the_manifest(selected: SelectRun) -> None:
    path = write_report(selected.out)
    assert path == selected.out / "report.html"
    _, page = read_page(path)
    assert set(SECTIONS) <= set(page.ids)
    m = selected.manifest.to_dict()
    counts = m["counts"]
    summary = page.kv()
    assert summary["budget"] == f"{counts['budget']:,} rows (0.2 of the valid rows)"
    assert summary["selected"] == f"{counts['selected']:,}"
    assert summary["k"] == f"{m['clusters']['k']} (given)"
    assert summary["seed"] == "0"
    assert summary["rejected"] == "1 (in rejects.jsonl)"
    assert summary["rows"] == f"{counts['valid']} valid of {counts['records']} read"
    timings = {row[0]: row[1] for row in page.table("summary", "stage")[1:]}
    assert set(m["timings_s"]) < set(timings) and "total" in timings
    sources = {row[0]: row[1:] for row in page.table("composition", "source")[1:]}
    assert set(sources) == set(m["sources"]["pool"])
    for source, (pool, _, picked, _) in sources.items():
        assert int(pool) == m["sources"]["pool"][source]
        assert int(picked) == m["sources"]["selected"].get(source, 0)


def test_select_report_cluster_table(selected: SelectRun) -> None:
    _, page = read_page(write_report(selected.out))
    header, *rows = page.table("clusters", "cluster")
    assert header[:7] == ["cluster", "label", "size", "quota", "picked", "picked %", "mean quality"]
    clusters = selected.manifest.clusters
    assert len(rows) == clusters["k"]
    for row in rows:
        j = int(row[0])
        assert int(row[2]) == clusters["pool"][j]
        assert int(row[3]) == clusters["quota"][j]
        assert int(row[4]) == clusters["selected"][j]
    assert [int(r[2]) for r in rows] == sorted(clusters["pool"], reverse=True)
    # the topic's own words are what sets each cluster apart
    for row in rows:
        topic = next(t for t in TOPICS if t in row[-1])
        assert set(row[1].split(" · ")) <= set(WORDS[topic].split()) | {topic, "question"}
    # the label is the first terms; example prompts come from the cluster
    assert all(row[-2].startswith(row[1].split(" · ")[0]) for row in rows)


def test_select_report_quality_and_map(selected: SelectRun) -> None:
    _, page = read_page(write_report(selected.out))
    stats = {row[0]: row[1] for row in page.table("quality", "rows")[1:]}
    assert stats == {"pool": str(selected.manifest.counts["valid"]), "selected": "24"}
    assert len(page.images) == 4  # sources, clusters, map, quality
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_is_self_contained_and_escaped(selected: SelectRun) -> None:
    text, page = read_page(write_report(selected.out))
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"<(link|iframe)\b|<script[^>]*\bsrc=|@import|url\(", text)
    assert page.scripts == 1  # the table sorter; the source's <script> is escaped
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert "<b>bold</b>" not in text


def test_cluster_table_is_capped(selected: SelectRun, tmp_path: Path) -> None:
    text, page = read_page(write_report(selected.out, tmp_path / "small.html", max_clusters=2))
    assert len(page.table("clusters", "cluster")) == 1 + 2
    assert "the 2 largest of 6 clusters are listed" in text
    with pytest.raises(KmqError, match="max_clusters must be >= 1, got 0"):
        write_report(selected.out, max_clusters=0)


def test_missing_input_is_said_not_fatal(selected: SelectRun) -> None:
    Path(selected.manifest.input["path"]).unlink()
    text, page = read_page(write_report(selected.out))
    assert "the input could not be read" in text
    assert set(SECTIONS) <= set(page.ids)
    header = page.table("clusters", "cluster")[0]
    assert "distinctive terms" not in header and header[1] == "label"
    assert page.table("composition", "source")  # from the manifest and the selection table


def test_changed_input_is_not_used(selected: SelectRun) -> None:
    pool = Path(selected.manifest.input["path"])
    pool.write_text(pool.read_text().replace("question", "zquestion"))
    text, _ = read_page(write_report(selected.out))
    assert "changed since the selection" in text
    assert "zquestion" not in text


def test_without_clusters_npz(selected: SelectRun, tmp_path: Path) -> None:
    (selected.out / CLUSTERS).unlink()
    text, page = read_page(write_report(selected.out))
    assert f"no {CLUSTERS} in the folder" in text
    assert "no centroids" in text
    assert len(page.table("clusters", "cluster")) == 1 + 6  # terms from the selected rows
    centroids = np.eye(6, 4)
    _, page = read_page(write_report(selected.out, centroids=centroids))
    assert len(page.images) == 4
    with pytest.raises(KmqError, match=r"k=6 rows, got shape \(5, 4\)"):
        write_report(selected.out, centroids=np.eye(5, 4))


def test_a_selection_without_clusters(tmp_path: Path) -> None:
    run = select_run(tmp_path, method="random")
    text, page = read_page(write_report(run.out))
    assert set(SECTIONS) <= set(page.ids)
    assert page.kv()["k"] == "no clustering" and page.kv()["method"] == "random"
    assert text.count("this selection has no clusters") == 3  # composition, map, table
    assert len(page.table("composition", "source")) == 1 + 7


# -- iterate run --------------------------------------------------------------------------------


def test_iterate_report_matches_the_state(iterated: IterativeSelection) -> None:
    path = write_report(iterated.dir.path)
    _, page = read_page(path)
    assert {*SECTIONS, "rounds"} <= set(page.ids)
    state = iterated.state()
    prepare = state["prepare"]
    summary = page.kv()
    assert summary["budget"] == f"{prepare['budget']} rows"
    assert summary["selected"] == "30"
    assert summary["k"] == "6 (given)"
    assert summary["rounds"] == "3 of [10, 10, 10] rows; 3 done"
    # weight by source: the start, then after each round, as displayed
    table = page.table("rounds", "source")
    assert table[0] == ["source", "start", "after round 1", "after round 2", "after round 3"]
    start = source_weights(uniform(6).tolist(), prepare["cluster_sources"])
    for source, *cells in table[1:]:
        after = [r["source_weights_after"][source] for r in state["rounds"]]
        assert cells == [f"{w:.3f}" for w in [start[source], *after]]
    # per round: rows picked and mean feedback
    rounds = page.table("rounds", "round")[1:]
    assert [int(r[1]) for r in rounds] == [10, 10, 10]
    for row, entry in zip(rounds, state["rounds"], strict=True):
        scores = [f["score"] for f in iterated.dir.read_jsonl("feedback.jsonl", entry["round"])]
        assert row[-1] == f"{np.mean(scores):.4g}"


def test_iterate_report_movers_and_final_weights(iterated: IterativeSelection) -> None:
    _, page = read_page(write_report(iterated.dir.path))
    last = iterated.state()["rounds"][-1]["weights_after"]
    clusters = page.table("clusters", "cluster")
    column = clusters[0].index("final weight")
    for row in clusters[1:]:
        assert row[column] == f"{last[int(row[0])]:.4f}"
    tables = [rows for where, rows in page.tables if where == "rounds" and rows[0][0] == "cluster"]
    boosted, starved = tables
    assert boosted[0][-1] == "ratio" and boosted[0][-2] == "weight after round 3"
    ratios = [float(r[-1]) for r in boosted[1:] + starved[1:]]
    assert float(boosted[1][-1]) == max(ratios) and float(starved[1][-1]) == min(ratios)
    assert {r[0] for r in boosted[1:]}.isdisjoint(r[0] for r in starved[1:])
    # math and code are answered right by the fake trainer: their clusters are starved
    topics = {row[1].split(" · ")[0] for row in starved[1:]}
    assert topics & {"math", "code"}


def test_unfinished_iterate_run(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    config = make_config(tmp_path, pool, external=True)
    config.pool.on_invalid = "skip"
    loop = IterativeSelection(tmp_path / "ext", config, feedback=WordOverlapFeedback())
    loop.start_external()
    ids = loop.dir.read("picked.json", 1)["ids"]
    loop.take_scores(1, {i: float(n % 3) for n, i in enumerate(ids)})
    loop.advance()
    _, page = read_page(write_report(loop.dir.path))
    summary = page.kv()
    assert summary["selected"] == "20 so far"
    assert summary["finished"] == "no"
    assert summary["rejected"] == "1"
    assert [r[2] for r in page.table("rounds", "round")[1:]] == [
        "select, score, reweight",
        "select",
    ]
    assert page.table("rounds", "source")[0] == ["source", "start", "after round 1"]


# -- benchmark results and the small parts ------------------------------------------------------


def test_benchmark_folder(tmp_path: Path) -> None:
    figure = pytest.importorskip("matplotlib.figure")
    (tmp_path / "speed.md").write_text(
        "# Speed <fast>\n\nRows per **second**, see `bench.py`.\n\n"
        "| method | rows/s |\n|---|---:|\n| kmq | 1,200 |\n| a \\| b | 30 |\n\n"
        "- one\n- two\n\n```\nmake <bench>\n```\n"
    )
    fig = figure.Figure(figsize=(2, 1))
    fig.subplots().plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "speed.png")
    fig.savefig(tmp_path / "other.png")
    text, page = read_page(write_report(tmp_path))
    assert "benchmarks" in page.ids and "bench-speed" in page.ids
    assert page.table("benchmarks", "method") == [
        ["method", "rows/s"],
        ["kmq", "1,200"],
        ["a | b", "30"],
    ]
    assert len(page.images) == 2
    assert "&lt;fast&gt;" in text and "make &lt;bench&gt;" in text
    assert '<td style="text-align:right">1,200</td>' in text


def test_not_a_report_folder(tmp_path: Path) -> None:
    with pytest.raises(KmqError, match="neither a kmq select output folder"):
        write_report(tmp_path)


def test_markdown_html() -> None:
    out = markdown_html("## Title\ntext `x<y`\nmore\n- **a**\n  b\n- c\n\n| a |\n|:-:|\n| 1 |\n")
    assert out == (
        "<h4>Title</h4><p>text <code>x&lt;y</code> more</p>"
        "<ul><li><strong>a</strong> b</li><li>c</li></ul>"
        '<table class="sortable"><thead><tr><th style="text-align:center">a</th></tr></thead>'
        '<tbody><tr><td style="text-align:center">1</td></tr></tbody></table>'
    )


def test_distinctive_terms() -> None:
    texts = [
        "the oven and the flour and the recipe",
        "bake a recipe with flour",
        "the python function and the loop",
        "a python loop",
    ]
    terms = distinctive_terms(texts, np.array([0, 0, 1, 1]), 3)
    assert set(terms[0][:2]) == {"flour", "recipe"}
    assert set(terms[1][:2]) == {"loop", "python"}
    assert terms[2] == []


def test_distinctive_terms_leave_out_stop_words_and_unclustered_rows() -> None:
    stop_words = pytest.importorskip("sklearn.feature_extraction.text").ENGLISH_STOP_WORDS
    texts = [
        "My cat and her cats sleep on the sofa; the cat is always there when we are",
        "Why does a cat purr? Cats purr when they are content, or so they say (2024 x_y ab)",
        "How do I train my dog to sit? The dog should sit before every walk",
        "Dogs need a walk: take the dog out twice a day, whatever the weather",
        "cat cat cat dog dog dog",
    ]
    terms = distinctive_terms(texts, np.array([0, 0, 1, 1, -1]), 2)
    assert {"cat", "cats"} & set(terms[0][:2]) and "dog" in terms[1][:2]
    assert not set(terms[0] + terms[1]) & stop_words
    assert all(len(t) >= 3 and t.isalpha() for t in terms[0] + terms[1])
    assert "dog" not in terms[0] and "cat" not in terms[1]  # the unclustered row counts nowhere


def test_distinctive_terms_rank_by_c_tf_idf() -> None:
    # cluster 1: banana and cherry are equally frequent in it; cherry is rarer over all
    # clusters (idf log(1 + 2.5 / 1) against log(1 + 2.5 / 2)), so it comes first
    terms = distinctive_terms(["apple apple banana", "banana cherry"], np.array([0, 1]), 2)
    assert terms == [["apple", "banana"], ["cherry", "banana"]]
    assert distinctive_terms(["the and", "of"], np.array([0, 1]), 2) == [[], []]


def test_report_without_scikit_learn_says_so(
    selected: SelectRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.feature_extraction.text", None)
    text, page = read_page(write_report(selected.out))
    assert "no distinctive terms or labels" in text
    assert "pip install &#x27;kmq[report]&#x27;" in text
    header = page.table("clusters", "cluster")[0]
    assert "distinctive terms" not in header


# -- a real browser -----------------------------------------------------------------------------


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if found is None:
        pytest.skip("chromium not installed: apt-get install chromium")
    return found


def headless(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run(
        [browser, *flags, *args], capture_output=True, text=True, timeout=120, check=True
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["select", "iterate"])
def test_report_renders_in_chromium(kind: str, tmp_path: Path) -> None:
    browser = chromium()
    image = pytest.importorskip("matplotlib.image")
    folder = select_run(tmp_path).out if kind == "select" else run_loop(tmp_path, "run").dir.path
    report = write_report(folder)
    url = report.resolve().as_uri()
    shot = tmp_path / "shot.png"
    headless(
        browser, tmp_path / "profile-1", f"--screenshot={shot}", "--window-size=1280,2000", url
    )
    pixels = image.imread(shot)[..., :3]
    assert (pixels < 0.9).any(axis=-1).mean() > 0.02  # not blank
    assert len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50
    dom = headless(browser, tmp_path / "profile-2", "--dump-dom", url).stdout
    ids = {*SECTIONS, "rounds"} if kind == "iterate" else set(SECTIONS)
    assert ids <= set(Page(dom).ids)
    # the table sorter: two clicks on "cluster" sort the table by cluster id, descending
    click = "<script>var th = document.querySelector('#clusters th'); th.click(); th.click();"
    click += "</script>"
    clicked = tmp_path / "clicked.html"
    clicked.write_text(report.read_text().replace("</body>", click + "</body>"))
    dom = headless(browser, tmp_path / "profile-3", "--dump-dom", clicked.as_uri()).stdout
    order = [int(row[0]) for row in Page(dom).table("clusters", "cluster")[1:]]
    assert order == sorted(order, reverse=True) and len(order) > 1
    assert '<th data-order="desc">cluster</th>' in dom


def test_select_report_lengths_match_the_statistics(selected: SelectRun) -> None:
    _, page = read_page(write_report(selected.out))
    stats = selected.manifest.statistics
    assert stats is not None
    header, pool, picked = page.table("lengths", "part")
    assert header == ["part", "rows", "mean turns", "mean characters"]  # no tokenizer: no tokens
    assert pool[:2] == ["pool", str(stats["pool"]["rows"])]
    assert picked[:2] == ["selected", str(stats["selected"]["rows"])]
    _, *by_source = page.table("lengths", "source")
    shown = {row[0]: int(row[1]) for row in by_source}
    assert shown == {
        f"{name} {part}": group[part]["rows"]
        for name, group in stats["by_source"].items()
        for part in ("pool", "selected")
    }
