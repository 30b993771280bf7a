"""A germination by artifact id whose artifact keys a Redis writer replaced with lists: the
ExecutionActor's prefetch meets Redis's WRONGTYPE refusal. The order must still reach the
runtime (which refuses what it cannot verify), never be dropped as "already seen" after a
restart; and an outage during the prefetch re-fetches on the redelivery."""

from __future__ import annotations

import uuid

import pytest

from actors.artifacts.store import BusStore, artifact_key
from actors.execution.actor import ExecutionActor
from actors.hosting import FRAME
from bus import Bus, BusUnavailable, Entry, open_bus
from bus.testing import FaultyBus
from contracts import KasminaConfig, KeyRing, Signer, Verifier, streams
from leyline import pb
from scenarios.sim import SimRuntime

pytestmark = pytest.mark.anyio
SLOT = "l0.s0"
ARTIFACT = "ab" * 32


class _Kernels:
    """A kernel cache that holds nothing and records what it is offered."""

    def __init__(self) -> None:
        self.offered: list[object] = []

    def __contains__(self, artifact_id: object) -> bool:
        return False

    def offer(self, sealed: object) -> None:
        self.offered.append(sealed)


def _actor(bus: Bus, store_bus: Bus, run: str, ring: KeyRing) -> tuple[ExecutionActor, SimRuntime]:
    sim = SimRuntime([SLOT])
    sim.kernels = _Kernels()  # type: ignore[attr-defined]
    actor = ExecutionActor(sim, bus=bus, run=run, signer=Signer(ring, "execution:0"),
                           verifier=Verifier(ring), config=KasminaConfig(),
                           artifacts=BusStore(store_bus))  # fmt: skip
    return actor, sim


def _order_entry(run: str, ring: KeyRing) -> tuple[Entry, object]:
    inbox = streams.inbox(run, "execution", "0")
    order = pb.ExecutionOrder(order_id="o-1", slot=SLOT, stage=pb.SEED_STAGE_GERMINATED,
                              germinate=pb.Germinate(artifact_id=ARTIFACT))  # fmt: skip
    frame = Signer(ring, "kasmina-run:" + run).seal("exec.order", order, stream=inbox)
    env = Verifier(ring).open(frame, stream=inbox)
    return Entry(inbox, "1-0", {FRAME: frame, "kind": b"exec.order"}), env


async def test_retyped_artifact_keys_leave_the_order_to_the_runtime() -> None:
    """WRONGTYPE while fetching: logged, nothing offered, the order submitted once."""
    run = "art" + uuid.uuid4().hex[:8]
    bus = open_bus(f"fakeredis://{run}")
    ring = KeyRing.generate()
    for part in ("manifest", "signature", "payload"):
        await bus.client.rpush(artifact_key(ARTIFACT, part), "a")  # type: ignore[attr-defined]
    actor, sim = _actor(bus, bus, run, ring)
    entry, env = _order_entry(run, ring)
    await actor._take(entry, env)  # type: ignore[arg-type]
    await actor._take(entry, env)  # type: ignore[arg-type]  # a redelivery: not applied twice
    assert [o.order_id for o in sim._inbox] == ["o-1"]
    assert sim.kernels.offered == []  # type: ignore[attr-defined]
    await bus.close()


async def test_an_outage_during_the_prefetch_fetches_again_on_the_redelivery() -> None:
    """Redis away while fetching: the entry is read again after the restart and the order is
    submitted then, once (it was not marked seen before its fetch)."""
    run = "art" + uuid.uuid4().hex[:8]
    bus = open_bus(f"fakeredis://{run}")
    ring = KeyRing.generate()
    faulty = FaultyBus(bus, {"get_values", "get_value"}, times=1)
    actor, sim = _actor(bus, faulty, run, ring)
    entry, env = _order_entry(run, ring)
    with pytest.raises(BusUnavailable):
        await actor._take(entry, env)  # type: ignore[arg-type]
    assert sim._inbox == []
    await actor._take(entry, env)  # type: ignore[arg-type]  # the redelivery after the restart
    assert [o.order_id for o in sim._inbox] == ["o-1"]
    await bus.close()
