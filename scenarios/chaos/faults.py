"""A chaos run's faults: SIGKILLed actor processes, Redis restarts and Sentinel failovers, each
fired when the trainer reaches the step the plan anchors it to."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import anyio

from bus import Bus, BusUnavailable
from bus.servers import LocalSentinel
from bus.testing import RedisServer
from contracts import streams
from scenarios.chaos.plan import ChaosPlan
from scenarios.chaos.procs import ActorProcess

__all__ = ["Faults", "Servers", "bus_url"]

Servers = RedisServer | LocalSentinel


def bus_url(servers: Servers) -> str:
    """The URL every process of a chaos run connects with (a Sentinel setup: writes wait for
    one replica, so a failover loses no acknowledged write)."""
    return servers.url + "?wait=1" if isinstance(servers, LocalSentinel) else servers.url


def _groups(proc: ActorProcess, run: str) -> list[tuple[str, str]]:
    out = []
    for actor in proc.spec.actors:
        if actor == "seed":
            out += [
                (streams.inbox(run, "seed", s), streams.group(f"seed:{s}")) for s in proc.spec.slots
            ]
        else:
            out.append((streams.inbox(run, actor), streams.group(actor)))
    return out


async def _pending(bus: Bus, pairs: list[tuple[str, str]]) -> int:
    total = 0
    for stream, group in pairs:
        try:
            info = await bus.info(stream)
        except BusUnavailable:
            continue
        total += sum(g.pending for g in info.groups if g.name == group)
    return total


class Faults:
    """Fires a plan's faults as the trainer reaches their steps."""

    def __init__(
        self, plan: ChaosPlan, procs: list[ActorProcess], servers: Servers, bus: Bus, run: str
    ):
        self.plan, self.procs, self.servers, self.bus, self.run = plan, procs, servers, bus, run
        self.out_kills = 0
        self.out_restarts = 0
        self.redeliveries = 0
        self.killed_ms: list[int] = []  # server clock = this machine's: entry ids are comparable
        self.promotion_s: list[float] = []
        self._server_fault = anyio.Lock()  # one Redis fault at a time: each ends with its restart

    def primary(self) -> RedisServer:
        """The server the run writes to now."""
        if isinstance(self.servers, LocalSentinel):
            return self.servers.primary()
        return self.servers

    async def failover(self, delay_s: float) -> None:
        """SIGKILL the primary, wait for the sentinels to promote a replica, start the old one
        again as a replica of the new primary."""
        await anyio.sleep(delay_s)
        sentinel = self.servers
        if not isinstance(sentinel, LocalSentinel):
            raise RuntimeError("a failover fault needs a Sentinel-managed server")
        with anyio.CancelScope(shield=True):  # never leave the old primary down
            async with self._server_fault:  # after a restart in progress: its primary
                old = sentinel.primary()
                old.kill()
                self.killed_ms.append(time.time_ns() // 1_000_000)
                promotion = await anyio.to_thread.run_sync(sentinel.wait_failover, old)
                self.promotion_s.append(promotion)
                await anyio.to_thread.run_sync(sentinel.start_again, old)

    async def kill(self, index: int, delay_s: float, down_s: float) -> None:
        await anyio.sleep(delay_s)
        victim = self.procs[index]
        if not victim.alive():
            return  # still down from an earlier kill: that kill's restart brings it back
        with anyio.CancelScope(shield=True):  # a fault once begun always ends with the restart
            victim.kill()
            self.out_kills += 1
            with contextlib.suppress(BusUnavailable):
                self.redeliveries += await _pending(self.bus, _groups(victim, self.run))
            await anyio.sleep(down_s)
            victim.start()

    async def restart_redis(self, delay_s: float) -> None:
        await anyio.sleep(delay_s)
        with anyio.CancelScope(shield=True):  # never leave the server down
            async with self._server_fault:  # after a failover in progress: its new primary
                server = self.primary()
                server.kill()
                await anyio.sleep(0.3)
                await anyio.to_thread.run_sync(self._start_again, server)
            self.out_restarts += 1
            pairs = [pair for proc in self.procs for pair in _groups(proc, self.run)]
            with contextlib.suppress(BusUnavailable):
                self.redeliveries += await _pending(self.bus, pairs)

    def _start_again(self, server: RedisServer) -> None:
        """Start the killed primary again. Behind Sentinel, first wait for the sentinels to
        promote a replica (a primary down past ``down-after`` is failed over even once it is
        back, and had it taken writes meanwhile as a new history, the sentinels could promote a
        replica without them), then start it as a replica of the promoted one."""
        if isinstance(self.servers, LocalSentinel):
            self.servers.wait_failover(server)
            self.servers.start_again(server)
        else:
            server.start()

    def due(self, step: int, tg: Any) -> None:
        for k in self.plan.kills:
            if k.step == step:
                tg.start_soon(self.kill, k.process, k.delay_s, k.down_s)
        for s, delay in self.plan.redis_restarts:
            if s == step:
                tg.start_soon(self.restart_redis, delay)
        for s, delay in self.plan.failovers:
            if s == step:
                tg.start_soon(self.failover, delay)
