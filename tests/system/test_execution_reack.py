"""A copy of an order the ExecutionActor already applied is answered with the same ack again:
the SeedActor sends its awaited order again when the trainer's steps pass it unacknowledged, and
if it was the ack that was lost (refused as stale after an outage longer than the clock
tolerance), only a second ack ends the slot's wait."""

from __future__ import annotations

import pytest

from actors.execution.actor import ExecutionActor
from actors.hosting import FRAME
from bus import Bus, Entry
from contracts import KasminaConfig, KeyRing, Signer, Verifier, kinds, streams
from leyline import pb
from scenarios.sim import SimRuntime

pytestmark = pytest.mark.anyio
SLOT = "l0.s0"


async def _acks(bus: Bus, stream: str) -> list[pb.ExecutionAck]:
    """The acks on ``stream``, oldest first."""
    return [_body(e) for e in await bus.range(stream) if e.fields.get("kind") == b"exec.ack"]


def _body(entry: Entry) -> pb.ExecutionAck:
    env = _VERIFIER.open(entry.fields[FRAME], stream=entry.stream)
    return pb.ExecutionAck.FromString(env.body)


RING = KeyRing.generate()
_VERIFIER = Verifier(RING)


async def test_a_copy_of_an_applied_order_gets_its_ack_again(bus: Bus, run_id: str) -> None:
    """Order applied at step 10 and acked; a copy of it (same id, due later) applies nothing and
    sends the same ack again to the seed's inbox (a step is confirmed once: not to the
    confirmations stream); a copy of an order still due sends nothing yet."""
    sim = SimRuntime([SLOT])
    actor = ExecutionActor(sim, bus=bus, run=run_id, signer=Signer(RING, "execution:0"),
                           verifier=_VERIFIER, config=KasminaConfig())  # fmt: skip
    inbox = streams.inbox(run_id, "execution", "0")
    seed_inbox = streams.inbox(run_id, "seed", SLOT)
    sender = Signer(RING, f"seed:{SLOT}")

    async def take(order: pb.ExecutionOrder, entry_id: str) -> None:
        frame = sender.seal(kinds.EXEC_ORDER, order, stream=inbox)
        env = _VERIFIER.open(frame, stream=inbox)
        await actor._take(Entry(inbox, entry_id, {FRAME: frame}), env)

    germ = pb.Germinate(blueprint="residual_mlp")
    order = pb.ExecutionOrder(order_id="o-1", slot=SLOT, stage=pb.SEED_STAGE_GERMINATED,
                              apply_at_step=10, germinate=germ)  # fmt: skip
    await take(order, "1-0")
    sim.on_step(10)
    await actor.flush()
    (first,) = await _acks(bus, seed_inbox)
    assert first.order_id == "o-1" and first.applied_at_step == 10
    copy = pb.ExecutionOrder()
    copy.CopyFrom(order)
    copy.apply_at_step = 30  # as the SeedActor resends it: due at a later boundary
    await take(copy, "2-0")
    sim.on_step(30)
    await actor.flush()
    assert sim.applied_orders == [("o-1", 10)]  # applied once
    assert await _acks(bus, seed_inbox) == [first, first]  # the same ack, sealed afresh
    assert len(await _acks(bus, streams.confirmations(run_id))) == 1
    later = pb.ExecutionOrder(order_id="o-2", slot=SLOT, stage=pb.SEED_STAGE_TRAINING,
                              apply_at_step=40)  # fmt: skip
    await take(later, "3-0")
    await take(later, "4-0")  # a copy while it is still due: its one ack comes when it applies
    await actor.flush()
    assert len(await _acks(bus, seed_inbox)) == 2
    sim.on_step(40)
    await actor.flush()
    assert [a.order_id for a in await _acks(bus, seed_inbox)] == ["o-1", "o-1", "o-2"]
