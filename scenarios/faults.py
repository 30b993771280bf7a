"""What a scenario's timeline does to a running cluster: commands and injected faults.

A :class:`Harness` wraps a :class:`scenarios.cluster.Cluster` for one run. Commands are signed and
published straight to the slot's inbox (so their exact frames can be replayed later); faults act
through the same public handles the actors expose: ``stop()``/``run()`` of a shell or an execution
actor, the signer and verifier of each, the bus. Every action is one method; ``perform`` maps a
timeline entry to it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup

from actors.client import build_command
from actors.execution.actor import ExecutionActor
from actors.logic import build_logic
from actors.shell import FRAME, ActorShell
from bus import Bus
from contracts import Key, KeyRing, Signer, streams
from scenarios.cluster import Cluster, SettleTimeout
from scenarios.model import (
    ALL_SLOTS,
    Command,
    Duplicate,
    Forge,
    KillActor,
    Replay,
    RotateKeys,
    SetSim,
    SkewClock,
    gate_number,
)
from scenarios.pacing import inbox_backlog
from scenarios.sim import SimRuntime

__all__ = ["Harness", "ScenarioFault", "inbox_of"]

SENDER = "tamiyo"


class ScenarioFault(RuntimeError):
    """A timeline action could not be carried out (e.g. nothing to duplicate)."""


def inbox_of(run: str, actor: str) -> str:
    """The inbox stream of ``seed:<slot>``, ``gate``, …, ``execution:<rank>``."""
    kind, _, key = actor.partition(":")
    return streams.inbox(run, kind, key or None)


async def _quiet(bus: Bus, run: str, exclude: Collection[str]) -> bool:
    return await inbox_backlog(bus, run, exclude) == 0


@dataclass
class _Down:
    """An actor that was stopped and is due to be restarted."""

    actor: str
    restart_at: int
    handle: ActorShell | ExecutionActor


@dataclass
class Harness:
    """A cluster plus the scenario's bookkeeping: keys, labelled frames, stopped actors."""

    cluster: Cluster
    slots: list[str]
    sims: list[SimRuntime]
    tg: TaskGroup
    settle_timeout_s: float = 20.0
    ring: KeyRing = field(init=False)
    previous: KeyRing = field(init=False)
    keys: dict[str, Key] = field(default_factory=dict)
    frames: dict[str, tuple[str, dict[str, bytes]]] = field(default_factory=dict)
    down: dict[str, _Down] = field(default_factory=dict)
    started: list[ActorShell | ExecutionActor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ring = self.previous = self.cluster.ring
        self.keys = {self.ring.active.id: self.ring.active}

    @property
    def run(self) -> str:
        """The run id."""
        return self.cluster.run

    def reading_ring(self) -> KeyRing:
        """Every key this run ever signed with (to read the whole log back, replay mode)."""
        return KeyRing(self.keys.values(), self.ring.active.id)

    # -- lockstep -----------------------------------------------------------------------------
    async def settle(self) -> None:
        """Wait until every inbox but those of stopped actors is drained (lockstep)."""
        if not self.down:
            await self.cluster.settle(timeout_s=self.settle_timeout_s)
            return
        exclude = {inbox_of(self.run, actor) for actor in self.down}
        events = streams.events(self.run)
        previous = -1
        with anyio.move_on_after(self.settle_timeout_s):
            while True:
                for actor in self.cluster.executions:
                    await actor.flush()
                if await _quiet(self.cluster.bus, self.run, exclude):
                    length = (await self.cluster.bus.info(events)).length
                    if length == previous:
                        return
                    previous = length
                else:
                    previous = -1
                await anyio.sleep(0.005)
        raise SettleTimeout(f"run {self.run} did not settle within {self.settle_timeout_s} s")

    # -- commands -----------------------------------------------------------------------------
    def _slots(self, slot: str) -> list[str]:
        return list(self.slots) if slot == ALL_SLOTS else [slot]

    async def _send(self, item: Command | Forge | SkewClock, signer: Signer) -> None:
        for slot in self._slots(item.slot):
            extra = {"blueprint": item.blueprint} if item.action == "germinate" else {}
            message = build_command(slot, item.action, reason=item.reason, **extra)
            stream = streams.inbox(self.run, "seed", slot)
            frame = signer.seal("seed.command", message, stream=stream)
            fields = {FRAME: frame, "kind": b"seed.command"}
            await self.cluster.bus.publish(stream, fields)
            if item.label:
                self.frames[item.label] = (stream, fields)

    async def command(self, item: Command) -> None:
        """A correctly signed command (with the previous ring's key if asked)."""
        ring = self.previous if item.key == "previous" else self.ring
        await self._send(item, Signer(ring, SENDER))

    async def forge(self, item: Forge) -> None:
        """A command under the active key id with a wrong secret, or under an unknown key."""
        if item.how == "unknown_key":
            ring = KeyRing.generate()
        else:
            kid = self.ring.active.id
            ring = KeyRing([Key(id=kid, secret=secrets.token_bytes(32))], kid)
        await self._send(item, Signer(ring, "mallory"))

    async def skew_clock(self, item: SkewClock) -> None:
        """A command from a signer whose clock is ``offset_s`` off."""
        offset = int(item.offset_s * 1e9)
        clock: Callable[[], int] = lambda: time.time_ns() + offset  # noqa: E731
        await self._send(item, Signer(self.ring, SENDER, clock=clock))

    async def replay(self, item: Replay) -> None:
        """The exact frame of a labelled command, as a new entry of the same inbox."""
        stream, fields = self.frames[item.of]
        await self.cluster.bus.publish(stream, fields)

    async def duplicate(self, item: Duplicate) -> None:
        """The latest entry (of ``kind``) of an actor's inbox, added again verbatim."""
        stream = inbox_of(self.run, item.actor)
        entries = await self.cluster.bus.range(stream)
        if item.kind:
            entries = [e for e in entries if e.fields.get("kind") == item.kind.encode()]
        if not entries:
            raise ScenarioFault(f"nothing to duplicate in {stream} (kind {item.kind or 'any'})")
        await self.cluster.bus.publish(stream, dict(entries[-1].fields))

    # -- actors -------------------------------------------------------------------------------
    def _shell(self, actor: str) -> ActorShell:
        for shell in self.cluster.supervisor.shells:
            if shell.logic.name == actor:
                return shell
        raise ScenarioFault(f"no actor {actor!r} in this run")

    def _execution(self, actor: str) -> ExecutionActor:
        rank = int(actor.partition(":")[2])
        for execution in self.cluster.executions:
            if execution.rank == rank:
                return execution
        raise ScenarioFault(f"no running actor {actor!r} in this run")

    async def kill(self, item: KillActor) -> None:
        """Stop the actor; it comes back ``down_steps`` steps later (see :meth:`restart_due`)."""
        if item.actor in self.down:
            raise ScenarioFault(f"{item.actor} is already stopped")
        handle: ActorShell | ExecutionActor
        if item.actor.startswith("execution:"):
            handle = self._execution(item.actor)
            self.cluster.executions.remove(handle)
        else:
            handle = self._shell(item.actor)
        await handle.stop()
        self.down[item.actor] = _Down(item.actor, item.at + item.down_steps, handle)

    async def restart_due(self, step: int | None = None) -> None:
        """Start a fresh instance of every stopped actor due by ``step`` (None: all of them)."""
        for actor, down in sorted(self.down.items()):
            if step is not None and down.restart_at > step:
                continue
            del self.down[actor]
            await self._restart(down)

    async def _restart(self, down: _Down) -> None:
        old = down.handle
        if isinstance(old, ExecutionActor):
            fresh_ex = ExecutionActor(
                old.runtime,
                bus=old.bus,
                run=old.run_id,
                signer=old.signer,
                verifier=old.verifier,
                config=old.config,
                rank=old.rank,
            )
            self.cluster.executions.append(fresh_ex)
            self.cluster.executions.sort(key=lambda a: a.rank)
            self.started.append(fresh_ex)
            await self.tg.start(fresh_ex.run)
            return
        kind, _, key = down.actor.partition(":")
        fresh = ActorShell(
            build_logic(kind, old.config, key or None),
            bus=old.bus,
            run=old.run_id,
            inbox=old.inbox,
            signer=old.signer,
            verifier=old.verifier,
            config=old.config,
            consumer_name=old.consumer_name,
            process=old.process,
            heartbeat_s=old.heartbeat_s,
        )
        shells = self.cluster.supervisor.shells
        shells[shells.index(old)] = fresh
        self.started.append(fresh)
        await self.tg.start(fresh.run)  # rebuilds its state from the event log first

    async def stop_started(self) -> None:
        """Stop the actors this harness started (the cluster stops its own)."""
        with anyio.CancelScope(shield=True):
            for handle in self.started:
                await handle.stop()

    # -- keys and the simulation --------------------------------------------------------------
    def rotate_keys(self, item: RotateKeys) -> None:
        """A new key signs everywhere; the old one verifies for ``grace_s``."""
        new = self.ring.rotate(item.grace_s)
        self.previous, self.ring = self.ring, new
        for key_id in new.ids():
            self.keys[key_id] = new.get(key_id) or self.keys[key_id]
        cl = self.cluster
        stopped = [d.handle for d in self.down.values()]
        handles: list[Any] = [*cl.supervisor.shells, *cl.executions, *stopped]
        for handle in {id(h): h for h in handles}.values():
            handle.signer = Signer(new, handle.signer.sender)
            handle.verifier = handle.verifier.with_ring(new)
        cl.client.signer = Signer(new, cl.client.signer.sender)
        cl.client.verifier = cl.client.verifier.with_ring(new)
        cl.ring = self.reading_ring()

    def set_sim(self, item: SetSim) -> None:
        """Change the failing gates / leaking slots of every simulated rank."""
        for sim in self.sims:
            if item.fail_gates is not None:
                sim.fail_gates = {gate_number(g) for g in item.fail_gates}
            if item.leak_slots is not None:
                sim.leak_slots = set(item.leak_slots)

    async def perform(self, item: Any) -> None:
        """Carry out one timeline entry."""
        if isinstance(item, Command):
            await self.command(item)
        elif isinstance(item, Forge):
            await self.forge(item)
        elif isinstance(item, SkewClock):
            await self.skew_clock(item)
        elif isinstance(item, Replay):
            await self.replay(item)
        elif isinstance(item, Duplicate):
            await self.duplicate(item)
        elif isinstance(item, KillActor):
            await self.kill(item)
        elif isinstance(item, RotateKeys):
            self.rotate_keys(item)
        elif isinstance(item, SetSim):
            self.set_sim(item)
        else:  # pragma: no cover - the model admits nothing else
            raise ScenarioFault(f"unknown timeline action {item!r}")
