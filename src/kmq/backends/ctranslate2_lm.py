"""The ``ctranslate2`` backend: CTranslate2 with int8 (or float) weights, on the CPU or CUDA.

The Hugging Face folder of the model (for ``smollm2`` the one converted from its GGUF file) is
converted once by CTranslate2's ``TransformersConverter`` into
``<cache>/models/ct2-<sha256 of the model identity, 12 hex>-<quantization>`` (written into a
temporary folder and renamed, so an interrupted conversion leaves nothing behind). Tokenisation
is the Hugging Face tokenizer's, as with ``torch``; CTranslate2 runs the forward passes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from kmq._imports import require
from kmq.backends.base import WindowedLM
from kmq.cachedir import cache_root
from kmq.errors import KmqError
from kmq.examples import Message
from kmq.models import converted_model_dir, model_identity
from kmq.quality.lm import Window, check_settings, length_batches

log = logging.getLogger("kmq")

INSTALL = "pip install ctranslate2"
COMPUTE_TYPES = (
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "float32",
    "float16",
    "bfloat16",
)
"""CTranslate2 compute types: the int8 ones store int8 weights, the others float weights."""


def require_ctranslate2() -> Any:
    """The ``ctranslate2`` module, or a :class:`KmqError` with the pip line."""
    try:
        import ctranslate2
    except ImportError as exc:
        raise KmqError(f"lm_backend='ctranslate2' needs CTranslate2: {INSTALL}") from exc
    return ctranslate2


def quantization(compute_type: str) -> str:
    """The weights a ``compute_type`` needs on disk: int8 for the int8 types, else as given."""
    return "int8" if compute_type.startswith("int8") else compute_type


def converted_ct2_dir(
    spec: str, compute_type: str, cache_dir: str | Path | None = None
) -> tuple[Path, Path]:
    """(CTranslate2 folder, Hugging Face folder) of ``spec``, converting it now if missing."""
    hf_dir = converted_model_dir(spec, cache_dir)
    root = cache_root(cache_dir)
    key = hashlib.sha256(model_identity(spec).encode()).hexdigest()[:12]
    folder = root / "models" / f"ct2-{key}-{quantization(compute_type)}"
    if not (folder / "model.bin").is_file():
        convert(hf_dir, folder, quantization(compute_type))
    return folder, hf_dir


def convert(hf_dir: Path, folder: Path, weights: str) -> None:
    """Convert the Hugging Face model in ``hf_dir`` to CTranslate2 in ``folder``, atomically."""
    ctranslate2 = require_ctranslate2()
    log.info("converting %s to CTranslate2 (%s) at %s (once)", hf_dir, weights, folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        converter = ctranslate2.converters.TransformersConverter(str(hf_dir))
        converter.convert(str(tmp / "model"), quantization=weights, force=True)
        try:
            os.rename(tmp / "model", folder)
        except OSError:
            if not (folder / "model.bin").is_file():  # not a concurrent conversion: re-raise
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class CTranslate2LM(WindowedLM):
    """A causal LM run by CTranslate2 (see the module doc and :func:`get_lm_backend`).

    ``threads``: CPU threads per forward pass (0 = CTranslate2's default).
    """

    name = "ctranslate2"

    def __init__(
        self,
        model: str = "smollm2",
        *,
        max_length: int = 512,
        batch_size: int = 8,
        cache_dir: str | Path | None = None,
        device: str = "cpu",
        compute_type: str = "int8",
        threads: int = 0,
        show_progress: bool = False,
    ) -> None:
        check_settings(max_length, batch_size)
        if compute_type not in COMPUTE_TYPES:
            raise KmqError(
                f"compute_type must be one of {', '.join(COMPUTE_TYPES)}; got {compute_type!r}"
            )
        if device not in ("cpu", "cuda"):
            raise KmqError(f"device must be 'cpu' or 'cuda' for ctranslate2; got {device!r}")
        self.model = model
        self.max_length = max_length
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.device = device
        self.compute_type = compute_type
        self.threads = threads
        self.show_progress = show_progress
        self._loaded: tuple[Any, Any, Any] | None = None

    def fingerprint(self) -> str:
        return (
            f"{model_identity(self.model)}/max_length={self.max_length}"
            f"/ctranslate2={self.compute_type}"
        )

    @property
    def loaded(self) -> tuple[Any, Any, Any]:
        """(generator, tokenizer, Hugging Face config), loaded (and converted) on first use."""
        if self._loaded is None:
            from kmq.training.generate import load_tokenizer

            ctranslate2 = require_ctranslate2()
            transformers = require("transformers")
            folder, hf_dir = converted_ct2_dir(self.model, self.compute_type, self.cache_dir)
            generator = ctranslate2.Generator(
                str(folder),
                device=self.device,
                compute_type=self.compute_type,
                intra_threads=self.threads,
            )
            config = transformers.AutoConfig.from_pretrained(hf_dir)
            self._loaded = (generator, load_tokenizer(hf_dir), config)
        return self._loaded

    @property
    def tokenizer(self) -> Any:
        return self.loaded[1]

    def windows_nll(self, windows: Sequence[Window], *, desc: str = "scoring") -> np.ndarray:
        """Mean NLL of each window's response tokens, longest windows batched first."""
        generator, tokenizer, _ = self.loaded
        out = np.empty(len(windows), dtype=np.float64)
        batches = length_batches(windows, self.batch_size)
        for batch in tqdm(batches, desc=desc, unit="batch", disable=not self.show_progress):
            tokens = [
                tokenizer.convert_ids_to_tokens(c + r) for c, r in (windows[i] for i in batch)
            ]
            results = generator.score_batch(tokens, max_input_length=0)
            for i, result in zip(batch, results, strict=True):
                context, response = windows[i]
                # log_probs[t] is log p(token t+1 | tokens 0..t)
                start = len(context) - 1
                logp = np.asarray(result.log_probs[start : start + len(response)], np.float64)
                out[i] = -logp.mean()
        return out

    def generate(
        self, prompts: Sequence[Sequence[Message]], *, max_new_tokens: int = 256
    ) -> list[str]:
        """Greedy answers to ``prompts``: rendered and cut from the left as
        :func:`kmq.training.generate.generate` does, decoded by CTranslate2."""
        from kmq.training.generate import GenerationConfig, encode_prompts, prompt_limit

        generator, tokenizer, config = self.loaded
        limit = prompt_limit(config, GenerationConfig(max_new_tokens=max_new_tokens))
        prompt_ids, _ = encode_prompts(tokenizer, prompts, limit)
        eos = sorted({tokenizer.eos_token_id, getattr(config, "eos_token_id", None)} - {None})
        order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
        out = [""] * len(prompt_ids)
        starts = range(0, len(order), self.batch_size)
        for start in tqdm(starts, desc="generating", unit="batch", disable=not self.show_progress):
            rows = order[start : start + self.batch_size]
            results = generator.generate_batch(
                [tokenizer.convert_ids_to_tokens(prompt_ids[i]) for i in rows],
                max_length=max_new_tokens,
                sampling_topk=1,
                include_prompt_in_result=False,
                end_token=[tokenizer.convert_ids_to_tokens(e) for e in eos],
            )
            for row, result in zip(rows, results, strict=True):
                text = tokenizer.decode(result.sequences_ids[0], skip_special_tokens=True)
                out[row] = text.strip()
        return out
