"""``kasmina run``: serve a run's actors in this process until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging

import anyio

from actors.assemble import ACTORS, build_shells, services
from actors.supervisor import Supervisor, freeze_startup_heap
from kasmina.common import CliError, add_keys, add_redis, load_keys, port, redis_url, run_id
from kasmina.wiring import connect, load_config


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "run", help="serve actors of a run (several processes may serve one run)"
    )
    add_redis(parser)
    add_keys(parser)
    parser.add_argument(
        "--actors",
        default=",".join(ACTORS),
        help="comma-separated: seed,gate,safety,telemetry,barrier",
    )
    parser.add_argument(
        "--slots", default="", help="comma-separated slot ids served by this process's seed actors"
    )
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="KasminaConfig TOML (default: $KASMINA_CONFIG)",
    )
    parser.add_argument(
        "--prometheus-port",
        type=port,
        default=None,
        metavar="PORT",
        help="serve /metrics (telemetry actor)",
    )
    parser.add_argument("--log-level", default="INFO")
    parser.set_defaults(func=run)


def _split(text: str, option: str) -> list[str]:
    """The comma-separated names of ``option``, each once (a name given twice is an error)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{option} names {', '.join(twice)} more than once")
    return names


async def _serve(args: argparse.Namespace) -> None:
    config = load_config(args.config)
    if args.prometheus_port is not None:
        config = config.model_copy(
            update={
                "telemetry": config.telemetry.model_copy(
                    update={"prometheus_port": args.prometheus_port}
                )
            }
        )
    if args.slots and "seed" not in _split(args.actors, "--actors"):
        raise CliError("--slots names the slots of seed actors: add seed to --actors")
    wiring = connect(redis_url(args), run_id(args), load_keys(args), config)
    try:
        shells = build_shells(
            bus=wiring.bus,
            run=wiring.run,
            config=config,
            signer=wiring.signer(f"kasmina-run:{wiring.run}"),
            verifier=wiring.verifier(),
            actors=_split(args.actors, "--actors"),
            slots=_split(args.slots, "--slots"),
        )
    except ValueError as exc:
        await wiring.bus.close()
        raise CliError(str(exc)) from exc
    supervisor = Supervisor(shells, services=services(shells, config))
    frozen = freeze_startup_heap()
    logging.getLogger("kasmina").info(
        "starting on run %s: %s (each serves once it holds its lease; %d start-up objects frozen)",
        wiring.run, ", ".join(s.logic.name for s in shells), frozen,
    )  # fmt: skip
    try:
        await supervisor.run()
    finally:
        with anyio.CancelScope(shield=True):
            await wiring.bus.close()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    anyio.run(_serve, args)
    return 0
