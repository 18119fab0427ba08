"""``SelectConfig``: everything ``kmq select`` takes, its checks, and what it builds (the
selector, the engine, the encoder)."""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from typing import Any, Literal

import numpy as np

from kmq.clustering import DEFAULT_NITER, SILHOUETTE_SAMPLE
from kmq.decontaminate import NGRAM
from kmq.encoders import DEFAULT_ENCODER, Encoder, get_encoder
from kmq.engines import Engine, get_engine
from kmq.errors import KmqError, ParameterError
from kmq.examples import TEXT_VIEWS
from kmq.export import check_output_format
from kmq.formats import FieldMap, is_shard_folder
from kmq.inputs import input_files, is_json_folder
from kmq.quality import QUALITY_SCORERS, check_quality_options
from kmq.registry import choose
from kmq.selectors import CLUSTERED, SELECTORS, Selector, get_selector
from kmq.selectors.kmq import DEFAULT_CANDIDATES, candidate_multiple
from kmq.shares import check_shares


def resolve_budget(budget: int | float, n: int) -> int:
    """A count, or a fraction in (0, 1] of the ``n`` valid rows (rounded, at least 1)."""
    if isinstance(budget, bool):
        raise KmqError(f"budget must be a count or a fraction in (0, 1], got {budget!r}")
    if isinstance(budget, float | np.floating):
        if not 0 < budget <= 1:
            raise KmqError(f"a fractional budget must be in (0, 1], got {budget}")
        return max(1, round(float(budget) * n))
    if int(budget) < 1:
        raise KmqError(f"budget must be >= 1, got {budget}")
    return int(budget)


def is_path(value: Any) -> bool:
    return isinstance(value, str | PathLike)


def input_label(value: Any) -> str:
    """A path as given (several: joined by commas); records in memory as ``<records: TYPE, N
    rows>``."""
    if is_path(value):
        return str(value)
    files = input_files(value)
    if files is not None:
        return ", ".join(files)
    size = f", {len(value)} rows" if hasattr(value, "__len__") else ""
    return f"<records: {type(value).__name__}{size}>"


