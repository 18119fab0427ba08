"""Supervised fine-tuning with TRL's ``SFTTrainer`` (LoRA or full) for the iterative loop."""

from __future__ import annotations

import inspect
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from kmq._imports import require
from kmq.atomic import write_json
from kmq.errors import KmqError
from kmq.examples import Example, Message
from kmq.training import generate as generation
from kmq.training.generate import (
    CHECKPOINT_META,
    GenerationConfig,
    adapter_base,
    chat_turns,
    is_adapter,
    load_tokenizer,
    tool_role,
)

log = logging.getLogger("kmq")

Method = Literal["lora", "full"]
METHODS: tuple[str, ...] = ("lora", "full")
Mode = Literal["continue", "restart"]
MODES: tuple[str, ...] = ("continue", "restart")
Precision = Literal["float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16")
LossMasking = Literal["assistant_only", "completion_only"]

DEFAULT_LEARNING_RATES: dict[str, float] = {"lora": 2e-4, "full": 2e-5}
"""Per method: 2e-4 is the usual LoRA rate; 2e-5 is the top of the paper's full fine-tuning
range (1e-5–2e-5)."""


def checkpointing_option(config_class: Any, enabled: bool) -> dict[str, bool]:
    """The config's checkpointing switch: ``activation_checkpointing`` in recent transformers
    (5.24), ``gradient_checkpointing`` in earlier ones (5.17 still takes only that name)."""
    names = inspect.signature(config_class).parameters
    name = (
        "activation_checkpointing"
        if "activation_checkpointing" in names
        else "gradient_checkpointing"
    )
    return {name: enabled}


