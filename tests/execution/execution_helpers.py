"""Helpers shared by the execution tests (orders, data, a training loop)."""

from __future__ import annotations

import dataclasses
import faulthandler
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn

from actors.execution import ExecutionRuntime, RuntimeConfig, insert_slots
from actors.execution.testing import TinyMLP
from leyline import pb


def order(slot: str, stage: int, at: int, **kw: Any) -> pb.ExecutionOrder:
    """An execution order moving ``slot`` to ``stage`` at step ``at``."""
    value = pb.SeedLifecycleStage.ValueType(stage)
    return pb.ExecutionOrder(
        order_id=f"{slot}-{stage}-{at}", slot=slot, stage=value, apply_at_step=at, **kw
    )


def germinate(slot: str, at: int, blueprint: str = "residual_mlp", **kw: Any) -> pb.ExecutionOrder:
    """A germination order for ``blueprint``."""
    return order(
        slot, pb.SEED_STAGE_GERMINATED, at, germinate=pb.Germinate(blueprint=blueprint, **kw)
    )


#: slot ``a`` germinated at 0, blended from 2, fossilized at 8 (give a blend of about 3 steps)
FOSSIL_AT_8 = [
    germinate("a", 0),
    order("a", pb.SEED_STAGE_TRAINING, 1),
    order("a", pb.SEED_STAGE_BLENDING, 2),
    order("a", pb.SEED_STAGE_SHADOWING, 6),
    order("a", pb.SEED_STAGE_PROBATIONARY, 7),
    order("a", pb.SEED_STAGE_FOSSILIZED, 8),
]


def data(
    n: int = 8, batch: int = 16, d_in: int = 8, classes: int = 4, seed: int = 0
) -> list[tuple[Tensor, Tensor]]:
    """A few fixed random batches."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, d_in, generator=g), torch.randint(0, classes, (batch,), generator=g))
        for _ in range(n)
    ]


def tiny(seed: int = 0, points: dict[str, str] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A TinyMLP with slots (default: ``a`` after fc1, ``b`` after fc2)."""
    torch.manual_seed(seed)
    model = TinyMLP()
    slots = insert_slots(model, points if points is not None else {"a": "fc1", "b": "fc2"})
    return model, slots


def runtime(
    model: nn.Module, slots: dict[str, Any], opt: torch.optim.Optimizer, **kw: Any
) -> ExecutionRuntime:
    """A CPU runtime with a fixed probe batch and no periodic messages unless asked (``kw``
    holds :class:`RuntimeConfig` fields and the runtime's own keyword arguments)."""
    names = {f.name for f in dataclasses.fields(RuntimeConfig)}
    settings = {"probe_every": 0, "report_every": 0, "barrier_frequency": 0, "device": "cpu"}
    settings.update({k: v for k, v in kw.items() if k in names})
    rest = {k: v for k, v in kw.items() if k not in names}
    rest.setdefault("probe_batch", data(1, seed=99)[0])
    return ExecutionRuntime(model, slots, opt, RuntimeConfig(**settings), **rest)


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    rt: ExecutionRuntime | None,
    batches: list[tuple[Tensor, Tensor]],
    steps: range,
    *,
    shadow: bool = False,
) -> None:
    """The user's loop: zero, forward, backward, host step, then one runtime call (``shadow``:
    with the step's batch, ``on_step(…, batch=(x, y))``)."""
    for step in steps:
        x, y = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        backward(loss)
        opt.step()
        if rt is not None:
            rt.on_step(step, loss, batch=(x, y) if shadow else None)


def backward(loss: Tensor) -> None:
    """``loss.backward()`` (typed)."""
    loss.backward()  # type: ignore[no-untyped-call]


def host_state(model: nn.Module, slots: dict[str, Any]) -> list[Tensor]:
    """Copies of every host parameter (slot parameters excluded)."""
    from actors.execution import host_parameters

    return [p.detach().clone() for p in host_parameters(model, slots)]


def kinds(messages: list[tuple[str, Any]], kind: str) -> list[Any]:
    """The messages of one kind from a drained outbox."""
    return [m for k, m in messages if k == kind]


Finish = Callable[[dict[str, Any]], NoReturn]


def run_ranks(
    worker: Callable[[int, str, Finish], None], root: str, world: int, timeout_s: float
) -> None:
    """Run ``worker(rank, root, finish)`` in ``world`` spawned processes, each in a gloo process group
    of ``world`` ranks (one torch thread), and wait for all of them.

    ``finish(result)`` writes ``root/rank<N>.json`` and ends the process at once, while the
    worker's locals are still referenced: freeing DDP and its gloo process group can block on
    gloo's worker threads, and interpreter finalization can abort while they run.
    Each rank dumps every thread's stack to ``root/rank<N>.stack`` and exits if it is still
    running ``timeout_s`` after it started; the parent kills whatever is left after that and
    fails with those stacks. A hung collective thus fails the test with a diagnosis instead
    of leaving processes behind that would keep the test session from exiting."""
    ctx = mp.start_processes(  # type: ignore[no-untyped-call]
        _watched, args=(worker, root, world, timeout_s), nprocs=world, join=False, daemon=True,
        start_method="spawn",
    )  # fmt: skip
    deadline = time.monotonic() + timeout_s + 15
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise AssertionError(f"ranks still running after {timeout_s:.0f} s")
    except (AssertionError, mp.ProcessExitedException) as exc:  # type: ignore[attr-defined]
        stacks = sorted(Path(root).glob("rank*.stack"))
        text = "\n".join(f"--- {p.name}\n{p.read_text()}" for p in stacks if p.stat().st_size)
        raise AssertionError(f"{exc}\n{text}") from None
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)


def _watched(
    rank: int, worker: Callable[[int, str, Finish], None], root: str, world: int, timeout_s: float
) -> None:
    stack = open(Path(root, f"rank{rank}.stack"), "w")  # noqa: SIM115 (kept open for faulthandler)
    faulthandler.dump_traceback_later(timeout_s, exit=True, file=stack)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=world
    )

    def finish(result: dict[str, Any]) -> NoReturn:
        Path(root, f"rank{rank}.json").write_text(json.dumps(result))
        os._exit(0)

    try:
        worker(rank, root, finish)
    finally:  # reached only when the worker failed or never called finish
        dist.destroy_process_group()
    raise AssertionError(f"rank {rank} returned without recording its results")
