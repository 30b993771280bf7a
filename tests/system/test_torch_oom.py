"""Out of memory in a seed's training forward, through the actors: the runtime takes the seed out
at once, the SafetyActor opens its breaker on the first out-of-memory signal, and the seed is
culled while the user's loop trains on without an exception."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actors.execution import (
    Blueprint,
    ExecutionRuntime,
    RuntimeConfig,
    SlotShape,
    get_blueprint,
    host_parameters,
    insert_slots,
    register_blueprint,
    unregister_blueprint,
)
from actors.execution.testing import TinyMLP
from bus import Bus
from contracts import KasminaConfig
from leyline import pb
from scenarios.cluster import running_cluster

SLOT = "fc1.s0"
FAIL_AT = 4  # the seed's 4th training forward runs out of memory


class OomSeed(nn.Module):
    """A residual MLP seed whose training forwards raise ``torch.OutOfMemoryError`` from the
    ``FAIL_AT``-th on (fault injection around the real blueprint)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, h: Tensor) -> Tensor:
        """The inner seed's delta until the injected failure."""
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.calls >= FAIL_AT:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        out: Tensor = self.inner(h)
        return out


@pytest.fixture
def oom_blueprint() -> Iterator[None]:
    """The fault-injecting blueprint, registered for this test only."""
    base = get_blueprint("residual_mlp")

    def build(shape: SlotShape, params: Mapping[str, float], host: nn.Module) -> nn.Module:
        return OomSeed(base.build(shape, params, host))

    register_blueprint(Blueprint("oom_seed", build, base.accepts), replace=True)
    yield
    unregister_blueprint("oom_seed")


@pytest.mark.usefixtures("oom_blueprint")
async def test_out_of_memory_in_training_culls_the_seed_through_the_breaker(
    bus: Bus, run_id: str
) -> None:
    """One out-of-memory signal opens the breaker and the SeedActor culls the seed; the user's
    loop never raises and the host keeps training."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x = torch.randn(128, 8)
    y = (x.sum(1) > 0).long() + 2 * (x[:, 0] > 0).long()
    model = TinyMLP()
    slots = insert_slots(model, {SLOT: "fc1"})
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.05)
    config = KasminaConfig.load(env={}, overrides={"barrier.frequency": 5})
    runtime = ExecutionRuntime(
        model,
        slots,
        opt,
        RuntimeConfig(device="cpu", probe_every=0, report_every=5, barrier_frequency=5),
        probe_batch=(x[:32], y[:32]),
    )
    host_before = [p.detach().clone() for p in host_parameters(model, slots)]
    culled_at = None
    async with running_cluster(
        bus, run=run_id, slots=[SLOT], runtimes=[runtime], config=config
    ) as cl:
        for step in range(80):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            await cl.step(step, loss=loss, val_loss=float(loss.detach()), val_accuracy=0.5)
            await cl.settle()
            if step == 1:
                await cl.client.command(SLOT, "germinate", blueprint="oom_seed")
            if await cl.stage(SLOT) in (pb.SEED_STAGE_CULLED, pb.SEED_STAGE_EMBARGOED):
                culled_at = step
                break
        events = await cl.events()
    assert culled_at is not None, "the seed that ran out of memory was never culled"
    verdicts = [m for _, k, m in events if k == "safety.verdict" and m.slot == SLOT]
    strikes = [v for v in verdicts if v.action == pb.VERDICT_STRIKE]
    assert len(strikes) == 1 and "OUT_OF_MEMORY" in strikes[0].reason
    assert [v.action for v in verdicts if v.action == pb.VERDICT_CULL] == [pb.VERDICT_CULL]
    assert slots[SLOT].seed is None and runtime.oom_culls == 1
    assert any(
        not torch.equal(a, b)
        for a, b in zip(host_before, host_parameters(model, slots), strict=True)
    )
