"""Causal-LM encoder (the paper's Llama-2 kind): pooled hidden states of a decoder-only LM."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from kmq import progress
from kmq._imports import require
from kmq.errors import KmqError

log = logging.getLogger("kmq")

POOLINGS = ("mean", "last")
DEFAULT_MAX_LENGTH = 512


def pool_hidden(hidden: Any, mask: Any, pooling: str) -> Any:
    """Pool ``hidden`` (batch, tokens, dim) over each row's real tokens (``mask`` = 1).

    ``mean``: the average over the real tokens. ``last``: the state of the last real token,
    found from the mask, so it is the same whether the batch is padded on the right or the left.
    """
    torch = require("torch")
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1)
    last = mask.shape[1] - 1 - mask.flip(-1).argmax(dim=-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class CausalLMEncoder:
    """Hidden states of a causal LM, pooled over each text's tokens and L2-normalised.

    ``model`` is ``smollm2`` or a local Hugging Face folder (see :mod:`kmq.models`).
    ``layer`` indexes the ``hidden_states`` transformers returns for
    ``output_hidden_states=True``: 0 is the token embeddings, 1..L the outputs of the L
    decoder layers (L after the model's final norm); negative values count from the end
    (-1, the default, is L). ``pooling`` is ``mean`` (over the text's tokens, padding
    excluded) or ``last`` (the last token's state, the one that has read the whole text).

    Texts are tokenised as the tokenizer does by default (its special tokens included) and
    keep their first ``max_length`` tokens (default 512; how many texts were cut is logged).
    Batches of ``batch_size`` texts of similar length are padded on the right, so every text
    sees its tokens at positions 0..n-1 as it would alone.
    """

    def __init__(
        self,
        model: str = "smollm2",
        *,
        pooling: str = "mean",
        layer: int = -1,
        max_length: int | None = None,
        batch_size: int = 16,
        dtype: Any = "float32",
        device: str | None = None,
        cache_dir: str | Path | None = None,
        show_progress: bool = True,
    ) -> None:
        if pooling not in POOLINGS:
            raise KmqError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
        if max_length is not None and max_length < 1:
            raise KmqError(f"max_length must be a positive number of tokens; got {max_length}")
        if batch_size < 1:
            raise KmqError(f"batch_size must be >= 1; got {batch_size}")
        self.model = model
        self.pooling = pooling
        self.layer = layer
        self.max_length = DEFAULT_MAX_LENGTH if max_length is None else max_length
        self.batch_size = batch_size
        self.dtype = dtype
        self.device = device
        self.cache_dir = cache_dir
        self.show_progress = show_progress
        self._loaded: tuple[Any, Any, int] | None = None
        self.name = self._identity()

    def _identity(self) -> str:
        from kmq.models import model_identity

        dtype = str(self.dtype).removeprefix("torch.")
        return f"causal:{model_identity(self.model)}/{self.pooling}/layer={self.layer}/{dtype}"

    @property
    def loaded(self) -> tuple[Any, Any, int]:
        """(model, tokenizer, index into ``hidden_states`` from 0), loaded on first use."""
        if self._loaded is None:
            from kmq.models import load_causal_lm

            model, tokenizer = load_causal_lm(
                self.model, cache_dir=self.cache_dir, dtype=self.dtype, device=self.device
            )
            n_layers = int(model.config.num_hidden_layers)
            if not -(n_layers + 1) <= self.layer <= n_layers:
                raise KmqError(
                    f"layer must be in [{-(n_layers + 1)}, {n_layers}] for {self.model!r} "
                    f"({n_layers} layers; 0 = the token embeddings); got {self.layer}"
                )
            self._loaded = (model, tokenizer, self.layer % (n_layers + 1))
        return self._loaded

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids, cut to ``max_length``; a text without tokens is an error."""
        tokenizer = self.loaded[1]
        ids = tokenizer(list(texts), verbose=False)["input_ids"]
        if empty := [i for i, row in enumerate(ids) if not row]:
            raise KmqError(
                f"{len(empty)} texts have no tokens (first: text {empty[0]}, "
                f"{texts[empty[0]]!r}); the causal-lm encoder needs at least one"
            )
        cut = sum(len(row) > self.max_length for row in ids)
        if cut:
            log.warning(
                "causal-lm encoder: %d of %d texts were cut to their first max_length=%d tokens",
                cut,
                len(ids),
                self.max_length,
            )
        return [row[: self.max_length] for row in ids]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        torch = require("torch")
        model = self.loaded[0]
        ids = self.tokenize(texts) if texts else []
        order = np.argsort([len(row) for row in ids], kind="stable")
        out = np.empty((len(ids), int(model.config.hidden_size)), dtype=np.float64)
        with (
            torch.inference_mode(),
            tqdm(
                total=len(ids),
                desc="embedding (causal-lm)",
                unit="row",
                disable=not self.show_progress or progress.reporting_active(),
            ) as bar,
        ):
            for start in range(0, len(ids), self.batch_size):
                rows = order[start : start + self.batch_size]
                out[rows] = self._batch([ids[i] for i in rows])
                bar.update(len(rows))
                progress.advance(len(rows))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return (out / np.where(norms == 0, 1.0, norms)).astype(np.float32)

    def _batch(self, ids: list[list[int]]) -> np.ndarray:
        model, tokenizer, layer = self.loaded
        batch = tokenizer.pad({"input_ids": ids}, padding_side="right", return_tensors="pt")
        device = next(model.parameters()).device
        mask = batch["attention_mask"].to(device)
        last_layer = layer == model.config.num_hidden_layers
        states = model.base_model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=mask,
            output_hidden_states=not last_layer,
        )
        hidden = states.last_hidden_state if last_layer else states.hidden_states[layer]
        pooled = pool_hidden(hidden.float(), mask, self.pooling)
        return np.asarray(pooled.cpu().numpy(), dtype=np.float64)
