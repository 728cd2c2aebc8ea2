"""The ``structload`` command line, built on the public functions.

Exit status: 0 success, 1 problems found, 2 bad usage or unreadable source.
"""

from __future__ import annotations

import argparse
import os
import sys

from rich.console import Console


def _console(stderr: bool = False) -> Console:
    """A console that drops colour when not on a terminal or when NO_COLOR is set."""
    return Console(stderr=stderr, no_color="NO_COLOR" in os.environ or None)


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run

    return run(_console())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="structload",
        description="Load PyTorch weights structurally: inspect, compare and check checkpoints.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="a self-contained run of the main job on generated data")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