@dataclass
class SelectConfig:
    """Everything ``kmq select`` takes; written whole into ``manifest.json``.

    ``input`` is a path, several paths (a list, or a folder of JSON arrays: see
    :mod:`kmq.inputs`), or records in memory (see :func:`kmq.formats.load_pool`), which the
    manifest names by their type and size.
    """

    input: str | Any
    out: str
    budget: int | float = 0.05
    method: str = "kmq"
    k: int | Literal["auto"] = "auto"
    k_grid: list[int] | None = None
    seed: int = 0
    allocation: str = "balanced"
    quality_field: str | None = None
    quality: str | None = None
    quality_options: dict[str, Any] = field(default_factory=dict)
    quality_weighting: str = "auto"
    temperature: float = 1.0
    quality_candidates: int | str | None = DEFAULT_CANDIDATES
    encoder: str | Encoder = DEFAULT_ENCODER
    device: str | None = None
    view: str = "user"
    batch_size: int = 64
    max_length: int | None = None
    cache_dir: str | None = None
    exclude: str | None = None
    on_invalid: Literal["error", "skip"] = "error"
    fields: FieldMap = field(default_factory=FieldMap)
    format: str | None = None
    niter: int = DEFAULT_NITER
    silhouette_sample: int = SILHOUETTE_SAMPLE
    deita_threshold: float = 0.9
    qdit_alpha: float = 0.5
    n_neighbors: int = 50
    dedup: float | None = None
    progress: bool = True
    streaming: bool = False
    kmeans_sample: int | None = None
    sample: int | None = None
    embedding_dtype: Literal["float16", "float32"] | None = None
    output_shard_rows: int | None = None
    engine: str = "local"
    engine_options: dict[str, Any] = field(default_factory=dict)
    output_format: str = "native"
    keep_duplicates: bool = False
    decontaminate: list[str] | None = None
    ngram: int = NGRAM
    budget_tokens: int | None = None
    tokenizer: str | None = None
    mix: dict[str, float] | None = None

    def validate(self) -> None:
        """Check every setting, before any work: a bad one raises a :class:`ParameterError`
        naming the field (``kmq select`` names its flag instead)."""
        choose("method", self.method, SELECTORS)
        choose("view", self.view, TEXT_VIEWS)
        if self.k != "auto" and (
            isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1
        ):
            raise ParameterError(
                "k", f"{{param}} must be a positive integer or 'auto', got {self.k!r}"
            )
        if self.quality and self.quality_field:
            raise ParameterError(
                "quality",
                f"give either {{param}} {self.quality!r} (a scorer) or {{quality_field}} "
                f"{self.quality_field!r} (a column), not both",
                "quality_field",
            )
        candidate_multiple(self.quality_candidates)
        if self.quality is not None:
            check_quality(self.quality, self.quality_options)
        make_selector(self)
        if self.embedding_dtype not in (None, "float16", "float32"):
            raise ParameterError(
                "embedding_dtype",
                f"{{param}} must be float16 or float32, got {self.embedding_dtype!r}",
            )
        for name in (
            "kmeans_sample",
            "output_shard_rows",
            "max_length",
            "sample",
            "ngram",
            "budget_tokens",
        ):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ParameterError(name, f"{{param}} must be a positive integer, got {value!r}")
        for name, low in (("niter", 1), ("batch_size", 1), ("silhouette_sample", 2), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ParameterError(name, f"{{param}} must be an integer >= {low}, got {value!r}")
        if self.k_grid is not None and (not self.k_grid or min(self.k_grid) < 2):
            raise ParameterError(
                "k_grid", f"{{param}} must list integers >= 2, got {self.k_grid!r}"
            )
        make_engine(self)
        check_output_format(self.output_format)
        if self.mix is not None:
            check_shares(self.mix)
        if self.is_streaming():
            self.check_streamed()
        else:
            self.check_in_memory()

    def check_streamed(self) -> None:
        """Refuse, for a streamed pool, the settings that need every record or vector in
        memory, or another engine (see :mod:`kmq.streaming`)."""
        if self.engine != "local":
            raise ParameterError(
                "engine",
                f"{{param}} {self.engine!r} does not run {{streaming}} selections",
                "streaming",
            )
        if self.decontaminate:
            raise ParameterError(
                "decontaminate",
                "{param} runs on pools read in memory, not {streaming}",
                "streaming",
            )
        if input_files(self.input) is not None:
            raise ParameterError(
                "streaming", "{param} reads one file or a folder of shards, not several inputs"
            )
        if not is_path(self.input):
            raise ParameterError(
                "streaming", "{param} reads files; records in memory are selected in memory"
            )
        if self.output_format != "native":
            raise ParameterError(
                "output_format",
                f"{{param}} {self.output_format!r}: {{streaming}} runs write the rows as read "
                "(native) only",
                "streaming",
            )
        if self.sample is not None:
            raise ParameterError(
                "sample",
                "{param} applies to in-memory runs only, not to {streaming} ones",
                "streaming",
            )
        if self.mix is not None:
            raise ParameterError(
                "mix", "{param} applies to in-memory runs, not {streaming}", "streaming"
            )
        if self.budget_tokens is not None or self.tokenizer is not None:
            raise ParameterError(
                "budget_tokens",
                "{param} and {tokenizer} apply to in-memory runs, not {streaming}",
                "tokenizer",
                "streaming",
            )
        if self.quality:
            raise ParameterError(
                "quality",
                f"{{param}} {self.quality!r} scores rows held in memory, which {{streaming}} does "
                "not do; score the pool first (kmq score), add the score to each record and pass "
                "{quality_field}",
                "streaming",
                "quality_field",
            )
        if self.dedup is not None:
            raise ParameterError(
                "dedup",
                "{param} compares vectors held in memory and does not run with {streaming}",
                "streaming",
            )

    def check_in_memory(self) -> None:
        """Refuse, for a pool held in memory, the settings of streamed pools only."""
        streaming_only = ("kmeans_sample", "embedding_dtype", "output_shard_rows")
        given = [name for name in streaming_only if getattr(self, name) is not None]
        if given:
            listed = ", ".join(["{param}", *(f"{{{name}}}" for name in given[1:])])
            verb = "applies" if len(given) == 1 else "apply"
            raise ParameterError(
                given[0], f"{listed} {verb} to {{streaming}} runs only", *given[1:], "streaming"
            )

    def needs_clusters(self) -> bool:
        """Whether the run clusters: a clustered method, a given k, or SemDeDup (which
        compares rows within their cluster)."""
        return self.method in CLUSTERED or self.k != "auto" or self.dedup is not None

    def needs_embeddings(self) -> bool:
        """Whether the run embeds the pool: it clusters, or its method reads the vectors
        (every method but random)."""
        return self.needs_clusters() or self.method != "random"

    def k_search(self, budget: int) -> dict[str, Any]:
        """:func:`~kmq.clustering.resolve_k`'s options (how k is found and k-means run) for a
        selection of ``budget`` rows."""
        return {
            "budget": budget,
            "seed": self.seed,
            "k_grid": self.k_grid,
            "niter": self.niter,
            "silhouette_sample": self.silhouette_sample,
            "show_progress": self.progress,
        }

    def is_streaming(self) -> bool:
        """``--streaming``, or an input that is a folder of shards (see :mod:`kmq.streaming`)."""
        return self.streaming or (
            is_path(self.input) and is_shard_folder(self.input) and not is_json_folder(self.input)
        )


# SelectConfig's settings of the selectors, by the name each selector takes
SELECTOR_SETTINGS = {
    "allocation": "allocation",
    "quality_weighting": "weighting",
    "temperature": "temperature",
    "deita_threshold": "threshold",
    "qdit_alpha": "alpha",
    "n_neighbors": "n_neighbors",
}


def make_selector(config: SelectConfig, **options: Any) -> Selector:
    """The selector ``config`` names, with the settings of it that it takes (and ``options``
    for it); a bad setting names the config's field."""
    settings = {option: getattr(config, name) for name, option in SELECTOR_SETTINGS.items()}
    settings |= {"show_progress": config.progress, "candidates": quality_multiple(config)}
    try:
        return get_selector(config.method, shared=settings, **options)
    except ParameterError as exc:
        field_of = {option: name for name, option in SELECTOR_SETTINGS.items()}
        if exc.parameter not in field_of:
            raise
        raise exc.renamed(field_of[exc.parameter]) from None


def check_quality(name: str, options: dict[str, Any]) -> None:
    """The quality scorer ``name`` exists and takes ``options`` (nothing is loaded); errors name
    ``quality`` or ``quality_options['KEY']``."""
    choose("quality", name, QUALITY_SCORERS)
    try:
        check_quality_options(name, options)
    except ParameterError as exc:
        raise exc.renamed(f"quality_options[{exc.parameter!r}]") from None


def quality_multiple(config: SelectConfig) -> int | None:
    """M when kMQ draws among M × quota candidates scored by a ``--quality`` scorer; None when
    every row is scored (``--quality-candidates 0|all``, a ``--quality-field`` column, which
    is read whole, another method: deita and qdit rank every row's quality, or a token budget:
    every row of a cluster is ranked, see :mod:`kmq.token_budget`)."""
    if not config.quality or config.method != "kmq" or config.budget_tokens is not None:
        return None
    return candidate_multiple(config.quality_candidates)


def make_engine(config: SelectConfig) -> Engine:
    """The engine ``config`` names (``--engine``), with its options (nothing starts yet)."""
    return get_engine(config.engine, **config.engine_options)


def make_encoder(config: SelectConfig) -> Encoder:
    return get_encoder(
        config.encoder,
        batch_size=config.batch_size,
        max_length=config.max_length,
        device=config.device,
        show_progress=False,
        cache_dir=config.cache_dir,
    )
