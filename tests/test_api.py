"""The Python front door: every method and its options through ``kmq.select``, settings checked
before any embedding with errors that name the Python parameter, unknown options refused."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kmq
from kmq.cli import main
from kmq.errors import KmqError, ParameterError
from kmq.feedback import get_feedback_scorer
from kmq.quality import get_quality_scorer
from kmq.registry import RUN_SETTINGS, options_of
from kmq.selectors import SELECTORS, QDITSelector, get_selector
from tests.conftest import FakeEncoder, make_blobs
from tests.test_pipeline import config, write_pool

X, LABELS = make_blobs(240, 6, seed=3)
QUALITY = np.random.default_rng(0).random(len(X))

# A value of every option of every method that differs from its default
OPTION_VALUES: dict[str, Any] = {
    "allocation": "proportional",
    "weighting": "softmax",
    "temperature": 0.5,
    "candidates": 2,
    "threshold": 0.5,
    "alpha": 0.9,
    "n_neighbors": 7,
    "centroid_cosine": np.linspace(0, 1, len(X)),
}
# select()'s names of the options it does not pass under the selector's own name
SELECT_NAMES = {"weighting": "quality_weighting", "candidates": "quality_candidates"}


def method_options(name: str) -> list[str]:
    return sorted((options_of(SELECTORS[name]) or set()) - set(RUN_SETTINGS))


@pytest.mark.parametrize("method", sorted(SELECTORS))
def test_every_method_and_its_options_are_reachable_from_kmq_select(method: str) -> None:
    options = {option: OPTION_VALUES[option] for option in method_options(method)}
    through_select = {SELECT_NAMES.get(k, k): v for k, v in options.items()}
    result = kmq.select(
        X, 24, method=method, labels=LABELS, quality=QUALITY, seed=1, **through_select
    )
    direct = get_selector(method, **options).select(X, 24, labels=LABELS, quality=QUALITY, seed=1)
    assert np.array_equal(result.indices, direct.indices)
    assert result.method == direct.method


def test_qdit_alpha_and_a_selector_object_through_kmq_select() -> None:
    by_name = kmq.select(X, 20, method="qdit", alpha=0.9, quality=QUALITY, seed=0)
    by_object = kmq.select(X, 20, method=QDITSelector(alpha=0.9), quality=QUALITY, seed=0)
    low = kmq.select(X, 20, method="qdit", alpha=0.0, quality=QUALITY, seed=0)
    assert np.array_equal(by_name.indices, by_object.indices)
    assert not np.array_equal(by_name.indices, low.indices)  # the option reached the method
    with pytest.raises(ParameterError, match="give alpha to it, not to select"):
        kmq.select(X, 20, method=QDITSelector(), alpha=0.9)


def test_unknown_keywords_are_refused() -> None:
    with pytest.raises(ParameterError, match=r"method 'kmq' takes no option temprature \(its"):
        get_selector("kmq", temprature=5)
    with pytest.raises(ParameterError, match="takes no option temprature"):
        kmq.select(X, 10, method="kmq", temprature=5)
    with pytest.raises(ParameterError, match="method 'random' takes no option alpha"):
        kmq.select(X, 10, method="random", alpha=0.9)
    with pytest.raises(ParameterError, match="quality scorer 'length' takes no option modle"):
        get_quality_scorer("length", modle="x")
    with pytest.raises(ParameterError, match="feedback scorer 'similarity' takes no option x"):
        get_feedback_scorer("similarity", x=1)
    # None is "the default"; run settings (device, cache folder, …) go where they are taken
    assert get_quality_scorer("length", model=None, device="cpu", cache_dir=None).name
    with pytest.raises(ParameterError, match=r"^quality_weighting must be one of"):
        kmq.select(X, 10, method="kmq", labels=LABELS, quality_weighting="cubic")


class CountingEncoder(FakeEncoder):
    """The fake encoder, counting the texts it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.texts = 0

    def encode(self, texts: Any) -> np.ndarray:
        self.texts += len(texts)
        return super().encode(texts)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"method": "best"}, r"^method must be one of kmq, "),
        ({"allocation": "even"}, r"^allocation must be one of "),
        ({"quality_weighting": "cubic"}, r"^quality_weighting must be one of "),
        ({"temperature": 0.0}, r"^temperature must be > 0, got 0.0"),
        ({"method": "qdit", "qdit_alpha": 2}, r"^qdit_alpha must be a number in \[0, 1\]"),
        ({"method": "qdit", "n_neighbors": 0}, r"^n_neighbors must be a positive integer"),
        ({"method": "deita", "deita_threshold": 9}, r"^deita_threshold is a squared L2"),
        ({"quality": "bleu"}, r"^quality must be one of ifd, "),
        (
            {"quality": "ifd", "quality_options": {"max_lenght": 9}},
            r"^quality scorer 'ifd' takes no option quality_options\['max_lenght'\]",
        ),
        ({"quality_candidates": -1}, r"^quality_candidates must be a positive integer M"),
        ({"view": "all"}, r"^view must be one of user, full"),
        (
            {"quality": "length", "quality_field": "quality"},
            r"^give either quality 'length' \(a scorer\) or quality_field 'quality' \(a column\)",
        ),
        ({"output_format": "csv"}, r"^output_format must be one of native, "),
        ({"mix": {"a": 1.0}, "streaming": True}, r"^mix applies to in-memory runs, not streaming"),
        ({"kmeans_sample": 10}, r"^kmeans_sample applies to streaming runs only"),
        ({"budget": 5000}, r"^budget 5000 exceeds the 60 rows left to select of 60"),
        ({"k": 500}, r"^k 500 exceeds the 60 valid rows"),
        ({"exclude": "missing.txt"}, r"^exclude file not found: missing.txt"),
        ({"engine": "spark"}, r"^engine must be one of local, ray"),
    ],
)
def test_a_bad_setting_fails_before_any_embedding(
    tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    encoder = CountingEncoder()
    with pytest.raises(KmqError, match=message):
        kmq.select_file(config(tmp_path, pool, encoder=encoder, **settings))
    assert encoder.texts == 0
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--temperature", "0"], "error: --temperature must be > 0, got 0.0"),
        (["--method", "qdit", "--knn", "0"], "error: --knn must be a positive integer, got 0"),
        (["--niter", "0"], "error: --niter must be an integer >= 1, got 0"),
        (
            ["--quality", "length", "--quality-model", "m"],
            "error: quality scorer 'length' takes no option --quality-model",
        ),
        (
            ["--quality", "length", "--quality-field", "quality"],
            "error: give either --quality 'length' (a scorer) or --quality-field 'quality'",
        ),
        (
            ["--mix", "a=1", "--streaming"],
            "error: --mix applies to in-memory runs, not --streaming",
        ),
        (
            ["--kmeans-sample", "10", "--output-shard-rows", "5"],
            "error: --kmeans-sample, --output-shard-rows apply to --streaming runs only",
        ),
        (["--budget", "5000"], "error: --budget 5000 exceeds the 60 rows left to select of 60"),
        (["--exclude", "missing.txt"], "error: --exclude file not found: missing.txt"),
    ],
)
def test_the_cli_names_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    assert main(["select", str(pool), "--out", str(tmp_path / "out"), *flags]) == 2
    assert message in capsys.readouterr().err


