"""Flag groups that several subcommands share (input, selection, scorer), and the
:class:`~kmq.config.SelectConfig` they make."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from kmq.backends import LM_BACKENDS
from kmq.backends.ctranslate2_lm import COMPUTE_TYPES
from kmq.config import SelectConfig
from kmq.engines import ENGINES
from kmq.examples import TEXT_VIEWS
from kmq.formats import FORMATS, FieldMap
from kmq.quality import QUALITY_SCORERS
from kmq.selectors.kmq import DEFAULT_CANDIDATES, WEIGHTINGS

# Every SelectConfig field with a default: the defaults of the flags that set them
CONFIG: dict[str, Any] = {
    f.name: f.default
    for f in dataclasses.fields(SelectConfig)
    if f.default is not dataclasses.MISSING
}


def budget_arg(text: str) -> int | float:
    """``940`` is a count, ``0.05`` a fraction of the pool."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a fraction, got {text!r}") from None


def k_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'auto', got {text!r}"
        ) from None


def candidates_arg(text: str) -> int | str:
    """``--quality-candidates``: M >= 1, or 0 / 'all' (score every row)."""
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer M, or 0 / 'all' (score every row); got {text!r}"
        )
    return value


def grid_arg(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def add_input_args(
    p: argparse.ArgumentParser, *, optional: bool = False, several: bool = False
) -> None:
    """How to read the pool: shared by every subcommand that takes one (``several``: any
    number of inputs, read as one pool)."""
    if several:
        p.add_argument(
            "input",
            nargs="*",
            help="JSONL/JSON/Parquet/CSV files (optionally .gz), a save_to_disk folder, or a "
            "folder of JSON arrays; several inputs are read as one pool, each row's source "
            "being its file's name when it has none (ids shared by two files are prefixed "
            "with the file's name)",
        )
    else:
        p.add_argument(
            "input",
            nargs="?" if optional else None,
            help="JSONL/JSON/Parquet/CSV (optionally .gz) or a save_to_disk folder",
        )
    g = p.add_argument_group("reading the input")
    g.add_argument(
        "--on-invalid",
        choices=["error", "skip"],
        default=CONFIG["on_invalid"],
        help="stop at the first bad row (default) or skip it into rejects.jsonl",
    )
    g.add_argument("--format", choices=FORMATS, default=None, help="skip format detection")
    for name in ("prompt", "response", "system", "messages", "id", "source"):
        g.add_argument(
            f"--{name}-field", dest=f"{name}_field", default=None, help=f"field holding the {name}"
        )
    p.add_argument("--cache-dir", help="embedding/score cache ($KMQ_CACHE_DIR or ~/.cache/kmq)")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="hide progress bars (kmq's and those of the libraries that load models)",
    )


def field_map(args: argparse.Namespace) -> FieldMap:
    return FieldMap(
        messages_field=args.messages_field,
        prompt_field=args.prompt_field,
        response_field=args.response_field,
        system_field=args.system_field,
        id_field=args.id_field,
        source_field=args.source_field,
    )


