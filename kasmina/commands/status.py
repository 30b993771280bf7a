"""``kasmina status``: actors alive, attached trainers, per-slot stage, α and what each slot awaits
(since when), stream lengths/pending/lag, rejects by reason."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable
from typing import Any, TypeVar

import anyio

from actors.attached import ALIVE_S, confirmations, confirmed_by_rank, heartbeats, trainers
from actors.eventlog import BadEntry, read_log, read_verified
from actors.hosting.quarantine import KEY_REFUSALS
from actors.hosting.rejection import written_by_its_actor
from actors.replay import fold_events
from actors.seed import stage_name
from actors.seed.outcomes import awaiting_text
from bus import Bus, BusConfigError, BusError, BusUnavailable, open_bus
from contracts import KeyRing, Reason, Verifier, kinds, streams
from kasmina.common import (
    CliError,
    add_keys,
    add_redis,
    emit_json,
    load_keys,
    positive_seconds,
    redis_url,
    run_id,
)
from leyline import pb

SHOWN_STREAMS = 200  # stream lines the text report prints (--json: all)
T = TypeVar("T")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("status", help="what a run's actors, slots and streams are doing")
    add_redis(parser)
    add_keys(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object (per view)")
    parser.add_argument(
        "--watch", action="store_true", help="a live view, refreshed until Ctrl-C or SIGTERM"
    )
    parser.add_argument("--interval", type=positive_seconds, default=2.0, metavar="SECONDS")
    parser.add_argument(
        "--count",
        type=int,
        default=0,
        metavar="N",
        help="with --watch: stop after N refreshes (a try that found Redis away counts too)",
    )
    parser.set_defaults(func=run)


async def _actors(bus: Bus, run: str, ring: KeyRing) -> list[dict[str, Any]]:
    latest = await heartbeats(bus, run, ring)
    now = time.time_ns()
    return [
        {
            "name": name,
            "alive": (now - beat.ts_ns) / 1e9 < ALIVE_S,
            "process": beat.process,
            "processed": beat.processed,
            "rejected": dict(beat.rejected),
            "last_seen_s": round((now - beat.ts_ns) / 1e9, 1),
        }
        for name, beat in sorted(latest.items())
    ]


async def _streams(bus: Bus, run: str) -> list[dict[str, Any]]:
    """Every stream of the run with its length, pending entries and lag, in name order (looked
    at 16 at a time: anyone can add streams under the run's prefix, thousands of them)."""
    names = await bus.streams(streams.prefix(run) + "*")
    out: list[dict[str, Any]] = [{} for _ in names]
    limit = anyio.CapacityLimiter(16)

    async def look(i: int, name: str) -> None:
        async with limit:
            info = await bus.info(name)
        lags = [g.lag for g in info.groups]
        out[i] = {
            "name": name.removeprefix(streams.prefix(run)),
            "length": info.length,
            "pending": sum(g.pending for g in info.groups),
            "lag": None if None in lags else sum(lag for lag in lags if lag is not None),
            "groups": len(info.groups),
        }

    async with anyio.create_task_group() as tg:
        for i, name in enumerate(names):
            tg.start_soon(look, i, name)
    return out


async def _rejected(bus: Bus, run: str, ring: KeyRing) -> dict[str, int]:
    """Rejections by reason, read from the signed records (an entry that does not verify, or a
    record that is not its actor's own, :func:`written_by_its_actor`: a key that may not speak for
    the actor it names, or an inbox that actor does not read, is counted as ``unverified_record``,
    never by a field anyone could have written). A record of entries already counted (the same
    actor, inbox and entry ids: delivered again by a rewound consumer group, and rejected again)
    is not counted twice."""
    rejected: Counter[str] = Counter()
    seen: set[tuple[str, str, str, str]] = set()
    verifier = Verifier(ring, replay=True)
    async for record in read_log(bus, streams.rejected(run), verifier):
        if (
            isinstance(record, BadEntry)
            or not isinstance(record.message, pb.Rejection)
            or not written_by_its_actor(record.message, record.envelope, verifier, run)
        ):
            rejected["unverified_record"] += 1
            continue
        m = record.message
        entries = (m.actor, m.stream, m.entry_id, m.last_entry_id)
        if not m.entry_id or entries not in seen:
            seen.add(entries)
            rejected[m.reason_code or "unknown"] += max(1, m.count)
    return dict(sorted(rejected.items()))


def _waits(events: list[tuple[str, str, Any]]) -> dict[str, tuple[int, int]]:
    """Per slot: (entry time in ms, step) of the progress event that started its current wait."""
    since: dict[str, tuple[int, int]] = {}
    for entry_id, kind, message in events:
        if kind == kinds.LIFECYCLE_PROGRESS and message.HasField("awaiting"):
            since[message.slot] = (int(entry_id.split("-")[0]), int(message.step))
    return since


def _slot(slot: str, s: Any, since: tuple[int, int] | None, now_ms: int) -> dict[str, Any]:
    waiting = "" if s.awaiting is None else str(s.awaiting)
    started_ms, started_step = since if since is not None and waiting else (0, 0)
    return {
        "slot": slot,
        "stage": stage_name(s.stage),
        "alpha": s.alpha,
        "paused": s.paused,
        "strikes": s.strikes,
        "awaiting": waiting,
        "awaiting_text": awaiting_text(waiting),
        "awaiting_command": s.command_id if waiting else "",
        "awaiting_since_step": started_step if waiting else None,
        "awaiting_for_s": round((now_ms - started_ms) / 1000, 1) if waiting else None,
    }


_KEY_REFUSED = frozenset(r.value for r in KEY_REFUSALS)


async def collect(bus: Bus, run: str, ring: KeyRing) -> dict[str, Any]:
    """The status object of docs/design.md §7 (plus ``trainers`` and each slot's ``awaiting_*``).

    A part whose key Redis refuses to read (a key of another type written over a stream) is
    reported under ``unreadable`` with its error, and the other parts are shown: one tampered key
    does not blind the operator. Redis being unreachable still fails the whole call."""
    broken: list[dict[str, str]] = []
    part = _Parts(broken)
    log = await part("events", read_verified(bus, streams.events(run), ring), ([], []))
    events, bad = log
    quarantined: list[dict[str, str]] = []
    state = fold_events(events, quarantine=quarantined)
    # copies of genuine events (read once, set aside) are quarantined, not unverified
    copies = sum(1 for b in bad if b["reason"] == Reason.REPLAYED.value)
    since = _waits(events)
    now_ns = time.time_ns()
    dead = await part("dead", bus.info(streams.dead_letter(run)), None)
    return {
        "run": run,
        "actors": await part("heartbeats", _actors(bus, run, ring), []),
        "trainers": await part("trainers", _trainers(bus, run, ring, now_ns), []),
        "slots": [
            _slot(slot, s, since.get(slot), now_ns // 1_000_000)
            for slot, s in sorted(state.seeds.items())
        ],
        "rejected": await part("rejected", _rejected(bus, run, ring), {}),
        "quarantined": len(quarantined) + copies,
        **await part(
            "quarantine", _notes(bus, run, ring), {"log_regressions": 0, "groups_moved": 0}
        ),
        "unverified_events": len(bad) - copies,
        # of those, refused for their key alone: the wrong key file, or a key revoked or dropped
        "key_refused_events": sum(1 for b in bad if b["reason"] in _KEY_REFUSED),
        "streams": await part("streams", _streams(bus, run), []),
        "dead_letters": dead.length if dead is not None else None,
        "unreadable": broken,
    }


class _Parts:
    """Await one part of the status; a Redis refusal (not an outage) leaves its default and is
    noted in ``broken``."""

    def __init__(self, broken: list[dict[str, str]]) -> None:
        self.broken = broken

    async def __call__(self, name: str, job: Awaitable[T], default: T) -> T:
        try:
            return await job
        except (BusUnavailable, BusConfigError):  # the whole status, not one part of it
            raise
        except BusError as exc:
            self.broken.append({"part": name, "error": str(exc)[:300]})
            return default


async def _notes(bus: Bus, run: str, ring: KeyRing) -> dict[str, int]:
    """Signed notes of actors that found the event log behind the state they had committed
    (events deleted from it: ``log_regressions``), or their inbox's group moved past its end
    (``groups_moved``)."""
    notes, _ = await read_verified(bus, streams.quarantine(run), ring)
    codes = Counter(getattr(note, "reason_code", "") for _, _, note in notes)
    return {"log_regressions": codes["log_regressed"], "groups_moved": codes["group_moved"]}


async def _trainers(bus: Bus, run: str, ring: KeyRing, now_ns: int) -> list[dict[str, Any]]:
    """Every trainer rank with its step confirmations (orders applied, refused, the latest)."""
    confirmed = confirmed_by_rank(await confirmations(bus, run, Verifier(ring, replay=True)))
    none = {"confirmed": 0, "refused": 0, "last": None}
    return [
        {**t.as_dict(now_ns), "confirmations": confirmed.get(t.rank, none)}
        for t in await trainers(bus, run, ring, now_ns=now_ns)
    ]


def _print(status: dict[str, Any]) -> None:
    print(f"run {status['run']}")
    _print_actors(status["actors"])
    _print_trainers(status["trainers"])
    _print_slots(status["slots"])
    print("rejected:", ", ".join(f"{k}={v}" for k, v in status["rejected"].items()) or "none")
    if status["log_regressions"]:
        print(
            f"log: {status['log_regressions']} time(s) an actor found events it had committed "
            "missing from the log (kept its own state)"
        )
    if status["groups_moved"]:
        print(
            f"inbox: {status['groups_moved']} time(s) an actor found its consumer group moved past "
            "the end of its inbox (XGROUP SETID) and moved it back"
        )
    if status["quarantined"] or status["unverified_events"]:
        print(
            f"log: {status['quarantined']} events quarantined (not foldable), "
            f"{status['unverified_events']} entries that do not verify"
        )
    if status["key_refused_events"]:
        print(
            f"log: {status['key_refused_events']} entries signed by a key this key file refuses "
            "(revoked, retired or unknown): is --keys the run's key file? (an actor rebuilding "
            "with it does not serve)"
        )
    for broken in status["unreadable"]:
        print(f"UNREADABLE {broken['part']}: {broken['error']} (a key of another type?)")
    print("streams:")
    for s in status["streams"][:SHOWN_STREAMS]:
        print(
            f"  {s['name']:<32} length {s['length']:>8}  pending {s['pending']:>6}  lag {s['lag']}"
        )
    if len(status["streams"]) > SHOWN_STREAMS:
        more = len(status["streams"]) - SHOWN_STREAMS
        print(f"  … and {more} more streams under the run's prefix (--json lists every one)")


def _print_actors(actors: list[dict[str, Any]]) -> None:
    print("actors:")
    for a in actors or [{"name": "(no heartbeats)", "alive": False, "process": "", "processed": 0}]:
        print(
            f"  {a['name']:<24} {'alive' if a['alive'] else 'DOWN':<6} {a['process']:<24} processed {a['processed']}"
        )


def _print_trainers(trainers: list[dict[str, Any]]) -> None:
    print("trainers:")
    if not trainers:
        print("  (none attached: no execution heartbeat)")
    for t in trainers:
        state = "attached" if t["alive"] else "GONE"
        print(
            f"  rank {t['rank']:<6} {state:<9} step {t['last_step']:<8} "
            f"last heartbeat {t['last_heartbeat_s']} s ago  {t['process']}"
        )
        c = t["confirmations"]
        last = c["last"]
        latest = f"; last {last['stage']} of {last['slot']} at step {last['step']}" if last else ""
        print(f"    confirmed {c['confirmed']} orders, refused {c['refused']}{latest}")


def _print_slots(slots: list[dict[str, Any]]) -> None:
    print("slots:")
    for s in slots:
        print(
            f"  {s['slot']:<24} {s['stage']:<14} alpha {s['alpha']:.2f}{'  (paused)' if s['paused'] else ''}"
        )
        if s["awaiting"]:
            print(
                f"    awaiting {s['awaiting_text']} since step {s['awaiting_since_step']} "
                f"({s['awaiting_for_s']} s)"
            )


async def _status(args: argparse.Namespace) -> dict[str, Any]:
    bus = open_bus(redis_url(args))
    try:
        return await collect(bus, run_id(args), load_keys(args))
    finally:
        await bus.close()


async def _watch(args: argparse.Namespace) -> None:
    """Collect and show the status every ``--interval`` seconds (``--count`` tries, shown or
    not, or forever)."""
    if args.interval <= 0:
        raise CliError("--interval must be positive")
    bus = open_bus(redis_url(args))
    ring, run = load_keys(args), run_id(args)
    clear = sys.stdout.isatty() and not args.json
    tries = 0
    try:
        while True:
            tries += 1
            try:
                status = await collect(bus, run, ring)
            except BusUnavailable as exc:
                print(f"kasmina status: Redis unavailable ({exc}); retrying", file=sys.stderr)
            else:
                if clear:
                    sys.stdout.write("\x1b[H\x1b[2J")  # home, clear: redraw in place
                emit_json(status) if args.json else _print(status)
                if not args.json:
                    print(f"(every {args.interval:g} s; Ctrl-C to stop)", flush=True)
            if args.count and tries >= args.count:
                return
            await anyio.sleep(args.interval)
    finally:
        with anyio.CancelScope(shield=True):
            await bus.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a watch as Ctrl-C does


def run(args: argparse.Namespace) -> int:
    if args.count and not args.watch:
        raise CliError("--count: only with --watch (a single view is the default)")
    if args.watch:
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C or SIGTERM ends a watch normally
                anyio.run(_watch, args)
        finally:
            signal.signal(signal.SIGTERM, previous)
        return 0
    status = anyio.run(_status, args)
    emit_json(status) if args.json else _print(status)
    if not (status["slots"] or status["actors"] or status["streams"] or status["unreadable"]):
        print(f"kasmina status: nothing of run {status['run']} on this server (no events, "
              "heartbeats or streams): is --run, or the Redis database, the right one?",
              file=sys.stderr)  # fmt: skip
    return 1 if status["unreadable"] else 0
