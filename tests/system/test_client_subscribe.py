"""KasminaClient.subscribe: a controller follows lifecycle moves and gate verdicts as typed
messages, live, on every bus backend."""

from __future__ import annotations

from contextlib import aclosing

import anyio
from test_cluster_walk import HAPPY, SLOT, walk_until
from tests_system_helpers import small_config

from actors.client import Event
from bus import Bus
from leyline import pb
from scenarios.cluster import running_cluster
from scenarios.sim import SimRuntime


async def test_subscribe_follows_a_walk_as_typed_events(bus: Bus, run_id: str) -> None:
    """Subscribed before the germination, a controller sees every transition of the slot and
    every gate verdict in log order, as pb messages, and nothing of other slots."""
    sim = SimRuntime([SLOT, "other"], report_every=5, barrier_frequency=5, blend_steps=20)
    seen: list[Event] = []
    done = anyio.Event()
    async with running_cluster(
        bus, run=run_id, slots=[SLOT, "other"], runtimes=[sim], config=small_config()
    ) as cl:
        await cl.step(0)
        await cl.settle()  # the bootstrap transitions are history: "$" starts after them

        async def follow() -> None:
            async for event in cl.client.subscribe(slot=SLOT):
                seen.append(event)
                message = event.message
                if isinstance(message, pb.LifecycleTransition) and message.to_stage == HAPPY[-1]:
                    done.set()
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await cl.client.command(SLOT, "germinate", blueprint="residual_mlp")
            await walk_until(cl, pb.SEED_STAGE_FOSSILIZED, start=1)
            with anyio.fail_after(20):
                await done.wait()
        log = [(e.entry_id, e.kind) for e in seen]
        assert log == sorted(log)  # log order
        moves = [e.message for e in seen if e.kind == "lifecycle.transition"]
        assert all(isinstance(m, pb.LifecycleTransition) for m in moves)
        assert [m.to_stage for m in moves] == HAPPY[1:]  # from now on: no bootstrap
        verdicts = [e.message for e in seen if e.kind == "gate.result"]
        assert all(isinstance(v, pb.GateResult) and v.passed for v in verdicts)
        assert [int(v.gate) for v in verdicts] == list(range(5))
        assert {e.slot for e in seen} == {SLOT}

        replayed = []  # "0-0": the whole log first, bootstrap included
        subscription = cl.client.subscribe(("lifecycle.transition",), slot=SLOT, since="0-0")
        async with aclosing(subscription):
            async for event in subscription:
                replayed.append(event.message.to_stage)
                if len(replayed) == len(HAPPY):
                    break
        assert replayed == HAPPY
