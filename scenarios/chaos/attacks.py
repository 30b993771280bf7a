"""The attacks of the hostile catalogue: what each sends at a live run, and the worker that sends
one from its own process. :mod:`scenarios.chaos.catalogue` runs and measures them."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from actors.client import build_command
from actors.shell import FRAME
from bus import Append, Bus, open_bus
from contracts import KeyRing, Signer, streams
from leyline import pb
from scenarios.chaos.hostile import forge

__all__ = ["ATTACKS", "BYSTANDER", "TARGET", "Attack", "Ctx", "inject"]

TARGET, BYSTANDER = "a", "b"


@dataclass
class Ctx:
    """What an attack may use: the bus (a Redis writer), the run, captured frames, and the keys
    of the key-holder attacks."""

    bus: Bus
    run: str
    rings: dict[str, KeyRing]
    captured: list[bytes]
    rng: random.Random
    sent: int = 0

    def inbox(self, slot: str = TARGET) -> str:
        return streams.inbox(self.run, "seed", slot)

    async def flood(self, frames: list[dict[str, bytes]], stream: str | None = None) -> None:
        for start in range(0, len(frames), 100):
            chunk = frames[start : start + 100]
            await self.bus.publish_many([Append(stream or self.inbox(), f) for f in chunk])
            self.sent += len(chunk)


Step = Callable[[Ctx], Awaitable[None]]


@dataclass(frozen=True)
class Attack:
    """One entry of the catalogue; ``before``: done before the actor process starts."""

    name: str
    holder: str  # "none", "trainer", "controller", "retired"
    run: Step
    before: bool = False
    expect_quarantine: int = 0
    probe: bool = False  # legitimate commands to the target slot too, interleaved with the attack


async def _bomb(ctx: Ctx) -> None:
    """40 frames of ~1 MiB: one msgpack array of a million empty arrays each."""
    n = 1_000_000
    bomb = b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n
    await ctx.flood([{FRAME: bomb} for _ in range(40)])


async def _forged(ctx: Ctx) -> None:
    await ctx.flood([{FRAME: forge(ctx.rng.choice(ctx.captured), ctx.rng)} for _ in range(2000)])


async def _replayed(ctx: Ctx) -> None:
    await ctx.flood([{FRAME: ctx.rng.choice(ctx.captured)} for _ in range(2000)])


async def _malformed(ctx: Ctx) -> None:
    frames = [{FRAME: ctx.rng.randbytes(ctx.rng.randrange(1, 300))} for _ in range(1500)]
    frames += [{"junk": b"x"} for _ in range(500)]
    await ctx.flood(frames)


async def _big_flood(ctx: Ctx) -> None:
    """20,000 entries (forged, replayed and malformed mixed) as fast as Redis takes them: a
    backlog far beyond what the actor decides in a turn, so admission sheds its excess."""
    await ctx.flood([_hostile(ctx, i % 4) for i in range(20_000)])


def _hostile(ctx: Ctx, pick: int) -> dict[str, bytes]:
    """One flood entry: 0 a forged frame, 1 a replayed one, 2 a malformed one, else junk."""
    if pick == 0:
        return {FRAME: forge(ctx.rng.choice(ctx.captured), ctx.rng)}
    if pick == 1:
        return {FRAME: ctx.rng.choice(ctx.captured)}
    if pick == 2:
        return {FRAME: ctx.rng.randbytes(ctx.rng.randrange(1, 300))}
    return {"junk": b"x"}


async def _mixed_backlog(ctx: Ctx) -> None:
    """12,000 valid-looking entries into the target's inbox, in bursts of 2,000 (forged frames,
    replays, commands signed with the attacker's own key, garbage), while the legitimate
    controller keeps sending the target commands: a backlog builds in front of them."""
    own = Signer(KeyRing.generate(), "tamiyo")
    for _ in range(6):
        frames: list[dict[str, bytes]] = []
        for i in range(2000):
            if i % 4 == 2:  # a command signed with the attacker's own key
                cmd = build_command(TARGET, "germinate", blueprint="residual_mlp")
                frames.append({FRAME: own.seal("seed.command", cmd, stream=ctx.inbox())})
            else:  # forged, replayed, malformed (never junk: every entry looks valid)
                frames.append(_hostile(ctx, min(i % 4, 2)))
        await ctx.flood(frames)
        await anyio.sleep(0.5)


async def _many_fields(ctx: Ctx) -> None:
    client = getattr(ctx.bus, "client", None)  # plain XADD: the attacker needs no Lua
    assert client is not None
    for _ in range(20):
        await client.xadd(ctx.inbox(), {f"x{i}": b"v" for i in range(5000)})
        ctx.sent += 1


async def _foreign_route(ctx: Ctx) -> None:
    foreign = streams.inbox("someone-else", "seed", "x")
    await ctx.bus.register(streams.registry(ctx.run, "seed"), foreign)
    ctx.sent += 1


async def _rewind(ctx: Ctx) -> None:
    client = getattr(ctx.bus, "client", None)
    assert client is not None
    await client.xgroup_setid(ctx.inbox(BYSTANDER), f"actor:seed:{BYSTANDER}", "0")
    ctx.sent += 1


async def _group_past_end(ctx: Ctx) -> None:
    """The bystander's group moved past the end of its inbox (it would hold back every later
    entry): its actor's heartbeat moves it back."""
    client = getattr(ctx.bus, "client", None)
    assert client is not None
    group = f"actor:seed:{BYSTANDER}"
    await client.xgroup_setid(ctx.inbox(BYSTANDER), group, "18446744073709551615-0")
    ctx.sent += 1


