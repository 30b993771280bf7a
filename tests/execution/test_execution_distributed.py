"""Data-parallel (gloo, 2 CPU processes): orders apply at the same step on every rank, replicas
stay identical, and barrier digests agree."""

from __future__ import annotations

import functools
import json
import pathlib
import threading
import uuid
from typing import Any

import anyio
import pytest
import torch
import torch.nn.functional as F
from execution_helpers import (
    FOSSIL_AT_8,
    Finish,
    backward,
    data,
    germinate,
    kinds,
    order,
    run_ranks,
)
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from actors.execution import (
    ExecutionRuntime,
    RuntimeConfig,
    SeedSlot,
    host_parameters,
    insert_slots,
)
from actors.execution.mailbox import state_digest
from actors.execution.testing import TinyMLP
from leyline import pb

WORLD = 2
STEPS = 13
ORDERS = [
    germinate("a", 2, params={"lr": 0.05}),
    germinate("b", 2, blueprint="lowrank"),
    order("a", pb.SEED_STAGE_TRAINING, 3),
    order("b", pb.SEED_STAGE_TRAINING, 3),
    order("a", pb.SEED_STAGE_BLENDING, 5),
    order("b", pb.SEED_STAGE_CULLED, 7),
    order("a", pb.SEED_STAGE_SHADOWING, 8),
    order("a", pb.SEED_STAGE_PROBATIONARY, 9),
    order("a", pb.SEED_STAGE_FOSSILIZED, 10),
]


def _submit_all(rt: ExecutionRuntime, orders: list[pb.ExecutionOrder]) -> None:
    for o in orders:
        rt.submit(o)


def _train(rank: int, root: str, finish: Finish) -> None:
    """This rank's run, in its process group; ``finish`` records the results and ends it."""
    torch.manual_seed(0)
    model = TinyMLP()
    slots = insert_slots(model, {"a": "fc1", "b": "fc2"})
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = ExecutionRuntime(
        model,
        slots,
        opt,
        RuntimeConfig(
            device="cpu",
            rank=rank,
            world_size=WORLD,
            probe_every=3,
            report_every=0,
            barrier_frequency=4,
            blend_steps=3,
        ),
        probe_batch=data(1, seed=99)[0],
    )
    if rank == 0:
        for o in ORDERS:
            rt.submit(o)
    batches = data(4, seed=10 + rank)  # each rank sees different data
    history: list[dict[str, int]] = []
    for step in range(STEPS):
        if rank == 1:  # this rank hears of each order only just in time, from another thread
            due = [o for o in ORDERS if o.apply_at_step == step]
            t = threading.Thread(target=_submit_all, args=(rt, due))
            t.start()
            t.join()
        x, y = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        backward(F.cross_entropy(ddp(x), y))
        opt.step()
        rt.on_step(step)
        history.append({k: int(s.stage) for k, s in slots.items()})
    rt.wait_votes()
    out = rt.drain_outbox()
    result = {
        "history": history,
        "acks": [[m.order_id, m.applied_at_step, m.ok] for k, m in out if k == "exec.ack"],
        "votes": [[m.barrier_step, m.digest.hex()] for k, m in out if k == "barrier.vote"],
        "signals": [m.kind for k, m in out if k == "safety.signal"],
        "digest": state_digest(model, slots).hex(),
        "fossil_params": sum(p.numel() for p in slots["a"].seed_parameters()),
    }
    finish(result)


def test_two_ranks_apply_orders_at_the_same_step_and_stay_identical(tmp_path: pathlib.Path) -> None:
    """Germinate, blend, fossilize and cull land at the same step on both ranks; params agree."""
    run_ranks(_train, str(tmp_path), WORLD, timeout_s=100)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    assert r0["history"] == r1["history"]
    assert r0["history"][2] == {"a": pb.SEED_STAGE_GERMINATED, "b": pb.SEED_STAGE_GERMINATED}
    assert r0["history"][7]["b"] == pb.SEED_STAGE_CULLED
    assert r0["history"][-1]["a"] == pb.SEED_STAGE_FOSSILIZED
    expected = [[o.order_id, o.apply_at_step, True] for o in ORDERS]
    assert sorted(r0["acks"]) == sorted(r1["acks"]) == sorted(expected)
    assert r0["votes"] == r1["votes"] and [v[0] for v in r0["votes"]] == [0, 4, 8, 12]
    assert r0["digest"] == r1["digest"]
    assert r0["fossil_params"] > 0 and not r0["signals"] and not r1["signals"]


