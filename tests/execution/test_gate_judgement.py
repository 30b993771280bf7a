"""Gates judge the seed's own contribution, on a real model through the runtime and the actors.

The task: points in 8-d labelled by whether they lie outside a sphere; the host has 4 hidden units
(about 65 % validation accuracy), so 16 more units (a ``width`` seed) clearly pay. Every run drives
the whole lifecycle through ``running_cluster`` (SeedActor, GateActor, ExecutionActor) on an
in-memory bus; nothing is simulated.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
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
    insert_slots,
    register_blueprint,
    unregister_blueprint,
)
from actors.execution.evidence import Paired
from actors.seed import stage_name
from bus import open_bus
from contracts import KasminaConfig
from contracts import evidence as ev
from leyline import pb
from scenarios.cluster import running_cluster

STEPS, GERMINATE_AT = 240, 60
G = pb.SeedLifecycleGate


def sphere(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` Gaussian points in 8-d, class 1 outside the median sphere."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, ((x * x).sum(1) > 7.34).long()


def separable(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` points split by the sign of the first coordinate with a margin (host gets 100 %)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    x[:, 0] += torch.sign(x[:, 0]) * 1.0
    return x, (x[:, 0] > 0).long()


class Net(nn.Module):
    """8 -> 4 -> 2 MLP, the whole body one slot."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        out: Tensor = self.body(x)
        return out


@dataclass
class Outcome:
    """A finished run: the slot's stage path and every gate result."""

    path: list[str]
    results: list[pb.GateResult]

    def gate(self, gate: int) -> pb.GateResult:
        """The (last) result of ``gate``."""
        return [r for r in self.results if r.gate == gate][-1]

    def check(self, gate: int, name: str) -> pb.GateCheck:
        """One check of ``gate``'s result."""
        return next(c for c in self.gate(gate).checks if c.name == name)


def run(blueprint: str, params: dict[str, float], data: Any = sphere, seed: int = 0) -> Outcome:
    """Train the host, germinate ``blueprint`` at GERMINATE_AT, walk the lifecycle."""
    torch.manual_seed(seed)
    x, y = data(2048, seed)
    x_val, y_val = data(1024, seed + 1000)
    config = KasminaConfig.load(
        overrides={
            "lifecycle.training_steps": 40,
            "lifecycle.blend_steps": 20,
            "lifecycle.shadowing_steps": 10,
            "lifecycle.probationary_steps": 10,
            "gates.min_training_steps": 20,
            "gates.max_latency_overhead": 100.0,  # a 4-unit host: any seed dwarfs its time
            "gates.loss_spike_sigma": 6.0,
            "barrier.frequency": 5,
        }
    )
    model = Net()
    slots = insert_slots(model, {"body.s0": "body"})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    runtime = ExecutionRuntime(
        model,
        slots,
        opt,
        RuntimeConfig(
            device="cpu", barrier_frequency=5, report_every=5, blend_steps=20, probe_every=10
        ),
        probe_batch=(x_val[:256], y_val[:256]),
        validation=(x_val, y_val),
    )
    order = torch.randint(0, 2048, (STEPS, 64), generator=torch.Generator().manual_seed(seed))

    async def main() -> Outcome:
        bus = open_bus(f"memory://gates-{blueprint}-{seed}")
        try:
            async with running_cluster(
                bus, run="gates", slots=list(slots), runtimes=[runtime], config=config
            ) as cluster:
                for step in range(STEPS):
                    xb, yb = x[order[step]], y[order[step]]
                    loss = F.cross_entropy(model(xb), yb)
                    opt.zero_grad()
                    loss.backward()  # type: ignore[no-untyped-call]
                    opt.step()
                    with torch.no_grad():
                        acc = float((model(x_val).argmax(1) == y_val).float().mean())
                    await cluster.step(step, loss=loss, val_accuracy=acc, batch=(xb, yb))
                    await cluster.settle()
                    if step == GERMINATE_AT:
                        await cluster.client.command(
                            "body.s0", "germinate", blueprint=blueprint, params=params
                        )
                events = await cluster.events()
        finally:
            await bus.close()
        path = [stage_name(m.to_stage) for _, k, m in events if k == "lifecycle.transition"]
        results = [m for _, k, m in events if k == "gate.result"]
        return Outcome(path, results)

    return anyio.run(main)


