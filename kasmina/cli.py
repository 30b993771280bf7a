"""The ``kasmina`` command line (docs/design.md §7)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
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
    its first leaf the command line does not foresee, else its first leaf."""
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
    unforeseen = [e for e in leaves if not isinstance(e, (*_REPORTED, KeyboardInterrupt))]
    return (unforeseen or leaves or [exc])[0]


def _one_line(exc: BaseException) -> str:
    """``exc`` as one line: a settings validation error as ``field: problem; …`` (without
    pydantic's own multi-line layout and links), anything else with its whitespace folded."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()
        ]
        return f"invalid {exc.title}: " + "; ".join(problems)
    return " ".join(str(exc).split())


def _exit_code(command: str, exc: BaseException) -> int:
    """Print ``exc`` as one line and return the exit code (130 interrupted, 141 the output's
    reader gone, 2 a reported error, 1 anything else); with ``$KASMINA_DEBUG`` set, an unforeseen
    error is raised again."""
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, BrokenPipeError):  # the reader went away (`| head`): stop quietly
        with contextlib.suppress(OSError, ValueError):  # (so the last flush cannot fail)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a process ended by SIGPIPE
    if isinstance(exc, BusError):  # Redis refused or cannot be reached: one line, no traceback
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        print(f"kasmina {command}: Redis: {reason}", file=sys.stderr)
        return 2
    if isinstance(exc, _REPORTED):
        print(f"kasmina {command}: {_one_line(exc)}", file=sys.stderr)
        return 2
    if os.environ.get("KASMINA_DEBUG"):
        raise exc
    # not an error the command foresaw (a bug, or a library refusing what no check caught): one
    # line with its type, exit 1; KASMINA_DEBUG=1 shows the traceback
    reason = " ".join(str(exc).split())[:300]
    print(f"kasmina {command}: unexpected {type(exc).__name__}: {reason} "
          "(KASMINA_DEBUG=1 shows where)", file=sys.stderr)  # fmt: skip
    return 1


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: exit 0 on success, non-zero with a one-line reason on error (also when the
    error surfaced in one of a command's concurrent tasks)."""
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args) or 0)
    except (KeyboardInterrupt, Exception) as exc:
        code = _exit_code(args.command, _leaf(exc))
    sys.exit(code)
