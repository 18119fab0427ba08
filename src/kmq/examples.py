"""The one record type every stage of kmq passes around."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
TextView = Literal["user", "full"]
TEXT_VIEWS: tuple[str, ...] = ("user", "full")


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Example:
    """One conversation of the pool.

    ``row`` is the 0-based position of the record in the input (before any reject), so the
    selected rows can be written back unchanged. ``fields`` is the raw record as read.
    """

    id: str
    messages: tuple[Message, ...]
    row: int
    source: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def text(self, view: TextView = "user") -> str:
        """The text that gets embedded.

        ``user``: system and user turns (the official code's choice); ``full``: every turn
        (prompt and response, the paper's text). Turns are joined by blank lines.
        """
        if view == "user":
            turns = [m.content for m in self.messages if m.role in ("system", "user")]
        elif view == "full":
            turns = [m.content for m in self.messages]
        else:
            raise ValueError(f"view must be one of {TEXT_VIEWS}, got {view!r}")
        return "\n\n".join(turns)

    @property
    def prompt(self) -> tuple[Message, ...]:
        """All turns before the last assistant turn."""
        last = max(i for i, m in enumerate(self.messages) if m.role == "assistant")
        return self.messages[:last]

    @property
    def response(self) -> str:
        """The last assistant turn."""
        return next(m.content for m in reversed(self.messages) if m.role == "assistant")