class _Reverse(torch.autograd.Function):
    """Identity forward, negated gradient: the optimizer then climbs the loss."""

    @staticmethod
    def forward(ctx: Any, t: Tensor) -> Tensor:
        return t.view_as(t)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return -grad


class Ascending(nn.Module):
    """A ``width`` seed whose training makes the loss worse."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        """The inner seed's output with its gradient reversed."""
        out: Tensor = _Reverse.apply(self.inner(x))
        return out


@pytest.fixture
def ascending() -> Iterator[str]:
    """A planted blueprint ``ascending`` (a width seed trained uphill), removed afterwards."""
    width = get_blueprint("width")

    def build(shape: SlotShape, params: Any, host: nn.Module) -> nn.Module:
        return Ascending(width.build(shape, params, host))

    register_blueprint(
        Blueprint("ascending", build, width.accepts, reads_input=True, convex_ok=False)
    )
    yield "ascending"
    unregister_blueprint("ascending")


GROWTH = ["DORMANT", "GERMINATED", "TRAINING"]


def test_helpful_seed_passes_every_gate() -> None:
    """A seed that adds needed units passes G0-G4 with significant gains and fossilizes."""
    out = run("width", {"hidden": 16, "lr": 1e-2})
    assert out.path == [*GROWTH, "BLENDING", "SHADOWING", "PROBATIONARY", "FOSSILIZED"], [
        r.reason for r in out.results
    ]
    assert [r.gate for r in out.results] == [0, 1, 2, 3, 4] and all(r.passed for r in out.results)
    g1 = {c.name: c for c in out.gate(G.SEED_GATE_G1_GRADIENT_HEALTH).checks}
    assert g1["seed_loss_gain_lcb"].value > 0.0
    g4 = out.gate(G.SEED_GATE_G4_SYSTEM_IMPACT)
    assert out.check(g4.gate, "cf_gain_lcb").value > 0.05  # at least 5 pp, lower bound
    assert out.check(g4.gate, "cf_net_gain").value > 0.05


def test_seed_that_cannot_learn_fails_g1() -> None:
    """A seed with a vanishing lr (lr = 0 itself is refused by the SeedActor) keeps its zero
    output: its shadow-loss gain is exactly 0 and G1 culls."""
    out = run("width", {"hidden": 16, "lr": 1e-30})
    assert out.path == [*GROWTH, "CULLED", "EMBARGOED"]
    check = out.check(G.SEED_GATE_G1_GRADIENT_HEALTH, "seed_loss_gain_lcb")
    assert not check.passed and check.value == 0.0 and check.comparator == ">"
    assert "seed_loss_gain_lcb" in out.gate(G.SEED_GATE_G1_GRADIENT_HEALTH).reason


def test_seed_that_hurts_fails_g1(ascending: str) -> None:
    """A seed trained uphill has healthy gradients but a negative shadow-loss gain: G1 culls it."""
    out = run(ascending, {"hidden": 16, "lr": 1e-2})
    assert out.path == [*GROWTH, "CULLED", "EMBARGOED"]
    g1 = {c.name: c for c in out.gate(G.SEED_GATE_G1_GRADIENT_HEALTH).checks}
    assert not g1["seed_loss_gain_lcb"].passed and g1["seed_loss_gain_lcb"].value < 0.0
    assert [n for n, c in g1.items() if not c.passed] == ["seed_loss_gain_lcb"]