def _rank_runtime(
    rank: int, model: nn.Module, points: dict[str, str], **config: Any
) -> tuple[dict[str, SeedSlot], nn.Module, torch.optim.Optimizer, ExecutionRuntime]:
    """``model`` with slots at ``points``, its DDP wrapper, an SGD host optimizer and a runtime
    for ``rank`` with no periodic messages (``config``: further RuntimeConfig fields)."""
    slots = insert_slots(model, points)
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    settings: dict[str, Any] = {"probe_every": 0, "report_every": 0, "barrier_frequency": 0}
    settings.update(config)
    cfg = RuntimeConfig(device="cpu", rank=rank, world_size=WORLD, **settings)
    rt = ExecutionRuntime(model, slots, opt, cfg, probe_batch=data(1, seed=99)[0])
    return slots, ddp, opt, rt


def _blending_rank(
    rank: int,
) -> tuple[nn.Module, dict[str, SeedSlot], nn.Module, torch.optim.Optimizer, ExecutionRuntime]:
    """This rank's TinyMLP with slot ``a`` (germinated at 2, TRAINING at 3, BLENDING at 5, the
    blend over 20 steps), its DDP wrapper, host optimizer and runtime."""
    torch.manual_seed(0)
    model = TinyMLP()
    slots, ddp, opt, rt = _rank_runtime(rank, model, {"a": "fc1"}, blend_steps=20)
    for o in ORDERS[0], ORDERS[2], ORDERS[4]:
        rt.submit(o)
    return model, slots, ddp, opt, rt


def _uneven(rank: int, root: str, finish: Finish) -> None:
    """A blending seed; rank 0 alone runs extra backwards through it (a train-mode diagnostic
    loss, and an eval-mode saliency map) between steps."""
    model, slots, ddp, opt, rt = _blending_rank(rank)
    batches = data(4, seed=10 + rank)
    for step in range(10):
        x, y = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        backward(F.cross_entropy(ddp(x), y))
        opt.step()
        if rank == 0 and step >= 6:
            backward(model(x).pow(2).mean())  # through the eager model: no DDP collective
            model.eval()
            backward(model(x.clone().requires_grad_())[:, 0].sum())
            model.train()
            opt.zero_grad(set_to_none=True)
        rt.on_step(step)
    finish({"digest": state_digest(model, slots).hex(), "stage": int(slots["a"].stage)})


def test_a_backward_through_a_seed_on_one_rank_only_neither_hangs_nor_splits_the_ranks(
    tmp_path: pathlib.Path,
) -> None:
    """Seed gradients are averaged in ``on_step``, where every rank joins, not inside the
    user's backward: rank 0's extra backwards (a diagnostic loss, a saliency map) through a
    blending seed used to block it in an all-reduce rank 1 never joined. Both finish, on the
    same state."""
    run_ranks(_uneven, str(tmp_path), WORLD, timeout_s=60)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    assert r0["stage"] == r1["stage"] == pb.SEED_STAGE_BLENDING
    assert r0["digest"] == r1["digest"]


def _overflow_on_rank_0(rank: int, root: str, finish: Finish) -> None:
    """A blending seed; rank 0's backward overflows at step 6 (its local batch), the host's
    gradients are zeroed before ``on_step`` (the Trainer order)."""
    model, slots, ddp, opt, rt = _blending_rank(rank)
    batches = data(4, seed=10 + rank)
    signals: list[str] = []
    for step in range(10):
        x, y = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(ddp(x), y) * (float("inf") if rank == 0 and step == 6 else 1.0)
        backward(loss)
        host = [p.grad for p in host_parameters(model, slots) if p.grad is not None]
        if all(bool(torch.isfinite(g).all()) for g in host):  # a scaler would skip this step
            opt.step()
        opt.zero_grad(set_to_none=True)
        rt.on_step(step)
        signals += [s.detail for s in kinds(rt.drain_outbox(), "safety.signal")]
    finish({"nonfinite": rt.states["a"].grad_nonfinite, "signals": signals})


