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


_REPORTED = (CliError, ContractError, KeyRingError, OSError, ValueError, BusError)


def _leaf(exc: BaseException) -> BaseException:
    """The error to report for ``exc``: an exception group (a task group's failure) stands for
    its first leaf when every leaf is one the command line reports in one line, else itself."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending:
        cur = pending.pop(0)
        if isinstance(cur, BaseExceptionGroup):
            pending[:0] = list(cur.exceptions)
        else:
            leaves.append(cur)
    if leaves and all(isinstance(e, (*_REPORTED, KeyboardInterrupt)) for e in leaves):
        return leaves[0]
    return exc


def _exit_code(command: str, exc: BaseException) -> int:
    """Print ``exc`` as one line and return the exit code; raise it again when it is a bug."""
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, BusError):  # Redis refused or cannot be reached: one line, no traceback
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        print(f"kasmina {command}: Redis: {reason}", file=sys.stderr)
        return 2
    if isinstance(exc, _REPORTED):
        print(f"kasmina {command}: {exc}", file=sys.stderr)
        return 2
    raise exc


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: exit 0 on success, non-zero with a one-line reason on error (also when the
    error surfaced in one of a command's concurrent tasks)."""
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args) or 0)
    except (KeyboardInterrupt, Exception) as exc:
        leaf = _leaf(exc)
        if leaf is exc and not isinstance(exc, (*_REPORTED, KeyboardInterrupt)):
            raise
        code = _exit_code(args.command, leaf)
    sys.exit(code)
