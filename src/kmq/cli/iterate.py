"""``kmq iterate``: the built-in loop, ``--resume``, and the external-trainer verbs.

``kmq iterate INPUT ... --run RUN``      select, train, generate, score, reweight; N rounds
``kmq iterate --resume RUN``             carry on after a crash, from the first unfinished step
``kmq iterate init INPUT ... --run RUN`` prepare and write round 1's rows for your own trainer
``kmq iterate feedback ROUND --run RUN --generations FILE | --scores FILE``
``kmq iterate next --run RUN``           reweight, then write the next round's rows
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console

from kmq.cli.args import (
    CONFIG,
    FEEDBACK_OPTIONS,
    add_input_args,
    add_selection_args,
    budget_arg,
    select_config,
)
from kmq.errors import KmqError
from kmq.feedback import DEFAULT_FEEDBACK, FEEDBACK_SCORERS
from kmq.loop import IterateConfig, IterativeSelection
from kmq.reweight import POSITIVE_MAPS, PRIORS, RULES

EXTERNAL_VERBS = ("init", "feedback", "next")
stdout = Console()


def add_loop_args(p: argparse.ArgumentParser, *, trainer: bool) -> None:
    """Rounds, the weight update and the feedback scorer (+ the built-in trainer's settings)."""
    g = p.add_argument_group("iterative loop")
    g.add_argument("--run", required=not trainer, help="run folder (state, checkpoints, results)")
    g.add_argument("--rounds", type=int, default=3, help="N rounds of b/N rows (default 3)")
    g.add_argument(
        "--allocation",
        choices=PRIORS,
        default="balanced",
        help="round 1's cluster weights, which Eq. 6 then multiplies: balanced (w⁰ = 1/k, "
        "Algorithm 1; default) or proportional (∝ each cluster's rows, the paper's text's quotas)",
    )
    g.add_argument("--rule", choices=RULES, default="paper", help="weight update (Eq. 6 default)")
    g.add_argument(
        "--positive",
        choices=POSITIVE_MAPS,
        default="shift",
        help="make cluster means positive for Eq. 6: shift (default; adds max(0, 0.05*spread "
        "- min) to every mean, continuous and monotone) or exp (exp(mean / temperature))",
    )
    g.add_argument("--reweight-temperature", type=float, default=1.0)
    g.add_argument(
        "--floor",
        type=float,
        default=1e-3,
        help="mix in this much of the uniform weights so no cluster reaches zero",
    )
    g.add_argument(
        "--feedback",
        choices=FEEDBACK_SCORERS,
        default=DEFAULT_FEEDBACK,
        help=f"S(x, y_gold, y_gen); higher = more weight (default {DEFAULT_FEEDBACK})",
    )
    g.add_argument(
        "--feedback-model",
        help="causal LM of the LM feedback (default smollm2), or reward-gap's reward model",
    )
    g.add_argument("--feedback-backend", choices=["local", "http"], help="judge feedback backend")
    g.add_argument("--feedback-base-url", help="judge feedback: OpenAI-compatible base URL")
    if not trainer:
        return
    t = p.add_argument_group("built-in trainer (TRL SFT)")
    t.add_argument("--model", default="smollm2", help="base model: smollm2 (offline) or a folder")
    t.add_argument("--train-method", choices=["lora", "full"], default="lora")
    t.add_argument(
        "--mode",
        choices=["continue", "restart"],
        default="continue",
        help="continue: train the last round's model on the new rows (the paper); "
        "restart: the base model on every row so far (the official code). Each round "
        "generates for and scores the rows it trained on",
    )
    t.add_argument(
        "--no-train",
        dest="train",
        action="store_false",
        help="train no round: a feedback that reads no generation (gold-sound, gold-fit, "
        "gold-pmi) picks the same rows without it; you train on the final selection yourself",
    )
    t.add_argument("--epochs", type=float, default=1.0)
    t.add_argument("--learning-rate", type=float)
    t.add_argument("--train-batch-size", type=int)
    t.add_argument("--train-max-length", type=int)
    t.add_argument("--max-new-tokens", type=int, default=256)
    t.add_argument("--gen-batch-size", type=int, default=8)


def loop_config(args: argparse.Namespace, *, external: bool) -> IterateConfig:
    trainer: dict[str, Any] = {}
    if not external:
        trainer = {
            "model": args.model,
            "method": args.train_method,
            "mode": args.mode,
            "epochs": args.epochs,
            "learning_rate": args.learning_rate,
            "batch_size": args.train_batch_size,
            "max_length": args.train_max_length,
            "device": args.device,
            "generation": {
                "max_new_tokens": args.max_new_tokens,
                "batch_size": args.gen_batch_size,
            },
            "show_progress": not args.no_progress,
        }
    return IterateConfig(
        pool=select_config(args, out=args.run, method="kmq"),
        rounds=args.rounds,
        rule=args.rule,
        positive=args.positive,
        reweight_temperature=args.reweight_temperature,
        floor=args.floor,
        feedback=args.feedback,
        feedback_options={option: getattr(args, dest) for option, dest in FEEDBACK_OPTIONS.items()},
        trainer_options=trainer,
        external=external,
        train=getattr(args, "train", True),
    )


def add_iterate(sub: Any) -> None:
    p = sub.add_parser(
        "iterate",
        help="iterative kMQ (Algorithm 1) with the built-in trainer; see also init/feedback/next",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_input_args(p, optional=True)
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder")
    p.add_argument("--budget", type=budget_arg, default=CONFIG["budget"])
    add_selection_args(p, budget=False)
    add_loop_args(p, trainer=True)
    p.add_argument("--report", action="store_true", help="also write RUN/report.html")
    p.set_defaults(handler=run_iterate)

    init = sub.add_parser("iterate-init", help="(kmq iterate init) start a run for your trainer")
    add_input_args(init)
    init.add_argument("--budget", type=budget_arg, default=CONFIG["budget"])
    add_selection_args(init, budget=False)
    add_loop_args(init, trainer=False)
    init.set_defaults(handler=run_init)

    fb = sub.add_parser("iterate-feedback", help="(kmq iterate feedback) a round's outputs")
    fb.add_argument("round", type=int)
    fb.add_argument("--run", required=True)
    source = fb.add_mutually_exclusive_group(required=True)
    source.add_argument("--generations", help='JSONL of {"id", "generation"} from your model')
    source.add_argument("--scores", help='JSONL of {"id", "score"} (higher = more to learn)')
    fb.set_defaults(handler=run_feedback)

    nxt = sub.add_parser("iterate-next", help="(kmq iterate next) reweight; next round's rows")
    nxt.add_argument("--run", required=True)
    nxt.set_defaults(handler=run_next)


def run_iterate(args: argparse.Namespace) -> int:
    if args.resume:
        loop = IterativeSelection(args.resume)
    elif args.input is None or args.run is None:
        raise KmqError("give INPUT and --run RUN (a new run), or --resume RUN")
    else:
        loop = IterativeSelection(args.run, loop_config(args, external=False))
    result = loop.run()
    print_state(loop.state())
    stdout.print(
        f"selected {len(result)} rows over {loop.config.rounds} rounds → {loop.dir.path / 'final'}"
    )
    if args.report:
        from kmq.report import write_report

        stdout.print(f"report: {write_report(loop.dir.path)}")
    return 0


def run_init(args: argparse.Namespace) -> int:
    loop = IterativeSelection(args.run, loop_config(args, external=True))
    rows = loop.start_external()
    stdout.print(
        f"round 1 of {loop.config.rounds}: train on {rows}, then run "
        f"`kmq iterate feedback 1 --run {args.run} --generations FILE`"
    )
    return 0


def read_jsonl(path: str, value: str) -> dict[str, Any]:
    """``{id: row[value]}`` from a JSONL file, with the line named on any bad row."""
    out: dict[str, Any] = {}
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KmqError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or "id" not in row or value not in row:
            raise KmqError(f"{path}, line {number}: expected an object with 'id' and '{value}'")
        out[str(row["id"])] = row[value]
    return out


def run_feedback(args: argparse.Namespace) -> int:
    loop = IterativeSelection(args.run)
    if args.generations:
        generations = read_jsonl(args.generations, "generation")
        bad = [k for k, v in generations.items() if v is not None and not isinstance(v, str)]
        if bad:
            raise KmqError(
                f"{args.generations}: the generation of id {bad[0]!r} is "
                f"{json.dumps(generations[bad[0]])[:60]}, not a string (or null for none)"
            )
        loop.score(args.round, generations)
    else:
        scores = read_jsonl(args.scores, "score")
        bad = [k for k, v in scores.items() if not is_finite_number(v)]
        if bad:
            raise KmqError(
                f"{args.scores}: the score of id {bad[0]!r} is {scores[bad[0]]!r}, "
                "not a finite number"
            )
        loop.take_scores(args.round, {k: float(v) for k, v in scores.items()})
    stdout.print(
        f"round {args.round}: feedback recorded; now run `kmq iterate next --run {args.run}`"
    )
    return 0


def is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def run_next(args: argparse.Namespace) -> int:
    loop = IterativeSelection(args.run)
    rows = loop.advance()
    if rows is None:
        print_state(loop.state())
        stdout.print(f"all rounds done: the selection is in {loop.dir.path / 'final'}")
    else:
        stdout.print(f"next round's rows: {rows}")
    return 0


def print_state(state: dict[str, Any]) -> None:
    """Rounds, their timings, and the cluster weights (largest movers) after each."""
    from rich.table import Table

    prepare = state.get("prepare") or {}
    stdout.print(
        f"run {state['run']}: k = {prepare.get('k')}, budget {prepare.get('budget')}, "
        f"rounds {prepare.get('round_sizes')}; finished: {state['finished']}"
    )
    table = Table(title="rounds")
    for col in (
        "round",
        "rows",
        "quality scored",
        "steps done",
        "seconds (select/train/gen/score/reweight)",
        "weight by source after",
    ):
        table.add_column(col)
    for entry in state["rounds"]:
        seconds = "/".join(f"{v:.0f}" if v is not None else "-" for v in entry["seconds"].values())
        by_source = entry.get("source_weights_after") or {}
        sources = ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(by_source.items(), key=lambda kv: -kv[1])
        )
        table.add_row(
            str(entry["round"]),
            str(entry.get("size", "-")),
            str(entry.get("quality_scored") or "-"),
            ",".join(entry["done"]),
            seconds,
            sources or "-",
        )
    stdout.print(table)