def test_an_overflow_on_one_rank_is_no_seeds_fault_on_any_rank(tmp_path: pathlib.Path) -> None:
    """Rank 0's overflow reaches every rank's averaged seed gradient, and so does its flag: no
    rank counts it against the seed or signals it (rank 1 did, with its own flag clear)."""
    run_ranks(_overflow_on_rank_0, str(tmp_path), WORLD, timeout_s=60)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert results == [{"nonfinite": 0, "signals": []}] * WORLD


def _fresh_two_rank_train(rank: int, root: str, finish: Finish) -> None:
    """`kasmina train`'s loop on a new run, rank 0 starting a little after rank 1."""
    import time

    from bus.testing import real_redis_url
    from contracts import KasminaConfig, KeyRing
    from kasmina.training import task_factory, train

    ring = KeyRing.load(pathlib.Path(root) / "keys.json")
    config = KasminaConfig.load(env={}, overrides={"barrier.world_size": WORLD})
    if rank == 0:
        time.sleep(1.0)  # rank 1's actor beats "step 0" before rank 0's starts
    spec = task_factory("digits")(seed=0, rank=rank, world_size=WORLD)
    run = pathlib.Path(root, "run").read_text()
    result = train(
        spec,
        steps=2,
        stop=threading.Event(),
        redis=real_redis_url(),
        run=run,
        keys=ring,
        config=config,
    )
    finish({"first_step": result.first_step, "steps": result.steps})


@pytest.mark.redis
def test_a_new_runs_ranks_begin_at_step_0(tmp_path: pathlib.Path) -> None:
    """A trainer's ranks go on from an earlier trainer's last step, judged by beats from before
    the first of them started: on a new run every rank begins at 0, though one rank's actor
    beat (at step 0) before another's started."""
    from contracts import KeyRing

    KeyRing.generate().save(tmp_path / "keys.json")
    run = f"ranks-{uuid.uuid4().hex[:8]}"
    (tmp_path / "run").write_text(run)
    try:
        run_ranks(_fresh_two_rank_train, str(tmp_path), WORLD, timeout_s=90)
    finally:
        anyio.run(_purge, run)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert results == [{"first_step": 0, "steps": 2}] * WORLD


async def _purge(run: str) -> None:
    from bus import open_bus
    from bus.testing import purge_prefix, real_redis_url
    from contracts import streams

    bus = open_bus(real_redis_url())
    await purge_prefix(bus, streams.prefix(run))
    await bus.close()


def _seeds_fail_on_one_rank(rank: int, root: str, finish: Finish) -> None:
    """Slots ``a`` (blending) and ``b`` (training): ``a``'s forward raises on rank 1 at step 6,
    ``b``'s optimizer step on rank 0 at step 8."""
    torch.manual_seed(0)
    model = TinyMLP()
    slots, ddp, opt, rt = _rank_runtime(rank, model, {"a": "fc1", "b": "fc2"}, blend_steps=20)
    for o in ORDERS[:5]:
        rt.submit(o)
    batches = data(4, seed=10 + rank)
    seeds: list[list[bool]] = []
    for step in range(12):
        if rank == 1 and step == 6:
            slots["a"].seed.forward = _raise  # type: ignore[union-attr]
        if rank == 0 and step == 8:
            rt.states["b"].optimizer.step = _raise  # type: ignore[union-attr,method-assign]
        x, y = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        backward(F.cross_entropy(ddp(x), y))
        opt.step()
        rt.on_step(step)
        seeds.append([slots[k].seed is not None for k in "ab"])
    told = [m.message for m in kinds(rt.drain_outbox(), "telemetry.raw") if "leaves" in m.message]
    finish({"digest": state_digest(model, slots).hex(), "seeds": seeds, "told": told})


def _raise(*args: object, **kwargs: object) -> None:
    raise RuntimeError("this rank only")


