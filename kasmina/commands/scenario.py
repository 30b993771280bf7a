"""``kasmina scenario list | run NAME_OR_PATH``: scripted runs with faults and expectations."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import anyio

from bus import redact_url
from kasmina.common import CliError, bus_answers, emit_json
from scenarios.catalog import resolve
from scenarios.model import ScenarioError, ScenarioSpec

if TYPE_CHECKING:
    from scenarios.runner import ScenarioResult


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("scenario", help="list or run scripted scenarios")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = verbs.add_parser("list", help="the bundled scenarios")
    listing.add_argument("--json", action="store_true", help="one JSON object per scenario")
    listing.set_defaults(func=list_scenarios)
    running = verbs.add_parser("run", help="run a scenario (a bundled name, a file, or all)")
    running.add_argument("scenario", metavar="NAME_OR_PATH")
    running.add_argument(
        "--bus",
        default="fakeredis",
        metavar="BUS",
        help="fakeredis (default), memory, or a redis:// URL (the run's keys are removed after)",
    )
    running.add_argument("--json", action="store_true", help="one JSON object per scenario")
    running.set_defaults(func=run)


def _load(name_or_path: str) -> list[ScenarioSpec]:
    try:
        return resolve(name_or_path)
    except ScenarioError as exc:
        raise CliError(str(exc)) from exc


def list_scenarios(args: argparse.Namespace) -> int:
    for spec in _load("all"):
        if args.json:
            emit_json({"name": spec.name, "description": spec.description})
        else:
            print(f"{spec.name:<24} {spec.description}")
    return 0


def _report(result: ScenarioResult, as_json: bool) -> None:
    if as_json:
        emit_json(result.to_json())
        return
    verdict = "PASS" if result.passed else "FAIL"
    print(f"{verdict} {result.name} ({result.steps} steps, {result.seconds:.1f} s)")
    for expectation, what in result.failures.items():
        print(f"  {expectation}: {what}")


def run(args: argparse.Namespace) -> int:
    from scenarios.runner import run_scenario  # imports the execution stack: only when running

    specs = _load(args.scenario)
    if args.bus not in ("fakeredis", "memory") and "://" not in args.bus:
        raise CliError(f"--bus {args.bus!r}: use fakeredis, memory or a redis:// URL")
    if "://" in args.bus and not anyio.run(bus_answers, args.bus):  # actors would wait for it
        raise CliError(f"Redis unavailable at {redact_url(args.bus)}")

    async def _all() -> list[ScenarioResult]:
        results = []
        for spec in specs:
            result = await run_scenario(spec, args.bus)
            _report(result, args.json)
            results.append(result)
        return results

    failed = [r for r in anyio.run(_all) if not r.passed]
    for result in failed:
        names = ", ".join(result.failures)
        print(f"kasmina scenario: {result.name} failed: {names}", file=sys.stderr)
    return 1 if failed else 0
