"""``kasmina replay SOURCE``: re-fold every actor's state from a run's event log and show why."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio

from actors.eventlog import read_verified
from actors.replay import fold_events, timeline, verify_digests
from actors.seed import stage_name
from contracts import streams
from kasmina.common import CliError, emit_json
from kasmina.sources import events_stream, keys_for, open_source


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "replay", help="re-fold a run from Redis or a recording; timeline and --verify"
    )
    parser.add_argument("source", metavar="SOURCE", help="a recording file or a redis:// URL")
    parser.add_argument(
        "--run", default=None, help="run id (default: the recording's, else $KASMINA_RUN)"
    )
    parser.add_argument("--slot", default=None, help="only entries of this slot")
    parser.add_argument(
        "--kind", action="append", default=None, help="only these kinds (repeatable; prefix* ok)"
    )
    parser.add_argument(
        "--until",
        type=_entry_id,
        default=None,
        metavar="ID",
        help="stop at this entry id (inclusive)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per entry")
    parser.add_argument(
        "--verify", action="store_true", help="check recorded state digests against the re-fold"
    )
    parser.add_argument("--keys", default=None, metavar="FILE")
    parser.add_argument("--all", action="store_true", help="also show progress and digest entries")
    parser.add_argument(
        "--plot",
        default=None,
        metavar="FILE",
        help="also write the demo's plot (losses, accuracy, stages, alpha) of the run to FILE",
    )
    parser.set_defaults(func=run)


def _wanted(row: dict[str, Any], args: argparse.Namespace) -> bool:
    if args.slot is not None and row.get("slot") != args.slot:
        return False
    kind = row["kind"]
    if any(kind == k for k in args.kind or ()):  # a kind named outright is always shown
        return True
    if args.kind and not any(k.endswith("*") and kind.startswith(k[:-1]) for k in args.kind):
        return False
    return args.all or kind not in HIDDEN


#: kinds shown only with ``--all`` or when ``--kind`` names them outright (not by a pattern)
HIDDEN = frozenset(
    {"lifecycle.progress", "state.digest", "barrier.propose", "barrier.vote", "barrier.commit"}
)


def _entry_id(text: str) -> str:
    """A stream entry id, ``MS-SEQ`` or ``MS``."""
    ms, sep, seq = text.partition("-")
    if not (ms.isdigit() and (seq.isdigit() or not sep)):
        raise argparse.ArgumentTypeError(f"not a stream entry id (MS-SEQ): {text!r}")
    return text


def _line(row: dict[str, Any]) -> str:
    head = f"{row['entry_id']:>17}  step {row['step']:>6}  {row.get('slot') or '-':<12} "
    kind = row["kind"]
    if kind == "lifecycle.transition":
        gate = f" [{row['gate']}]" if row.get("gate") else ""
        return f"{head}{row['from']} -> {row['to']}{gate}  ({row['cause']})"
    if kind == "lifecycle.refused":
        return f"{head}REFUSED {row['request']} in {row['stage']}: {row['reason']}"
    if kind == "gate.result":
        failing = [
            f"{c['name']}={c['value']:g} (needs {c['comparator']} {c['threshold']:g})"
            for c in row["checks"]
            if not c["passed"]
        ]
        verdict = "passed" if row["passed"] else "FAILED " + ", ".join(failing)
        return f"{head}gate {row['gate']} {verdict}"
    extras = {
        k: v for k, v in row.items() if k not in ("entry_id", "step", "slot", "kind", "stream")
    }
    return f"{head}{kind} {extras}"


async def _replay(args: argparse.Namespace) -> int:
    ring = keys_for(args.source, args.keys)
    source, events, bad, reports = await _read_run(args, ring)
    if args.plot:
        _plot(events, reports, source.run, args.plot)
    quarantined: list[dict[str, str]] = []
    state = fold_events(events, quarantine=quarantined)
    _print_timeline(args, events, quarantined, source.run)
    summary = _summary(args, source, events, bad, quarantined, state)
    if args.json:
        emit_json(summary)
    else:
        _print_summary(summary, source.integrity, events, bad, quarantined, args.verify)
    if not events and not bad:
        until = f" up to --until {args.until}" if args.until else ""
        print(f"kasmina replay: no events for run {source.run!r}{until}", file=sys.stderr)
        return 1
    return 0 if not args.verify or summary["verified"] else 1


def _print_timeline(
    args: argparse.Namespace, events: list[Any], quarantined: list[dict[str, str]], run: str
) -> None:
    """The wanted rows of the timeline (quarantined events left out), as lines or JSON."""
    skipped = {q["entry_id"] for q in quarantined}
    shown = 0
    for row in timeline([e for e in events if e[0] not in skipped], events_stream(run)):
        if _wanted(row, args):
            emit_json(row) if args.json else print(_line(row))
            shown += 1
    if events and not shown and (args.slot is not None or args.kind):
        _say_nothing_matches(args)


def _say_nothing_matches(args: argparse.Namespace) -> None:
    """On stderr: the filters matched no event (a misspelt slot or kind shows only a summary)."""
    slot = [f"--slot {args.slot}"] if args.slot is not None else []
    filters = " ".join(slot + [f"--kind {k}" for k in args.kind or ()])
    print(f"kasmina replay: no event of the run matches {filters}", file=sys.stderr)


async def _read_run(
    args: argparse.Namespace, ring: Any
) -> tuple[Any, list[Any], list[Any], list[Any]]:
    """The source (closed again), its verified events (up to ``--until``), the entries that
    failed verification, and the step reports a plot needs."""
    reports: list[Any] = []
    source = open_source(args.source, args.run, ring)
    try:
        stream = events_stream(source.run)
        progress = _Progress()
        events, bad = await read_verified(
            source.entries, stream, ring, until=args.until, on_read=progress
        )
        progress.done(len(events) + len(bad))
        if args.plot:
            reports = await _step_reports(source, events, ring)
    finally:
        await source.close()
    return source, events, bad, reports


class _Progress:
    """On stderr, while a long log is read: a line every ``every_s`` once ``after_s`` passed."""

    def __init__(self, after_s: float = 2.0, every_s: float = 5.0) -> None:
        self.started = self.said = time.monotonic()
        self.after_s, self.every_s, self.spoke = after_s, every_s, False

    def __call__(self, n: int) -> None:
        now = time.monotonic()
        if now - self.started >= self.after_s and (
            not self.spoke or now - self.said >= self.every_s
        ):
            print(f"kasmina replay: {n} entries of the log read and verified…", file=sys.stderr)
            self.said, self.spoke = now, True

    def done(self, n: int) -> None:
        if self.spoke:
            took = time.monotonic() - self.started
            print(f"kasmina replay: {n} entries read and verified in {took:.0f} s", file=sys.stderr)


def _plot(events: list[Any], reports: list[Any], run: str, path: str) -> None:
    from kasmina.plotting import write_run_plot

    target = Path(path)
    if target.is_dir():
        raise CliError(f"--plot {path} is a directory: name the image file")
    if not target.suffix:  # the image format comes from the suffix (a PNG without one)
        target = target.with_suffix(".png")
    try:
        sampled = write_run_plot(events, reports, run, target)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    print(f"kasmina replay: plot of {sampled} steps written to {target}", file=sys.stderr)


def _summary(
    args: argparse.Namespace,
    source: Any,
    events: list[Any],
    bad: list[Any],
    quarantined: list[dict[str, str]],
    state: Any,
) -> dict[str, Any]:
    """The closing summary: counts, final stages, and with ``--verify`` the verdict and why."""
    integrity = source.integrity
    summary: dict[str, Any] = {
        "summary": True,
        "run": source.run,
        "events": len(events) - len(quarantined),
        "bad_entries": len(bad),
        "quarantined": len(quarantined),
        "slots": {slot: stage_name(s.stage) for slot, s in sorted(state.seeds.items())},
    }
    if integrity is not None:
        summary["recording_ok"] = integrity.ok
        summary["recording_problems"] = list(integrity.problems)
    if args.verify:
        mismatches = verify_digests(events, quarantine=[])
        summary["verified"] = bool(events or bad) and (
            not mismatches and not bad and not quarantined and (integrity is None or integrity.ok)
        )
        summary["mismatches"] = mismatches[:20]
        summary["bad"] = bad[:20]
        summary["quarantine"] = quarantined[:20]
    return summary


def _print_summary(
    summary: dict[str, Any],
    integrity: Any,
    events: list[Any],
    bad: list[Any],
    quarantined: list[dict[str, str]],
    verify: bool,
) -> None:
    slots = ", ".join(f"{k}={v}" for k, v in summary["slots"].items()) or "none"
    print(f"-- run {summary['run']}: {len(events)} events, slots: {slots}")
    if bad:
        print(f"-- {_entries(len(bad))} failed verification:")
        _listed(f"{b['entry_id']}  {b['reason']}: {b['detail']}" for b in bad)
    if quarantined:
        print(f"-- {_entries(len(quarantined))} quarantined (not foldable):")
        _listed(f"{q['entry_id']}  {q['kind']}: {q['reason']}" for q in quarantined)
    if integrity is not None and not integrity.ok:
        print(f"-- recording integrity: {'; '.join(integrity.problems)}")
    if verify:
        print(_verify_line(summary, integrity))


def _verify_line(summary: dict[str, Any], integrity: Any) -> str:
    if not summary["verified"]:
        return f"-- verify: FAILED {_failure(summary)}"
    if integrity is not None:
        return (
            "-- verify: OK, signed and complete recording; re-fold reproduces every recorded "
            "state digest"
        )
    return "-- verify: OK, re-fold reproduces every recorded state digest"


async def _step_reports(source: Any, events: list[Any], ring: Any) -> list[Any]:
    """The step reports still in one slot's inbox (the losses of the plot)."""
    slots = sorted({m.slot for _, k, m in events if k == "lifecycle.transition"})
    if not slots:
        return []
    inbox = streams.inbox(source.run, "seed", slots[0])
    found, _ = await read_verified(source.entries, inbox, ring)
    return [m for _, kind, m in found if kind == "step.report"]


def _failure(summary: dict[str, Any]) -> str:
    """The first reason ``--verify`` failed, in one line."""
    if not summary["events"] and not summary["bad_entries"] and not summary["quarantined"]:
        return "no events: the source holds no event log of this run"
    if summary.get("recording_problems"):
        return "recording: " + str(summary["recording_problems"][0])
    if summary["bad"]:
        first = summary["bad"][0]
        return f"{summary['bad_entries']} entries refused, first {first['entry_id']}: {first['reason']}"
    if summary["quarantine"]:
        first = summary["quarantine"][0]
        return f"{summary['quarantined']} events not foldable, first {first['entry_id']}: {first['reason']}"
    return f"digest mismatches {summary['mismatches'][:3]}"


def run(args: argparse.Namespace) -> int:
    return int(anyio.run(_replay, args))


def _entries(n: int) -> str:
    return f"{n} entry" if n == 1 else f"{n} entries"


def _listed(lines: Iterable[str], shown: int = 5) -> None:
    """The first ``shown`` lines, indented, then how many more."""
    rest = 0
    for n, line in enumerate(lines):
        if n < shown:
            print(f"     {line}")
        else:
            rest += 1
    if rest:
        print(f"     ... and {rest} more")