def test_zero_gain_seed_is_culled_at_g4() -> None:
    """Where the host is already perfect, a learning seed passes G1-G3, gains nothing, G4 culls."""
    out = run("width", {"hidden": 16, "lr": 1e-2}, data=separable)
    assert out.path == [*GROWTH, "BLENDING", "SHADOWING", "PROBATIONARY", "CULLED", "EMBARGOED"]
    assert [r.passed for r in out.results] == [True, True, True, True, False]
    g4 = {c.name: c for c in out.gate(G.SEED_GATE_G4_SYSTEM_IMPACT).checks}
    assert not g4["cf_gain_lcb"].passed and g4["cf_gain_lcb"].value <= 0.0


def test_paired_sums_give_mean_and_standard_error() -> None:
    """Paired pools differences: mean, sample standard error, and an unknown error for one pair."""
    p = Paired.of(torch.tensor([1.0, 2.0, 3.0, 6.0])) + Paired.of(torch.tensor([3.0]))
    assert (p.n, p.mean) == (5, 3.0)
    assert p.se == pytest.approx((((4 + 1 + 0 + 9 + 0) / 4) / 5) ** 0.5)
    assert Paired.of(torch.tensor([2.0])).se == float("inf")
    assert Paired().mean == 0.0


def test_germination_reports_the_slot_as_it_is() -> None:
    """G0's slot facts come from the slot: a fresh slot is free, one holding a seed is not."""
    torch.manual_seed(0)
    model = Net()
    slots = insert_slots(model, {"body.s0": "body"})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = sphere(64, 0)
    config = RuntimeConfig(device="cpu", report_every=0)
    rt = ExecutionRuntime(model, slots, opt, config, probe_batch=(x, y))
    germinate = pb.Germinate(blueprint="width")
    for at, stage in enumerate((pb.SEED_STAGE_GERMINATED, pb.SEED_STAGE_TRAINING) * 2):
        order = pb.ExecutionOrder(order_id=f"o{at}", slot="body.s0", stage=stage, apply_at_step=at)
        if stage == pb.SEED_STAGE_GERMINATED:
            order.germinate.CopyFrom(germinate)
        rt.submit(order)
        rt.on_step(at)
    acks = [m for kind, m in rt.drain_outbox() if kind == "exec.ack"]
    first, _, second, _ = acks
    assert first.ok and first.evidence.metrics[ev.SLOT_FREE] == 1.0
    assert first.evidence.metrics[ev.SLOT_EMBARGOED] == 0.0
    assert first.evidence.metrics[ev.HOST_PARAMS] == 8 * 4 + 4 + 4 * 2 + 2
    assert not second.ok and second.evidence.metrics[ev.SLOT_FREE] == 0.0


class _Misshapen(nn.Module):
    """A seed whose output has one feature too many."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        """The inner seed's output, one column wider."""
        z: Tensor = self.inner(x)
        return torch.cat([z, z[:, :1]], dim=1)


def test_a_seed_of_the_wrong_shape_fails_g0_with_the_check_recorded() -> None:
    """Execution refuses a seed whose output is the wrong shape; G0 records why (shape_match,
    its value and threshold) instead of a bare text refusal, and the slot stays DORMANT."""
    width = get_blueprint("width")

    def build(shape: SlotShape, params: Any, host: nn.Module) -> nn.Module:
        return _Misshapen(width.build(shape, params, host))

    register_blueprint(Blueprint("misshapen", build, width.accepts, reads_input=True))
    try:
        out = run("misshapen", {"hidden": 16, "lr": 1e-2})
    finally:
        unregister_blueprint("misshapen")
    assert out.path == ["DORMANT"]
    g0 = out.gate(G.SEED_GATE_G0_SANITY)
    assert not g0.passed and "shape_match" in g0.reason
    check = out.check(G.SEED_GATE_G0_SANITY, ev.SHAPE_MATCH)
    assert (check.passed, check.value, check.comparator, check.threshold) == (False, 0.0, "==", 1.0)
