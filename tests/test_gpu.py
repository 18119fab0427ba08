"""The CUDA path: encoder, LM scores, TRL LoRA training and vLLM generation on a GPU.

Every test here is marked ``gpu`` and skips, saying why, on a machine without CUDA
(``pytest -m gpu`` runs only these). ``benchmarks/gpu_check.sh`` runs them on a GPU machine.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA device: torch.cuda.is_available() is False on this machine",
    ),
]

from kmq.backends import get_lm_backend  # noqa: E402
from kmq.examples import Example, Message  # noqa: E402

PROMPTS = [
    [Message("user", "Name a colour.")],
    [Message("system", "Be brief."), Message("user", "What is two plus two?")],
    [Message("user", "Tell me a fact about cats, please, a nice one.")],
]
RESPONSES = ["Blue.", "Four, of course.", "Cats purr when they are content."]


def test_minilm_on_cuda_matches_cpu() -> None:
    pytest.importorskip("sentence_transformers")
    from kmq.encoders import get_encoder

    texts = ["a short text", "another, rather longer text about cats and dogs " * 4]
    cpu = get_encoder("minilm", device="cpu", show_progress=False).encode(texts)
    cuda = get_encoder("minilm", device="cuda", show_progress=False).encode(texts)
    cosine = np.sum(cpu * cuda, axis=1)
    assert cosine.min() > 0.999, cosine


def test_lm_nll_on_cuda_matches_cpu(tiny_llama: Path) -> None:
    cpu = get_lm_backend("torch", str(tiny_llama), device="cpu").nll(PROMPTS, RESPONSES)
    cuda = get_lm_backend("torch", str(tiny_llama), device="cuda").nll(PROMPTS, RESPONSES)
    np.testing.assert_allclose(cuda, cpu, rtol=0, atol=1e-3)
    bf16 = get_lm_backend("torch", str(tiny_llama), device="cuda", dtype="bfloat16")
    got = bf16.nll(PROMPTS, RESPONSES)
    assert np.abs(got - cpu).max() < 0.1, (got, cpu)


def test_lora_trains_and_generates_on_cuda(tiny_llama: Path, tmp_path: Path) -> None:
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    from kmq.training.trl import TRLTrainer

    rows = [
        Example(id=str(i), messages=(*p, Message("assistant", r)), row=i)
        for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES, strict=True))
    ]
    trainer = TRLTrainer(
        str(tiny_llama),
        device="cuda",
        batch_size=3,
        max_length=128,
        show_progress=False,
        generation={"max_new_tokens": 6, "backend": "transformers"},
    )
    checkpoint = trainer.train(rows, tmp_path / "round-1", init=None, seed=0)
    answers = trainer.generate(checkpoint, PROMPTS, seed=0)
    assert len(answers) == len(PROMPTS)
    assert all(isinstance(a, str) for a in answers)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_vllm_generation_answers_every_prompt(tiny_llama: Path) -> None:
    from kmq.training.generate import GenerationConfig, generate

    config = GenerationConfig(max_new_tokens=6, backend="vllm", max_length=128)
    answers = generate(tiny_llama, PROMPTS, config=config, seed=0, device="cuda")
    assert len(answers) == len(PROMPTS)
    assert all(isinstance(a, str) for a in answers)
