"""Actor benchmark: what one SeedActor shell handles per second, against the bare bus.

Figures: ``{"bench", "value", "unit", "baseline", "ratio"}``, the baseline measured in the same
run. On the server at ``url`` it is the bus benchmark's warm raw redis-py loop (pipelined XADD,
XREADGROUP, XACK; :func:`benchmarks.bus_bench.raw_rate`); on fakeredis, where that loop cannot
run, a Consumer that commits (acks) the same entries with no verify, no decide and no effects.
Every arm runs once untimed first, then the arms are interleaved over three rounds and each
figure is the median of its rounds. Measured per backend (fakeredis in-process, and the server):

- ``actors.seed_reports_rate.<backend>``: signed step reports, each verified (one nonce round trip
  per batch), decided, and committed with its events (progress + state digest) in one Lua call.
- ``actors.rejects_rate.<backend>``: garbage and forged entries, each rejected onto the rejected
  stream (rejection storms raise their safety signal along the way, as in production).

Usage: python -m benchmarks.actor_bench [URL] [N]
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from actors.assemble import live_verifier
from actors.logic import seed_logic
from actors.shell import FRAME, ActorShell
from benchmarks import figure
from benchmarks.bus_bench import interleaved, raw_rate
from bus import Append, Bus, Consumer, Handled, open_bus
from bus.testing import purge_prefix
from contracts import KasminaConfig, KeyRing, Signer, streams
from leyline import pb

SLOT = "layer1.s0"
CHUNK = 500


def _reports(signer: Signer, n: int, stream: str) -> list[bytes]:
    frames = []
    for step in range(1, n + 1):
        report = pb.StepReport(rank=0, step=step, loss=1.0 / step, val_accuracy=0.5)
        report.slots.add(slot=SLOT, alpha=0.0)
        frames.append(signer.seal("step.report", report, stream=stream))
    return frames


def _garbage(forger: Signer, n: int, stream: str) -> list[bytes]:
    """Alternately: bytes that are no frame at all, and step reports signed with a foreign key."""
    forged = _reports(forger, (n + 1) // 2, stream)
    return [b"\x93garbage" + i.to_bytes(4, "big") if i % 2 else forged[i // 2] for i in range(n)]


async def _fill(bus: Bus, stream: str, frames: list[bytes]) -> None:
    for start in range(0, len(frames), CHUNK):
        chunk = frames[start : start + CHUNK]
        await bus.publish_many([Append(stream, {FRAME: f, "kind": b"step.report"}) for f in chunk])


async def _shell_rate(bus: Bus, run: str, ring: KeyRing, frames: list[bytes]) -> float:
    """Entries per second one SeedActor shell takes to work through ``frames`` (pre-filled)."""
    return len(frames) / await shell_time(bus, run, ring, frames, time.perf_counter)


async def shell_time(
    bus: Bus, run: str, ring: KeyRing, frames: list[bytes], clock: Callable[[], float]
) -> float:
    """``clock``'s time while one SeedActor shell works through ``frames`` (pre-filled), from
    its rebuilt state to its last entry.

    The admission bound is set above the backlog: every entry is verified and decided (or
    rejected), none is shed as ``overloaded`` (shedding is the hostile benchmark's subject)."""
    config = KasminaConfig.load(env={}, overrides={"bus.admission_backlog": len(frames) + CHUNK})
    inbox = streams.inbox(run, "seed", SLOT)
    await _fill(bus, inbox, frames)
    shell = ActorShell(
        seed_logic(SLOT, config),
        bus=bus,
        run=run,
        inbox=inbox,
        signer=Signer(ring, f"seed:{SLOT}"),
        verifier=live_verifier(bus, run, ring, config),
        config=config,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(shell.run)  # state rebuilt (empty event stream): the clock starts now
        t0 = clock()
        while shell.processed < len(frames):
            await anyio.sleep(0.002)
        elapsed = clock() - t0
        await shell.stop()
    if shell.shed:  # a figure that counts shed entries as handled would be false
        raise RuntimeError(f"{shell.shed} entries shed: raise bus.admission_backlog")
    return elapsed


async def _bus_rate(bus: Bus, run: str, frames: list[bytes]) -> float:
    """Baseline: the same entries read and committed (acked) with no verify and no decide."""
    config = KasminaConfig()
    stream = streams.inbox(run, "seed", "baseline")
    await _fill(bus, stream, frames)
    consumer = Consumer(bus, stream, "g", "c", batch=config.bus.batch, block_ms=100,
                        dead_stream=streams.dead_letter(run))  # fmt: skip
    done = 0
    t0 = time.perf_counter()
    async for batch in consumer.batches():
        await bus.commit([Handled(e, "g") for e in batch])
        done += len(batch)
        if done >= len(frames):
            await consumer.close()
    return len(frames) / (time.perf_counter() - t0)


async def _measure(url: str, name: str, n: int) -> list[dict[str, Any]]:
    ring = KeyRing.generate()
    signer = Signer(ring, "bench.trainer")
    forger = Signer(KeyRing.generate(), "bench.forger")
    runs: list[str] = []
    bus = open_bus(url)

    def fresh() -> str:
        runs.append(f"bench-actor-{uuid.uuid4().hex[:8]}")
        return runs[-1]

    async def baseline(k: int) -> float:
        run = fresh()
        if name == "fakeredis":  # never verified: any frames do
            return await _bus_rate(bus, run, _reports(signer, k, streams.inbox(run, "seed", SLOT)))
        return await raw_rate(url, k, streams.prefix(run))

    async def reports_arm(k: int) -> float:  # frames sealed for this run's inbox before the clock
        run = fresh()
        return await _shell_rate(
            bus, run, ring, _reports(signer, k, streams.inbox(run, "seed", SLOT))
        )

    async def rejects_arm(k: int) -> float:
        run = fresh()
        return await _shell_rate(
            bus, run, ring, _garbage(forger, k, streams.inbox(run, "seed", SLOT))
        )

    arms: dict[str, Callable[[int], Awaitable[float]]] = {
        "base": baseline,
        "handled": reports_arm,
        "rejected": rejects_arm,
    }
    try:
        rates = await interleaved(arms, n)
    finally:
        for run in runs:
            await purge_prefix(bus, streams.prefix(run))
        await bus.close()
    base = rates["base"]
    return [
        figure(f"actors.seed_reports_rate.{name}", rates["handled"], "msg/s", base),
        figure(f"actors.rejects_rate.{name}", rates["rejected"], "msg/s", base),
    ]


def run_actor_bench(
    url: str = "redis://127.0.0.1:6379/0", n: int = 10_000, fake_n: int = 2_000
) -> list[dict[str, Any]]:
    """The actor figures on fakeredis (``fake_n`` entries) and on the server at ``url`` (``n``)."""

    async def main() -> list[dict[str, Any]]:
        fake = await _measure("fakeredis://", "fakeredis", fake_n)
        return fake + await _measure(url, "redis", n)

    quiet = logging.getLogger("kasmina.actors")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the rejection storms are intended here
    try:
        return anyio.run(main)
    finally:
        quiet.setLevel(level)


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    for fig in run_actor_bench(url, n, max(200, n // 5)):
        print(json.dumps(fig))


if __name__ == "__main__":
    main()