def add_scorer_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    """The quality scorer and its settings: shared by ``select`` and ``score``."""
    g = p.add_argument_group("quality scorer")
    g.add_argument(
        "--quality",
        choices=QUALITY_SCORERS,
        required=required,
        help="compute quality with this scorer (cached); higher = better",
    )
    g.add_argument(
        "--quality-model", help="model for ifd/perplexity/judge (default smollm2)/reward"
    )
    g.add_argument("--quality-max-length", type=int, help="tokens per scored row")
    g.add_argument("--quality-batch-size", type=int, help="rows per forward pass")
    g.add_argument(
        "--lm-backend",
        choices=LM_BACKENDS,
        help="inference engine of the LM scores (ifd/pmi/perplexity) and the perplexity "
        "feedback: torch (default, the reference), ctranslate2 (pip install ctranslate2) or "
        "llama-cpp (pip install llama-cpp-python; CPU only, runs the GGUF file)",
    )
    g.add_argument(
        "--lm-compute-type",
        choices=COMPUTE_TYPES,
        help="ctranslate2: weights and arithmetic (default int8)",
    )
    g.add_argument(
        "--lm-dtype",
        choices=["float32", "bfloat16", "float16"],
        help="torch: weights and arithmetic of the model-based scorers (default float32; "
        "bfloat16 is much faster on CPUs with AMX/AVX512-BF16, see lm_backend.md)",
    )
    g.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        help="torch device of the encoder, the model-based scorers and the built-in trainer "
        "(default: the encoder on cpu, the rest on cuda when available)",
    )
    g.add_argument("--judge-backend", choices=["local", "http"], help="judge: local model or HTTP")
    g.add_argument("--judge-base-url", help="judge: OpenAI-compatible base URL, e.g. http://h/v1")
    g.add_argument("--judge-api-key-env", help="judge: env var holding the API key")
    g.add_argument("--judge-concurrency", type=int, help="judge: requests in flight at most")
    g.add_argument("--judge-timeout", type=float, help="judge: seconds per request")


# The scorers' options (by the names they take) and the flags' dests that set them
SCORER_OPTIONS = {
    "model": "quality_model",
    "max_length": "quality_max_length",
    "batch_size": "quality_batch_size",
    "lm_backend": "lm_backend",
    "compute_type": "lm_compute_type",
    "dtype": "lm_dtype",
    "device": "device",
    "backend": "judge_backend",
    "base_url": "judge_base_url",
    "api_key_env": "judge_api_key_env",
    "max_concurrency": "judge_concurrency",
    "timeout": "judge_timeout",
}


# The feedback scorers' options that `kmq iterate` flags set (the LM backend and the device
# are run settings, shared with the quality scorers)
FEEDBACK_OPTIONS = {
    "model": "feedback_model",
    "backend": "feedback_backend",
    "base_url": "feedback_base_url",
    "lm_backend": "lm_backend",
    "compute_type": "lm_compute_type",
    "dtype": "lm_dtype",
    "device": "device",
}


# The engines' options and the flags' dests that set them
ENGINE_FLAGS = {"address": "ray_address", "workers": "ray_workers"}


def scorer_options(args: argparse.Namespace) -> dict[str, Any]:
    """Scorer settings by the names the scorers take (unset ones stay at their defaults)."""
    return {option: getattr(args, dest) for option, dest in SCORER_OPTIONS.items()}


