"""Errors users see: each names the file, the line or row, and the field at fault."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


class KmqError(Exception):
    """Base of every error kmq raises on purpose (the CLI prints these without a traceback)."""


@dataclass(frozen=True, slots=True)
class Reject:
    """One input row that could not be used, and why."""

    path: str
    location: str  # "line 12" (1-based, text formats) or "row 12" (0-based, tabular formats)
    field: str | None
    reason: str
    row: int | None = None  # 0-based record index, when known

    def __str__(self) -> str:
        where = f"{self.path}, {self.location}"
        if self.field:
            where += f", field '{self.field}'"
        return f"{where}: {self.reason}"


class InputError(KmqError):
    """A bad row or file; carries the :class:`Reject` that describes it."""

    def __init__(self, reject: Reject, hint: str | None = None) -> None:
        self.reject = reject
        self.hint = hint
        message = str(reject)
        if hint:
            message += f"\n{hint}"
        super().__init__(message)


class FormatError(KmqError):
    """The input's format could not be recognised."""


class ParameterError(KmqError):
    """A bad value of a parameter, named as the Python API spells it (``quality_weighting``);
    the command line names its flag instead (``--quality-weighting``) through :meth:`naming`.

    ``template`` holds ``{param}`` where the name goes, and ``{other}`` for each of the
    ``others``, further parameters the message names (``"{param} does not run with
    {streaming}"``).
    """

    def __init__(self, parameter: str, template: str, *others: str) -> None:
        self.parameter = parameter
        self.template = template
        self.others = others
        super().__init__(self.naming({}))

    def naming(self, names: Mapping[str, str]) -> str:
        """The message with each parameter replaced by its entry in ``names`` (e.g. its flag),
        or by itself where ``names`` has none."""
        text = self.template.replace("{param}", names.get(self.parameter, self.parameter))
        for other in self.others:
            text = text.replace(f"{{{other}}}", names.get(other, other))
        return text

    def renamed(self, parameter: str) -> ParameterError:
        """The same error, its parameter named ``parameter`` (as a caller spells it)."""
        return ParameterError(parameter, self.template, *self.others)
