"""Evaluation suites: fixed, seeded subsets of the sets in the shared ``eval/`` folder.

Two kinds of item:

- :class:`NLLItem` (prompt turns, reference answer), scored by :func:`evaluation.nll`;
- :class:`MCItem` (context, choice continuations, gold index), scored by
  :func:`evaluation.mc`.

Suites (files relative to the data folder):

- ``gsm8k`` (``gsm8k_test.jsonl``): the question as the user turn; the reference is the full
  worked answer, calculator annotations and the ``#### <number>`` line included (the same form
  as the gsm8k rows of the training pool).
- ``humaneval`` (``humaneval.jsonl.gz``): the user turn is :data:`HUMANEVAL_INSTRUCTION`
  followed by the function prompt (signature and docstring) in a fenced Python block; the
  reference is the ``canonical_solution`` (the indented body that completes the prompt, trailing
  whitespace removed), so only the solution code is scored, not a copy of the prompt.
- ``mt-bench`` (``mt_bench/question.jsonl`` and ``mt_bench/reference_answer_gpt4.jsonl``): the
  first turn of each question that has a GPT-4 reference answer (30 of the 80), and that
  answer's first turn.
- ``truthfulqa`` (``truthfulqa_817.csv``): ``Question`` as the user turn, ``Best Answer`` as
  the reference.
- ``alpacaeval`` (``alpaca_eval_805.json``, one JSON array): ``instruction`` as the user turn,
  the stored reference ``output`` as the reference (AlpacaEval's baseline answers).
- ``arc-easy``, ``arc-challenge`` (``arc_easy_test.jsonl``, ``arc_challenge_test.jsonl``): the
  context is the ``query`` as stored (``"Question: ...\\nAnswer:"``, lm-eval-harness's ARC
  prompt), each choice is ``" " + choice text``.
- ``mmlu`` (``mmlu_test.jsonl.gz``): lm-eval-harness's zero-shot MMLU prompt (the subject line,
  the question, the choices lettered ``A.`` to ``D.``, then ``"Answer:"``); each choice is
  ``" " + choice text``. The answer text, not its letter: models this small pick letters at
  chance, and a choice text's log-likelihood is graded, so it can differ between models whose
  accuracy barely does (SmolLM2-135M-Instruct scores 25% acc, 27% acc_norm on 150 items).

Sampling: the ``n`` items of a suite are the first ``n`` of a permutation of all its items drawn
from ``seed``, returned in file order. So the same (seed, n) gives the same items, and under one
seed a larger ``n`` gives a superset. ``n=None`` or an ``n`` at least the suite's size gives
every item. Every row of the file is checked, whichever are sampled; a bad row raises an
:class:`~kmq.errors.InputError` naming the file, the line and the field.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kmq.errors import InputError, KmqError, Reject
from kmq.examples import Message
from kmq.random import make_rng

HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the code of its body only."
)
MMLU_LETTERS = ("A", "B", "C", "D")

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class NLLItem:
    """A prompt and the reference answer whose likelihood is scored.

    ``id``: the set's own id where it has one (HumanEval's ``task_id``, ``mt-bench/<question
    id>``), else ``<suite>/<0-based record index in the file>``.
    """

    id: str
    prompt: tuple[Message, ...]
    reference: str


@dataclass(frozen=True, slots=True)
class MCItem:
    """A plain-text context and its choices; ``choices`` are the continuations exactly as
    scored (each with its leading space), ``gold`` the index of the right one.

    ``id``: ARC's own id, or ``mmlu/<subject>/<0-based record index in the file>``.
    """

    id: str
    context: str
    choices: tuple[str, ...]
    gold: int


# ---------------------------------------------------------------------------------------------
# Reading rows


@dataclass(frozen=True, slots=True)
class _Row:
    """One record of a file, with where it came from for error messages."""

    path: Path
    where: str  # "line N", or "record N" (0-based) of a JSON array
    record: Mapping[str, Any]

    def error(self, field: str | None, reason: str) -> InputError:
        return InputError(Reject(str(self.path), self.where, field, reason))

    def value(self, field: str) -> Any:
        """The field's value, whatever its type."""
        if field not in self.record:
            raise self.error(field, "missing")
        return self.record[field]

    def text(self, field: str) -> str:
        """The field's value: a string with some non-space text."""
        value = self.value(field)
        if not isinstance(value, str) or not value.strip():
            raise self.error(field, f"expected a non-empty string, got {_show(value)}")
        return value

    def texts(self, field: str) -> list[str]:
        """The field's value: a list of at least two non-empty strings."""
        value = self.value(field)
        if (
            not isinstance(value, list)
            or len(value) < 2
            or not all(isinstance(v, str) and v.strip() for v in value)
        ):
            raise self.error(
                field, f"expected a list of at least 2 non-empty strings, got {_show(value)}"
            )
        return value

    def index(self, field: str, size: int) -> int:
        """The field's value: an integer in ``[0, size)``."""
        value = self.value(field)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
            raise self.error(field, f"expected an integer in [0, {size - 1}], got {_show(value)}")
        return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _existing(data_dir: str | Path, name: str, suite: str) -> Path:
    path = Path(data_dir) / name
    if not path.is_file():
        raise KmqError(
            f"suite {suite!r} needs the file {name} in the data folder; {path} is missing"
        )
    return path


