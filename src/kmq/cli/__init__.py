"""The ``kmq`` command line: each subcommand parses its flags and calls one API function."""

from kmq.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
