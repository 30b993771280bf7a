"""``kasmina record --redis URL --run RUN -o FILE``: write every stream of a run to a signed recording."""

from __future__ import annotations

import argparse
from typing import Any

import anyio

from bus import open_bus, record
from contracts import streams
from kasmina.common import CliError, add_keys, add_redis, emit_json, load_keys, redis_url, run_id
from kasmina.sources import seal_key


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("record", help="write a run's streams to a recording file")
    add_redis(parser)
    add_keys(parser)
    parser.add_argument("-o", "--output", required=True, metavar="FILE")
    parser.set_defaults(func=run)


async def _record(args: argparse.Namespace) -> dict[str, Any]:
    seal = seal_key(load_keys(args))  # header and trailer signed: replay --verify checks them
    bus = open_bus(redis_url(args))
    run = run_id(args)
    try:
        names = await bus.streams(streams.prefix(run) + "*")
        if streams.events(run) not in names:
            raise CliError(
                f"run {run!r} has no event log (no stream {streams.events(run)}; the key is "
                "missing or holds another type): is the run name right? nothing written"
            )
        count = await record(bus, names, args.output, {"run": run}, seal=seal)
    finally:
        await bus.close()
    return {"recording": args.output, "run": run, "streams": len(names), "entries": count}


def run(args: argparse.Namespace) -> int:
    emit_json(anyio.run(_record, args))
    return 0