class TRLTrainer:
    """Fine-tune a causal LM on conversations with TRL, then answer prompts with it.

    **Rounds.** ``mode="continue"`` (the paper: "continued fine-tuning") trains the previous
    round's checkpoint (``init``) on the rows new this round; ``mode="restart"`` (the official
    code) trains the base model from scratch on every row picked so far, and ignores ``init``.
    The loop passes the matching rows and ``init``. A LoRA checkpoint is continued as the same
    adapter (its own r, alpha and target modules; loaded trainable on its base model); a full
    model folder as ``init`` is trained as is (``full``) or gets a new adapter (``lora``).

    **Data and loss.** Each example becomes a conversation in the tokenizer's own chat template:
    every turn kept, system turns included; tool turns keep the ``tool`` role when the template
    renders it, else become user turns headed ``Tool output:``. The loss covers assistant
    tokens only:

    - ``assistant_only`` (TRL ``assistant_only_loss``), when the template has
      ``{% generation %}`` markers or TRL knows a training variant of it: every assistant turn
      of a multi-turn conversation is learned;
    - ``completion_only`` (TRL ``completion_only_loss`` on a conversational prompt/completion
      dataset), otherwise (e.g. SmolLM2's plain ChatML template): the prompt is every turn
      before the last assistant turn (:attr:`Example.prompt`, context only) and the loss is
      on the last response (:attr:`Example.response`) and its end-of-turn token.

    The route taken is ``loss_masking_`` after :meth:`train`, and is recorded in the
    checkpoint. Conversations are cut to ``max_length`` tokens from the right; a row left
    without any trained token is dropped by TRL (a warning says how many).

    **Checkpoint.** ``out_dir/checkpoint``, written as ``checkpoint.tmp`` and renamed when
    complete: the adapter (``lora``) or the whole model (``full``), the tokenizer, and
    :data:`~kmq.training.generate.CHECKPOINT_META` (method, base model folder, start, seed,
    loss masking, steps, final training loss).

    **Hyper-parameters.** ``learning_rate=None`` takes :data:`DEFAULT_LEARNING_RATES` for the
    method; the schedule is transformers' default (linear decay, no warm-up), AdamW, no weight
    decay. ``target_modules=None`` adapts every linear layer but the output head.
    ``gradient_checkpointing`` (TRL's default) trades a second forward pass for memory. On CUDA,
    training runs in bf16 mixed precision (fp16 where bf16 is unsupported); on CPU in float32.
    ``precision="bfloat16"`` (LoRA only) loads the frozen base weights in bfloat16 while the
    adapter stays float32: on a CPU with native bf16 (AMX) a LoRA step took 0.73× the time of
    float32 in a side-by-side timing of 48 ``mix-small`` rows (training loss 1.685 vs 1.672).

    **Determinism.** The same seed and inputs give the same saved weights on CPU: the seed sets
    every RNG before the adapter is initialised, the trainer's seed and its data order
    (``data_seed``). CUDA kernels may still differ run to run.

    ``model`` is ``smollm2`` (converted once into ``cache_dir``) or a local model folder
    (see :func:`kmq.models.converted_model_dir`). ``device``: None = CUDA when available,
    ``cpu`` or ``cuda``. ``generation`` configures :meth:`generate`
    (:class:`~kmq.training.generate.GenerationConfig` or a mapping of its fields).
    """

    def __init__(
        self,
        model: str | Path = "smollm2",
        *,
        method: Method = "lora",
        lora_r: int = 16,
        lora_alpha: float = 32,
        lora_dropout: float = 0.05,
        target_modules: list[str] | None = None,
        epochs: float = 1.0,
        learning_rate: float | None = None,
        batch_size: int = 8,
        gradient_accumulation: int = 1,
        max_length: int = 512,
        gradient_checkpointing: bool = True,
        mode: Mode = "continue",
        logging_steps: int = 10,
        cache_dir: str | Path | None = None,
        device: str | None = None,
        precision: Precision = "float32",
        generation: GenerationConfig | Mapping[str, Any] | None = None,
        show_progress: bool = True,
    ) -> None:
        self.model = str(model)
        self.method = method
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.target_modules = target_modules
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.gradient_accumulation = gradient_accumulation
        self.max_length = max_length
        self.gradient_checkpointing = gradient_checkpointing
        self.mode = mode
        self.logging_steps = logging_steps
        self.cache_dir = cache_dir
        self.device = device
        self.precision = precision
        self.generation = GenerationConfig.coerce(generation)
        self.show_progress = show_progress
        self._check_params()

    def _check_params(self) -> None:
        _check_choice("method", self.method, METHODS)
        _check_choice("mode", self.mode, MODES)
        _check_choice("device", self.device, (None, "cpu", "cuda"))
        _check_choice("precision", self.precision, PRECISIONS)
        for name in (
            "lora_r",
            "batch_size",
            "gradient_accumulation",
            "max_length",
            "logging_steps",
        ):
            _check_int(name, getattr(self, name), 1)
        if not self.lora_alpha > 0:
            raise KmqError(f"lora_alpha must be > 0; got {self.lora_alpha!r}")
        if not 0 <= self.lora_dropout < 1:
            raise KmqError(f"lora_dropout must be in [0, 1); got {self.lora_dropout!r}")
        if not self.epochs > 0:
            raise KmqError(f"epochs must be > 0; got {self.epochs!r}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise KmqError(f"learning_rate must be > 0 (or None); got {self.learning_rate!r}")

    @property
    def learning_rate_(self) -> float:
        """The learning rate used: ``learning_rate``, else the method's default."""
        return self.learning_rate or DEFAULT_LEARNING_RATES[self.method]

    # -- Trainer protocol -----------------------------------------------------------------------

    def train(
        self, examples: Sequence[Example], out_dir: Path, *, init: Path | None, seed: int
    ) -> Path:
        """Fine-tune on ``examples`` and return the checkpoint folder ``out_dir/checkpoint``."""
        out_dir = Path(out_dir)
        final, tmp = out_dir / "checkpoint", out_dir / "checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        trainer = self.sft_trainer(examples, tmp, init=init, seed=seed)
        result = trainer.train()
        trainer.model.save_pretrained(tmp)
        trainer.processing_class.save_pretrained(tmp)
        write_json(tmp / CHECKPOINT_META, self._meta(init, seed, len(examples), trainer, result))
        _publish(tmp, final)
        return final

    def generate(
        self, checkpoint: Path, prompts: Sequence[Sequence[Message]], *, seed: int
    ) -> list[str]:
        """Answer each prompt with the checkpoint (see :func:`kmq.training.generate.generate`);
        the rows whose prompt was cut to fit are ``truncated_``."""
        result = generation.generate(
            checkpoint,
            prompts,
            config=self.generation,
            seed=seed,
            device=self.device,
            show_progress=self.show_progress,
        )
        self.truncated_ = result.truncated
        return result

    # -- building blocks ------------------------------------------------------------------------

    def sft_trainer(
        self, examples: Sequence[Example], output_dir: Path, *, init: Path | None, seed: int
    ) -> Any:
        """The configured (untrained) TRL ``SFTTrainer`` that :meth:`train` runs.

        Sets ``loss_masking_`` and ``base_model_`` (the folder the model stands on).
        """
        _check_examples(examples)
        trl = require("trl")
        require("transformers").set_seed(seed)
        start = Path(init) if init is not None and self.mode == "continue" else None
        model, self.base_model_ = self._start_model(start)
        tokenizer = load_tokenizer(_tokenizer_dir(start, self.base_model_))
        self.loss_masking_ = loss_masking(tokenizer)
        dataset = _dataset(examples, self.loss_masking_, tool_role(tokenizer))
        with _datasets_progress(self.show_progress):
            trainer = trl.SFTTrainer(
                model=model,
                args=self._sft_config(output_dir, seed, self.loss_masking_),
                train_dataset=dataset,
                processing_class=tokenizer,
            )
        if not self.show_progress:  # it prints the training logs when the progress bar is off
            trainer.remove_callback(require("transformers").PrinterCallback)
        self._check_kept(len(examples), len(trainer.train_dataset))
        return trainer

    def _check_kept(self, given: int, kept: int) -> None:
        """Fail when TRL dropped every row (nothing to learn within ``max_length``); warn when
        it dropped some."""
        if kept == 0:
            raise KmqError(
                f"none of the {given} rows has a response token within max_length="
                f"{self.max_length}: raise max_length"
            )
        if kept < given:
            log.warning(
                "%d of %d rows have no response token within max_length=%d and are not trained on",
                given - kept,
                given,
                self.max_length,
            )

    def _start_model(self, start: Path | None) -> tuple[Any, Path]:
        """The model to train (its base weights in ``precision``; a LoRA adapter attached, whose
        weights peft keeps in float32) and its base folder."""
        transformers = require("transformers")
        torch = require("torch")
        peft = require("peft")
        dtype = getattr(torch, self.precision if self.method == "lora" else "float32")
        if start is not None and is_adapter(start):
            base = adapter_base(start)
            model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
            model = peft.PeftModel.from_pretrained(model, start, is_trainable=self.method == "lora")
            if self.method == "full":  # merged weights, all trainable
                model = model.merge_and_unload().requires_grad_(True)
            return model, base
        base = start if start is not None else self._base_dir()
        model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        if self.method == "lora":
            model = peft.get_peft_model(model, self._lora_config())
        return model, base

    def _base_dir(self) -> Path:
        from kmq.models import converted_model_dir

        return converted_model_dir(self.model, self.cache_dir).resolve()

    def _lora_config(self) -> Any:
        return require("peft").LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=self.target_modules or "all-linear",
            task_type="CAUSAL_LM",
        )

    def _sft_config(self, output_dir: Path, seed: int, masking: LossMasking) -> Any:
        from kmq.models import resolve_device

        torch = require("torch")
        cuda = resolve_device(self.device).startswith("cuda")
        bf16 = cuda and torch.cuda.is_bf16_supported()
        sft_config = require("trl").SFTConfig
        return sft_config(
            output_dir=str(output_dir),
            num_train_epochs=self.epochs,
            learning_rate=self.learning_rate_,
            per_device_train_batch_size=self.batch_size,
            gradient_accumulation_steps=self.gradient_accumulation,
            max_length=self.max_length,
            **checkpointing_option(sft_config, self.gradient_checkpointing),
            assistant_only_loss=masking == "assistant_only",
            completion_only_loss=masking == "completion_only",
            seed=seed,
            data_seed=seed,
            report_to=[],
            save_strategy="no",
            logging_steps=self.logging_steps,
            use_cpu=not cuda,
            bf16=bf16,
            fp16=cuda and not bf16,
            disable_tqdm=not self.show_progress,
        )

    def _meta(
        self, init: Path | None, seed: int, n_examples: int, trainer: Any, result: Any
    ) -> dict[str, Any]:
        return {
            "method": self.method,
            "base_model": str(self.base_model_),
            "mode": self.mode,
            "init": None if init is None or self.mode == "restart" else str(init),
            "seed": seed,
            "examples": n_examples,
            "loss_masking": self.loss_masking_,
            "learning_rate": self.learning_rate_,
            "epochs": self.epochs,
            "steps": int(trainer.state.global_step),
            "train_loss": float(result.training_loss),
        }


