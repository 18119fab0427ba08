"""``kmq``: the parser of every subcommand, and the entry point."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from rich.console import Console
from rich.logging import RichHandler

from kmq._version import __version__
from kmq.cli.args import flag_names
from kmq.cli.inspect import add_inspect, add_report
from kmq.cli.iterate import EXTERNAL_VERBS, add_iterate
from kmq.cli.score import add_score
from kmq.cli.select import add_select
from kmq.errors import KmqError, ParameterError
from kmq.progress import quiet_libraries

console = Console(stderr=True)


QUIET_HELP = (
    "only warnings and errors; hides the progress bars of the libraries that load models "
    "(--no-progress hides kmq's bars too)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kmq", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kmq {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    add_select(sub)
    add_score(sub)
    add_iterate(sub)
    add_inspect(sub)
    add_report(sub)
    for command in sub.choices.values():
        # after the subcommand too (SUPPRESS: an absent -q there keeps the one given before)
        command.add_argument(
            "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[0] == "iterate" and argv[1] in EXTERNAL_VERBS:
        argv = [f"iterate-{argv[1]}", *argv[2:]]
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_time=False, show_path=False)],
        force=True,
    )
    quiet = args.quiet or getattr(args, "no_progress", False)
    try:
        with quiet_libraries() if quiet else contextlib.nullcontext():
            return int(args.handler(args))
    except ParameterError as exc:
        sys.stderr.write(f"error: {exc.naming(flag_names(parser))}\n")
        return 2
    except KmqError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
