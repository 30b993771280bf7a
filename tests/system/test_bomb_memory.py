"""Frames shaped to make a parser allocate (one array of a million empty arrays in under 1 MiB),
written into a slot's inbox by a Redis writer without keys: each is refused before anything is
unpacked, the process's memory stays bounded, and the other slot keeps serving."""

from __future__ import annotations

import tracemalloc

import pytest

from actors.client import Outcome
from actors.shell import FRAME
from bus import Append, Bus
from contracts import KeyRing, streams
from kasmina.commands.status import collect
from scenarios.cluster import running_cluster

TARGET, BYSTANDER = "l0.s0", "l1.s0"
BOMBS = 6
pytestmark = pytest.mark.anyio


def _bomb() -> bytes:
    """An msgpack array32 of 1,000,000 empty arrays: 1,000,005 bytes on the wire, about 64 MB
    of objects once unpacked."""
    return b"\xdd" + (1_000_000).to_bytes(4, "big") + b"\x90" * 1_000_000


async def test_parser_bombs_cost_bounded_memory_and_spare_the_other_slot(
    bus: Bus, run_id: str
) -> None:
    """Six bombs in one slot's inbox are rejected as bad frames while the traced peak of the
    process stays under 48 MiB (unpacking a single one takes more); the bystander's command is
    decided and no state changes."""
    ring = KeyRing.generate()
    async with running_cluster(bus, run=run_id, slots=[TARGET, BYSTANDER], ring=ring) as cl:
        await cl.client.command(TARGET, "cull", wait=True, timeout_s=30)  # the slot's first events
        await cl.settle()
        before = (await cl.state()).digests()
        inbox = streams.inbox(run_id, "seed", TARGET)
        tracemalloc.start()
        try:
            await bus.publish_many([Append(inbox, {FRAME: _bomb()}) for _ in range(BOMBS)])
            outcome = await cl.client.command(BYSTANDER, "cull", wait=True, timeout_s=30)
            await cl.settle()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert isinstance(outcome, Outcome) and outcome.kind == "lifecycle.refused"
        assert peak < 48 * 2**20, f"traced peak {peak / 2**20:.1f} MiB"
        status = await collect(bus, run_id, ring)
        assert status["rejected"].get("bad_frame") == BOMBS
        after = (await cl.state()).digests()
        assert after[("seed", TARGET)] == before[("seed", TARGET)]
