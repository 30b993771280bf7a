"""A whole lifecycle on a real model through the runtime and the actors (SeedActor, GateActor,
ExecutionActor on an in-memory bus), for gate tests on tasks of their own: a model, a loss, a
training loop that may leave the model in eval mode between steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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

LossFn = Callable[[Tensor, Tensor], Tensor]
Data = tuple[Tensor, Tensor]


@dataclass
class Task:
    """What one run trains and judges."""

    model: nn.Module
    slot: tuple[str, str]  # slot id, the module it wraps
    train: Data
    validation: Data
    loss_fn: LossFn | None = None
    blueprint: str = "width"
    params: dict[str, float] = field(default_factory=lambda: {"hidden": 16, "lr": 1e-2})
    eval_between_steps: bool = False  # the loop evaluates with model.eval() after each step
    steps: int = 240
    germinate_at: int = 60
    stages: tuple[int, int, int, int] = (40, 20, 10, 10)  # training, blend, shadow, probation
    lr: float = 1e-2
    name: str = "task"


@dataclass
class Outcome:
    """A finished run: the slot's stage path and every gate result."""

    path: list[str]
    results: list[pb.GateResult]

    def check(self, gate: int, name: str) -> pb.GateCheck:
        """One check of ``gate``'s (last) result."""
        result = [r for r in self.results if r.gate == gate][-1]
        return next(c for c in result.checks if c.name == name)


def _config(task: Task) -> KasminaConfig:
    training, blend, shadow, probation = task.stages
    return KasminaConfig.load(
        overrides={
            "lifecycle.training_steps": training,
            "lifecycle.blend_steps": blend,
            "lifecycle.shadowing_steps": shadow,
            "lifecycle.probationary_steps": probation,
            "gates.min_training_steps": training // 2,
            "gates.max_latency_overhead": 100.0,  # a tiny host: any seed dwarfs its time
            "gates.loss_spike_sigma": 6.0,
            "barrier.frequency": 5,
        }
    )


def run(task: Task, seed: int = 0) -> Outcome:
    """Train ``task.model``, germinate ``task.blueprint`` at ``task.germinate_at`` and walk the
    lifecycle; returns the stage path and the gate results."""
    torch.manual_seed(seed)
    model, (x, y) = task.model, task.train
    slot_id, target = task.slot
    slots = insert_slots(model, {slot_id: target})
    opt = torch.optim.Adam(model.parameters(), lr=task.lr)
    cfg = RuntimeConfig(
        device="cpu", barrier_frequency=5, report_every=5, blend_steps=task.stages[1]
    )
    runtime = ExecutionRuntime(
        model,
        slots,
        opt,
        cfg,
        probe_batch=(task.validation[0][:256], task.validation[1][:256]),
        validation=task.validation,
        loss_fn=task.loss_fn,
    )
    order = torch.randint(0, int(x.shape[0]), (task.steps, 64), generator=torch.Generator())
    loss_fn: Any = task.loss_fn or F.cross_entropy

    async def main() -> Outcome:
        bus = open_bus(f"memory://gate-harness-{task.name}-{seed}")
        try:
            async with running_cluster(
                bus, run=task.name, slots=list(slots), runtimes=[runtime], config=config
            ) as cluster:
                for step in range(task.steps):
                    xb, yb = x[order[step]], y[order[step]]
                    model.train()
                    loss = loss_fn(model(xb), yb).mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    if task.eval_between_steps:
                        model.eval()  # the loop's own evaluation; train() at the next step
                    await cluster.step(step, loss=loss.detach(), batch=(xb, yb))
                    await cluster.settle()
                    if step == task.germinate_at:
                        await cluster.client.command(
                            slot_id, "germinate", blueprint=task.blueprint, params=task.params
                        )
                events = await cluster.events()
        finally:
            await bus.close()
        path = [stage_name(m.to_stage) for _, k, m in events if k == "lifecycle.transition"]
        return Outcome(path, [m for _, k, m in events if k == "gate.result"])

    config = _config(task)
    return anyio.run(main)