def flags_in_raises(root: Path) -> list[str]:
    """``file:line: text`` of every string in a ``raise`` under ``root`` that spells a flag
    (``--name``), commands in backticks and ``pip install`` lines aside."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                text = ast.unparse(node.exc)
                if re.search(r"--[a-z]", re.sub(r"`[^`]*`|pip install [^'\"]*", "", text)):
                    found.append(f"{path.relative_to(root)}:{node.lineno}: {text}")
    return found


def test_library_errors_name_parameters_not_flags(tmp_path: Path) -> None:
    library = Path(kmq.__file__).parent
    offenders = [f for f in flags_in_raises(library) if not f.startswith("cli/")]
    assert not offenders, "\n".join(offenders)
    planted = tmp_path / "planted.py"
    planted.write_text('raise ValueError(f"--budget {n} is too big")\n', encoding="utf-8")
    assert flags_in_raises(tmp_path) == ["planted.py:1: ValueError(f'--budget {n} is too big')"]


def test_select_config_defaults_are_the_flags_defaults() -> None:
    from kmq.cli import build_parser
    from kmq.cli.args import select_config

    args = build_parser().parse_args(["select", "pool.jsonl", "--out", "o"])
    parsed = select_config(args, out="o", method=args.method)
    defaults = kmq.SelectConfig(input="pool.jsonl", out="o")
    different = {
        name: (getattr(parsed, name), getattr(defaults, name))
        for name in inspect.signature(kmq.SelectConfig).parameters
        if getattr(parsed, name) != getattr(defaults, name)
    }
    assert set(different) == {"quality_options"}  # the scorer flags, all None (defaults)
    assert not any(parsed.quality_options.values())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rounds": 0}, r"^rounds must be an integer >= 1, got 0"),
        ({"rule": "eq6"}, r"^rule must be one of paper, softmax"),
        ({"feedback": "bleu"}, r"^feedback must be one of "),
        (
            {"feedback": "similarity", "feedback_options": {"modle": "x"}},
            r"^feedback scorer 'similarity' takes no option feedback_options\['modle'\]",
        ),
    ],
)
def test_a_bad_iterate_setting_fails_before_any_embedding(
    tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    pool = tmp_path / "pool.jsonl"
    write_pool(pool)
    encoder = CountingEncoder()
    pool_config = config(tmp_path, pool, encoder=encoder, out=str(tmp_path / "run"))
    loop = kmq.IterativeSelection(tmp_path / "run", kmq.IterateConfig(pool=pool_config, **settings))
    with pytest.raises(ParameterError, match=message):
        loop.init()
    assert encoder.texts == 0
    assert not (tmp_path / "run" / "config.json").exists()
