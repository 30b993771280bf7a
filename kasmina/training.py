"""The trainer behind ``kasmina train``: a model factory, a plain loop, :func:`kasmina.attach`.

A factory (``package.module:factory``, or the demo's tasks ``digits``/``spirals``) is called as
``factory(seed=S, rank=R, world_size=W)`` and returns a :class:`TrainSpec`. The loop is the one a
user writes: forward, backward, ``optimizer.step()``, ``kas.on_step(...)``; with a process group
of several ranks (``torchrun``-style ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``) the
model is wrapped in DDP after the slots are inserted. SIGTERM/SIGINT end the loop at a step every
rank agrees on; the outbox is then flushed and the process exits 0.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from actors.attached import last_step
from actors.execution.confirm import StepConfirmation
from actors.execution.stages import stage_name
from bus import BusError
from kasmina.attached import Attached
from kasmina.integration import attach

__all__ = ["TrainResult", "TrainSpec", "load_factory", "task_factory", "train"]

log = logging.getLogger("kasmina.train")

Batch = tuple[Tensor, Tensor]


@dataclass
class TrainSpec:
    """What a trainer needs from a model factory."""

    model: nn.Module
    slots: Mapping[str, str]  # slot id -> dotted path of the submodule whose output it wraps
    optimizer: torch.optim.Optimizer
    batch: Callable[[int], Batch]  # step -> this rank's (inputs, targets)
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy
    evaluate: Callable[[nn.Module], tuple[float, float]] | None = None  # model -> (loss, acc)
    probe_batch: Batch | None = None  # G0's shape probe and the isolation probes
    validation: Batch | None = None  # held-out (inputs, targets): G4's paired per-example test
    options: dict[str, Any] = field(default_factory=dict)  # more ExecutionRuntime options


@dataclass(frozen=True)
class TrainResult:
    """How a training process ended."""

    run: str
    rank: int
    steps: int  # steps completed
    first_step: int  # the run's step this trainer began at (after an earlier trainer's last)
    stopped: bool  # ended by a signal before ``--steps``
    stages: dict[str, str]
    val_loss: float
    val_accuracy: float
    # the step confirmations this rank received: one per order it applied or refused
    confirmed: list[dict[str, Any]] = field(default_factory=list)


def task_factory(task: str) -> Callable[..., TrainSpec]:
    """The demo's task ``digits`` or ``spirals`` as a factory (its too-small host, batch 128)."""
    from scenarios.demo.tasks import SLOT_POINTS, TASKS, batches, build_host, evaluate, load_task

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose from {', '.join(TASKS)}")

    def factory(*, seed: int = 0, rank: int = 0, world_size: int = 1) -> TrainSpec:
        split = load_task(task, seed)
        model = build_host(task, split, seed)
        n = len(split.y_train)
        order = batches(n, 128, 1000, seed + 1000 * rank)  # per-rank order, reshuffled per epoch

        def batch(step: int) -> Batch:
            idx = order[step % len(order)]
            return split.x_train[idx], split.y_train[idx]

        return TrainSpec(
            model=model,
            slots=SLOT_POINTS,
            optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
            batch=batch,
            evaluate=lambda m: evaluate(m, split.x_val, split.y_val),
            probe_batch=(split.x_train[:256], split.y_train[:256]),
            validation=(split.x_val, split.y_val),
        )

    return factory


def load_factory(target: str) -> Callable[..., TrainSpec]:
    """``package.module:factory`` (importable from the current directory) or a demo task name."""
    if ":" not in target:
        return task_factory(target)
    module_name, _, attr = target.partition(":")
    if os.getcwd() not in sys.path:  # like `python -m`: modules of the current directory
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} for --model {target}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"--model {target}: {module_name} has no callable {attr!r}")
    return factory  # type: ignore[no-any-return]