def _jsonl_rows(path: Path) -> Iterator[_Row]:
    """Each non-blank line of a JSON Lines file (gzip when the name ends in ``.gz``)."""
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"line {line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                reason = f"not valid JSON: {exc.msg}"
                raise InputError(Reject(str(path), where, None, reason)) from exc
            if not isinstance(record, dict):
                reason = f"expected a JSON object, got {type(record).__name__}"
                raise InputError(Reject(str(path), where, None, reason))
            yield _Row(path, where, record)


def _json_array_rows(path: Path) -> Iterator[_Row]:
    """Each record of a file holding one JSON array of objects."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        reason = f"not valid JSON: {exc.msg}"
        raise InputError(Reject(str(path), f"line {exc.lineno}", None, reason)) from exc
    if not isinstance(records, list):
        reason = f"expected a JSON array of objects, got {type(records).__name__}"
        raise InputError(Reject(str(path), "line 1", None, reason))
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            reason = f"expected a JSON object, got {type(record).__name__}"
            raise InputError(Reject(str(path), f"record {i}", None, reason))
        yield _Row(path, f"record {i}", record)


def _csv_rows(path: Path) -> Iterator[_Row]:
    """Each record of a CSV file with a header, as {column: value}; ``line`` is where the
    record starts (a quoted value may span lines)."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, strict=True)
        start = 1
        try:
            header = next(reader, None)
            if header is None:
                raise InputError(Reject(str(path), "line 1", None, "empty file, expected a header"))
            start = reader.line_num + 1
            for values in reader:
                if values:
                    if len(values) != len(header):
                        reason = f"{len(values)} values, but the header has {len(header)} columns"
                        raise InputError(Reject(str(path), f"line {start}", None, reason))
                    yield _Row(path, f"line {start}", dict(zip(header, values, strict=True)))
                start = reader.line_num + 1
        except csv.Error as exc:
            raise InputError(
                Reject(str(path), f"line {start}", None, f"not valid CSV: {exc}")
            ) from exc


def _sample(items: list[_T], n: int | None, seed: int, path: Path) -> list[_T]:
    """The first ``n`` items of a permutation drawn from ``seed``, in their original order."""
    if not items:
        raise KmqError(f"{path} holds no items")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise KmqError(f"n must be an integer >= 1 or None (every item); got {n!r}")
    if n is None or n >= len(items):
        return list(items)
    picked = make_rng(seed).permutation(len(items))[:n]
    return [items[i] for i in sorted(picked)]


# ---------------------------------------------------------------------------------------------
# NLL suites


def _user(text: str) -> tuple[Message, ...]:
    return (Message("user", text),)


def load_gsm8k(data_dir: str | Path, *, n: int | None = None, seed: int = 0) -> list[NLLItem]:
    """GSM8K test questions and their full worked answers (see the module doc)."""
    path = _existing(data_dir, "gsm8k_test.jsonl", "gsm8k")
    items = [
        NLLItem(f"gsm8k/{i}", _user(row.text("question")), row.text("answer"))
        for i, row in enumerate(_jsonl_rows(path))
    ]
    return _sample(items, n, seed, path)


def humaneval_prompt(code: str) -> str:
    """The user turn of a HumanEval item: the instruction, then ``code`` (blank lines around
    it removed) in a Python block."""
    body = code.lstrip("\n").rstrip()
    return f"{HUMANEVAL_INSTRUCTION}\n\n```python\n{body}\n```"


def load_humaneval(data_dir: str | Path, *, n: int | None = None, seed: int = 0) -> list[NLLItem]:
    """HumanEval: complete a function; the reference is the canonical body (see the module doc)."""
    path = _existing(data_dir, "humaneval.jsonl.gz", "humaneval")
    items = [
        NLLItem(
            row.text("task_id"),
            _user(humaneval_prompt(row.text("prompt"))),
            row.text("canonical_solution").rstrip(),
        )
        for row in _jsonl_rows(path)
    ]
    return _sample(items, n, seed, path)


def load_mt_bench(data_dir: str | Path, *, n: int | None = None, seed: int = 0) -> list[NLLItem]:
    """MT-Bench first turns that have a GPT-4 reference answer, with that answer."""
    questions = _existing(data_dir, "mt_bench/question.jsonl", "mt-bench")
    answers = _existing(data_dir, "mt_bench/reference_answer_gpt4.jsonl", "mt-bench")
    references: dict[int, str] = {}
    for row in _jsonl_rows(answers):
        choices = row.value("choices")
        first = choices[0] if isinstance(choices, list) and choices else None
        turns = first.get("turns") if isinstance(first, dict) else None
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
            raise row.error("choices", "expected [{'turns': [<answer to turn 1>, ...]}, ...]")
        if not turns[0].strip():
            raise row.error("choices", "the first turn's answer is empty")
        references[row.index("question_id", 1 << 31)] = turns[0]
    items: list[NLLItem] = []
    for row in _jsonl_rows(questions):
        qid, first_turn = row.index("question_id", 1 << 31), row.texts("turns")[0]
        if qid in references:
            items.append(NLLItem(f"mt-bench/{qid}", _user(first_turn), references.pop(qid)))
    if references:
        raise KmqError(
            f"{answers}: reference answers for question_id {sorted(references)} "
            f"have no question in {questions}"
        )
    return _sample(items, n, seed, answers)


