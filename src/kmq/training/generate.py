"""Answer prompts with a trained checkpoint: batched decoding, greedy by default.

A checkpoint is either a LoRA adapter folder (``adapter_config.json``; loaded on its base model
and merged, for speed) or a full Hugging Face model folder. Each prompt is rendered with the
tokenizer's chat template plus the generation prompt (the assistant header); a prompt longer
than ``max_length − max_new_tokens`` tokens is cut from the left (its most recent turns are
kept) and its row is listed in :attr:`Generations.truncated`.

Backends: vLLM when it is importable and CUDA is available (``backend="auto"``), else
transformers. The transformers backend sorts prompts by length (longest first), decodes them
in left-padded batches and restores the input order; only the new tokens are decoded, special
tokens skipped, whitespace stripped.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import logging
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from kmq._imports import require
from kmq.errors import KmqError
from kmq.examples import Message

log = logging.getLogger("kmq")

Backend = Literal["auto", "transformers", "vllm"]
BACKENDS: tuple[str, ...] = ("auto", "transformers", "vllm")

CHECKPOINT_META = "kmq_checkpoint.json"
"""Written by :class:`kmq.training.trl.TRLTrainer` into each checkpoint: method, base model, …"""

ADAPTER_CONFIG = "adapter_config.json"

_TOOL_SENTINEL = "KMQSENTINELTOOL"


@dataclass(frozen=True, slots=True)
class GenerationConfig:
    """How to decode.

    Greedy by default; ``temperature`` and ``top_p`` apply only with ``do_sample=True``.
    ``max_length`` bounds prompt + new tokens (None: the model's ``max_position_embeddings``);
    longer prompts are cut from the left. ``backend``: ``auto`` = vLLM when importable and CUDA
    is available, else transformers.
    """

    max_new_tokens: int = 256
    batch_size: int = 8
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    max_length: int | None = None
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise KmqError(f"{name} must be an integer >= 1; got {value!r}")
        if self.max_length is not None and self.max_length <= self.max_new_tokens:
            raise KmqError(
                f"max_length must exceed max_new_tokens={self.max_new_tokens}; "
                f"got {self.max_length!r}"
            )
        if self.temperature <= 0:
            raise KmqError(f"temperature must be > 0; got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise KmqError(f"top_p must be in (0, 1]; got {self.top_p!r}")
        if self.backend not in BACKENDS:
            raise KmqError(f"backend must be one of {', '.join(BACKENDS)}; got {self.backend!r}")

    @classmethod
    def coerce(cls, value: GenerationConfig | Mapping[str, Any] | None) -> GenerationConfig:
        """``value`` as a config: a config as is, a mapping of its fields, None = defaults."""
        if value is None:
            return cls()
        if isinstance(value, GenerationConfig):
            return value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise KmqError(
                f"unknown generation option(s) {unknown}; valid: {', '.join(sorted(known))}"
            )
        return cls(**value)


class Generations(list[str]):
    """The generated answers in input order (a plain list of strings), plus ``truncated``:
    the input rows whose prompt was cut from the left to fit ``max_length``."""

    def __init__(self, texts: Iterable[str], truncated: Iterable[int] = ()) -> None:
        super().__init__(texts)
        self.truncated: tuple[int, ...] = tuple(truncated)


def generate(
    model_dir_or_checkpoint: Path,
    prompts: Sequence[Sequence[Message]],
    *,
    config: GenerationConfig | None = None,
    seed: int,
    base_model: str | None = None,
    device: str | None = None,
    show_progress: bool = True,
) -> Generations:
    """Answer each prompt (the turns before the response) with the model in the folder.

    ``base_model`` (a local model folder) overrides the base an adapter checkpoint names.
    ``device`` defaults to CUDA when available. Sampling (if enabled) is seeded with ``seed``.
    """
    config = config or GenerationConfig()
    path = Path(model_dir_or_checkpoint)
    if not prompts:
        return Generations([])
    if _use_vllm(config.backend, device):
        return _generate_vllm(path, prompts, config, seed, base_model, show_progress)
    from kmq.models import resolve_device

    device = resolve_device(device)
    model, tokenizer = load_checkpoint(path, base_model=base_model, device=device)
    return generate_loaded(
        model, tokenizer, prompts, config, seed=seed, show_progress=show_progress
    )


def generate_loaded(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[Message]],
    config: GenerationConfig,
    *,
    seed: int = 0,
    show_progress: bool = False,
) -> Generations:
    """:func:`generate` with a model and tokenizer already loaded (transformers backend)."""
    limit = prompt_limit(model.config, config)
    prompt_ids, truncated = encode_prompts(tokenizer, prompts, limit)
    texts = _generate_transformers(model, tokenizer, prompt_ids, config, seed, show_progress)
    return _finish(texts, truncated)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def is_adapter(path: Path) -> bool:
    """Whether ``path`` holds a PEFT adapter (rather than a full model)."""
    return (path / ADAPTER_CONFIG).is_file()


def adapter_base(path: Path, base_model: str | None = None) -> Path:
    """The base model folder of the adapter at ``path``: ``base_model`` when given, else the
    one recorded in :data:`CHECKPOINT_META`, else the adapter config's."""
    if base_model is None:
        meta = path / CHECKPOINT_META
        if meta.is_file():
            base_model = json.loads(meta.read_text(encoding="utf-8")).get("base_model")
    if base_model is None:
        config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        base_model = config.get("base_model_name_or_path")
    if not base_model or not Path(base_model).is_dir():
        raise KmqError(
            f"the adapter at {path} names base model {base_model!r}, which is not a local "
            "folder; pass base_model=<the base model folder>"
        )
    return Path(base_model)


def load_checkpoint(
    path: Path,
    *,
    base_model: str | None = None,
    device: str = "cpu",
    merge: bool = True,
    dtype: str | None = None,
) -> tuple[Any, Any]:
    """The model (eval mode, on ``device``) and tokenizer of a checkpoint folder.

    An adapter is loaded on its base model and, with ``merge``, merged into it. The tokenizer
    comes from the checkpoint when it holds one, else from the base; it always has a pad token
    and a chat template. ``dtype`` (a torch dtype's name) defaults to float32 on CPU and bf16
    (fp16 where bf16 is unsupported) on CUDA.
    """
    transformers = require("transformers")
    torch = require("torch")
    if not path.is_dir():
        raise KmqError(f"checkpoint {path} is not a folder")
    if dtype is not None:
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise KmqError(f"dtype must name a torch dtype (e.g. 'bfloat16'); got {dtype!r}")
    elif device.startswith("cuda"):
        torch_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        torch_dtype = torch.float32
    source = adapter_base(path, base_model) if is_adapter(path) else path
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    if is_adapter(path):
        peft = require("peft")
        model = peft.PeftModel.from_pretrained(model, path)
        if merge:
            model = model.merge_and_unload()
    has_tokenizer = (path / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(path if has_tokenizer else source)
    model.to(device)
    model.eval()
    return model, tokenizer


def load_tokenizer(path: Path) -> Any:
    """The tokenizer in ``path`` with a pad token and a chat template (kmq's fallback if none)."""
    from kmq.models import FALLBACK_CHAT_TEMPLATE, ensure_pad_token

    tokenizer = require("transformers").AutoTokenizer.from_pretrained(path)
    ensure_pad_token(tokenizer)
    if not tokenizer.chat_template:
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return tokenizer


# ---------------------------------------------------------------------------------------------
# Prompts


def chat_turns(messages: Sequence[Message], tool_role: str = "tool") -> list[dict[str, str]]:
    """``messages`` as chat-template dicts; tool turns get ``tool_role`` (see :func:`tool_role`),
    as user turns headed ``Tool output:`` when that is ``user``."""
    turns = []
    for m in messages:
        if m.role == "tool" and tool_role == "user":
            turns.append({"role": "user", "content": f"Tool output:\n{m.content}"})
        else:
            turns.append({"role": m.role, "content": m.content})
    return turns


def tool_role(tokenizer: Any) -> str:
    """``tool`` when the chat template renders tool turns, else ``user`` (the template raises
    on them, or drops their text)."""
    jinja2 = require("jinja2")
    probe = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
        {"role": "tool", "content": _TOOL_SENTINEL},
    ]
    try:
        text = tokenizer.apply_chat_template(probe, tokenize=False)
    except (jinja2.TemplateError, ValueError, TypeError, KeyError):
        return "user"
    return "tool" if _TOOL_SENTINEL in text else "user"


def encode_prompts(
    tokenizer: Any, prompts: Sequence[Sequence[Message]], limit: int
) -> tuple[list[list[int]], list[int]]:
    """Token ids of each prompt with the generation prompt, the last ``limit`` kept; and the
    rows that were cut."""
    role = tool_role(tokenizer)
    ids: list[list[int]] = []
    truncated: list[int] = []
    for row, prompt in enumerate(prompts):
        text = tokenizer.apply_chat_template(
            chat_turns(prompt, role), tokenize=False, add_generation_prompt=True
        )
        row_ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(row_ids) > limit:
            truncated.append(row)
            row_ids = row_ids[-limit:]
        ids.append(row_ids)
    return ids, truncated


def prompt_limit(model_config: Any, config: GenerationConfig) -> int:
    """Prompt tokens that fit: ``max_length`` (or the model's positions) − ``max_new_tokens``."""
    max_length = config.max_length or getattr(model_config, "max_position_embeddings", None)
    if max_length is None or max_length <= config.max_new_tokens:
        raise KmqError(
            f"cannot fit prompts: max_length={max_length!r} (set GenerationConfig.max_length "
            f"above max_new_tokens={config.max_new_tokens})"
        )
    return int(max_length) - config.max_new_tokens


def _finish(texts: list[str], truncated: list[int]) -> Generations:
    if truncated:
        log.warning(
            "%d of %d prompts were longer than the context and were cut from the left (rows %s)",
            len(truncated),
            len(texts),
            truncated[:10],
        )
    return Generations(texts, truncated)


# ---------------------------------------------------------------------------------------------
# transformers backend


def _generate_transformers(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[list[int]],
    config: GenerationConfig,
    seed: int,
    show_progress: bool,
) -> list[str]:
    torch = require("torch")
    torch.manual_seed(seed)
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    settings = _decoding(model, tokenizer, config)
    out = [""] * len(prompt_ids)
    starts = range(0, len(order), config.batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc="generating", unit="batch", disable=not show_progress):
            rows = order[start : start + config.batch_size]
            texts = _generate_batch(model, tokenizer, [prompt_ids[i] for i in rows], settings)
            for row, text in zip(rows, texts, strict=True):
                out[row] = text
    return out


def _decoding(model: Any, tokenizer: Any, config: GenerationConfig) -> Any:
    """A transformers ``GenerationConfig`` that ignores the model's own sampling defaults."""
    transformers = require("transformers")
    eos = getattr(model.generation_config, "eos_token_id", None)
    eos_ids = {*(eos if isinstance(eos, list) else [eos]), tokenizer.eos_token_id} - {None}
    sampling = {"temperature": config.temperature, "top_p": config.top_p, "top_k": 0}
    return transformers.GenerationConfig(
        max_new_tokens=config.max_new_tokens,
        do_sample=config.do_sample,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=sorted(eos_ids),
        **(sampling if config.do_sample else {}),
    )


def _generate_batch(model: Any, tokenizer: Any, batch: list[list[int]], settings: Any) -> list[str]:
    """Left-pad ``batch``, decode, and return the new text of each row."""
    torch = require("torch")
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for r, ids in enumerate(batch):
        input_ids[r, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention[r, width - len(ids) :] = 1
    device = next(model.parameters()).device
    output = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        generation_config=settings,
    )
    new = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
    return [text.strip() for text in new]


# ---------------------------------------------------------------------------------------------
# vLLM backend


def _use_vllm(backend: Backend, device: str | None) -> bool:
    """``vllm``: always (it must be installed); ``auto``: when installed and on CUDA."""
    if backend == "transformers":
        return False
    available = importlib.util.find_spec("vllm") is not None
    if backend == "vllm":
        if not available:
            raise KmqError("backend='vllm' needs vLLM: pip install vllm")
        return True
    on_cuda = device is None or device.startswith("cuda")
    return available and on_cuda and bool(require("torch").cuda.is_available())


def _generate_vllm(
    path: Path,
    prompts: Sequence[Sequence[Message]],
    config: GenerationConfig,
    seed: int,
    base_model: str | None,
    show_progress: bool,
) -> Generations:
    """Greedy (or sampled) decoding with vLLM; an adapter is merged into a temporary folder."""
    vllm = require("vllm")
    with tempfile.TemporaryDirectory(prefix="kmq-merged-") as tmp:
        model_dir = path
        if is_adapter(path):
            model, tokenizer = load_checkpoint(path, base_model=base_model, device="cpu")
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            del model
            model_dir = Path(tmp)
        tokenizer = load_tokenizer(model_dir)
        model_config = require("transformers").AutoConfig.from_pretrained(model_dir)
        limit = prompt_limit(model_config, config)
        prompt_ids, truncated = encode_prompts(tokenizer, prompts, limit)
        llm = vllm.LLM(model=str(model_dir), seed=seed, max_model_len=limit + config.max_new_tokens)
        params = vllm.SamplingParams(
            max_tokens=config.max_new_tokens,
            temperature=config.temperature if config.do_sample else 0.0,
            top_p=config.top_p if config.do_sample else 1.0,
            seed=seed,
            skip_special_tokens=True,
        )
        outputs = llm.generate(
            [{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=show_progress
        )
        texts = [out.outputs[0].text.strip() for out in outputs]
        del llm  # shuts the engine down, handing its GPU memory back for the next training round
        gc.collect()
    return _finish(texts, truncated)
