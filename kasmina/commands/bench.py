"""``kasmina bench``: the benchmarks, one JSON object per figure with its same-run baseline."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from bus import is_redis_url, redact_url
from kasmina.common import CliError, bus_answers, bus_url, emit_json, redis_url

PARTS = ("envelope", "bus", "actors", "telemetry", "execution")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "bench", help="measure throughput and overheads against same-run baselines"
    )
    parser.add_argument("--redis", default=None, metavar="URL")
    parser.add_argument("--json", action="store_true", help="one JSON object per figure")
    parser.add_argument("--only", choices=PARTS, action="append", help="run only these parts")
    parser.add_argument("--quick", action="store_true", help="smaller sample sizes")
    parser.add_argument(
        "--bus",
        default=None,
        type=bus_url,
        metavar="URL",
        help="bus for the execution part's traffic figure (default: the --redis server; "
        "fakeredis:// runs the server's work in the trainer's process)",
    )
    parser.set_defaults(func=run)


def _figures(part: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    if part == "envelope":
        from benchmarks.envelope_bench import run_envelope_bench

        return run_envelope_bench(n=5_000 if args.quick else 20_000)
    if part == "bus":
        module = importlib.import_module("benchmarks.bus_bench")
        fn: Callable[..., Any] = module.run_bus_bench
        n = 20_000 if args.quick else 100_000
        result: list[dict[str, Any]] = anyio.run(lambda: fn(redis_url(args), n=n))
        return result
    if part == "actors":
        from benchmarks.actor_bench import run_actor_bench

        quick = args.quick
        return run_actor_bench(
            redis_url(args), n=2_000 if quick else 10_000, fake_n=500 if quick else 2_000
        )
    if part == "telemetry":
        module = importlib.import_module("benchmarks.telemetry_bench")
        return list(module.run_telemetry_bench())
    module = importlib.import_module("benchmarks.execution_bench")
    bridge = module.bus_bridges(args.bus or redis_url(args))  # traffic while the trainer steps
    sizes = ("small",) if args.quick else ("small", "large")
    return list(module.run_sizes(rounds=5 if args.quick else None, sizes=sizes, bridge=bridge))


def _servers(args: argparse.Namespace, parts: Sequence[str]) -> list[str]:
    """The Redis servers ``parts`` measure against (the execution part's traffic: ``--bus``)."""
    urls = [redis_url(args)] if {"bus", "actors"} & set(parts) else []
    if "execution" in parts:
        urls.append(args.bus or redis_url(args))
    return [u for u in dict.fromkeys(urls) if is_redis_url(u)]


def run(args: argparse.Namespace) -> int:
    parts = args.only or PARTS
    for url in _servers(args, parts):  # a part would otherwise wait for it, or hang
        if not anyio.run(bus_answers, url):
            raise CliError(f"Redis unavailable at {redact_url(url)}")
    for part in parts:
        for figure in _figures(part, args):
            if args.json:
                emit_json(figure)
            else:
                print(
                    f"{figure['bench']:<40} {figure['value']:>12} {figure['unit']:<10} "
                    f"baseline {figure['baseline']:>12}  ratio {figure['ratio']}"
                )
    return 0
