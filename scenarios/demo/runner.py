"""A Tolaria stand-in: the user's training loop, with Kasmina's actors running over the bus.

Each step: forward, backward, host optimizer step, the seeds' shadow gradients (TRAINING only),
then ``await cluster.step(step, ...)`` (``runtime.on_step`` plus a flush of its outbox).

Pacing: every barrier period the demo waits for the actors to settle (``cluster.settle()``), so
every lifecycle decision lands on a barrier boundary and the run is reproducible step for step.
A production trainer never waits: the runtime applies each order at its ``apply_at_step`` either
way, and a late order is applied (and acked as late) at the next step boundary.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from actors.execution import ExecutionRuntime, RuntimeConfig, insert_slots, param_count
from bus import SealKey, is_redis_url, open_bus, record, redact_url
from contracts import KeyRing, streams
from scenarios.cluster import Cluster, running_cluster
from scenarios.demo.budgets import Budgets
from scenarios.demo.capacity import capacity_scores
from scenarios.demo.policy import Plan, Tamiyo, plans_for
from scenarios.demo.tasks import SLOT_POINTS, SPECS, Split, batches, build_host, evaluate, load_task

BATCH = 128
LR = 1e-2


@dataclass(frozen=True)
class DemoOptions:
    """What ``kasmina demo`` was asked for."""

    task: str = "spirals"
    steps: int = 3000
    seed: int = 0
    bus: str = "fakeredis"
    out: Path = Path("kasmina-out")
    keys: KeyRing | None = None


@dataclass
class History:
    """Curves sampled every report period (per-slot stage and alpha included)."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    stages: dict[str, list[int]] = field(default_factory=dict)
    alphas: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class DemoRun:
    """Everything the report needs about a finished run."""

    options: DemoOptions
    run_id: str
    bus_url: str
    budgets: Budgets
    history: History
    germinations: list[tuple[int, Plan, float]]  # (step, plan, test accuracy of the host then)
    notes: list[tuple[int, str]]  # the Tamiyo stand-in's reasons for not growing
    accuracy_after: float
    accuracy_static: float
    host_params: int
    final_params: int
    events: list[tuple[str, str, Any]]
    slots: dict[str, dict[str, Any]]
    model_state: dict[str, Any]
    recording: Path
    elapsed_s: float


Progress = Callable[[int, dict[str, Any]], None]


def bus_url(choice: str, run: str) -> str:
    """``memory``/``fakeredis`` -> an in-process bus named after the run; URLs pass through."""
    if choice in ("memory", "fakeredis"):
        return f"{choice}://{run}"
    if is_redis_url(choice):
        return choice
    raise ValueError(f"--bus must be memory, fakeredis or a Redis URL, not {choice!r}")


def static_host(task: str, split: Split, steps: int, seed: int) -> float:
    """Test accuracy of the host trained alone (same seed, data order and step count)."""
    model = build_host(task, split, seed)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    order = batches(len(split.y_train), BATCH, steps, seed)
    for step in range(steps):
        idx = order[step]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(split.x_train[idx]), split.y_train[idx]).backward()  # type: ignore[no-untyped-call]
        opt.step()
    return evaluate(model, split.x_test, split.y_test)[1]


async def run_demo(opts: DemoOptions, progress: Progress | None = None) -> DemoRun:
    """Train, grow, record; returns the run for the report (files other than the recording are
    written by :mod:`scenarios.demo.report`)."""
    started = time.perf_counter()
    budgets = Budgets.for_steps(opts.steps)
    split = load_task(opts.task, opts.seed)
    model = build_host(opts.task, split, opts.seed)
    host_params = param_count(model)
    slots = insert_slots(model, SLOT_POINTS)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    runtime = _runtime(model, slots, opt, budgets, split, opts.seed)
    tamiyo = Tamiyo(
        plans_for(split.features, SPECS[opts.task].hidden, LR),
        warmup=budgets.earliest,
        patience=budgets.patience,
        lifecycle_steps=budgets.lifecycle_steps,
        payoff_steps=budgets.payoff,
        total_steps=opts.steps,
    )
    history = History(stages={s: [] for s in slots}, alphas={s: [] for s in slots})
    grower = _Grower(split, model, slots, opt, budgets, tamiyo, history)
    run_id = f"demo-{uuid.uuid4().hex[:10]}"
    url = bus_url(opts.bus, run_id)
    opts.out.mkdir(parents=True, exist_ok=True)
    recording = opts.out / "recording.kasrec"
    events = await _run_and_record(opts, grower, runtime, run_id, url, recording, progress)
    if progress is not None:
        progress(opts.steps, _status(history, slots))
    return DemoRun(
        options=opts,
        run_id=run_id,
        bus_url=redact_url(url),  # reports and JSON never carry the password
        budgets=budgets,
        history=history,
        germinations=grower.germinations,
        notes=list(tamiyo.notes),
        accuracy_after=evaluate(model, split.x_test, split.y_test)[1],
        accuracy_static=static_host(opts.task, split, opts.steps, opts.seed),
        host_params=host_params,
        final_params=param_count(model),
        events=events,
        slots={
            sid: {"stage": int(s.stage), "blueprint": s.blueprint, "alpha": float(s.alpha)}
            for sid, s in slots.items()
        },
        model_state={k: v.detach().clone() for k, v in model.state_dict().items()},
        recording=recording,
        elapsed_s=time.perf_counter() - started,
    )