def _agreed_stop(local: bool, world_size: int) -> bool:
    """True on every rank if any rank was asked to stop (one tiny all-reduce per step)."""
    if world_size <= 1:
        return local
    flag = torch.tensor([1.0 if local else 0.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


_DATA_PARALLEL: list[nn.Module] = []  # see train()


def train(
    spec: TrainSpec,
    *,
    steps: int,
    stop: threading.Event,
    progress: Callable[[int, float, float, dict[str, str]], None] | None = None,
    **attach_options: Any,
) -> TrainResult:
    """Train ``spec`` attached to a run until ``steps`` (0: until ``stop``) or ``stop``."""
    world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    val_loss = val_acc = math.nan
    stopped = False
    confirmed: list[dict[str, Any]] = []
    options = {
        "probe_batch": spec.probe_batch,
        "evaluate": spec.evaluate,
        "validation": spec.validation,
        **spec.options,
    }
    with attach(
        spec.model, spec.slots, spec.optimizer, **attach_options, **options, world_size=world_size
    ) as kas:
        net = _data_parallel(spec.model, world_size)
        report_every = kas.runtime.config.report_every or 1
        first = step = _first_step(kas, world_size)
        while steps <= 0 or step < first + steps:
            if _agreed_stop(stop.is_set(), world_size):
                stopped = True
                break
            loss, measured = _step(spec, net, kas, step, step % report_every == 0)
            if measured is not None:
                val_loss, val_acc = measured
            confirmed += [_confirmed(c) for c in kas.confirmations()]
            if progress is not None and step % report_every == 0:
                progress(step, float(loss.detach()), val_acc, _stages(kas.runtime.slots))
            step += 1
        result = TrainResult(
            run=kas.run,
            rank=kas.rank,
            steps=step - first,
            first_step=first,
            stopped=stopped,
            stages=_stages(kas.runtime.slots),
            val_loss=val_loss,
            val_accuracy=val_acc,
            confirmed=confirmed,
        )
    return result


def _first_step(kas: Attached, world_size: int) -> int:
    """The step after the last one a trainer of this run reached (0 for a new run), agreed by
    every rank: step numbers only grow, also across a restarted trainer (a count that began
    again at 0 would find every order of the run's actors due at a step it reaches much later,
    and its step reports ignored)."""
    began = kas.actor.started_ns  # beats from before this trainer: an earlier one's
    if world_size > 1:  # before every rank of this trainer started (each beats "step 0" at once)
        first_start = torch.tensor([began], dtype=torch.int64)
        dist.all_reduce(first_start, op=dist.ReduceOp.MIN)
        began = int(first_start.item())
    try:
        first = 1 + kas.portal.call(lambda: last_step(kas.bus, kas.run, kas.ring, before_ns=began))
    except BusError:  # Redis away at start: the run's actors have no later step to go on either
        first = 0
    if world_size > 1:
        agreed = torch.tensor([first], dtype=torch.int64)
        dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
        first = int(agreed.item())
    return first


def _data_parallel(model: nn.Module, world_size: int) -> nn.Module:
    """What the loop calls: ``model`` itself, or with more than one rank its DDP wrapper."""
    if world_size <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    net = DistributedDataParallel(model)
    # kept until the process exits: freeing DDP (and with it the gloo process group)
    # can block on gloo's worker threads
    _DATA_PARALLEL.append(net)
    return net


def _step(
    spec: TrainSpec, net: nn.Module, kas: Attached, step: int, evaluate: bool
) -> tuple[torch.Tensor, tuple[float, float] | None]:
    """One optimizer step, then ``kas.on_step``; the loss and, when ``evaluate`` and the spec
    can, the (validation loss, validation accuracy) measured after it."""
    x, y = spec.batch(step)
    spec.optimizer.zero_grad(set_to_none=True)
    loss = spec.loss_fn(net(x), y)
    loss.backward()  # type: ignore[no-untyped-call]
    spec.optimizer.step()
    if not evaluate or spec.evaluate is None:
        kas.on_step(step, loss, batch=(x, y))
        return loss, None
    val_loss, val_acc = spec.evaluate(spec.model)
    kas.on_step(step, loss, batch=(x, y), val_loss=val_loss, val_accuracy=val_acc)
    return loss, (val_loss, val_acc)


def _confirmed(c: StepConfirmation) -> dict[str, Any]:
    """One step confirmation as the trainer logs it and reports it at the end."""
    outcome = "applied" if c.ok else f"refused ({c.error})"
    log.info("order %s %s: %s %s at step %d", c.order_id, outcome, c.slot, c.stage, c.step)
    return {"order_id": c.order_id, "slot": c.slot, "stage": c.stage, "step": c.step,
            "ok": c.ok, "barrier": c.barrier}  # fmt: skip


def _stages(slots: Mapping[str, Any]) -> dict[str, str]:
    return {sid: stage_name(int(slot.stage)) for sid, slot in sorted(slots.items())}
