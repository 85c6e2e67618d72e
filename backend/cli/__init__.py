"""The ``histoclip`` command line.

Each subcommand lives in a small module of this package that exposes ``add_parser(subparsers)``
and a handler; heavy libraries are imported inside handlers so ``histoclip --help`` is fast.
Errors the backend raises on purpose (``HistoclipError``) are printed as one line, without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from backend import __version__
from backend.report import run_reporting_errors

# Modules that contribute subcommands, in the order ``--help`` lists them.
_COMMAND_MODULES = (
    "backend.cli.inspect",
    "backend.cli.slide_tasks",
    "backend.cli.cohort",
    "backend.cli.serve",
    "backend.cli.classifiers",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every subcommand registered."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="histoclip",
        description="Captions, cohort search and zero-shot class maps for whole-slide images.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--server", metavar="URL", default=None,
                        help="run embed, zero-shot, heatmap, classify, caption, search or index on a histoclip server "
                             "(token from $HISTOCLIP_TOKEN)")
    parser.add_argument("--server-ca", metavar="FILE", default=None, help="CA bundle to verify the server's TLS certificate")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``histoclip`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)

    def run() -> int | None:
        if args.server:  # the same command, against the server's backend (backend.cli.remote)
            from backend.cli.remote import check_remote

            check_remote(args)
        return args.handler(args)

    return run_reporting_errors(f"histoclip {args.command}", run)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
