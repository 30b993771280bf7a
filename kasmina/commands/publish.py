"""``kasmina publish ACTION --slot SLOT``: sign and send a command to a slot's SeedActor."""

from __future__ import annotations

import argparse
from typing import Any

import anyio

from actors.client import CommandTimeout, KasminaClient, Outcome
from kasmina.common import CliError, add_keys, add_redis, emit_json, load_keys, redis_url, run_id
from kasmina.wiring import connect

CLI_ACTIONS = ("germinate", "cull", "pause", "resume", "terminate", "emergency-stop")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("publish", help="send a signed command to a slot")
    parser.add_argument("action", choices=CLI_ACTIONS)
    parser.add_argument("--slot", required=True)
    parser.add_argument("--blueprint", default=None, help="germinate: the blueprint to grow")
    parser.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="blueprint parameter"
    )
    parser.add_argument("--blend-steps", type=int, default=0)
    parser.add_argument("--reason", default="")
    parser.add_argument("--wait", action="store_true", help="wait for and print the outcome")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    parser.add_argument("--sender", default="kasmina-cli")
    add_redis(parser)
    add_keys(parser)
    parser.set_defaults(func=run)


def _params(items: list[str]) -> dict[str, float]:
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--param {item!r}: expected NAME=VALUE")
        try:
            params[name] = float(value)
        except ValueError:
            raise CliError(f"--param {item!r}: value is not a number") from None
    return params


async def _publish(args: argparse.Namespace) -> dict[str, Any]:
    wiring = connect(redis_url(args), run_id(args), load_keys(args))
    try:
        client = KasminaClient(
            wiring.bus, wiring.run, wiring.signer(args.sender), wiring.verifier()
        )
        extra: dict[str, Any] = {}
        if args.action == "germinate":
            if not args.blueprint:
                raise CliError("germinate needs --blueprint")
            extra = {
                "blueprint": args.blueprint,
                "params": _params(args.param),
                "blend_steps": args.blend_steps,
            }
        result = await client.command(
            args.slot,
            args.action.replace("-", "_"),
            wait=args.wait,
            timeout_s=args.timeout,
            reason=args.reason,
            **extra,
        )
        if isinstance(result, Outcome):
            return result.to_dict()
        return {"command_id": result, "slot": args.slot, "action": args.action}
    finally:
        await wiring.bus.close()


def run(args: argparse.Namespace) -> int:
    try:
        out = anyio.run(_publish, args)
    except CommandTimeout as exc:
        raise CliError(str(exc)) from exc
    emit_json(out)
    return 0 if out.get("ok", True) else 1
