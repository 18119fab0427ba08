"""The ``llama-cpp`` backend: llama.cpp (through ``llama-cpp-python``) on a GGUF file, on the CPU.

llama.cpp runs the GGUF weights as they are stored (for ``smollm2`` the package's Q4_1 file,
the very weights the ``torch`` model is dequantised from), so there is nothing to convert.
Tokenisation is the Hugging Face tokenizer's, as with every backend (for ``smollm2`` the one
saved beside the converted folder); llama.cpp runs the forward passes, one window at a time,
and returns the logits of every position, from which the response tokens' NLL is computed
here in float64.

``llama-cpp-python`` ships as a source package on PyPI and compiles llama.cpp when it is
installed (minutes). On this project's CPU (Xeon with AMX) the native build's
AMX kernels crashed on SmolLM2's Q4_1 matrices (SIGSEGV in ``ggml_backend_amx_mul_mat``,
llama-cpp-python 0.3.36); a build for AVX-512 without AMX runs (:data:`INSTALL_NO_AMX`).
On that CPU it scored at 0.38× torch float32 (``benchmarks/results/lm_backend.md``).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from kmq.backends.base import WindowedLM
from kmq.errors import KmqError
from kmq.examples import Message
from kmq.models import SMOLLM2, converted_model_dir, file_sha256, model_identity, smollm2_gguf
from kmq.quality.lm import Window, check_settings

INSTALL = "pip install llama-cpp-python"
INSTALL_NO_AMX = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON '
    "-DGGML_BMI2=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON "
    "-DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF "
    "-DGGML_AMX_BF16=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
    '-DLLAMA_BUILD_TOOLS=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_SERVER=OFF" '
    "pip install llama-cpp-python"
)
"""The build that ran here (about 3 minutes on 2 cores): AVX-512 kernels, no AMX, no tools."""


def require_llama_cpp() -> Any:
    """The ``llama_cpp`` module, or a :class:`KmqError` with the pip line."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise KmqError(f"lm_backend='llama-cpp' needs llama-cpp-python: {INSTALL}") from exc
    return llama_cpp


def gguf_file(spec: str) -> Path:
    """The GGUF file of ``spec``: the package's for ``smollm2``, else the one ``*.gguf`` file in
    the local model folder ``spec`` (which also holds the Hugging Face tokenizer)."""
    if spec == SMOLLM2:
        return smollm2_gguf()
    folder = Path(spec)
    if not folder.is_dir():
        raise KmqError(
            f"lm_backend='llama-cpp' needs 'smollm2' or a local folder with a GGUF file and the "
            f"model's tokenizer; got {spec!r}"
        )
    found = sorted(folder.glob("*.gguf"))
    if len(found) != 1:
        raise KmqError(
            f"lm_backend='llama-cpp': the model folder {folder} must hold exactly one *.gguf file; "
            f"found {len(found)}"
        )
    return found[0]


def logits_nll(logits: np.ndarray, context: int, response: Sequence[int]) -> float:
    """Mean NLL (float64) of ``response`` from the (time, vocab) logits of context + response:
    the logits at position t predict token t + 1."""
    z = np.asarray(logits[context - 1 : context - 1 + len(response)], dtype=np.float64)
    top = z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z - top).sum(axis=1)) + top[:, 0]
    picked = z[np.arange(len(response)), np.asarray(response)]
    return float((log_norm - picked).mean())


