"""``reward_score``: a sequence-classification reward model's scalar for the response."""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from kmq._imports import require
from kmq.errors import KmqError
from kmq.examples import Example, Message
from kmq.models import ChatFormat, load_reward_model, model_identity
from kmq.quality.lm import (
    Window,
    chat_texts,
    check_settings,
    fit_window,
    length_batches,
    pad_right,
    token_ids,
)

log = logging.getLogger("kmq")

TEXT_VERSION = "context+response/joint-tokens/v1"
HUMAN_ASSISTANT = "human-assistant"
# The official code's reward-model input, "###Human: {prompt} ###Assistant: {response}", as a
# chat template. Earlier turns alternate "###Human: " (user and tool turns) and "###Assistant: ";
# a system turn is written as its bare text; turns are separated by one space.
HUMAN_ASSISTANT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if not loop.first %}{{ ' ' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '###Assistant: ' + message['content'] }}"
    "{% elif message['role'] == 'system' %}{{ message['content'] }}"
    "{% else %}{{ '###Human: ' + message['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ ' ###Assistant: ' }}{% endif %}"
)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading items ``a`` and ``b`` share."""
    return next(
        (k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def free_token_id(windows: Sequence[Window], preferred: int | None) -> int:
    """``preferred`` if no window uses it, else the smallest token id no window uses."""
    used = {t for context, response in windows for t in (*context, *response)}
    if preferred is not None and preferred not in used:
        return preferred
    return next(t for t in itertools.count() if t not in used)


class RewardScorer:
    """``reward_score``: the reward model's scalar output (a logit) for the response to the
    prompt. Range (−∞, ∞); higher = the reward model prefers the response.

    ``model`` is a local folder (or hub name) of a Hugging Face sequence-classification model
    with ``num_labels == 1``. Text: with ``template=None`` the prompt turns and the response
    are written by the tokenizer's chat template when it has one (see
    :class:`kmq.models.ChatFormat`), else by :data:`HUMAN_ASSISTANT_TEMPLATE`, the official
    code's ``###Human: {prompt} ###Assistant: {response}``; ``template`` may name that format
    (``"human-assistant"``) or be a Jinja chat template. The whole text is tokenised at once;
    windows longer than ``max_length`` lose prompt tokens from the left (see
    :func:`kmq.quality.lm.fit_window`) and are listed in ``truncated_``.
    """

    name = "reward"
    direction = (
        "higher = the reward model prefers the response (its scalar output, a logit); "
        "range (-inf, inf)"
    )
    truncated_: list[int]
    failures_: list[tuple[int, str]]

    def __init__(
        self,
        model: str,
        *,
        max_length: int = 1024,
        batch_size: int = 8,
        template: str | None = None,
        device: str | None = None,
        dtype: Any = "float32",
        show_progress: bool = True,
    ) -> None:
        check_settings(max_length, batch_size)
        if template is not None and template != HUMAN_ASSISTANT and "{" not in template:
            raise KmqError(
                f"template must be None, {HUMAN_ASSISTANT!r} or a Jinja chat template; "
                f"got {template!r}"
            )
        self.model = model
        self.max_length = max_length
        self.batch_size = batch_size
        self.template = template
        self.device = device
        self.dtype = dtype
        self.show_progress = show_progress
        self._loaded: tuple[Any, Any, ChatFormat] | None = None
        self._identity: str | None = None

    def fingerprint(self) -> str:
        if self._identity is None:
            self._identity = model_identity(self.model)
        if self.template is None or self.template == HUMAN_ASSISTANT:
            template = self.template or "auto"
        else:
            template = hashlib.sha256(self.template.encode()).hexdigest()[:12]
        dtype = str(self.dtype).removeprefix("torch.")
        return (
            f"reward/{self._identity}/max_length={self.max_length}/dtype={dtype}"
            f"/template={template}/{TEXT_VERSION}"
        )

    @property
    def loaded(self) -> tuple[Any, Any, ChatFormat]:
        """(model, tokenizer, chat format), loaded on first use."""
        if self._loaded is None:
            model, tokenizer = load_reward_model(self.model, dtype=self.dtype, device=self.device)
            template = self.template
            if template == HUMAN_ASSISTANT or (template is None and not tokenizer.chat_template):
                template = HUMAN_ASSISTANT_TEMPLATE
            self._loaded = (model, tokenizer, ChatFormat(tokenizer, template))
        return self._loaded

    def reward(
        self, prompts: Sequence[Sequence[Message] | None], responses: Sequence[str]
    ) -> np.ndarray:
        """The reward of each ``responses[i]`` to ``prompts[i]`` (``None`` = no prompt).

        float64, range (−∞, ∞), higher = preferred; NaN for an empty response or a prompt the
        template cannot render (listed in ``failures_`` as (row, reason)); ``truncated_`` lists
        the rows cut to ``max_length``. Rows count from 0 in this call.
        """
        _, tokenizer, chat = self.loaded
        texts, self.failures_ = chat_texts(chat, prompts, responses)
        rows = list(texts)
        contexts = token_ids(tokenizer, [texts[i][0] for i in rows])
        fulls = token_ids(tokenizer, [texts[i][0] + texts[i][1] for i in rows])
        splits = [common_prefix(c, f) for c, f in zip(contexts, fulls, strict=True)]
        windows = [
            fit_window(f[:k], f[k:], self.max_length) for f, k in zip(fulls, splits, strict=True)
        ]
        self.truncated_ = [
            i for i, (c, r), f in zip(rows, windows, fulls, strict=True) if len(c) + len(r) < len(f)
        ]
        scores = np.full(len(responses), np.nan, dtype=np.float64)
        scores[rows] = self._rewards(windows)
        self._log_summary(len(responses))
        return scores

    def score(self, examples: Sequence[Example]) -> np.ndarray:
        """``reward_score`` of each example's last response to its prompt; see :meth:`reward`."""
        return self.reward([ex.prompt for ex in examples], [ex.response for ex in examples])

    def _rewards(self, windows: Sequence[Window]) -> np.ndarray:
        torch = require("torch")
        batches = length_batches(windows, self.batch_size)
        out = np.empty(len(windows), dtype=np.float64)
        with torch.inference_mode():
            for batch in tqdm(batches, desc="reward", unit="batch", disable=not self.show_progress):
                out[batch] = self._batch_rewards([windows[i] for i in batch])
        return out

    def _batch_rewards(self, windows: list[Window]) -> np.ndarray:
        """Right-padded with a token id no row uses: the model reads the last non-pad token."""
        model, tokenizer, _ = self.loaded
        pad_id = free_token_id(windows, tokenizer.pad_token_id)
        model.config.get_text_config().pad_token_id = pad_id
        ids, mask = pad_right(windows, pad_id)
        device = next(model.parameters()).device
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        return np.asarray(logits[:, 0].double().cpu().numpy(), dtype=np.float64)

    def _log_summary(self, n: int) -> None:
        if self.failures_:
            i, reason = self.failures_[0]
            log.warning(
                "reward: %d of %d rows are NaN; first: row %d: %s",
                len(self.failures_),
                n,
                i,
                reason,
            )
        if self.truncated_:
            log.info(
                "reward: %d of %d rows were cut to max_length=%d tokens",
                len(self.truncated_),
                n,
                self.max_length,
            )