async def _nonce_since_text(ctx: Ctx) -> None:
    """Text where the nonce store keeps the time its memory began: reset, never parsed."""
    await ctx.bus.set_value(f"{streams.prefix(ctx.run)}nonce-since", b"notanumber")
    ctx.sent += 1


async def _duplicate_event(ctx: Ctx) -> None:
    log = await ctx.bus.range(streams.events(ctx.run))
    genuine = [e for e in log if e.fields.get("kind") == b"lifecycle.refused"]
    await ctx.bus.publish(streams.events(ctx.run), dict(genuine[-1].fields))
    ctx.sent += 1


def _signed(
    ctx: Ctx, holder: str, kind: str, message: Any, stream: str | None = None
) -> dict[str, bytes]:
    signer = Signer(ctx.rings[holder], f"{holder}-x")
    return {FRAME: signer.seal(kind, message, stream=stream or ctx.inbox())}


async def _trainer_commands(ctx: Ctx) -> None:
    cmd = build_command(TARGET, "germinate", blueprint="residual_mlp")
    await ctx.flood([_signed(ctx, "trainer", "seed.command", cmd) for _ in range(500)])


async def _bad_params(ctx: Ctx) -> None:
    bad = [{"lr": -1.0}, {"weight_decay": -1.0}, {"hidden": 1e12}, {"hidden": 2e6}]
    frames = []
    for i in range(200):
        cmd = pb.SeedCommand(
            slot=TARGET,
            germinate=pb.Germinate(blueprint="residual_mlp", params=bad[i % len(bad)]),
        )
        frames.append(_signed(ctx, "controller", "seed.command", cmd))
    await ctx.flood(frames)


async def _telemetry_flood(ctx: Ctx) -> None:
    """Telemetry batches a trainer key may send: three of 1.5 MB (over the frame limit), three
    just under it (about 1 MB: 120 items of 500 metrics each), which are decided."""
    metrics = {f"m{i}": float(i) for i in range(500)}
    inbox = streams.inbox(ctx.run, "telemetry")
    frames = []
    for items in (180, 120, 180, 120, 180, 120):
        raw = [pb.TelemetryRaw(region="r", step=i, metrics=metrics) for i in range(items)]
        batch = pb.TelemetryBatch(items=raw)
        frames.append(_signed(ctx, "trainer", "telemetry.batch", batch, inbox))
    await ctx.flood(frames, inbox)


async def _trainer_log_forgery(ctx: Ctx) -> None:
    """A trainer key writes into the actors' own logs what it may sign elsewhere: votes and
    critical events into the event log, a shed record in the target's name (four billion
    entries) into the rejected stream, and the gate's heartbeats."""
    events, rejected = streams.events(ctx.run), streams.rejected(ctx.run)
    vote = pb.BarrierVote(barrier_step=10, rank=7, world_size=2)
    shed = pb.Rejection(
        reason_code="overloaded", actor=f"seed:{TARGET}", stream=ctx.inbox(), count=4_000_000_000
    )
    beat = pb.Heartbeat(actor="gate", process="forged:1", processed=123456)
    for _ in range(20):
        await ctx.flood([_signed(ctx, "trainer", "barrier.vote", vote, events)], events)
        await ctx.flood([_signed(ctx, "trainer", "rejection", shed, rejected)], rejected)
        heartbeats = streams.heartbeats(ctx.run)
        await ctx.flood([_signed(ctx, "trainer", "actor.heartbeat", beat, heartbeats)], heartbeats)


async def _retired_key(ctx: Ctx) -> None:
    cmd = build_command(TARGET, "cull")
    await ctx.flood([_signed(ctx, "retired", "seed.command", cmd) for _ in range(500)])


ATTACKS: tuple[Attack, ...] = (
    Attack("bomb_40x1MiB", "none", _bomb),
    Attack("forged", "none", _forged),
    Attack("replayed", "none", _replayed),
    Attack("malformed", "none", _malformed),
    Attack("flood_20000", "none", _big_flood),
    Attack("mixed_backlog", "none", _mixed_backlog, probe=True),
    Attack("entry_5000_fields", "none", _many_fields),
    Attack("foreign_route", "none", _foreign_route),
    Attack("group_rewind", "none", _rewind),
    Attack("group_past_end", "none", _group_past_end),
    Attack("nonce_since_text", "none", _nonce_since_text),
    Attack("duplicated_event", "none", _duplicate_event, before=True, expect_quarantine=1),
    Attack("trainer_key_commands", "trainer", _trainer_commands),
    Attack("controller_bad_params", "controller", _bad_params),
    Attack("telemetry_max_batches", "trainer", _telemetry_flood),
    Attack("trainer_key_log_forgery", "trainer", _trainer_log_forgery),
    Attack("retired_key", "retired", _retired_key),
)


async def _inject_async(
    url: str,
    run: str,
    name: str,
    rings: dict[str, dict[str, Any]],
    captured: list[bytes],
    seed: int,
) -> int:
    bus = open_bus(url)
    try:
        loaded = {holder: KeyRing.from_json(data) for holder, data in rings.items()}
        ctx = Ctx(bus, run, loaded, captured, random.Random(seed))
        (attack,) = [a for a in ATTACKS if a.name == name]
        await attack.run(ctx)
        return ctx.sent
    finally:
        await bus.close()


def inject(
    url: str,
    run: str,
    name: str,
    rings: dict[str, dict[str, Any]],
    captured: list[bytes],
    seed: int,
) -> int:
    """Send one attack from its own process (the attacker's CPU is not the legitimate client's)."""
    return int(anyio.run(_inject_async, url, run, name, rings, captured, seed))