class LlamaCppLM(WindowedLM):
    """A causal LM run by llama.cpp on its GGUF file (see the module doc and
    :func:`kmq.backends.get_lm_backend`).

    ``threads``: CPU threads (0 = every core this process may use). ``batch_size`` only bounds
    the windows scored per progress step: llama.cpp scores one window at a time.
    """

    name = "llama-cpp"

    def __init__(
        self,
        model: str = SMOLLM2,
        *,
        max_length: int = 512,
        batch_size: int = 8,
        cache_dir: str | Path | None = None,
        device: str = "cpu",
        threads: int = 0,
        show_progress: bool = False,
    ) -> None:
        check_settings(max_length, batch_size)
        if device != "cpu":
            raise KmqError(
                f"lm_backend='llama-cpp' runs on the CPU only (device='cpu'); got {device!r}. "
                "On a GPU use lm_backend='torch' or 'ctranslate2'."
            )
        if threads < 0:
            raise KmqError(f"threads must be >= 0 (0 = every core); got {threads}")
        self.model = model
        self.max_length = max_length
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.device = device
        self.threads = threads
        self.show_progress = show_progress
        self._loaded: tuple[Any, Any] | None = None

    def fingerprint(self) -> str:
        gguf = gguf_file(self.model)
        identity = model_identity(self.model)
        if self.model != SMOLLM2:
            identity = f"{identity}/{gguf.name}@{file_sha256(gguf)[:16]}"
        return f"{identity}/max_length={self.max_length}/llama-cpp"

    @property
    def context(self) -> int:
        """llama.cpp's context: a scoring window (``max_length``) or a generation's prompt and
        answer. Its logits of every position take ``context`` × vocabulary floats."""
        return max(2 * self.max_length, 1024)

    @property
    def loaded(self) -> tuple[Any, Any]:
        """(llama.cpp model, Hugging Face tokenizer), loaded on first use."""
        if self._loaded is None:
            from kmq.training.generate import load_tokenizer

            llama_cpp = require_llama_cpp()
            gguf = gguf_file(self.model)
            tokenizer = load_tokenizer(converted_model_dir(self.model, self.cache_dir))
            threads = self.threads or len(os.sched_getaffinity(0))
            llm = llama_cpp.Llama(
                model_path=str(gguf),
                n_ctx=self.context,
                n_batch=self.max_length,
                logits_all=True,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
            # freed before the interpreter tears its modules down (else llama-cpp-python's
            # finaliser fails noisily at exit)
            atexit.register(llm.close)
            self._loaded = (llm, tokenizer)
        return self._loaded

    @property
    def tokenizer(self) -> Any:
        return self.loaded[1]

    def windows_nll(self, windows: Sequence[Window], *, desc: str = "scoring") -> np.ndarray:
        """Mean NLL of each window's response tokens (NaN for a window without a response)."""
        llm, _ = self.loaded
        out = np.full(len(windows), np.nan, dtype=np.float64)
        for i in tqdm(range(len(windows)), desc=desc, unit="row", disable=not self.show_progress):
            context, response = windows[i]
            if not response:
                continue
            llm.reset()
            tokens = list(context) + list(response)
            llm.eval(tokens)
            out[i] = logits_nll(llm.scores[: len(tokens)], len(context), response)
        return out

    def generate(
        self, prompts: Sequence[Sequence[Message]], *, max_new_tokens: int = 256
    ) -> list[str]:
        """Greedy answers to ``prompts``: rendered and cut from the left as
        :func:`kmq.training.generate.generate` does (to fit llama.cpp's context of
        :attr:`context` tokens with the answer), decoded by llama.cpp one prompt at a time
        (stopping at the end-of-sequence token) and detokenised by the Hugging Face tokenizer."""
        from kmq.training.generate import GenerationConfig, encode_prompts

        llm, tokenizer = self.loaded
        GenerationConfig(max_new_tokens=max_new_tokens)  # validates max_new_tokens
        limit = self.context - max_new_tokens
        if limit < 1:
            raise KmqError(
                f"max_new_tokens={max_new_tokens} leaves no room for the prompt in "
                f"lm_backend='llama-cpp''s context of {self.context} tokens"
            )
        prompt_ids, _ = encode_prompts(tokenizer, prompts, limit)
        eos = {tokenizer.eos_token_id, llm.token_eos()} - {None}
        out = []
        for ids in tqdm(prompt_ids, desc="generating", unit="row", disable=not self.show_progress):
            llm.reset()
            new: list[int] = []
            for token in llm.generate(list(ids), top_k=1, temp=0.0, reset=True):
                if token in eos or len(new) >= max_new_tokens:
                    break
                new.append(int(token))
            out.append(tokenizer.decode(new, skip_special_tokens=True).strip())
        return out
