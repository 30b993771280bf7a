"""Gates on a regression task (float targets, MSE): G4 judges a non-class target on its loss,
a batch-mean loss gives enough pairs to be judged, and too few pairs fail G4 instead of leaving
the seed unjudged. Real runtime and actors on an in-memory bus, as in test_gate_judgement."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actors.execution import ExecutionRuntime, RuntimeConfig, insert_slots
from actors.seed import stage_name
from bus import open_bus
from contracts import KasminaConfig
from leyline import pb
from scenarios.cluster import running_cluster

STEPS, GERMINATE_AT = 200, 40
G4 = pb.SEED_GATE_G4_SYSTEM_IMPACT
LossFn = Callable[[Tensor, Tensor], Tensor]


def waves(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` points in 8-d with a non-linear target a 2-unit host cannot fit."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = torch.sin(2 * x[:, :1]) + x[:, 1:2] * x[:, 2:3] + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


def per_example_mse(out: Tensor, target: Tensor) -> Tensor:
    """One squared error per example."""
    return ((out - target) ** 2).mean(dim=1)


def run(loss_fn: LossFn, n_val: int = 1024) -> tuple[list[str], list[pb.GateResult]]:
    """An 8 -> 2 -> 1 host on ``waves``; a 32-unit ``width`` seed germinated at GERMINATE_AT."""
    torch.manual_seed(0)
    x, y = waves(2048, 0)
    x_val, y_val = waves(n_val, 1)
    config = KasminaConfig.load(
        overrides={
            "lifecycle.training_steps": 40,
            "lifecycle.blend_steps": 20,
            "lifecycle.shadowing_steps": 10,
            "lifecycle.probationary_steps": 10,
            "gates.min_training_steps": 20,
            "gates.max_latency_overhead": 100.0,
            "gates.loss_spike_sigma": 6.0,
            "barrier.frequency": 5,
        }
    )
    model = nn.Sequential(nn.Linear(8, 2), nn.ReLU(), nn.Linear(2, 1))
    slots = insert_slots(model, {"s0": "0"})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    cfg = RuntimeConfig(device="cpu", barrier_frequency=5, report_every=5, blend_steps=20)
    runtime = ExecutionRuntime(
        model,
        slots,
        opt,
        cfg,
        probe_batch=(x[:256], y[:256]),
        validation=(x_val, y_val),
        loss_fn=loss_fn,
    )
    order = torch.randint(0, 2048, (STEPS, 64), generator=torch.Generator().manual_seed(0))

    async def main() -> tuple[list[str], list[pb.GateResult]]:
        bus = open_bus(f"memory://gates-regression-{n_val}-{id(loss_fn)}")
        try:
            async with running_cluster(
                bus, run="reg", slots=list(slots), runtimes=[runtime], config=config
            ) as cluster:
                for step in range(STEPS):
                    xb, yb = x[order[step]], y[order[step]]
                    loss = F.mse_loss(model(xb), yb)
                    opt.zero_grad()
                    loss.backward()  # type: ignore[no-untyped-call]
                    opt.step()
                    await cluster.step(step, loss=loss, batch=(xb, yb))
                    await cluster.settle()
                    if step == GERMINATE_AT:
                        await cluster.client.command(
                            "s0", "germinate", blueprint="width", params={"hidden": 32, "lr": 1e-2}
                        )
                events = await cluster.events()
        finally:
            await bus.close()
        path = [stage_name(m.to_stage) for _, k, m in events if k == "lifecycle.transition"]
        return path, [m for _, k, m in events if k == "gate.result"]

    return anyio.run(main)


def _checks(result: pb.GateResult) -> dict[str, pb.GateCheck]:
    return {c.name: c for c in result.checks}


WALK = ["DORMANT", "GERMINATED", "TRAINING", "BLENDING", "SHADOWING", "PROBATIONARY"]


def test_helpful_seed_on_a_regression_task_fossilizes() -> None:
    """Per-example MSE: the seed lowers the validation loss, G4 judges its loss gain and its
    loss against the host's at germination, and it fossilizes."""
    path, results = run(per_example_mse)
    assert path == [*WALK, "FOSSILIZED"], [r.reason for r in results]
    g4 = _checks(results[-1])
    assert results[-1].gate == G4 and results[-1].passed
    assert g4["cf_gain_lcb"].value > 0.1 and g4["baseline_regression"].value < -0.2
    assert "host at germination" in g4["baseline_regression"].detail


def test_batch_mean_loss_is_judged_on_enough_pairs() -> None:
    """F.mse_loss (one value per batch): each batch is split into parts that pair up, so G1 and
    G4 have enough pairs, every ack is accepted and the seed is judged at G4 (and fossilizes)."""
    path, results = run(F.mse_loss)
    assert path == [*WALK, "FOSSILIZED"], [r.reason for r in results]
    g4 = _checks(results[-1])
    assert "n 64 pairs" in g4["cf_gain_lcb"].detail


def test_too_few_validation_pairs_fail_g4_instead_of_stalling() -> None:
    """A validation set of 40 examples under a batch-mean loss gives 20 pairs (fewer than
    min_gain_pairs): G4 is still asked, and fails with 'too few pairs'; the seed is culled."""
    path, results = run(F.mse_loss, n_val=40)
    assert path == [*WALK, "CULLED", "EMBARGOED"], [r.reason for r in results]
    assert results[-1].gate == G4 and not results[-1].passed
    assert "cf_gain_lcb (too few pairs: n 20 < min_gain_pairs 30)" in results[-1].reason


def test_losses_per_element_are_judged_per_example() -> None:
    """A ``loss_fn`` with one loss per output element (``reduction="none"`` on a 3-wide target)
    gives one pair per example, not per element: the elements of one example are not
    independent evidence."""
    from actors.execution.evidence import paired_losses, per_example_loss

    out, target = torch.randn(10, 3), torch.randn(10, 3)
    losses = per_example_loss(out, target, lambda o, t: F.mse_loss(o, t, reduction="none"))
    assert losses.shape == (10,)
    assert torch.allclose(losses, ((out - target) ** 2).mean(dim=1))
    logits, tokens = torch.randn(4, 5, 7), torch.randint(0, 5, (4, 7))  # 4 sequences of 7
    assert paired_losses(logits, tokens, None).shape == (4,)
