"""End-to-end lifecycle walks through every actor over the bus (memory, fakeredis, real Redis)."""

from __future__ import annotations

from tests_system_helpers import small_config

from actors.client import Outcome
from actors.replay import verify_digests
from bus import Bus
from contracts import streams
from leyline import pb
from scenarios.cluster import Cluster, running_cluster
from scenarios.sim import SimRuntime

S = pb.SeedLifecycleStage
G = pb.SeedLifecycleGate
SLOT = "l1.s0"
HAPPY = [
    S.SEED_STAGE_DORMANT,
    S.SEED_STAGE_GERMINATED,
    S.SEED_STAGE_TRAINING,
    S.SEED_STAGE_BLENDING,
    S.SEED_STAGE_SHADOWING,
    S.SEED_STAGE_PROBATIONARY,
    S.SEED_STAGE_FOSSILIZED,
]


async def walk_until(cl: Cluster, stage: int, *, start: int = 0, limit: int = 400) -> int:
    """Step (settling after each) until the slot reaches ``stage``; returns the next step."""
    for step in range(start, start + limit):
        await cl.step(step)
        await cl.settle()
        if await cl.stage(SLOT) == stage:
            return step + 1
    raise AssertionError(f"slot never reached {pb.SeedLifecycleStage.Name(stage)}")


async def transitions(cl: Cluster) -> list[tuple[int, int, str]]:
    """(from, to, cause) of every recorded transition."""
    return [
        (int(m.from_stage), int(m.to_stage), m.cause)
        for _, kind, m in await cl.events()
        if kind == "lifecycle.transition"
    ]


async def test_germinate_walks_to_fossilized(bus: Bus, run_id: str) -> None:
    """A germinate command and step reports walk DORMANT -> ... -> FOSSILIZED through G0-G4."""
    sim = SimRuntime([SLOT], report_every=5, barrier_frequency=5, blend_steps=20)
    run = run_id
    async with running_cluster(
        bus, run=run, slots=[SLOT], runtimes=[sim], config=small_config()
    ) as cl:
        await cl.step(0)
        await cl.settle()
        await cl.client.command(SLOT, "germinate", blueprint="residual_mlp")
        await walk_until(cl, S.SEED_STAGE_FOSSILIZED, start=1)
        assert [to for _, to, _ in await transitions(cl)] == HAPPY
        gates = [(int(m.gate), m.passed) for _, k, m in await cl.events() if k == "gate.result"]
        assert gates == [(g, True) for g in range(5)]
        # every order changed the forward on a barrier boundary, exactly at its apply_at_step
        assert all(step % 5 == 0 for _, step in sim.applied_orders)
        assert verify_digests(await cl.events()) == []


async def test_wait_returns_the_germination_outcome(bus: Bus, run_id: str) -> None:
    """``command(..., wait=True)`` returns DORMANT->GERMINATED once execution and G0 have answered."""
    import anyio

    sim = SimRuntime([SLOT], report_every=5, barrier_frequency=5)
    run = run_id
    async with running_cluster(
        bus, run=run, slots=[SLOT], runtimes=[sim], config=small_config()
    ) as cl:
        result: list[Outcome] = []

        async def waiter() -> None:
            out = await cl.client.command(
                SLOT, "germinate", blueprint="residual_mlp", wait=True, timeout_s=20
            )
            assert isinstance(out, Outcome)
            result.append(out)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            step = 0
            while not result:
                await cl.step(step)
                await cl.settle()
                step += 1
        outcome = result[0]
        assert outcome.ok and outcome.kind == "lifecycle.transition"
        assert outcome.message.to_stage == S.SEED_STAGE_GERMINATED


async def test_forced_gate_failure_culls_embargoes_and_resets(bus: Bus, run_id: str) -> None:
    """A failing G2 walks CULLED -> EMBARGOED -> RESETTING -> DORMANT, the cause naming the failed check."""
    sim = SimRuntime(
        [SLOT],
        report_every=5,
        barrier_frequency=5,
        blend_steps=20,
        fail_gates=[G.SEED_GATE_G2_STABILITY],
    )
    run = run_id
    async with running_cluster(
        bus, run=run, slots=[SLOT], runtimes=[sim], config=small_config()
    ) as cl:
        await cl.step(0)
        await cl.settle()
        await cl.client.command(SLOT, "germinate", blueprint="residual_mlp")
        nxt = await walk_until(cl, S.SEED_STAGE_EMBARGOED, start=1)
        sim.fail_gates.clear()  # the reset itself is clean
        await walk_until(cl, S.SEED_STAGE_DORMANT, start=nxt)
        path = await transitions(cl)
        assert [(f, t) for f, t, _ in path][-4:] == [
            (S.SEED_STAGE_BLENDING, S.SEED_STAGE_CULLED),
            (S.SEED_STAGE_CULLED, S.SEED_STAGE_EMBARGOED),
            (S.SEED_STAGE_EMBARGOED, S.SEED_STAGE_RESETTING),
            (S.SEED_STAGE_RESETTING, S.SEED_STAGE_DORMANT),
        ]
        cull_cause = next(c for f, t, c in path if t == S.SEED_STAGE_CULLED)
        assert "G2" in cull_cause and "loss_spike_sigma" in cull_cause
        assert verify_digests(await cl.events()) == []


async def test_illegal_command_is_refused_and_recorded(bus: Bus, run_id: str) -> None:
    """Culling a DORMANT slot is refused explicitly, counted as illegal_transition, stage unchanged."""
    sim = SimRuntime([SLOT], report_every=5, barrier_frequency=5)
    run = run_id
    async with running_cluster(
        bus, run=run, slots=[SLOT], runtimes=[sim], config=small_config()
    ) as cl:
        await cl.step(0)
        await cl.settle()
        out = await cl.client.command(SLOT, "cull", wait=True, timeout_s=10)
        assert isinstance(out, Outcome) and not out.ok
        assert out.kind in ("lifecycle.refused", "rejection")
        assert await cl.stage(SLOT) == S.SEED_STAGE_DORMANT
        refused = [m for _, k, m in await cl.events() if k == "lifecycle.refused"]
        assert refused and refused[-1].command_id == out.command_id
        rejected = await cl.bus.range(streams.rejected(run))
        assert [e.fields["reason"] for e in rejected] == [b"illegal_transition"]
