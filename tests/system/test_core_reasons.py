"""A core's refusal is recorded with the core's own reason code, never a generic one."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import anyio
import pytest
from google.protobuf.message import Message

from actors.assemble import live_verifier
from actors.core import Decision
from actors.eventlog import LogRecord, read_log
from actors.hosting import FRAME, Meta
from actors.shell import ActorShell
from bus import Bus, open_bus
from bus.testing import eventually
from contracts import KasminaConfig, KeyRing, Reason, Signer, Verifier, kinds, streams
from leyline import pb
from scenarios.cluster import running_cluster


async def _rejections(bus: Bus, run: str, ring: KeyRing) -> list[pb.Rejection]:
    verifier = Verifier(ring, replay=True)
    out = []
    async for record in read_log(bus, streams.rejected(run), verifier):
        assert isinstance(record, LogRecord) and isinstance(record.message, pb.Rejection)
        out.append(record.message)
    return out


@pytest.mark.parametrize(
    ("vote", "reason"),
    [
        # the run's world (barrier.world_size, 1 here): a vote that names another is invalid
        (pb.BarrierVote(barrier_step=10, rank=7, world_size=1, digest=b"d"), Reason.UNKNOWN_RANK),
        (
            pb.BarrierVote(barrier_step=7, rank=0, world_size=1, digest=b"d"),
            Reason.NOT_A_BARRIER_STEP,
        ),
        (pb.BarrierVote(barrier_step=10, rank=0, world_size=2, digest=b"d"), Reason.INVALID),
    ],
)
async def test_a_barrier_refusal_is_recorded_with_the_barrier_cores_reason(
    bus: Bus, run_id: str, vote: pb.BarrierVote, reason: Reason
) -> None:
    """A vote the BarrierActor's core refuses lands on the rejected stream with the reason the
    core gave (and is counted under it), not as ``invalid``."""
    ring = KeyRing.generate()
    config = KasminaConfig.load(env={}, overrides={"barrier.frequency": 5})
    async with running_cluster(
        bus, run=run_id, slots=[], ring=ring, config=config, actors=["barrier"]
    ) as cl:
        frame = Signer(ring, "trainer").seal(
            kinds.BARRIER_VOTE, vote, stream=streams.inbox(run_id, "barrier")
        )
        await bus.publish(streams.inbox(run_id, "barrier"), {FRAME: frame})
        await cl.settle()
        (shell,) = cl.shells
        assert dict(shell.rejected) == {reason.value: 1}
    (record,) = await _rejections(bus, run_id, ring)
    assert record.reason_code == reason.value and record.actor == "barrier"


@dataclass
class _Refusing:
    """A logic whose core refuses every input with one fixed reason."""

    reason: Reason
    name: str = "gate"
    accepts: frozenset[str] = frozenset({kinds.GATE_REQUEST})
    seen: list[Message] = field(default_factory=list)

    def handle(self, kind: str, message: Message, meta: Meta) -> Decision:
        self.seen.append(message)
        return Decision.refuse(self.reason, f"refused as {self.reason.value}")

    def apply(self, decision: Decision) -> None:
        """Nothing to fold: the refusals carry no event."""

    def reset(self) -> None:
        """No state."""

    def fold(self, kind: str, message: Message) -> bool:
        """No state."""
        return False

    def snapshot(self) -> object:
        """No state."""
        return None

    def restore(self, snapshot: object) -> None:
        """No state."""

    def digests(self) -> dict[tuple[str, str], bytes]:
        return {}


@pytest.mark.parametrize("reason", list(Reason))
async def test_the_shell_records_exactly_the_reason_a_decision_carries(reason: Reason) -> None:
    """Whatever reason code a core's decision carries is the one recorded and counted."""
    run = "reasons"
    bus = open_bus(f"memory://reasons-{reason.value}-{uuid.uuid4().hex[:8]}")  # fresh per call
    ring, config = KeyRing.generate(), KasminaConfig()
    logic = _Refusing(reason)
    shell = ActorShell(
        logic,
        bus=bus,
        run=run,
        inbox=streams.inbox(run, "gate"),
        signer=Signer(ring, "gate"),
        verifier=live_verifier(bus, run, ring, config),
        config=config,
    )
    frame = Signer(ring, "trainer").seal(
        kinds.GATE_REQUEST, pb.GateRequest(slot="a"), stream=streams.inbox(run, "gate")
    )
    await bus.publish(streams.inbox(run, "gate"), {FRAME: frame})
    async with anyio.create_task_group() as tg:
        await tg.start(shell.run)

        async def handled() -> bool:
            return shell.processed == 1

        await eventually(handled)
        await shell.stop()
    (record,) = await _rejections(bus, run, ring)
    assert record.reason_code == reason.value and dict(shell.rejected) == {reason.value: 1}
    assert len(logic.seen) == 1
    await bus.close()


@dataclass
class _Raising(_Refusing):
    """A core that cannot decide: ``handle`` raises what a bug would."""

    def handle(self, kind: str, message: Message, meta: Meta) -> Decision:
        self.seen.append(message)
        raise ValueError("Value out of range: 18446744073709551616")


async def test_a_core_that_raises_rejects_the_input_and_the_actor_serves_on() -> None:
    """An exception other than a contract error out of a core is recorded as an ``invalid``
    rejection naming it, and the next input is decided: the actor never crash-loops on one."""
    run = "raising"
    bus = open_bus(f"memory://raising-{uuid.uuid4().hex[:8]}")
    ring, config = KeyRing.generate(), KasminaConfig()
    logic = _Raising(Reason.INVALID)
    inbox = streams.inbox(run, "gate")
    shell = ActorShell(
        logic, bus=bus, run=run, inbox=inbox, signer=Signer(ring, "gate"),
        verifier=live_verifier(bus, run, ring, config), config=config,
    )  # fmt: skip
    for _ in range(2):
        frame = Signer(ring, "trainer").seal(
            kinds.GATE_REQUEST, pb.GateRequest(slot="a"), stream=inbox
        )
        await bus.publish(inbox, {FRAME: frame})
    async with anyio.create_task_group() as tg:
        await tg.start(shell.run)

        async def handled() -> bool:
            return shell.processed == 2

        await eventually(handled)
        await shell.stop()
    records = await _rejections(bus, run, ring)
    assert [r.reason_code for r in records] == ["invalid", "invalid"]
    assert "ValueError: Value out of range" in records[0].detail and len(logic.seen) == 2
    await bus.close()
