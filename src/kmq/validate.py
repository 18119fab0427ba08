"""Row checks: invalid rows counted by reason, and the one repair kmq makes to a conversation.

A pool is checked in one pass. With ``on_invalid="error"`` every record is still read, and the
error then says how many are invalid, for which reasons, where the first one is and how to go
on; with ``"skip"`` the same rejects go to ``rejects.jsonl``.

The repair rule: a conversation whose first turn after any system turns is an assistant (or
tool) turn has those turns before its first user turn dropped. They answer nothing in the
conversation (ShareGPT scrapes often open with the model's greeting), and trainers skip or
mis-train such rows. The repair is recorded (``repairs.jsonl``) and the dropped turns are not
embedded; ``--output-format native`` still writes the row as read, the other output formats
the repaired conversation. Turns with a role outside the known ones are not guessed at: the
row is rejected, naming the role and the known ones.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kmq.atomic import atomic_path
from kmq.errors import InputError, Reject
from kmq.examples import Message

REPAIRS = "repairs.jsonl"
_QUOTED = re.compile(r"\s*('[^']*'|\"[^\"]*\")")
_DETAIL = re.compile(r"\s*[(:].*$")


@dataclass(frozen=True, slots=True)
class Repair:
    """A row kept after a change: where it is and what was done."""

    path: str
    location: str
    row: int
    field: str | None
    action: str

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "location": self.location,
            "row": self.row,
            "field": self.field,
            "action": self.action,
        }


def reason_kind(reason: str) -> str:
    """A reject's reason without its particulars (quoted values, details after ``(`` or ``:``),
    so rows fail for the same reason count together: "unknown role 'bot' (known: ...)" →
    "unknown role"."""
    return _DETAIL.sub("", _QUOTED.sub("", reason)).strip() or reason


def reason_counts(rejects: Sequence[Reject]) -> dict[str, int]:
    """Rejects per :func:`reason_kind`, most common first (ties by name)."""
    counts = Counter(reason_kind(r.reason) for r in rejects)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def invalid_rows_error(rejects: Sequence[Reject], n_records: int, hint: str | None) -> InputError:
    """The error for a pool with invalid rows: the first one, how many of how many and why,
    the format they were read as, and how to go on."""
    counts = reason_counts(rejects)
    n = len(rejects)
    why = ", ".join(f"{kind}: {count}" for kind, count in counts.items())
    lines = [
        f"{n:,} of {n_records:,} records {'is' if n == 1 else 'are'} invalid ({why}); "
        "the first is shown above.",
        *([hint] if hint else []),
        "To select from the valid rows, rerun with --on-invalid skip (on_invalid='skip' in "
        "Python): every invalid row and its reason go to rejects.jsonl. Or fix the rows.",
    ]
    return InputError(rejects[0], "\n".join(lines))


def leading_replies(messages: Sequence[Message]) -> list[int]:
    """Indices of the assistant/tool turns before the first user turn (none without a user
    turn: such a row is rejected for that)."""
    first_user = next((i for i, m in enumerate(messages) if m.role == "user"), 0)
    return [i for i in range(first_user) if messages[i].role in ("assistant", "tool")]


def describe_drop(messages: Sequence[Message], paths: Sequence[str], dropped: list[int]) -> str:
    """The repair's ``action``: which turns were dropped, with their roles and fields."""
    roles = ", ".join(messages[i].role for i in dropped)
    where = ", ".join(paths[i] for i in dropped)
    return f"dropped {len(dropped)} turn(s) before the first user turn ({roles}) at {where}"


def write_repairs(repairs: Sequence[Repair], path: Path) -> None:
    """One JSON object per repaired row: path, location, row, field, action."""
    text = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in repairs)
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")


def checks_summary(rejects: Sequence[Reject], repairs: Sequence[Repair]) -> dict[str, object]:
    """The manifest's ``checks``: rejects per reason, repaired rows, and the file listing them."""
    return {
        "rejected_by_reason": reason_counts(rejects),
        "repaired": len(repairs),
        "repairs": REPAIRS if repairs else None,
    }
