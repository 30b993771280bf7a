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

_RUN = "soak"


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
    outlives its message's stamp, short so the nonce store's plateau shows. The inboxes'
    admission bound is set above the publisher's backlog bound plus a batch: every message is
    decided, none shed as ``overloaded`` (the soak measures memory, not shedding)."""
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
                "bus.admission_backlog": 2 * (max_backlog + batch),
            }
        )
    )
    names = tuple(f"soak.s{i}" for i in range(slots))
    specs = [ProcessSpec(("seed",), names), ProcessSpec(("telemetry",))]
    signer = Signer(ring, "execution:0")
    with redis_server(aof=True, appendfsync="everysec") as server:
        procs = [
            ActorProcess(s, server.url, _RUN, keys, config, base, i) for i, s in enumerate(specs)
        ]
        for p in procs:
            p.start()
        flood = _Flood(server.url, procs, signer, names, SoakResult(messages, 0.0), trim, on_sample)
        await flood.run(messages, batch, report_every, max_backlog, sample_s)
        return await flood.close()


class _Flood:
    """The flood publisher of one soak, its back-pressure and its samples."""

    def __init__(
        self,
        url: str,
        procs: list[ActorProcess],
        signer: Signer,
        names: tuple[str, ...],
        result: SoakResult,
        trim: bool,
        on_sample: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        self.procs, self.signer, self.result = procs, signer, result
        self.trim, self.on_sample = trim, on_sample
        self.bus = open_bus(url)
        self.client = aioredis.Redis.from_url(url)
        self.sent = 0
        self.step = 0
        self.started = time.monotonic()
        self.tele = streams.inbox(_RUN, "telemetry")
        self.seed_inboxes = [streams.inbox(_RUN, "seed", s) for s in names]
        self.inboxes = [*self.seed_inboxes, self.tele]  # known: no keyspace scan on the hot path

    async def run(
        self, messages: int, batch: int, report_every: int, max_backlog: int, sample_s: float
    ) -> None:
        """Publish ``messages`` in batches under the backlog bound, sampling every ``sample_s``;
        then wait until the actors have read everything and take the last sample."""
        next_sample = self.started
        while self.sent < messages:
            if time.monotonic() >= next_sample:
                await self.sample()
                next_sample = time.monotonic() + sample_s
            while await backlog_of(self.bus, self.inboxes) > max_backlog:
                await anyio.sleep(0.02)
            await self.bus.publish_many(self.batch(min(batch, messages - self.sent), report_every))
        while await backlog_of(self.bus, self.inboxes) > 0:
            await anyio.sleep(0.05)
        self.result.seconds = time.monotonic() - self.started
        await self.sample()

    def batch(self, count: int, report_every: int) -> list[Append]:
        """``count`` telemetry messages and, every ``report_every``, a step report per slot."""
        appends = []
        for _ in range(count):
            if self.sent % report_every == 0:
                self.step += 1
                report = pb.StepReport(rank=0, step=self.step, loss=1.0, val_accuracy=0.9)
                appends += [
                    Append(s, {FRAME: self.signer.seal("step.report", report, stream=s)})
                    for s in self.seed_inboxes
                ]
                self.sent += len(self.seed_inboxes)
            raw = pb.TelemetryRaw(region="rank0", step=self.step, metrics={"loss": 1.0})
            frame = self.signer.seal("telemetry.raw", raw, stream=self.tele)
            appends.append(Append(self.tele, {FRAME: frame}))
            self.sent += 1
        return appends

    async def sample(self) -> None:
        """Record RSS, Redis memory and keys, nonces, pending entries and stream lengths (with
        ``trim``, the inboxes trimmed to what every group has acked first)."""
        bus, client, prefix = self.bus, self.client, streams.prefix(_RUN)
        table = {}
        pending = 0
        for name in await bus.streams(prefix + "*"):
            info = await bus.info(name)
            pending += sum(g.pending for g in info.groups)
            if self.trim and ":inbox:" in name and info.length:
                await bus.trim(name, min_id=info.last_id)
                info = await bus.info(name)
            table[name[len(prefix) :]] = info.length
        mem = await client.info("memory")
        self.result.samples.append(
            {
                "t_s": round(time.monotonic() - self.started, 1),
                "messages": self.sent,
                "rss_kib": {f"proc{p.index}": p.sample_rss() for p in self.procs},
                "redis_used_mb": round(int(mem["used_memory"]) / 2**20, 1),
                "dbsize": int(await client.dbsize()),
                "nonce_keys": await _count(client, prefix + "nonce:*"),
                "pending": pending,
                "streams": table,
            }
        )
        if self.on_sample is not None:
            self.on_sample(self.result.samples[-1])

    async def close(self) -> SoakResult:
        """The result with the final streams and peak RSS; processes stopped, clients closed."""
        result = self.result
        result.final_streams = dict(result.samples[-1]["streams"])
        result.peak_rss_kib = {
            f"proc{p.index}:{'+'.join(p.spec.actors)}": p.peak_rss_kib for p in self.procs
        }
        for p in self.procs:
            p.stop()
        await self.client.aclose()
        await self.bus.close()
        return result
