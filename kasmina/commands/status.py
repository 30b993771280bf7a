"""``kasmina status``: actors alive, per-slot stage and α, stream lengths/pending/lag, rejects by reason."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Any

import anyio

from actors.eventlog import LogRecord, read_log, read_verified
from actors.replay import fold_events
from actors.seed import stage_name
from bus import Bus, aiter_entries, open_bus
from contracts import KeyRing, Verifier, streams
from kasmina.common import add_keys, add_redis, emit_json, load_keys, redis_url, run_id
from leyline import pb

ALIVE_S = 10.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("status", help="what a run's actors, slots and streams are doing")
    add_redis(parser)
    add_keys(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.set_defaults(func=run)


async def _actors(bus: Bus, run: str, ring: KeyRing) -> list[dict[str, Any]]:
    verifier = Verifier(ring, replay=True)
    latest: dict[str, pb.Heartbeat] = {}
    async for record in read_log(bus, streams.heartbeats(run), verifier):
        if isinstance(record, LogRecord) and isinstance(record.message, pb.Heartbeat):
            latest[record.message.actor] = record.message
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
    out = []
    for name in await bus.streams(streams.prefix(run) + "*"):
        info = await bus.info(name)
        lags = [g.lag for g in info.groups]
        out.append(
            {
                "name": name.removeprefix(streams.prefix(run)),
                "length": info.length,
                "pending": sum(g.pending for g in info.groups),
                "lag": None
                if any(lag is None for lag in lags)
                else sum(lag for lag in lags if lag is not None),
                "groups": len(info.groups),
            }
        )
    return out


async def collect(bus: Bus, run: str, ring: KeyRing) -> dict[str, Any]:
    """The status object of docs/design.md §7."""
    events, _ = await read_verified(bus, streams.events(run), ring)
    state = fold_events(events)
    rejected: Counter[str] = Counter()
    async for entry in aiter_entries(bus, streams.rejected(run)):
        rejected[entry.fields.get("reason", b"unknown").decode(errors="replace")] += 1
    return {
        "run": run,
        "actors": await _actors(bus, run, ring),
        "slots": [
            {
                "slot": slot,
                "stage": stage_name(s.stage),
                "alpha": s.alpha,
                "paused": s.paused,
                "strikes": s.strikes,
            }
            for slot, s in sorted(state.seeds.items())
        ],
        "rejected": dict(sorted(rejected.items())),
        "streams": await _streams(bus, run),
        "dead_letters": (await bus.info(streams.dead_letter(run))).length,
    }


def _print(status: dict[str, Any]) -> None:
    print(f"run {status['run']}")
    print("actors:")
    for a in status["actors"] or [
        {"name": "(no heartbeats)", "alive": False, "process": "", "processed": 0}
    ]:
        print(
            f"  {a['name']:<24} {'alive' if a['alive'] else 'DOWN':<6} {a['process']:<24} processed {a['processed']}"
        )
    print("slots:")
    for s in status["slots"]:
        print(
            f"  {s['slot']:<24} {s['stage']:<14} alpha {s['alpha']:.2f}{'  (paused)' if s['paused'] else ''}"
        )
    print("rejected:", ", ".join(f"{k}={v}" for k, v in status["rejected"].items()) or "none")
    print("streams:")
    for s in status["streams"]:
        print(
            f"  {s['name']:<32} length {s['length']:>8}  pending {s['pending']:>6}  lag {s['lag']}"
        )


async def _status(args: argparse.Namespace) -> dict[str, Any]:
    bus = open_bus(redis_url(args))
    try:
        return await collect(bus, run_id(args), load_keys(args))
    finally:
        await bus.close()


def run(args: argparse.Namespace) -> int:
    status = anyio.run(_status, args)
    emit_json(status) if args.json else _print(status)
    return 0
