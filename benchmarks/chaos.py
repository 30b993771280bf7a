"""Chaos harness runs from the command line: seeds with kills and Redis restarts, hostile
traffic, and the bounded-memory soak. Needs ``redis-server`` (a throwaway one is started).

    python -m benchmarks.chaos seeds 11 22 33 [--steps 300] [--kills 6] [--restarts 2] [--failovers 1]
    python -m benchmarks.chaos hostile [--seed 5] [--rate 5000] [--catalogue-only] [--attack NAME]
    python -m benchmarks.chaos soak [--messages 1000000]

Every figure is printed as one JSON object per line; the exit code is 1 if any run failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import anyio

from scenarios.chaos import chaos_seed, hostile_run, soak
from scenarios.chaos.catalogue import ATTACKS, catalogue, verdict


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _seeds(args: argparse.Namespace) -> int:
    failed = 0
    for seed in args.seed:
        result = await chaos_seed(
            seed,
            workdir=Path(args.workdir) / f"seed{seed}" if args.workdir else None,
            steps=args.steps,
            kills=args.kills,
            redis_restarts=args.restarts,
            failovers=args.failovers,
            commands=args.commands,
        )
        out = result.summary()
        out["peak_rss_kib"] = result.chaos.peak_rss_kib
        out["streams"] = result.chaos.streams
        _emit(out)
        failed += not result.passed
    return 1 if failed else 0


async def _hostile(args: argparse.Namespace) -> int:
    passed = True
    if not args.catalogue_only:
        out = await hostile_run(
            args.seed,
            rate_per_s=args.rate,
            seconds=args.seconds,
            window=(args.start, args.stop),
            steps=args.steps,
        )
        _emit(out)
        passed = bool(out["passed"])
    if not args.flood_only:
        rows = await catalogue(seed=args.seed, names=args.attack)
        for row in rows:
            _emit(row)
        summary = verdict(rows)
        _emit(summary)
        passed = passed and bool(summary["passed"])
    return 0 if passed else 1


async def _soak(args: argparse.Namespace) -> int:
    result = await soak(
        args.messages,
        sample_s=args.sample_s,
        trim=not args.no_trim,
        tolerance_s=args.tolerance_s,
        on_sample=_emit,
    )
    _emit(result.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos")
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("seeds", help="chaos runs compared with fault-free runs")
    s.add_argument("seed", type=int, nargs="+")
    s.add_argument("--steps", type=int, default=300)
    s.add_argument("--kills", type=int, default=6)
    s.add_argument("--restarts", type=int, default=2)
    s.add_argument("--commands", type=int, default=60)
    s.add_argument(
        "--failovers", type=int, default=0,
        help="SIGKILLs of the primary of a Sentinel-managed setup (primary + 2 replicas)",
    )  # fmt: skip
    s.add_argument("--workdir", default=None)
    s.set_defaults(func=_seeds)
    h = sub.add_parser("hostile", help="forged/replayed/malformed flood during a window of steps")
    h.add_argument("--seed", type=int, default=5)
    h.add_argument("--rate", type=float, default=1500.0)
    h.add_argument("--seconds", type=float, default=15.0)
    h.add_argument("--steps", type=int, default=180)
    h.add_argument("--start", type=int, default=60)
    h.add_argument("--stop", type=int, default=150)
    h.add_argument("--catalogue-only", action="store_true", help="skip the mixed flood run")
    h.add_argument("--flood-only", action="store_true", help="skip the attack catalogue")
    h.add_argument(
        "--attack",
        action="append",
        default=None,
        choices=[a.name for a in ATTACKS],
        help="only these attacks of the catalogue (repeatable)",
    )
    h.set_defaults(func=_hostile)
    k = sub.add_parser("soak", help="bounded memory under many messages")
    k.add_argument("--messages", type=int, default=1_000_000)
    k.add_argument("--sample-s", type=float, default=10.0)
    k.add_argument("--no-trim", action="store_true")
    k.add_argument(
        "--tolerance-s",
        type=float,
        default=30.0,
        help="clock tolerance: a nonce lives until its stamp plus this (marker TTL: twice it)",
    )
    k.set_defaults(func=_soak)
    args = parser.parse_args(argv)
    code: int = anyio.run(args.func, args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