def add_selection_args(p: argparse.ArgumentParser, *, budget: bool = True) -> None:
    """Budget, seed, clustering, quality and embedding: shared by ``select`` and ``iterate``."""
    if budget:
        p.add_argument(
            "--budget",
            type=budget_arg,
            default=CONFIG["budget"],
            help="rows to pick: a count (940) or a fraction of the pool (0.05; default)",
        )
    p.add_argument("--seed", type=int, default=CONFIG["seed"])
    p.add_argument(
        "--exclude", help="file of ids never to pick (text, JSON(L) or a selection.parquet)"
    )
    c = p.add_argument_group("clustering")
    c.add_argument(
        "--k",
        type=k_arg,
        default=CONFIG["k"],
        help="number of clusters, or 'auto' to choose by silhouette (default)",
    )
    c.add_argument(
        "--k-grid",
        type=grid_arg,
        default=CONFIG["k_grid"],
        help="k values tried by --k auto (default: powers of 2 from 8 to min(4096, n/4, budget))",
    )
    c.add_argument("--niter", type=int, default=CONFIG["niter"], help="k-means Lloyd iterations")
    c.add_argument("--silhouette-sample", type=int, default=CONFIG["silhouette_sample"])
    q = p.add_argument_group("quality inside clusters (kmq)")
    q.add_argument("--quality-field", help="numeric field of the input holding a quality score")
    q.add_argument(
        "--quality-weighting",
        choices=WEIGHTINGS,
        default=CONFIG["quality_weighting"],
        help="draw ∝ q^(1/T) (linear), ∝ exp(q/T) (softmax); auto: linear if every q >= 0",
    )
    q.add_argument(
        "--temperature",
        type=float,
        default=CONFIG["temperature"],
        help="quality weighting temperature",
    )
    q.add_argument(
        "--quality-candidates",
        type=candidates_arg,
        default=CONFIG["quality_candidates"],
        metavar="M",
        help=f"kmq with a --quality scorer: score only M × quota uniformly drawn candidates per "
        f"cluster and draw the quota among them (default {DEFAULT_CANDIDATES}; 0 or 'all': "
        "score every row)",
    )
    add_scorer_args(p, required=False)
    e = p.add_argument_group("embedding")
    e.add_argument(
        "--encoder",
        default=CONFIG["encoder"],
        help="'minilm' (packaged, offline; default), 'static' (model2vec distilled from it), "
        "'causal:MODEL[,pooling=mean|last,layer=N]', 'api:MODEL,base_url=URL', "
        "or a sentence-transformers path/name",
    )
    e.add_argument(
        "--view",
        choices=TEXT_VIEWS,
        default=CONFIG["view"],
        help="text embedded: 'user' (system+user turns; default) or 'full' (all turns)",
    )
    e.add_argument("--batch-size", type=int, default=CONFIG["batch_size"])
    e.add_argument(
        "--max-length",
        type=int,
        default=CONFIG["max_length"],
        help="encoder window in tokens (minilm/sentence-transformers: longer texts are "
        "chunked and mean-pooled; causal: longer texts are cut)",
    )
    r = p.add_argument_group(
        "engine",
        "Where embedding, the assignment to k-means centres and the per-cluster draws run. "
        "Every engine selects the same rows for the same seed and embeddings.",
    )
    r.add_argument(
        "--engine",
        choices=list(ENGINES),
        default=CONFIG["engine"],
        help="local (this process; default) or ray (a Ray cluster; pip install 'kmq[ray]')",
    )
    r.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="a running Ray cluster: 'auto' (the one this node joined) or ray://HOST:10001 "
        "(default: start a local one)",
    )
    r.add_argument(
        "--ray-workers",
        type=int,
        metavar="N",
        help="at most N encoder replicas and tasks at a time (default: every CPU)",
    )


def select_config(args: argparse.Namespace, *, out: str, method: str) -> SelectConfig:
    """The :class:`SelectConfig` of the parsed flags: every flag whose dest is a field of it
    (the flags a subcommand lacks keep the field's default), and the fields flags make up."""
    given = vars(args)
    settings = {name: given[name] for name in CONFIG if name in given}
    engine_options = {option: getattr(args, dest) for option, dest in ENGINE_FLAGS.items()}
    return SelectConfig(
        **settings
        | {
            "input": one_or_many(args.input),
            "out": out,
            "method": method,
            "quality_options": scorer_options(args),
            "fields": field_map(args),
            "progress": not args.no_progress,
            "engine_options": {k: v for k, v in engine_options.items() if v is not None},
        }
    )


def one_or_many(inputs: str | list[str] | None) -> str | list[str] | None:
    """The input flag's value: one path, a list of several, or None for none."""
    if isinstance(inputs, list):
        return None if not inputs else inputs[0] if len(inputs) == 1 else inputs
    return inputs


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The flag of every parameter a library error may name: each option's dest (the
    :class:`SelectConfig` field it sets) and each scorer and engine option
    (``quality_options['model']``, ``engine_options['workers']``)."""
    flags: dict[str, str] = {}
    parsers = [parser]
    while parsers:
        current = parsers.pop()
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.option_strings:
                flags.setdefault(action.dest, max(action.option_strings, key=len))
    tables = {
        "quality_options": SCORER_OPTIONS,
        "feedback_options": FEEDBACK_OPTIONS,
        "engine_options": ENGINE_FLAGS,
    }
    for field, table in tables.items():
        for option, dest in table.items():
            if dest in flags:
                flags[f"{field}[{option!r}]"] = flags[dest]
    return flags
