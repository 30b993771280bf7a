"""An in-process run: every actor on one event loop, plus one ExecutionActor per runtime.

Used by scenarios, the demo and tests. ``step`` closes a training step on every runtime and flushes
their outboxes; ``settle`` waits (with a deadline) until every inbox of the run is drained and
nothing is pending, so a scripted run advances in lockstep with the actors and is reproducible.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

from actors.assemble import ACTORS, build_shells, live_verifier
from actors.client import KasminaClient
from actors.eventlog import read_verified
from actors.execution.actor import ExecutionActor
from actors.replay import RunState, fold_events
from actors.shell import ActorShell
from actors.supervisor import Supervisor
from bus import Bus
from contracts import KasminaConfig, KeyRing, Signer, Verifier, streams
from leyline import pb
from scenarios.pacing import inbox_backlog


class SettleTimeout(TimeoutError):
    """The run did not become quiet in time."""


@dataclass
class Cluster:
    """Handles of a running in-process cluster."""

    bus: Bus
    run: str
    ring: KeyRing
    config: KasminaConfig
    supervisor: Supervisor
    executions: list[ExecutionActor]
    client: KasminaClient
    runtimes: list[Any] = field(default_factory=list)

    @property
    def shells(self) -> list[ActorShell]:
        """The actor shells served."""
        return self.supervisor.shells

    def verifier(self, *, replay: bool = False) -> Verifier:
        """A verifier on this run's keys (live: with the shared nonce guard)."""
        return live_verifier(self.bus, self.run, self.ring, self.config, replay=replay)

    async def step(self, step: int, **kwargs: Any) -> None:
        """Close ``step`` on every runtime and flush what they queued."""
        for runtime in self.runtimes:
            runtime.on_step(step, **kwargs)
        for actor in self.executions:
            await actor.flush()

    async def quiet(self) -> bool:
        """True if no inbox of the run has unread or pending entries right now."""
        if any(rt.outbox_pending() for rt in self.runtimes if hasattr(rt, "outbox_pending")):
            return False
        return await run_is_quiet(self.bus, self.run)

    async def settle(self, timeout_s: float = 120.0, poll_s: float = 0.005) -> None:
        """Wait until the run is quiet twice in a row with the event log unchanged."""
        events = streams.events(self.run)
        with anyio.move_on_after(timeout_s):
            previous = -1
            while True:
                for actor in self.executions:
                    await actor.flush()
                if await self.quiet():
                    length = (await self.bus.info(events)).length
                    if length == previous:
                        return
                    previous = length
                else:
                    previous = -1
                await anyio.sleep(poll_s)
        raise SettleTimeout(f"run {self.run} did not settle within {timeout_s} s")

    async def drive(self, start: int, stop: int, *, settle_every: int = 1, **kwargs: Any) -> None:
        """Steps ``start..stop-1``, settling every ``settle_every`` steps."""
        for step in range(start, stop):
            await self.step(step, **kwargs)
            if settle_every and (step - start) % settle_every == 0:
                await self.settle()

    async def events(self) -> list[tuple[str, str, Any]]:
        """The run's verified event log as ``(entry_id, kind, message)``."""
        return await read_events(self.bus, self.run, self.ring)

    async def state(self) -> RunState:
        """Every actor's state re-folded from the event log."""
        return fold_events(await self.events())

    async def stage(self, slot: str) -> int:
        """The slot's current stage (from the event log)."""
        seeds = (await self.state()).seeds
        return int(seeds[slot].stage) if slot in seeds else pb.SEED_STAGE_UNKNOWN


async def run_is_quiet(bus: Bus, run: str) -> bool:
    """True if every inbox stream of ``run`` is fully read and acked by its consumer group."""
    return await inbox_backlog(bus, run) == 0


async def read_events(bus: Bus, run: str, ring: KeyRing) -> list[tuple[str, str, Any]]:
    """Verified (replay mode) and parsed entries of the run's event stream."""
    events, _ = await read_verified(bus, streams.events(run), ring)
    return events


@asynccontextmanager
async def running_cluster(
    bus: Bus,
    *,
    run: str,
    slots: Sequence[str],
    runtimes: Sequence[Any] = (),
    ring: KeyRing | None = None,
    config: KasminaConfig | None = None,
    actors: Sequence[str] = ACTORS,
    signing: Mapping[str, KeyRing] | None = None,
) -> AsyncIterator[Cluster]:
    """Start the actors (and an ExecutionActor per runtime); stop them on exit. Everyone
    verifies with ``ring``; ``signing`` (``"actor"``, ``"trainer"``, ``"controller"``: the ring
    each signs with, as :func:`role_rings` makes) splits the keys by role, else ``ring`` signs."""
    ring = ring or KeyRing.generate()
    config = config or KasminaConfig()
    signs = dict.fromkeys(("actor", "trainer", "controller"), ring) | dict(signing or {})
    signer = Signer(signs["actor"], f"cluster:{run}")
    shells = build_shells(
        bus=bus,
        run=run,
        config=config,
        signer=signer,
        verifier=live_verifier(bus, run, ring, config),
        actors=actors,
        slots=slots,
    )
    supervisor = Supervisor(shells)
    executions = _executions(bus, run, ring, config, runtimes, signs["trainer"])
    client = KasminaClient(
        bus, run, Signer(signs["controller"], "tamiyo"), live_verifier(bus, run, ring, config)
    )
    cluster = Cluster(bus, run, ring, config, supervisor, executions, client, list(runtimes))
    async with anyio.create_task_group() as tg:
        await tg.start(
            lambda task_status: supervisor.run(handle_signals=False, task_status=task_status)
        )
        for actor in executions:
            await tg.start(actor.run)
        try:
            yield cluster
        finally:
            with anyio.CancelScope(shield=True):
                for actor in executions:
                    await actor.stop()
                await supervisor.stop()


def role_rings() -> tuple[KeyRing, dict[str, KeyRing]]:
    """One key per role (``actor``; ``trainer``; ``controller`` with ``operator``): the ring of
    all three that verifies (the actor key active), and the ring each role signs with."""
    keys = {
        "actor": KeyRing.generate(roles={"actor"}).active,
        "trainer": KeyRing.generate(roles={"trainer"}).active,
        "controller": KeyRing.generate(roles={"controller", "operator"}).active,
    }
    every = list(keys.values())
    return KeyRing(every, keys["actor"].id), {r: KeyRing(every, k.id) for r, k in keys.items()}


def _executions(
    bus: Bus,
    run: str,
    ring: KeyRing,
    config: KasminaConfig,
    runtimes: Sequence[Any],
    signing: KeyRing | None = None,
) -> list[ExecutionActor]:
    """An ExecutionActor per runtime, its rank the runtime's index."""
    return [
        ExecutionActor(
            rt,
            bus=bus,
            run=run,
            signer=Signer(signing or ring, f"execution:{rank}"),
            verifier=live_verifier(bus, run, ring, config),
            config=config,
            rank=rank,
        )
        for rank, rt in enumerate(runtimes)
    ]
