"""TRL trainer and generation on a tiny random Llama with SmolLM2's real tokenizer (offline)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from kmq.errors import KmqError  # noqa: E402
from kmq.examples import Example, Message, Role  # noqa: E402
from kmq.training import Trainer  # noqa: E402
from kmq.training.generate import (  # noqa: E402
    CHECKPOINT_META,
    GenerationConfig,
    chat_turns,
    generate,
    load_checkpoint,
    tool_role,
)
from kmq.training.trl import TRLTrainer, loss_masking  # noqa: E402

# ChatML with {% generation %} markers around each assistant turn's content + end-of-turn.
MARKED_CHATML = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def conversation(i: int, turns: int = 1, system: bool = False) -> Example:
    messages = [Message("system", "Answer briefly.")] if system else []
    for t in range(turns):
        messages.append(Message("user", f"Question {i}.{t}: what is {i} plus {t}?"))
        messages.append(Message("assistant", f"It is {i + t}, answer {i}.{t}."))
    return Example(id=f"ex{i}", messages=tuple(messages), row=i)


EXAMPLES = [conversation(i, turns=1 + i % 2, system=i % 3 == 0) for i in range(8)]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """One torch thread: the tiny model's ops are too small to share, and the CPU is shared
    (on a busy CPU, two threads made even the SmolLM2 test several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model(tiny_llama: Path) -> Path:
    return tiny_llama


@pytest.fixture(scope="module")
def marked_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a chat template that has ``{% generation %}`` markers."""
    folder = tmp_path_factory.mktemp("tiny-llama-marked")
    transformers.AutoModelForCausalLM.from_pretrained(tiny_model).save_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = MARKED_CHATML
    tokenizer.save_pretrained(folder)
    return folder


def tiny_trainer(model: Path, **options: Any) -> TRLTrainer:
    settings: dict[str, Any] = {
        "batch_size": 4,
        "max_length": 128,
        "device": "cpu",
        "gradient_checkpointing": False,
        "show_progress": False,
        "generation": {"max_new_tokens": 6, "batch_size": 3},
    }
    return TRLTrainer(model, **(settings | options))


@pytest.fixture(scope="module")
def lora_checkpoint(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("round-1")
    return tiny_trainer(tiny_model).train(EXAMPLES, out, init=None, seed=0)


def weights(checkpoint: Path) -> dict[str, Any]:
    name = "adapter_model" if (checkpoint / "adapter_config.json").is_file() else "model"
    return safetensors_torch.load_file(checkpoint / f"{name}.safetensors")


def same_weights(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def distance(a: dict[str, Any], b: dict[str, Any]) -> float:
    return float(sum((a[k] - b[k]).pow(2).sum() for k in a) ** 0.5)


def labelled_texts(trainer: Any, rows: list[int]) -> list[tuple[str, str]]:
    """Collate ``rows`` into one padded batch; per row, the text of the tokens with a label and
    the text of the (non-padding) tokens without one."""
    batch = trainer.data_collator([trainer.train_dataset[row] for row in rows])
    decode = trainer.processing_class.decode
    out = []
    for ids, labels, mask in zip(
        batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True
    ):
        learned = labels != -100
        assert torch.equal(labels[learned], ids[learned])
        assert not learned[mask == 0].any()  # padding is never learned
        out.append((decode(ids[learned]), decode(ids[~learned & (mask == 1)])))
    return out


# -- training ------------------------------------------------------------------------------------


def test_trainer_implements_protocol(tiny_model: Path) -> None:
    assert isinstance(tiny_trainer(tiny_model), Trainer)


def test_lora_checkpoint_layout(lora_checkpoint: Path) -> None:
    assert lora_checkpoint.name == "checkpoint"
    assert not lora_checkpoint.with_name("checkpoint.tmp").exists()
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json"):
        assert (lora_checkpoint / name).is_file()
    meta = json.loads((lora_checkpoint / CHECKPOINT_META).read_text())
    assert meta["method"] == "lora"
    assert meta["loss_masking"] == "completion_only"  # SmolLM2's template has no markers
    assert meta["steps"] == 2
    assert meta["learning_rate"] == 2e-4
    assert Path(meta["base_model"]).is_dir()


def test_completion_only_loss_covers_the_last_response(tiny_model: Path, tmp_path: Path) -> None:
    trainer = tiny_trainer(tiny_model).sft_trainer(EXAMPLES, tmp_path, init=None, seed=0)
    rows = [0, 1, 2, 3]  # system + 1 turn, 2 turns, 1 turn, system + 2 turns
    for row, (learned, masked) in zip(rows, labelled_texts(trainer, rows), strict=True):
        example = EXAMPLES[row]
        assert learned.strip() == example.response + "<|im_end|>"
        for message in example.prompt:  # system, user and earlier assistant turns
            assert message.content in masked


def test_assistant_only_loss_covers_every_assistant_turn(
    marked_model: Path, tmp_path: Path
) -> None:
    tiny = tiny_trainer(marked_model)
    trainer = tiny.sft_trainer(EXAMPLES, tmp_path, init=None, seed=0)
    assert tiny.loss_masking_ == "assistant_only"
    rows = [2, 3]  # user, assistant; system, user, assistant, user, assistant
    for row, (learned, masked) in zip(rows, labelled_texts(trainer, rows), strict=True):
        messages = EXAMPLES[row].messages
        assert learned == "".join(
            m.content + "<|im_end|>" for m in messages if m.role == "assistant"
        )
        for message in messages:
            if message.role != "assistant":
                assert message.content in masked


def test_rows_without_a_response_token_are_dropped(
    tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    long = Example(
        id="long",
        messages=(Message("user", "word " * 100), Message("assistant", "ok")),
        row=9,
    )
    trainer = tiny_trainer(tiny_model, max_length=64)
    with caplog.at_level("WARNING", logger="kmq"):
        sft = trainer.sft_trainer([EXAMPLES[0], long], tmp_path, init=None, seed=0)
    assert len(sft.train_dataset) == 1
    assert "1 of 2 rows have no response token within max_length=64" in caplog.text
    with pytest.raises(KmqError, match="none of the 1 rows has a response token"):
        trainer.sft_trainer([long], tmp_path, init=None, seed=0)


def test_loss_masking_route(tiny_model: Path, marked_model: Path) -> None:
    plain = transformers.AutoTokenizer.from_pretrained(tiny_model)
    marked = transformers.AutoTokenizer.from_pretrained(marked_model)
    assert loss_masking(plain) == "completion_only"
    assert loss_masking(marked) == "assistant_only"


def test_same_seed_gives_identical_weights(
    tiny_model: Path, lora_checkpoint: Path, tmp_path: Path
) -> None:
    (tmp_path / "checkpoint").mkdir()  # an older checkpoint: replaced
    (tmp_path / "checkpoint.tmp").mkdir()  # left over from a crash: removed
    again = tiny_trainer(tiny_model).train(EXAMPLES, tmp_path, init=None, seed=0)
    assert same_weights(weights(again), weights(lora_checkpoint))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_continue_trains_further_and_restart_starts_from_base(
    tiny_model: Path, lora_checkpoint: Path, tmp_path: Path
) -> None:
    new_rows = [conversation(i) for i in range(8, 12)]
    first = weights(lora_checkpoint)
    continued = tiny_trainer(tiny_model, mode="continue").train(
        new_rows, tmp_path / "c", init=lora_checkpoint, seed=1
    )
    restarted = tiny_trainer(tiny_model, mode="restart").train(
        new_rows, tmp_path / "r", init=lora_checkpoint, seed=1
    )
    fresh = tiny_trainer(tiny_model).train(new_rows, tmp_path / "f", init=None, seed=1)
    c, r = weights(continued), weights(restarted)
    assert not same_weights(c, first)
    assert distance(c, first) < distance(r, first)  # continued = round 1's adapter + a bit
    assert same_weights(r, weights(fresh))  # restart ignores init
    assert json.loads((continued / CHECKPOINT_META).read_text())["init"] == str(lora_checkpoint)


def test_full_fine_tuning(tiny_model: Path, tmp_path: Path) -> None:
    trainer = tiny_trainer(tiny_model, method="full")
    checkpoint = trainer.train(EXAMPLES, tmp_path, init=None, seed=0)
    assert (checkpoint / "config.json").is_file()
    assert not (checkpoint / "adapter_config.json").exists()
    assert trainer.learning_rate_ == 2e-5
    base = weights(tiny_model)
    tuned = weights(checkpoint)
    assert any(not torch.equal(base[k], tuned[k]) for k in base)
    answers = trainer.generate(checkpoint, [e.prompt for e in EXAMPLES[:2]], seed=0)
    assert len(answers) == 2
    assert all(isinstance(a, str) for a in answers)


def test_full_fine_tuning_from_a_lora_checkpoint(
    tiny_model: Path, lora_checkpoint: Path, tmp_path: Path
) -> None:
    """The adapter is merged into its base and every weight is trained."""
    trainer = tiny_trainer(tiny_model, method="full")
    checkpoint = trainer.train(EXAMPLES[:2], tmp_path, init=lora_checkpoint, seed=0)
    meta = json.loads((checkpoint / CHECKPOINT_META).read_text())
    assert meta["steps"] == 1
    assert meta["init"] == str(lora_checkpoint)
    assert (checkpoint / "model.safetensors").is_file()


def test_rejects_bad_parameters(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(KmqError, match="method must be one of"):
        TRLTrainer(tiny_model, method="qlora")  # type: ignore[arg-type]
    with pytest.raises(KmqError, match="batch_size must be an integer >= 1; got 0"):
        TRLTrainer(tiny_model, batch_size=0)
    with pytest.raises(KmqError, match="unknown generation option"):
        TRLTrainer(tiny_model, generation={"max_tokens": 5})
    no_answer = Example(id="q", messages=(Message("user", "hi"),), row=0)
    with pytest.raises(KmqError, match="no assistant turn"):
        tiny_trainer(tiny_model).train([no_answer], tmp_path, init=None, seed=0)


# -- generation ----------------------------------------------------------------------------------

PROMPTS = [
    e.prompt for e in [conversation(i, turns=1 + i % 3, system=i % 2 == 0) for i in range(7)]
]


def test_generate_keeps_order_and_batched_equals_one_by_one(lora_checkpoint: Path) -> None:
    def answers(prompts: list[Any], batch_size: int) -> Any:
        config = GenerationConfig(max_new_tokens=6, batch_size=batch_size)
        return generate(lora_checkpoint, prompts, config=config, seed=0, show_progress=False)

    batched = answers(PROMPTS, batch_size=3)
    assert len(batched) == len(PROMPTS)
    assert all(isinstance(text, str) and text == text.strip() for text in batched)
    assert batched.truncated == ()
    assert batched == answers(PROMPTS, batch_size=1)
    assert answers(PROMPTS[::-1], batch_size=3) == batched[::-1]


def test_generate_cuts_long_prompts_from_the_left(tiny_model: Path) -> None:
    long = [Message("user", "word " * 200)]
    short = [Message("user", "hi")]
    config = GenerationConfig(max_new_tokens=4, max_length=64)
    out = generate(tiny_model, [short, long, short], config=config, seed=0, show_progress=False)
    assert len(out) == 3
    assert out.truncated == (1,)


def test_trainer_generate_records_truncation(lora_checkpoint: Path, tiny_model: Path) -> None:
    trainer = tiny_trainer(tiny_model, generation={"max_new_tokens": 4, "max_length": 40})
    out = trainer.generate(lora_checkpoint, [PROMPTS[0], [Message("user", "x " * 100)]], seed=0)
    assert len(out) == 2
    assert trainer.truncated_ == (1,)


def test_tool_turns(tiny_model: Path) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model)
    assert tool_role(tokenizer) == "tool"  # ChatML writes any role
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'tool' %}"
        "{{ raise_exception('no tools') }}{% endif %}{{ m['content'] }}{% endfor %}"
    )
    assert tool_role(tokenizer) == "user"
    turns = chat_turns([Message("user", "q"), Message("tool", "42")], "user")
    assert turns[1] == {"role": "user", "content": "Tool output:\n42"}


def test_generation_config_checks() -> None:
    assert GenerationConfig.coerce(None) == GenerationConfig()
    assert GenerationConfig.coerce({"max_new_tokens": 3}).max_new_tokens == 3
    with pytest.raises(KmqError, match="max_length must exceed max_new_tokens=256"):
        GenerationConfig(max_length=100)
    with pytest.raises(KmqError, match="backend must be one of"):
        GenerationConfig(backend="tgi")  # type: ignore[arg-type]


# -- the real model ------------------------------------------------------------------------------


def chat(i: int, *turns: tuple[Role, str]) -> Example:
    return Example(id=f"real{i}", messages=tuple(Message(r, t) for r, t in turns), row=i)


REAL_EXAMPLES = [
    chat(0, ("user", "Give me a synonym for 'happy'."), ("assistant", "Joyful.")),
    chat(
        1,
        ("system", "You are a concise math tutor."),
        ("user", "What is 12 times 12?"),
        ("assistant", "12 × 12 = 144."),
    ),
    chat(
        2,
        ("user", "Name the capital of France."),
        ("assistant", "Paris is the capital of France."),
        ("user", "And of Italy?"),
        ("assistant", "Rome."),
    ),
    chat(
        3,
        ("user", "Write a haiku about rain."),
        (
            "assistant",
            "Soft rain on the roof,\nquiet drums in the gutter,\nwet earth breathes again.",
        ),
    ),
]


@pytest.mark.slow
def test_smollm2_lora_end_to_end(tmp_path: Path) -> None:
    """One LoRA step of SmolLM2-135M on 4 rows, then 2 answers (timings printed; run with -s)."""
    trainer = TRLTrainer(
        "smollm2",
        batch_size=4,
        max_length=256,
        device="cpu",
        show_progress=False,
        generation={"max_new_tokens": 24},
    )
    started = time.perf_counter()
    checkpoint = trainer.train(REAL_EXAMPLES, tmp_path, init=None, seed=0)
    trained = time.perf_counter() - started
    prompts = [REAL_EXAMPLES[0].prompt, REAL_EXAMPLES[1].prompt]
    answers = trainer.generate(checkpoint, prompts, seed=0)
    generated = time.perf_counter() - started - trained
    assert trainer.loss_masking_ == "completion_only"
    assert json.loads((checkpoint / CHECKPOINT_META).read_text())["steps"] == 1
    assert len(answers) == 2
    assert all(isinstance(a, str) and a for a in answers)
    print(f"SmolLM2 LoRA: 1 step {trained:.1f} s, 2 answers {generated:.1f} s: {answers}")


def test_checkpointing_option_follows_the_config_class() -> None:
    from dataclasses import dataclass

    from kmq.training.trl import checkpointing_option

    @dataclass
    class Recent:
        activation_checkpointing: bool = False

    @dataclass
    class Older:
        gradient_checkpointing: bool = False

    assert checkpointing_option(Recent, True) == {"activation_checkpointing": True}
    assert checkpointing_option(Older, False) == {"gradient_checkpointing": False}
    assert Older(**checkpointing_option(Older, True)).gradient_checkpointing is True


def test_bfloat16_precision_freezes_the_base_in_bf16_and_trains_a_float32_adapter(
    tiny_model: Path, tmp_path: Path
) -> None:
    trainer = tiny_trainer(tiny_model, precision="bfloat16").sft_trainer(
        EXAMPLES, tmp_path, init=None, seed=0
    )
    params = dict(trainer.model.named_parameters())
    trained = {p.dtype for p in params.values() if p.requires_grad}
    frozen = {p.dtype for p in params.values() if not p.requires_grad}
    assert trained == {torch.float32}
    assert frozen == {torch.bfloat16}
    full = tiny_trainer(tiny_model, method="full", precision="bfloat16")
    model, _ = full._start_model(None)
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # full: always float32
    with pytest.raises(KmqError, match="precision must be one of 'float32', 'bfloat16'"):
        tiny_trainer(tiny_model, precision="float16")


def test_load_checkpoint_takes_a_dtype(lora_checkpoint: Path) -> None:
    model, _ = load_checkpoint(lora_checkpoint, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model, _ = load_checkpoint(lora_checkpoint)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    with pytest.raises(KmqError, match="dtype must name a torch dtype"):
        load_checkpoint(lora_checkpoint, dtype="float33")