def loss_masking(tokenizer: Any) -> LossMasking:
    """``assistant_only`` when TRL can mask by the chat template's ``{% generation %}`` markers
    (present, or a training variant TRL knows), else ``completion_only``."""
    utils = require("trl.chat_template_utils")
    try:
        utils.get_training_chat_template(tokenizer)
    except ValueError:
        return "completion_only"
    return "assistant_only"


def _dataset(examples: Sequence[Example], masking: LossMasking, role: str) -> Any:
    """A conversational ``datasets.Dataset``: ``messages`` rows, or ``prompt``/``completion``
    rows for ``completion_only``."""
    if masking == "assistant_only":
        rows = [{"messages": chat_turns(ex.messages, role)} for ex in examples]
    else:
        rows = [
            {
                "prompt": chat_turns(ex.prompt, role),
                "completion": [{"role": "assistant", "content": ex.response}],
            }
            for ex in examples
        ]
    return require("datasets").Dataset.from_list(rows)


def _check_examples(examples: Sequence[Example]) -> None:
    if not examples:
        raise KmqError("no examples to train on")
    for ex in examples:
        if not any(m.role == "assistant" for m in ex.messages):
            raise KmqError(f"example {ex.id!r} (row {ex.row}) has no assistant turn to learn")


def _tokenizer_dir(start: Path | None, base: Path) -> Path:
    """Where the tokenizer is: the start checkpoint when it holds one, else the base."""
    if start is not None and (start / "tokenizer_config.json").is_file():
        return start
    return base


def _check_choice(name: str, value: object, allowed: Sequence[object]) -> None:
    if value not in allowed:
        raise KmqError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _check_int(name: str, value: object, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise KmqError(f"{name} must be an integer >= {low}; got {value!r}")


@contextmanager
def _datasets_progress(show: bool) -> Iterator[None]:
    """Hide the ``datasets`` progress bars (TRL's tokenising passes) unless ``show``."""
    datasets = require("datasets")
    hide = not show and datasets.is_progress_bar_enabled()
    if hide:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if hide:
            datasets.enable_progress_bars()


def _publish(tmp: Path, final: Path) -> None:
    """fsync every file in ``tmp``, then move it to ``final`` (replacing an older one)."""
    for path in tmp.rglob("*"):
        if path.is_file():
            with path.open("rb+") as fh:
                os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