def test_a_seed_that_fails_on_one_rank_leaves_every_rank_at_the_same_step(
    tmp_path: pathlib.Path,
) -> None:
    """A seed whose forward (or optimizer step) raised on one rank left that rank alone, and
    the next step's gradient average, joined by the other rank only, aborted the job (SIGABRT):
    it now leaves every rank in the same close, and the ranks stay identical."""
    run_ranks(_seeds_fail_on_one_rank, str(tmp_path), WORLD, timeout_s=60)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    # a forward's failure and an optimizer step's (in rank 0's close of step 8, before the
    # orders of that close apply): gone from every rank in the same close
    assert r0["seeds"] == r1["seeds"]
    assert r0["seeds"][5:9] == [[True, True], [False, True], [False, True], [False, False]]
    assert r0["digest"] == r1["digest"]
    # each rank that let a seed go for another's failure says so on the telemetry stream
    assert r0["told"] == ["slot a: its seed left rank 1; it leaves rank 0 too"]
    assert r1["told"] == ["slot b: its seed left rank 0; it leaves rank 1 too"]


def _germination_refused_on_rank_1(rank: int, root: str, finish: Finish) -> None:
    """Rank 1's seed memory budget refuses the germination rank 0 accepts; the seed then
    trains on the straight-through term."""
    torch.manual_seed(0)
    model = TinyMLP()
    budget = 1 if rank == 1 else None
    slots, ddp, opt, rt = _rank_runtime(rank, model, {"a": "fc1"}, seed_memory_budget=budget)
    for o in ORDERS[0], ORDERS[2], ORDERS[4]:
        rt.submit(o)
    batches = data(4, seed=10 + rank)
    for step in range(8):
        x, y = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        backward(F.cross_entropy(ddp(x), y))
        opt.step()
        rt.on_step(step)
    refused = [m.ok for m in kinds(rt.drain_outbox(), "exec.ack")][:1]
    finish({"seed": slots["a"].seed is not None, "germinated": refused})


def test_a_germination_refused_on_one_rank_leaves_no_seed_on_the_others(
    tmp_path: pathlib.Path,
) -> None:
    """A germination one rank refuses (its own memory budget) and another accepts leaves the
    seed on no rank: the seed's gradient average had one rank only and aborted the job."""
    run_ranks(_germination_refused_on_rank_1, str(tmp_path), WORLD, timeout_s=60)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    assert r0 == {"seed": False, "germinated": [True]}
    assert r1 == {"seed": False, "germinated": [False]}


def _fossil_uneven(rank: int, root: str, finish: Finish) -> None:
    """Slot ``a`` fossilizes at step 10 (blend over 3 steps); from step 12 rank 0 alone runs a
    saliency-map backward through the eager model (and so through the fossil)."""
    torch.manual_seed(0)
    model = TinyMLP()
    slots, ddp, opt, rt = _rank_runtime(rank, model, {"a": "fc1"}, blend_steps=3)
    for o in ORDERS:
        if o.slot == "a":
            rt.submit(o)
    batches = data(4, seed=10 + rank)  # each rank sees different data: the fossil's gradients
    for step in range(16):  # differ, and only their average keeps the ranks' fossils equal
        x, y = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        backward(F.cross_entropy(ddp(x), y))
        opt.step()
        if rank == 0 and step >= 12:
            model.eval()
            backward(model(x.clone().requires_grad_())[:, 0].sum())
            model.train()
            opt.zero_grad(set_to_none=True)
        rt.on_step(step)
    finish({"digest": state_digest(model, slots).hex(), "fossil": slots["a"].fossil})


def test_a_backward_through_a_fossil_on_one_rank_only_neither_hangs_nor_splits_the_ranks(
    tmp_path: pathlib.Path,
) -> None:
    """A fossil's gradient is averaged in the backward of DDP's forwards only: a hook on its
    parameters all-reduced in every backward, and rank 0's saliency map through the eager model
    aborted the job (SIGABRT). Both ranks finish, with the same fossil."""
    run_ranks(_fossil_uneven, str(tmp_path), WORLD, timeout_s=60)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    assert r0["fossil"] and r0 == r1


REGERMINATED_AT_6 = [
    germinate("a", 0),
    order("a", pb.SEED_STAGE_TRAINING, 1),
    order("a", pb.SEED_STAGE_BLENDING, 2),
    pb.ExecutionOrder(order_id="a-again", slot="a", stage=pb.SEED_STAGE_GERMINATED,
                      apply_at_step=6, germinate=pb.Germinate(blueprint="residual_mlp")),
    order("a", pb.SEED_STAGE_TRAINING, 8),
]  # fmt: skip


