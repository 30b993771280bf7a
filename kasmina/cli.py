"""The ``kasmina`` command line (docs/design.md §7)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from bus import BusError
from contracts import ContractError, KeyRingError
from kasmina.common import CliError

COMMANDS = (
    "demo",
    "run",
    "train",
    "publish",
    "replay",
    "record",
    "scenario",
    "status",
    "bench",
    "keys",
    "blueprints",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="kasmina", description="Kasmina: grow seeds inside a training network."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"kasmina.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"kasmina.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: exit 0 on success, non-zero with a one-line reason on error."""
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args) or 0)
    except KeyboardInterrupt:
        code = 130
    except (CliError, ContractError, KeyRingError, OSError, ValueError) as exc:
        print(f"kasmina {args.command}: {exc}", file=sys.stderr)
        code = 2
    except BusError as exc:  # Redis refused or cannot be reached: one line, no traceback
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        print(f"kasmina {args.command}: Redis: {reason}", file=sys.stderr)
        code = 2
    sys.exit(code)
