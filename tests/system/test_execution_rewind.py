"""The ExecutionActor against a Redis writer who moves its inbox's consumer group: a checkpoint
or rollback request delivered again by a rewind is applied once, and a group moved past the end
of the inbox is moved back by the actor's heartbeat."""

from __future__ import annotations

import uuid

import pytest

from actors.execution.actor import ExecutionActor
from actors.hosting import FRAME
from bus import Entry, open_bus, parse_id
from contracts import KasminaConfig, KeyRing, Signer, Verifier, kinds, streams
from leyline import pb
from scenarios.sim import SimRuntime

pytestmark = pytest.mark.anyio


def _actor(run: str, ring: KeyRing, backend: str) -> tuple[ExecutionActor, SimRuntime]:
    sim = SimRuntime(["l0.s0"])
    bus = open_bus(f"{backend}://{run}")
    actor = ExecutionActor(sim, bus=bus, run=run, signer=Signer(ring, "execution:0"),
                           verifier=Verifier(ring), config=KasminaConfig())  # fmt: skip
    return actor, sim


@pytest.mark.parametrize("rollback", [False, True])
async def test_a_checkpoint_request_delivered_again_is_applied_once(rollback: bool) -> None:
    """The same signed request taken twice (a rewound group's redelivery): one checkpoint, or
    one rollback, not two."""
    run = "ckpt" + uuid.uuid4().hex[:8]
    ring = KeyRing.generate()
    actor, sim = _actor(run, ring, "memory")
    inbox = streams.inbox(run, "execution", "0")
    request = pb.CheckpointRequest(reason="r", step=3, rollback=rollback, slots=["l0.s0"])
    frame = Signer(ring, "safety").seal(kinds.CHECKPOINT_REQUEST, request, stream=inbox)
    env = Verifier(ring).open(frame, stream=inbox)
    entry = Entry(inbox, "1-0", {FRAME: frame, "kind": kinds.CHECKPOINT_REQUEST.encode()})
    for again in (entry, Entry(inbox, "2-0", entry.fields)):  # the same frame, read twice
        await actor._take(again, env)
    assert actor.checkpoint_requests == 1
    assert len(sim.checkpoint_requests if not rollback else sim.rollback_requests) == 1
    await actor.bus.close()


async def test_an_execution_group_moved_past_its_inbox_is_moved_back_by_the_heartbeat() -> None:
    """XGROUP SETID of `actor:execution:0` to the largest id would hold back every later order:
    the rank's next heartbeat finds it and moves it back within the inbox."""
    run = "exgrp" + uuid.uuid4().hex[:8]
    ring = KeyRing.generate()
    actor, _ = _actor(run, ring, "fakeredis")
    inbox, group = streams.inbox(run, "execution", "0"), "actor:execution:0"
    await actor.bus.ensure_group(inbox, group)
    await actor.bus.publish(inbox, {"junk": b"x"})
    await actor.bus.set_group_id(inbox, group, "18446744073709551615-0")
    await actor._beat()
    info = await actor.bus.info(inbox)
    assert parse_id(info.groups[0].last_delivered) <= parse_id(info.last_id)
    await actor.bus.close()