def _runtime(
    model: torch.nn.Module,
    slots: dict[str, Any],
    opt: torch.optim.Optimizer,
    budgets: Budgets,
    split: Split,
    seed: int,
) -> ExecutionRuntime:
    """The demo's runtime: probes, reports and barriers paced by the budgets."""
    return ExecutionRuntime(
        model,
        slots,
        opt,
        RuntimeConfig(
            device="cpu",
            probe_every=5 * budgets.barrier,
            report_every=budgets.barrier,
            barrier_frequency=budgets.barrier,
            blend_steps=budgets.blend,
            seed_salt=seed,
        ),
        probe_batch=(split.x_train[:256], split.y_train[:256]),
        validation=(split.x_val, split.y_val),
    )


async def _run_and_record(
    opts: DemoOptions,
    grower: _Grower,
    runtime: ExecutionRuntime,
    run_id: str,
    url: str,
    recording: Path,
    progress: Progress | None,
) -> list[tuple[str, str, Any]]:
    """Train with the actors serving the run, then record its streams; the run's events."""
    order = batches(len(grower.split.y_train), BATCH, opts.steps, opts.seed)
    config = grower.budgets.config()
    bus = open_bus(url, processed_ttl_ms=int(config.bus.processed_ttl_s * 1000))  # as a run
    try:
        async with running_cluster(
            bus, run=run_id, slots=list(grower.slots), runtimes=[runtime], config=config,
            ring=opts.keys,
        ) as cl:  # fmt: skip
            await grower.train(cl, order, opts.steps, progress)
            await cl.settle()
            events = await cl.events()
            names = await bus.streams(streams.prefix(run_id) + "*")
            meta = {"run": run_id, "task": opts.task, "steps": opts.steps, "seed": opts.seed}
            seal = SealKey(cl.ring.active.id, cl.ring.active.secret)
            await record(bus, names, recording, meta, seal=seal)
    finally:
        await bus.close()
    return events


@dataclass
class _Grower:
    """The user's loop: the host with its slots, the Tamiyo stand-in, the curves sampled."""

    split: Split
    model: torch.nn.Module
    slots: dict[str, Any]
    opt: torch.optim.Optimizer
    budgets: Budgets
    tamiyo: Tamiyo
    history: History
    germinations: list[tuple[int, Plan, float]] = field(default_factory=list)
    window: list[float] = field(default_factory=list)  # training losses since the last barrier

    async def train(self, cl: Cluster, order: Any, steps: int, progress: Progress | None) -> None:
        """Every step: forward, backward, optimizer step, ``cl.step``; barriers see ``barrier``."""
        for step in range(steps):
            idx = order[step]
            x, y = self.split.x_train[idx], self.split.y_train[idx]
            self.opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            self.opt.step()
            self.window.append(float(loss.detach()))
            if step % self.budgets.barrier:
                await cl.step(step, loss=loss, batch=(x, y))
                continue
            await self.barrier(cl, step, loss, (x, y))
            if progress is not None:
                progress(step, _status(self.history, self.slots))

    async def barrier(self, cl: Cluster, step: int, loss: torch.Tensor, batch: Any) -> None:
        """A barrier step: validated, settled, sampled; the Tamiyo stand-in may germinate."""
        split, model, slots = self.split, self.model, self.slots
        val_loss, val_acc = evaluate(model, split.x_val, split.y_val)
        await cl.step(step, loss=loss, val_loss=val_loss, val_accuracy=val_acc, batch=batch)
        await cl.settle()
        _sample(self.history, step, sum(self.window) / len(self.window), val_loss, val_acc, slots)
        self.window.clear()
        self.tamiyo.observe(step, val_loss, self.history.train_loss[-1])
        probe = (split.x_train[:512], split.y_train[:512])
        plan = self.tamiyo.decide(
            step,
            {s: slot.stage for s, slot in slots.items()},
            lambda plans: capacity_scores(model, slots, plans, probe),
        )
        if plan is not None:
            acc = evaluate(model, split.x_test, split.y_test)[1]
            self.germinations.append((step, plan, acc))
            await _germinate(cl, plan, self.budgets)


async def _germinate(cl: Cluster, plan: Plan, budgets: Budgets) -> None:
    await cl.client.command(
        plan.slot,
        "germinate",
        blueprint=plan.blueprint,
        params=plan.params,
        blend_steps=budgets.blend,
        reason=plan.why,
    )


def _sample(
    h: History, step: int, train: float, val_loss: float, val_acc: float, slots: dict[str, Any]
) -> None:
    h.steps.append(step)
    h.train_loss.append(train if math.isfinite(train) else math.nan)
    h.val_loss.append(val_loss)
    h.val_acc.append(val_acc)
    for sid, slot in slots.items():
        h.stages[sid].append(int(slot.stage))
        h.alphas[sid].append(float(slot.alpha))


def _status(h: History, slots: dict[str, Any]) -> dict[str, Any]:
    from actors.execution.stages import stage_name

    return {
        "loss": h.train_loss[-1] if h.train_loss else math.nan,
        "val_acc": h.val_acc[-1] if h.val_acc else math.nan,
        "stages": {sid: stage_name(int(s.stage)) for sid, s in slots.items()},
    }
