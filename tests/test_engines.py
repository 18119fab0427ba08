"""The Ray engine selects exactly what the local engine selects, whatever its number of workers."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kmq.clustering import kmeans
from kmq.config import SelectConfig
from kmq.engines import get_engine
from kmq.errors import KmqError
from kmq.loop import IterateConfig, IterativeSelection
from kmq.outputs import TABLE
from kmq.pipeline import select, select_file
from kmq.selectors import get_selector
from tests.conftest import SHARED, FakeEncoder, make_blobs

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ["math", "code", "poem", "trivia", "cooking", "travel", "law"]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """A local two-CPU Ray runtime for the module (workers import ``tests`` from the repo)."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}},
    )
    yield
    ray.shutdown()


def write_pool(path: Path, n: int) -> None:
    """A messages-format JSONL pool with a ``quality`` column."""
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        rows.append(
            {
                "id": f"ex-{i}",
                "source": topic,
                "quality": (i * 37 % 101) / 100,
                "messages": [
                    {"role": "user", "content": f"{topic} question {i}"},
                    {"role": "assistant", "content": f"{topic} answer {i}"},
                ],
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """9 000 rows: three embedding-cache shards, so several encoder calls run on Ray."""
    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    write_pool(path, 9000)
    return path


def run_select(folder: Path, pool: Path, method: str, **engine: object) -> Path:
    """``select_file`` into ``folder/out`` with its own cache (so every run embeds), checking
    that the Ray engine embeds on its replicas, not on the driver."""
    encoder = FakeEncoder()
    config = SelectConfig(
        input=str(pool),
        out=str(folder / "out"),
        budget=400,
        k=16,
        method=method,
        quality_field="quality" if method == "kmq" else None,
        encoder=encoder,
        cache_dir=str(folder / "cache"),
        progress=False,
        **engine,  # type: ignore[arg-type]
    )
    select_file(config)
    assert (encoder.calls == 0) == (config.engine == "ray")
    return folder / "out"


def cached_embeddings(out: Path) -> dict[str, bytes]:
    folder = out.parent / "cache" / "embeddings"
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("method", ["kmq", "km-random"])
def test_select_file_is_the_same_on_ray_with_any_number_of_workers(
    tmp_path: Path, pool: Path, method: str
) -> None:
    local = run_select(tmp_path / "local", pool, method)
    two = run_select(tmp_path / "ray2", pool, method, engine="ray", engine_options={"workers": 2})
    one = run_select(tmp_path / "ray1", pool, method, engine="ray", engine_options={"workers": 1})
    reference = (local / TABLE).read_bytes()
    for out in (two, one):
        assert (out / TABLE).read_bytes() == reference
        assert (out / "clusters.npz").read_bytes() == (local / "clusters.npz").read_bytes()
        manifest = json.loads((out / "manifest.json").read_text())
        expected = json.loads((local / "manifest.json").read_text())
        assert manifest["clusters"] == expected["clusters"]
        assert manifest["config"]["engine"] == "ray"
        # the Ray engine fills the same cache files (same key, same bytes) as the local one
        assert cached_embeddings(out) == cached_embeddings(local)


@pytest.mark.usefixtures("ray_cluster")
def test_ray_engine_reuses_the_local_cache(tmp_path: Path, pool: Path) -> None:
    local = run_select(tmp_path, pool, "kmq")
    before = cached_embeddings(local)
    (local / TABLE).unlink()
    encoder = FakeEncoder()
    config = SelectConfig(
        input=str(pool),
        out=str(local),
        budget=400,
        k=16,
        quality_field="quality",
        encoder=encoder,
        cache_dir=str(tmp_path / "cache"),
        progress=False,
        engine="ray",
    )
    run = select_file(config)
    assert run.manifest.embedding["cache_hit"] is True
    assert encoder.calls == 0
    assert cached_embeddings(local) == before


@pytest.mark.usefixtures("ray_cluster")
def test_assignment_matches_the_local_chunks_to_the_last_bit() -> None:
    x, _ = make_blobs(2 * 65_536 + 7, 20, dim=16)  # a 7-row last chunk: faiss' non-BLAS path
    reference = kmeans(x, 20, seed=5)
    for workers in (1, 2):
        fitted = get_engine("ray", workers=workers).kmeans(x, 20, seed=5)
        assert np.array_equal(fitted.labels_, reference.labels_)
        assert np.array_equal(fitted.centroids_, reference.centroids_)
        assert fitted.inertia_ == reference.inertia_


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("method", ["kmq", "km-random", "km-closest", "random"])
def test_select_api_is_the_same_on_ray(method: str) -> None:
    x, _ = make_blobs(3000, 9, dim=12, seed=1)
    quality = np.random.default_rng(2).random(3000)
    exclude = np.arange(0, 3000, 11)
    options = {"k": 9, "quality": quality, "exclude": exclude, "seed": 4, "method": method}
    local = select(x, 250, **options)  # type: ignore[arg-type]
    remote = select(x, 250, engine="ray", **options)  # type: ignore[arg-type]
    assert np.array_equal(remote.indices, local.indices)
    assert remote.reasons == local.reasons
    assert np.array_equal(remote.scores, local.scores, equal_nan=True)


def iterate(folder: Path, pool: Path, engine: str) -> list[dict[str, object]]:
    """Two rounds of the external-trainer loop (round 2 has non-uniform cluster weights)."""
    config = IterateConfig(
        pool=SelectConfig(
            input=str(pool),
            out="",
            budget=300,
            k=12,
            seed=7,
            quality_field="quality",
            encoder=FakeEncoder(),
            cache_dir=str(folder / "cache"),
            progress=False,
            engine=engine,
        ),
        rounds=2,
        external=True,
    )
    loop = IterativeSelection(folder / "run", config)
    loop.start_external()
    ids = loop.dir.read("picked.json", 1)["ids"]
    loop.take_scores(1, {id_: float(int(id_.split("-")[1]) % 5) for id_ in ids})
    loop.advance()
    return [loop.dir.read("picked.json", r) for r in (1, 2)]


@pytest.mark.usefixtures("ray_cluster")
def test_iterate_rounds_are_the_same_on_ray(tmp_path: Path, pool: Path) -> None:
    local = iterate(tmp_path / "local", pool, "local")
    remote = iterate(tmp_path / "ray", pool, "ray")
    assert remote == local
    assert local[1]["weights_before"] != local[0]["weights_before"]


def test_a_run_started_locally_may_go_on_with_ray(tmp_path: Path) -> None:
    small = tmp_path / "pool.jsonl"
    write_pool(small, 200)
    config = IterateConfig(
        pool=SelectConfig(input=str(small), out="", budget=30, k=4, encoder=FakeEncoder()),
        external=True,
    )
    config.pool.cache_dir, config.pool.progress = str(tmp_path / "cache"), False
    IterativeSelection(tmp_path / "run", config).init()
    config.pool.engine, config.pool.engine_options = "ray", {"workers": 1}
    IterativeSelection(tmp_path / "run", config).init()  # where it runs is not its identity
    config.pool.k = 5
    with pytest.raises(KmqError, match="another configuration"):
        IterativeSelection(tmp_path / "run", config).init()


@pytest.mark.parametrize("step", ["embed", "kmeans", "select"])
def test_an_unreachable_cluster_is_named_before_ray_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    def refuse(**options: object) -> None:
        raise ConnectionError("nothing listens there")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray, "put", lambda *a, **k: pytest.fail("Ray used before connecting"))
    engine = get_engine("ray", address="ray://nowhere:10001")
    x, _ = make_blobs(200, 3)
    steps = {
        "embed": lambda: engine.embed(["a", "b"], FakeEncoder(), view="user", cache_dir=tmp_path),
        "kmeans": lambda: engine.kmeans(x, 3),
        "select": lambda: engine.select(get_selector("kmq"), x, 10, labels=np.arange(200) % 3),
    }
    with pytest.raises(
        KmqError, match=r"could not connect to the Ray cluster at engine_options\['address'\]"
    ):
        steps[step]()


def test_bad_ray_workers_are_named() -> None:
    with pytest.raises(
        KmqError, match=r"^engine_options\['workers'\] must be a positive integer, got 0"
    ):
        get_engine("ray", workers=0)


@pytest.fixture
def mix_small() -> Path:
    """The shared ``mix-small.jsonl.gz`` pool (the test is skipped without it)."""
    path = SHARED / "pools" / "mix-small.jsonl.gz"
    if not path.exists():
        pytest.skip(f"{path} not found: the shared data is needed for this test")
    return path


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_mix_small_kmq_is_the_same_on_ray(tmp_path: Path, mix_small: Path) -> None:
    """The real pool with MiniLM, embedded once into the default cache (so a user's earlier
    ``kmq select`` of it is reused) and selected by both engines from it."""
    common: dict[str, object] = {
        "input": str(mix_small),
        "budget": 500,
        "k": 32,
        "quality": "length",
        "progress": False,
    }
    local = select_file(SelectConfig(out=str(tmp_path / "local"), **common))  # type: ignore[arg-type]
    outs = {}
    for workers in (1, 2):
        out = tmp_path / f"ray{workers}"
        select_file(
            SelectConfig(
                out=str(out),
                engine="ray",
                engine_options={"workers": workers},
                **common,  # type: ignore[arg-type]
            )
        )
        outs[workers] = out
    for out in outs.values():
        assert (out / TABLE).read_bytes() == (local.out / TABLE).read_bytes()


def first_round(folder: Path, pool: Path, **engine: object) -> dict[str, Any]:
    """Round 1's ``picked.json`` of a 3-round iterate run on ``pool`` (``init`` and ``select``
    only: nothing is trained), embedded with MiniLM into the default cache."""
    config = IterateConfig(
        pool=SelectConfig(
            input=str(pool),
            out="",
            budget=300,
            k=32,
            quality="length",
            progress=False,
            **engine,  # type: ignore[arg-type]
        ),
        rounds=3,
    )
    loop = IterativeSelection(folder, config)
    loop.init()
    loop.select(1)
    picked: dict[str, Any] = loop.dir.read("picked.json", 1)
    return picked


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_mix_small_iterate_round_is_the_same_on_ray(tmp_path: Path, mix_small: Path) -> None:
    """Round 1 of ``kmq iterate`` on the real pool picks the same rows with either engine, from
    the default cache the test above uses (whichever runs first embeds mix-small, once)."""
    keys = ("ids", "indices", "quotas")
    local = first_round(tmp_path / "local", mix_small)
    assert len(local["ids"]) == 100
    for workers in (1, 2):
        remote = first_round(
            tmp_path / f"ray{workers}", mix_small, engine="ray", engine_options={"workers": workers}
        )
        assert {key: remote[key] for key in keys} == {key: local[key] for key in keys}