def load_truthfulqa(data_dir: str | Path, *, n: int | None = None, seed: int = 0) -> list[NLLItem]:
    """TruthfulQA questions and their best answer."""
    path = _existing(data_dir, "truthfulqa_817.csv", "truthfulqa")
    items = [
        NLLItem(f"truthfulqa/{i}", _user(row.text("Question")), row.text("Best Answer"))
        for i, row in enumerate(_csv_rows(path))
    ]
    return _sample(items, n, seed, path)


def load_alpacaeval(data_dir: str | Path, *, n: int | None = None, seed: int = 0) -> list[NLLItem]:
    """AlpacaEval instructions and the reference ``output`` stored with each."""
    path = _existing(data_dir, "alpaca_eval_805.json", "alpacaeval")
    items = [
        NLLItem(f"alpacaeval/{i}", _user(row.text("instruction")), row.text("output"))
        for i, row in enumerate(_json_array_rows(path))
    ]
    return _sample(items, n, seed, path)


# ---------------------------------------------------------------------------------------------
# Multiple-choice suites


def _load_arc(
    file: str, suite: str, data_dir: str | Path, n: int | None, seed: int
) -> list[MCItem]:
    path = _existing(data_dir, file, suite)
    items: list[MCItem] = []
    for row in _jsonl_rows(path):
        choices = row.texts("choices")
        gold = row.index("gold", len(choices))
        items.append(
            MCItem(row.text("id"), row.text("query"), tuple(" " + c for c in choices), gold)
        )
    return _sample(items, n, seed, path)


def load_arc_easy(data_dir: str | Path, *, n: int | None = None, seed: int = 0) -> list[MCItem]:
    """ARC-Easy test questions (lm-eval-harness's prompt and continuations)."""
    return _load_arc("arc_easy_test.jsonl", "arc-easy", data_dir, n, seed)


def load_arc_challenge(
    data_dir: str | Path, *, n: int | None = None, seed: int = 0
) -> list[MCItem]:
    """ARC-Challenge test questions (lm-eval-harness's prompt and continuations)."""
    return _load_arc("arc_challenge_test.jsonl", "arc-challenge", data_dir, n, seed)


def mmlu_context(subject: str, question: str, choices: list[str]) -> str:
    """lm-eval-harness's zero-shot MMLU prompt: subject line, question, lettered choices."""
    lines = [f"{letter}. {choice}" for letter, choice in zip(MMLU_LETTERS, choices, strict=True)]
    return (
        f"The following are multiple choice questions (with answers) about "
        f"{subject.replace('_', ' ')}.\n\n{question.strip()}\n" + "\n".join(lines) + "\nAnswer:"
    )


def load_mmlu(data_dir: str | Path, *, n: int | None = None, seed: int = 0) -> list[MCItem]:
    """MMLU test questions: lettered choices in the context, answer texts as continuations."""
    path = _existing(data_dir, "mmlu_test.jsonl.gz", "mmlu")
    items: list[MCItem] = []
    for i, row in enumerate(_jsonl_rows(path)):
        subject, question, choices = row.text("subject"), row.text("question"), row.texts("choices")
        if len(choices) != len(MMLU_LETTERS):
            raise row.error("choices", f"expected {len(MMLU_LETTERS)} choices, got {len(choices)}")
        context = mmlu_context(subject, question, choices)
        gold = row.index("answer", len(choices))
        items.append(MCItem(f"mmlu/{subject}/{i}", context, tuple(" " + c for c in choices), gold))
    return _sample(items, n, seed, path)


# ---------------------------------------------------------------------------------------------
# By name

NLL_SUITES: dict[str, Callable[..., list[NLLItem]]] = {
    "gsm8k": load_gsm8k,
    "humaneval": load_humaneval,
    "mt-bench": load_mt_bench,
    "truthfulqa": load_truthfulqa,
    "alpacaeval": load_alpacaeval,
}
MC_SUITES: dict[str, Callable[..., list[MCItem]]] = {
    "arc-easy": load_arc_easy,
    "arc-challenge": load_arc_challenge,
    "mmlu": load_mmlu,
}


def load_suite(
    name: str, data_dir: str | Path, *, n: int | None = None, seed: int = 0
) -> list[NLLItem] | list[MCItem]:
    """The items of suite ``name`` (one of :data:`NLL_SUITES` or :data:`MC_SUITES`)."""
    if name in NLL_SUITES:
        return NLL_SUITES[name](data_dir, n=n, seed=seed)
    if name in MC_SUITES:
        return MC_SUITES[name](data_dir, n=n, seed=seed)
    valid = ", ".join([*NLL_SUITES, *MC_SUITES])
    raise KmqError(f"unknown suite {name!r}; valid: {valid}")
