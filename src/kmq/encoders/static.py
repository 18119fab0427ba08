"""Static (model2vec) embeddings: a text's vector is the mean of its tokens' fixed vectors.

``static`` distils the packaged all-MiniLM-L6-v2 with model2vec once, offline and on the CPU:
every token of MiniLM's own WordPiece vocabulary (30,522 entries less the ``[unused*]`` ones,
29,525 tokens) is run through MiniLM on its own and mean-pooled, the vectors are reduced to
256 dimensions by PCA, weighted by SIF with coefficient 1e-4 (token frequencies from Zipf's
law on the vocabulary order) and stored as float16 — model2vec's defaults, spelled out here
so that a change of default cannot change the model silently. The result is saved under
``<cache>/models/static-minilm-<hash of MiniLM's files, the recipe and the model2vec
version>``. ``static:PATH`` uses an already distilled model2vec folder instead.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from kmq._imports import require
from kmq.atomic import build_folder
from kmq.cachedir import cache_root
from kmq.encoders.sentence_transformers import directory_fingerprint, packaged_minilm_path
from kmq.errors import KmqError

log = logging.getLogger("kmq")

PCA_DIMS = 256
SIF_COEFFICIENT = 1e-4
STORED_DTYPE = "float16"
BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def import_model2vec(module: str = "model2vec") -> ModuleType:
    """``module`` of model2vec, or a :class:`KmqError` with the install line."""
    return require(module)


def recipe() -> str:
    """What the distillation depends on besides MiniLM's files."""
    version = import_model2vec().__version__
    return f"model2vec-{version}/pca={PCA_DIMS}/sif={SIF_COEFFICIENT:g}/{STORED_DTYPE}"


def distilled_minilm_dir(cache_dir: str | Path | None = None) -> Path:
    """The model2vec folder distilled from the packaged MiniLM (distilled now if missing).

    ``cache_dir`` defaults to :func:`kmq.cachedir.default_cache_dir`.
    """
    source = packaged_minilm_path()
    key = f"{directory_fingerprint(source)}/{recipe()}"
    root = cache_root(cache_dir)
    folder = root / "models" / f"static-minilm-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if not (folder / "config.json").is_file():
        _distil(source, folder)
    return folder


def _distil(source: Path, folder: Path) -> None:
    """Distil ``source`` (a local sentence-transformers folder) into ``folder``, atomically.

    Everything is read from ``source`` (``local_files_only``) and the model's name is a local
    path, so model2vec never asks the hub for a model card.
    """
    distill_from_model = import_model2vec("model2vec.distill").distill_from_model
    transformers = require("transformers")
    log.info("distilling a static model from %s into %s (once)", source, folder)
    model = transformers.AutoModel.from_pretrained(source, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        source, local_files_only=True, use_fast=True
    )
    static = distill_from_model(
        model,
        tokenizer,
        device="cpu",
        pca_dims=PCA_DIMS,
        sif_coefficient=SIF_COEFFICIENT,
        quantize_to=STORED_DTYPE,
    )
    static.config["tokenizer_name"] = BASE_MODEL  # not the machine's path to the package
    static.base_model_name = BASE_MODEL

    def build(tmp: Path) -> None:
        static.save_pretrained(tmp, model_name=folder.name)

    build_folder(folder, "config.json", build)


class StaticEncoder:
    """model2vec static embeddings: ``model=None`` distils the packaged MiniLM (see the module
    doc); a path loads an already distilled model2vec folder.

    ``max_length`` keeps each text's first that many tokens (default: all of them; a static
    model has no window). Rows are float32 and L2-normalised (an all-unknown text is a zero
    row).
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        batch_size: int = 1024,
        max_length: int | None = None,
        cache_dir: str | Path | None = None,
        show_progress: bool = True,
    ) -> None:
        if max_length is not None and max_length < 1:
            raise KmqError(f"max_length must be a positive number of tokens; got {max_length}")
        self.model = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.cache_dir = cache_dir
        self.show_progress = show_progress
        self._static: Any = None
        self.name = self._identity()

    def _identity(self) -> str:
        if self.model is None:
            source = directory_fingerprint(packaged_minilm_path())
            return f"static:all-MiniLM-L6-v2@{source}/{recipe()}"
        path = Path(self.model)
        if not (path / "config.json").is_file():
            raise KmqError(
                f"static:{self.model} is not a model2vec folder (no config.json there); "
                "pass the folder a model2vec model was saved to, or 'static' for the distilled "
                "MiniLM"
            )
        return f"static:{path.name}@{directory_fingerprint(path)}"

    @property
    def static(self) -> Any:
        """The loaded model2vec ``StaticModel`` (distilled or loaded on first use)."""
        if self._static is None:
            folder = (
                distilled_minilm_dir(self.cache_dir) if self.model is None else Path(self.model)
            )
            static_model = import_model2vec().StaticModel
            try:
                self._static = static_model.from_pretrained(folder)
            except (OSError, ValueError, KeyError) as exc:
                raise KmqError(f"could not load the model2vec model at {folder}: {exc}") from exc
        return self._static

    @property
    def dim(self) -> int:
        return int(self.static.dim)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.static.encode(
            list(texts),
            max_length=self.max_length,
            batch_size=self.batch_size,
            show_progress_bar=self.show_progress,
            use_multiprocessing=False,
        ).astype(np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms == 0, 1.0, norms)
