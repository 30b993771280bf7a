"""``kasmina publish ACTION --slot SLOT``: sign and send a command to a slot's SeedActor
(``kasmina publish prune --masks FILE``: a pruning order to every rank, see
:mod:`kasmina.commands.pruning`).

With ``--wait`` it follows the run's outcomes stream and never waits silently: each progress
record is printed to stderr (accepted; awaiting execution evidence; no trainer attached to run R
since T), and the exit code says how the command ended (:data:`EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import anyio

from actors.attached import Trainer, trainers
from actors.client import CommandTimeout, KasminaClient, Outcome
from bus import Bus, BusUnavailable, redact_url
from contracts import streams
from kasmina.commands import pruning
from kasmina.common import (
    CliError,
    add_keys,
    add_redis,
    count,
    emit_json,
    load_keys,
    positive_seconds,
    redis_url,
    run_id,
)
from kasmina.wiring import Wiring, connect

CLI_ACTIONS = ("germinate", "cull", "pause", "resume", "terminate", "emergency-stop", "prune")

#: exit code of ``publish --wait`` per result (2 stays the CLI's code for a usage or setup error)
EXIT_CODES = {"transition": 0, "accepted": 0, "refused": 1, "rejected": 3, "timed_out": 4}
TRAINER_CHECK_S = 2.0  # how often a wait on execution looks for attached trainers


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "publish",
        help="send a signed command to a slot",
        description="Exit codes with --wait: 0 transition or accepted, 1 refused, "
        "3 rejected, 4 timed out (2: usage or setup error).",
    )
    parser.add_argument("action", choices=CLI_ACTIONS)
    parser.add_argument("--slot", default=None, help="the slot (every action but prune)")
    parser.add_argument("--blueprint", default=None, help="germinate: the blueprint to grow")
    parser.add_argument(
        "--artifact",
        default=None,
        metavar="ID",
        help="germinate: a published blueprint artifact (kasmina blueprints publish/list)",
    )
    parser.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="blueprint parameter"
    )
    parser.add_argument("--blend-steps", type=count, default=0)
    parser.add_argument("--reason", default="")
    parser.add_argument(
        "--masks", default=None, metavar="FILE", help="prune: JSON module -> unit keep flags"
    )
    parser.add_argument("--at-step", type=int, default=None, help="prune: the step it applies at")
    parser.add_argument("--wait", action="store_true", help="wait for and print the outcome")
    parser.add_argument("--timeout", type=positive_seconds, default=30.0, metavar="SECONDS")
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


def _say(text: str) -> None:
    print(f"kasmina publish: {text}", file=sys.stderr, flush=True)


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))


def _progress_line(outcome: Outcome) -> str:
    m = outcome.message
    return f"{outcome.result} (command {outcome.command_id}); awaiting {m.awaiting_text}"


def _no_trainer(run: str, seen: list[Trainer]) -> str:
    if not seen:
        return f"no trainer attached to run {run} (none has sent a heartbeat)"
    last = max(t.ts_ns for t in seen)
    return f"no trainer attached to run {run} since {_when(last)}"


class _Watch:
    """What a waiting publish has said so far (each line once)."""

    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring
        self.awaiting: Outcome | None = None
        self.trainer_line = ""

    def progress(self, outcome: Outcome) -> None:
        self.awaiting = outcome
        _say(_progress_line(outcome))

    def needs_trainer(self) -> bool:
        label = self.awaiting.message.awaiting if self.awaiting is not None else ""
        return label.startswith(("g0_evidence", "ack:"))

    async def check_trainers(self) -> None:
        """Say (once) that no trainer is attached while the command needs one. Redis unavailable
        here only skips a look: the command is sent, and its wait rides out the outage."""
        if not self.needs_trainer():
            return
        try:
            seen = await trainers(self.wiring.bus, self.wiring.run, self.wiring.ring)
        except BusUnavailable:
            return
        line = "" if any(t.alive for t in seen) else _no_trainer(self.wiring.run, seen)
        if line and line != self.trainer_line:
            _say(line)
        self.trainer_line = line


async def _await_trainer(bus: Bus, run: str, timeout_s: float) -> bool:
    """Until a trainer (an ExecutionActor) has attached to ``run``, for at most ``timeout_s``: a
    germination's outcome needs its evidence, and an order sent long before a trainer reads it
    would be refused as stale. True when one is attached; the command is sent either way."""
    registry = streams.registry(run, "execution")
    if await bus.members(registry):
        return True
    print(f"kasmina publish: waiting for a trainer to attach to run {run}", file=sys.stderr)
    with anyio.move_on_after(timeout_s):
        while not await bus.members(registry):
            await anyio.sleep(0.1)
        return True
    print(
        f"kasmina publish: no trainer attached to run {run} within {timeout_s:g} s; sending anyway "
        "(start `kasmina train`, or attach your loop with kasmina.attach)",
        file=sys.stderr,
    )
    return False


def _unserved_line(run: str, slot: str, served: list[str]) -> str:
    listed = ", ".join(served[:20]) + (" …" if len(served) > 20 else "") if served else "none"
    return f"no SeedActor serves slot {slot} of run {run} (slots served: {listed})"


async def _await_slot(client: KasminaClient, slot: str, timeout_s: float) -> bool:
    """Until a SeedActor serves ``slot``, for at most ``timeout_s`` (0: just look), saying on
    stderr when none does: a command to an unserved slot waits unread and no record answers it
    (a misspelt slot, or a run started with other ``--slots``)."""
    if await client.served(slot):
        return True
    line = _unserved_line(client.run, slot, await client.served_slots())
    if timeout_s <= 0:
        _say(f"{line}; the command waits in its inbox and is refused as stale if none reads it "
             "within the clock tolerance")  # fmt: skip
        return False
    _say(f"{line}; waiting up to {timeout_s:g} s for one")
    with anyio.move_on_after(timeout_s):
        while not await client.served(slot):
            await anyio.sleep(0.1)
        return True
    return False


def _unserved(args: argparse.Namespace, run: str) -> dict[str, Any]:
    """The result of a wait for a slot no SeedActor served in time: timed out, nothing sent."""
    _say(f"no SeedActor served slot {args.slot} of run {run} within {args.timeout:g} s; "
         "nothing sent")  # fmt: skip
    return {
        "command_id": None,
        "slot": args.slot,
        "action": args.action,
        "ok": False,
        "result": "timed_out",
        "awaiting": "",
        "awaiting_text": "",
        "unverified_outcomes": 0,
        "trainers": "",
        "unserved": True,
    }


#: options that only one action takes: naming them with another is a usage error, not ignored
_ONLY = {
    "germinate": (("--blueprint", "blueprint"), ("--artifact", "artifact"), ("--param", "param"),
                  ("--blend-steps", "blend_steps")),
    "prune": (("--masks", "masks"), ("--at-step", "at_step")),
}  # fmt: skip


def _check_options(args: argparse.Namespace) -> None:
    """Refuse an option the action does not take (it would be silently ignored)."""
    for action, options in _ONLY.items():
        given = [flag for flag, dest in options if getattr(args, dest) not in (None, [], 0)]
        if given and args.action != action:
            raise CliError(f"{', '.join(given)}: only for {action}, not {args.action}")
    if args.action == "prune" and args.slot:
        raise CliError("--slot: prune names no slot (it applies its masks to every rank)")


async def _publish(args: argparse.Namespace) -> dict[str, Any]:
    _check_options(args)
    _check_slot(args)
    url = redis_url(args)
    wiring = connect(url, run_id(args), load_keys(args))
    started = anyio.current_time()
    try:
        if not await wiring.bus.ping():  # at once, not after the waits below (--timeout)
            raise BusUnavailable(f"no answer from {redact_url(url)}; nothing was sent")
        if args.action == "prune":
            return await pruning.publish(args, wiring)
        client = KasminaClient(
            wiring.bus, wiring.run, wiring.signer(args.sender), wiring.verifier()
        )
        extra = _extra(args)
        action = args.action.replace("-", "_")
        left = args.timeout - (anyio.current_time() - started)
        served = await _await_slot(client, args.slot, left if args.wait else 0.0)
        if args.wait and not served:  # nothing is sent: no command waits unread in a stray inbox
            return _unserved(args, wiring.run)
        if args.wait and args.action == "germinate":
            # half the budget for a trainer to attach, the rest (at least that half) for the outcome
            await _await_trainer(wiring.bus, wiring.run, args.timeout / 2)
        if not args.wait:
            command_id = await client.command(args.slot, action, reason=args.reason, **extra)
            return {"command_id": command_id, "slot": args.slot, "action": args.action}
        return await _send_and_wait(args, wiring, client, extra, started)
    finally:
        await wiring.bus.close()


def _check_slot(args: argparse.Namespace) -> None:
    """Every action but prune names one valid slot."""
    if args.action == "prune":
        return
    if not args.slot:
        raise CliError(f"{args.action} needs --slot")
    try:
        streams.check_slot(args.slot)
    except ValueError as exc:
        raise CliError(f"--slot: {exc}") from None


def _extra(args: argparse.Namespace) -> dict[str, Any]:
    """The command's fields besides slot and reason (a germination's blueprint and params)."""
    if args.action != "germinate":
        return {}
    if not args.blueprint and not args.artifact:
        raise CliError("germinate needs --blueprint or --artifact")
    return {
        "blueprint": args.blueprint,
        "artifact": args.artifact,
        "params": _params(args.param),
        "blend_steps": args.blend_steps,
    }


async def _send_and_wait(
    args: argparse.Namespace,
    wiring: Wiring,
    client: KasminaClient,
    extra: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    """Send the command and follow its outcome (progress and missing trainers said on stderr)
    until it ends or the ``--timeout`` counted from ``started`` passes."""
    action = args.action.replace("-", "_")
    watch = _Watch(wiring)
    result: dict[str, Any] = {}

    async def follow() -> None:
        mark = await client.outcomes_mark()
        command_id, entry = await client.send(args.slot, action, reason=args.reason, **extra)
        try:
            outcome = await client.wait(
                command_id,
                after=mark,
                timeout_s=max(args.timeout - (anyio.current_time() - started), 0.0),
                on_progress=watch.progress,
                entry=entry,
            )
        except CommandTimeout as exc:
            result.update(_timed_out(args, command_id, exc, watch))
        else:
            result.update(outcome.to_dict())
        tg.cancel_scope.cancel()

    async def trainers_loop() -> None:
        while True:
            await watch.check_trainers()
            await anyio.sleep(TRAINER_CHECK_S)

    async with anyio.create_task_group() as tg:
        tg.start_soon(follow)
        tg.start_soon(trainers_loop)
    if watch.trainer_line and result.get("result") == "timed_out":
        _say(watch.trainer_line)
    return result


def _timed_out(
    args: argparse.Namespace, command_id: Any, exc: CommandTimeout, watch: _Watch
) -> dict[str, Any]:
    """The result of a wait that saw no outcome in time (what it was awaiting last)."""
    awaiting = exc.last.message if exc.last is not None else None
    why = f"; awaiting {awaiting.awaiting_text}" if awaiting else ""
    if exc.unverified:
        why += (
            f"; {exc.unverified} outcome record(s) did not verify with this key file (outcomes "
            "are signed with the actor key: the key file must hold it)"
        )
    _say(f"no outcome within {args.timeout:g} s{why}")
    return {
        "command_id": command_id,
        "slot": args.slot,
        "action": args.action,
        "ok": False,
        "result": "timed_out",
        "awaiting": awaiting.awaiting if awaiting else "",
        "awaiting_text": awaiting.awaiting_text if awaiting else "",
        "unverified_outcomes": exc.unverified,
        "trainers": watch.trainer_line or "",
        "unserved": False,
    }


def run(args: argparse.Namespace) -> int:
    out = anyio.run(_publish, args)
    emit_json(out)
    if not args.wait:
        return 0
    return EXIT_CODES.get(str(out.get("result")), 1)
