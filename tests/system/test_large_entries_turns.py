"""Maximum-size telemetry batches (a trainer key may send them) do not hold the process: the
shell gives the process's other actors a turn between large entries, as it does every sixteen
small ones, so heartbeats and other inboxes are served while it works through them."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from actors.shell import FRAME
from bus import Append, Bus
from contracts import KeyRing, Signer, streams
from leyline import pb
from scenarios.cluster import running_cluster

BATCHES, ITEMS = 4, 120  # 120 items of 500 metrics: about 1 MB, just under the frame limit
pytestmark = pytest.mark.anyio


def _batch() -> pb.TelemetryBatch:
    metrics = {f"m{i}": float(i) for i in range(500)}
    return pb.TelemetryBatch(
        items=[pb.TelemetryRaw(region="r", step=i, metrics=metrics) for i in range(ITEMS)]
    )


async def test_other_tasks_run_between_maximum_size_telemetry_batches(
    bus: Bus, run_id: str
) -> None:
    """Four batches of about 1 MB, read in one batch by the TelemetryActor: a task of the same
    process sees the aggregator part way through them (its count of raw items between 0 and all
    of them), so it ran between their decisions; all are decided."""
    ring = KeyRing.generate()
    async with running_cluster(
        bus, run=run_id, slots=["l0.s0"], ring=ring, actors=("telemetry",)
    ) as cl:
        (shell,) = [s for s in cl.supervisor.shells if s.logic.name == "telemetry"]
        aggregator = shell.logic.aggregator  # type: ignore[attr-defined]
        inbox = streams.inbox(run_id, "telemetry")
        signer, batch = Signer(ring, "execution:0"), _batch()
        frames = [signer.seal("telemetry.batch", batch, stream=inbox) for _ in range(BATCHES)]
        assert all(len(frame) < 1 << 20 for frame in frames)
        seen: set[int] = set()
        total = BATCHES * ITEMS
        await bus.publish_many([Append(inbox, {FRAME: frame}) for frame in frames])
        with anyio.fail_after(60):
            while aggregator.stats.raw_in < total:
                seen.add(aggregator.stats.raw_in)
                await anyio.lowlevel.checkpoint()
        assert {n for n in seen if 0 < n < total}, sorted(seen)
