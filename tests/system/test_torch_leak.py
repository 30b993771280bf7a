"""A planted leaking blueprint on the real torch runtime: probes catch it, the breaker culls it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from actors.execution import ExecutionRuntime, RuntimeConfig, host_parameters, insert_slots
from actors.execution.testing import TinyMLP, register_leaky, unregister_leaky
from bus import open_bus
from contracts import KasminaConfig
from leyline import pb
from scenarios.cluster import running_cluster

SLOT = "fc1.s0"


@pytest.fixture
def leaky() -> Iterator[None]:
    """The planted leaking blueprint, registered for this test only."""
    register_leaky()
    yield
    unregister_leaky()


@pytest.mark.usefixtures("leaky")
async def test_leaking_seed_is_struck_three_times_and_culled_while_the_host_trains() -> None:
    """Isolation probes flag the leak each time; three strikes open the breaker; the slot is culled."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x = torch.randn(256, 8)
    y = (x.sum(1) > 0).long() + 2 * (x[:, 0] > 0).long()
    model = TinyMLP()
    slots = insert_slots(model, {SLOT: "fc1"})
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.05)
    config = KasminaConfig.load(
        env={},
        overrides={
            "barrier.frequency": 5,
            "lifecycle.training_steps": 500,  # the breaker, not a gate, must end it
            "safety.strikes_to_open": 3,
            "safety.strike_window_steps": 100,
        },
    )
    runtime = ExecutionRuntime(
        model,
        slots,
        opt,
        RuntimeConfig(
            device="cpu",
            probe_every=5,
            report_every=5,
            barrier_frequency=5,
            strict_attach=False,  # let the leak run so the runtime probes must catch it
        ),
        probe_batch=(x[:64], y[:64]),
    )
    bus = open_bus(f"memory://{uuid.uuid4().hex}")
    host_before = [p.detach().clone() for p in host_parameters(model, slots)]
    async with running_cluster(
        bus, run="leak", slots=[SLOT], runtimes=[runtime], config=config
    ) as cl:
        culled_at = None
        for step in range(150):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            await cl.step(step, loss=loss, val_loss=float(loss.detach()), val_accuracy=0.5)
            await cl.settle()
            if step == 1:
                await cl.client.command(SLOT, "germinate", blueprint="leaky")
            if culled_at is None and await cl.stage(SLOT) in (
                pb.SEED_STAGE_CULLED,
                pb.SEED_STAGE_EMBARGOED,
            ):
                culled_at = step
                break
        events = await cl.events()
    await bus.close()
    assert culled_at is not None, "the leaking seed was never culled"
    verdicts = [m for _, k, m in events if k == "safety.verdict" and m.slot == SLOT]
    strikes = [v for v in verdicts if v.action == pb.VERDICT_STRIKE]
    culls = [v for v in verdicts if v.action == pb.VERDICT_CULL]
    assert len(strikes) == 3 and all("ISOLATION_VIOLATION" in v.reason for v in strikes)
    assert len(culls) == 1
    cull = next(
        m
        for _, k, m in events
        if k == "lifecycle.transition" and m.to_stage == pb.SEED_STAGE_CULLED
    )
    assert "circuit breaker" in cull.cause
    # the host kept training throughout
    assert any(
        not torch.equal(a, b)
        for a, b in zip(host_before, host_parameters(model, slots), strict=True)
    )
