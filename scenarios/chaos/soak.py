"""Bounded memory: push many messages through a run's actors and watch what grows.

A flood publisher signs ``telemetry.raw`` messages for the TelemetryActor and, every
``report_every`` messages, a ``step.report`` for every slot's SeedActor, keeping the inbox backlog
under ``max_backlog`` (back-pressure, so the figures measure the actors, not a queue). Every
``sample_s`` it records the actor processes' RSS, Redis memory and key counts, the nonce store
size, pending entries and stream lengths; with ``trim`` it also applies the bus's safe retention
(``Bus.trim`` clamped to what every group has acked) to the inboxes.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aioredis

from actors.hosting import FRAME
from bus import Append, open_bus
from bus.testing import redis_server
from contracts import KeyRing, Signer, streams
from leyline import pb
from scenarios.chaos.plan import ProcessSpec
from scenarios.chaos.procs import ActorProcess, config_toml
from scenarios.pacing import backlog_of

__all__ = ["SoakResult", "soak"]


@dataclass
class SoakResult:
    """Samples over time and the peaks."""

    messages: int
    seconds: float
    samples: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_kib: dict[str, int] = field(default_factory=dict)
    final_streams: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The figures, JSON-ready (first, middle and last samples in full)."""
        s = self.samples
        keep = [s[0], s[len(s) // 2], s[-1]] if len(s) >= 3 else s
        return {
            "messages": self.messages,
            "seconds": round(self.seconds, 1),
            "rate_per_s": round(self.messages / self.seconds) if self.seconds else 0,
            "peak_rss_kib": self.peak_rss_kib,
            "max_nonce_keys": max((x["nonce_keys"] for x in s), default=0),
            "max_pending": max((x["pending"] for x in s), default=0),
            "final_streams": self.final_streams,
            "samples": keep,
        }


async def _count(client: Any, pattern: str) -> int:
    n = 0
    async for _ in client.scan_iter(match=pattern, count=20_000):
        n += 1
    return n


async def soak(
    messages: int = 1_000_000,
    *,
    slots: int = 4,
    report_every: int = 50,
    batch: int = 500,
    max_backlog: int = 4_000,
    sample_s: float = 10.0,
    tolerance_s: float = 30.0,
    trim: bool = True,
    workdir: Path | None = None,
    on_sample: Callable[[dict[str, Any]], None] | None = None,
) -> SoakResult:
    """Run the flood (see module docstring); the clock tolerance, which is how long a nonce
    outlives its message's stamp, short so the nonce store's plateau shows."""
    base = workdir or Path(tempfile.mkdtemp(prefix="kasmina-soak-"))
    await anyio.Path(base).mkdir(parents=True, exist_ok=True)
    ring = KeyRing.generate()
    keys, config = base / "keys.json", base / "config.toml"
    ring.save(keys)
    config.write_text(
        config_toml(
            {
                "security.clock_tolerance_s": tolerance_s,
                "bus.processed_ttl_s": 2 * tolerance_s,
            }
        )
    )
    names = tuple(f"soak.s{i}" for i in range(slots))
    run = "soak"
    specs = [ProcessSpec(("seed",), names), ProcessSpec(("telemetry",))]
    signer = Signer(ring, "execution:0")
    with redis_server(aof=True, appendfsync="everysec") as server:
        procs = [
            ActorProcess(s, server.url, run, keys, config, base, i) for i, s in enumerate(specs)
        ]
        for p in procs:
            p.start()
        bus = open_bus(server.url)
        client = aioredis.Redis.from_url(server.url)
        result = SoakResult(messages=messages, seconds=0.0)
        sent = 0
        step = 0
        started = time.monotonic()
        next_sample = started
        tele = streams.inbox(run, "telemetry")
        seed_inboxes = [streams.inbox(run, "seed", s) for s in names]
        inboxes = [*seed_inboxes, tele]  # known: no keyspace scan on the hot path

        async def sample() -> None:
            table = {}
            pending = 0
            for name in await bus.streams(streams.prefix(run) + "*"):
                info = await bus.info(name)
                pending += sum(g.pending for g in info.groups)
                if trim and ":inbox:" in name and info.length:
                    await bus.trim(name, min_id=info.last_id)
                    info = await bus.info(name)
                table[name[len(streams.prefix(run)) :]] = info.length
            mem = await client.info("memory")
            result.samples.append(
                {
                    "t_s": round(time.monotonic() - started, 1),
                    "messages": sent,
                    "rss_kib": {f"proc{p.index}": p.sample_rss() for p in procs},
                    "redis_used_mb": round(int(mem["used_memory"]) / 2**20, 1),
                    "dbsize": int(await client.dbsize()),
                    "nonce_keys": await _count(client, streams.prefix(run) + "nonce:*"),
                    "pending": pending,
                    "streams": table,
                }
            )
            if on_sample is not None:
                on_sample(result.samples[-1])

        while sent < messages:
            if time.monotonic() >= next_sample:
                await sample()
                next_sample = time.monotonic() + sample_s
            while await backlog_of(bus, inboxes) > max_backlog:
                await anyio.sleep(0.02)
            appends = []
            for _ in range(min(batch, messages - sent)):
                if sent % report_every == 0:
                    step += 1
                    report = pb.StepReport(rank=0, step=step, loss=1.0, val_accuracy=0.9)
                    appends += [
                        Append(s, {FRAME: signer.seal("step.report", report, stream=s)})
                        for s in seed_inboxes
                    ]
                    sent += len(seed_inboxes)
                raw = pb.TelemetryRaw(region="rank0", step=step, metrics={"loss": 1.0})
                appends.append(
                    Append(tele, {FRAME: signer.seal("telemetry.raw", raw, stream=tele)})
                )
                sent += 1
            await bus.publish_many(appends)
        while await backlog_of(bus, inboxes) > 0:
            await anyio.sleep(0.05)
        result.seconds = time.monotonic() - started
        await sample()
        result.final_streams = dict(result.samples[-1]["streams"])
        result.peak_rss_kib = {
            f"proc{p.index}:{'+'.join(p.spec.actors)}": p.peak_rss_kib for p in procs
        }
        for p in procs:
            p.stop()
        await client.aclose()
        await bus.close()
    return result