def _failing_rank_1(
    orders: list[pb.ExecutionOrder], at: int, where: str, rank: int, root: str, finish: Finish
) -> None:
    """Slot ``a`` under ``orders``; at step ``at`` rank 1's seed raises in its ``where``
    ("forward" or "optimizer"). Records, per step, (seed held, fossil, stage)."""
    torch.manual_seed(0)
    model = TinyMLP()
    slots, ddp, opt, rt = _rank_runtime(rank, model, {"a": "fc1"}, blend_steps=3)
    for o in orders:
        rt.submit(o)
    batches, seen = data(4, seed=10 + rank), []
    for step in range(12):
        if rank == 1 and step == at:
            if where == "forward":
                slots["a"].seed.forward = _raise  # type: ignore[union-attr]
            else:
                rt.states["a"].optimizer.step = _raise  # type: ignore[union-attr,method-assign]
        x, y = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        backward(F.cross_entropy(ddp(x), y))
        opt.step()
        rt.on_step(step)
        seen.append([slots["a"].seed is not None, slots["a"].fossil, int(slots["a"].stage)])
    finish({"seen": seen, "digest": state_digest(model, slots).hex()})


@pytest.mark.parametrize(
    ("orders", "at", "where"),
    [(FOSSIL_AT_8, 8, "optimizer"), (REGERMINATED_AT_6, 6, "forward")],
    ids=["optimizer-fails-in-the-fossilizing-close", "regerminated-after-a-forward-failure"],
)
def test_ranks_agree_on_a_seed_that_leaves_one_of_them_whatever_the_close_does(
    tmp_path: pathlib.Path, orders: list[pb.ExecutionOrder], at: int, where: str
) -> None:
    """A seed whose optimizer step raises on one rank in the close where its FOSSILIZED order
    applies left that rank only, the other fossilized it and the next backward aborted the job;
    a slot germinated again right after a forward failure was announced twice by the failing
    rank, and the other rank dropped the new seed. The ranks agree before the close's orders
    apply, announce a failure once, and stay identical at every step."""
    worker = functools.partial(_failing_rank_1, orders, at, where)
    run_ranks(worker, str(tmp_path), WORLD, timeout_s=60)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    assert r0 == r1
    assert not any(fossil for _, fossil, _ in r0["seen"])


class _Checkpointed(nn.Module):
    """TinyMLP's shape with its middle layer under a reentrant activation checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        h = torch.relu(self.fc1(x))
        h = checkpoint(self.fc2, h, use_reentrant=True)
        out: torch.Tensor = self.head(torch.relu(h))
        return out


def _checkpointed_fossil(rank: int, root: str, finish: Finish) -> None:
    """A fossil at ``fc2`` inside a reentrant checkpoint (first pass without gradients inside
    DDP's forward, recompute in its backward); from step 11 rank 0 alone also runs a backward
    through the eager model, in train mode (a recompute of no DDP forward)."""
    torch.manual_seed(0)
    model = _Checkpointed()
    slots, ddp, opt, rt = _rank_runtime(rank, model, {"a": "fc2"}, blend_steps=3)
    for o in FOSSIL_AT_8:
        rt.submit(o)
    batches = data(4, seed=10 + rank)
    for step in range(14):
        x, y = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        backward(F.cross_entropy(ddp(x), y))
        opt.step()
        if rank == 0 and step >= 11:
            backward(model(x).pow(2).mean())
            opt.zero_grad(set_to_none=True)
        rt.on_step(step)
    finish({"digest": state_digest(model, slots).hex(), "fossil": slots["a"].fossil})


def test_a_fossil_in_a_reentrant_checkpoint_is_averaged_in_ddps_backward_only(
    tmp_path: pathlib.Path,
) -> None:
    """A reentrant checkpoint runs DDP's forward without gradients and recomputes it in the
    backward, outside DDP's forward: the fossil's gradient is averaged in that recompute (the
    ranks' fossils drifted apart, silently), and not in the recompute of rank 0's own backward
    through the eager model (which would block in a collective the other rank never joins)."""
    run_ranks(_checkpointed_fossil, str(tmp_path), WORLD, timeout_s=60)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    assert r0["fossil"] and r0 == r1
