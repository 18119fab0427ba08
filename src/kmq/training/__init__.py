"""Trainers for the iterative loop: fine-tune on the picked rows, generate for their prompts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from kmq.examples import Example, Message


@runtime_checkable
class Trainer(Protocol):
    """What the iterative loop needs from a training stack.

    ``train`` fine-tunes, starting from ``init`` (a model folder or checkpoint; None = the
    trainer's base model), on ``examples`` and returns the checkpoint folder it wrote under
    ``out_dir``. ``generate`` answers each prompt (the turns before the response) with the
    checkpoint. Both are deterministic for a given seed.
    """

    def train(
        self, examples: Sequence[Example], out_dir: Path, *, init: Path | None, seed: int
    ) -> Path: ...

    def generate(
        self, checkpoint: Path, prompts: Sequence[Sequence[Message]], *, seed: int
    ) -> list[str]: ...
