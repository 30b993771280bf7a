"""Data-parallel (gloo, 2 CPU processes): a barrier-gated order applies at the same step on both
ranks, the first step at which every rank has received the barrier's commit; the ranks' sampled
seed-gradient digests agree."""

from __future__ import annotations

import json
import pathlib

import torch
import torch.nn.functional as F
from execution_helpers import Finish, backward, data, germinate, order, run_ranks
from torch.nn.parallel import DistributedDataParallel

from actors.execution import ExecutionRuntime, RuntimeConfig, host_parameters, insert_slots
from actors.execution.testing import TinyMLP
from leyline import pb

WORLD = 2
STEPS = 10
COMMIT_AT = {0: 1, 1: 6}  # the step at which each rank hears of barrier 2's commit
ORDERS = [
    germinate("a", 0),
    order("a", pb.SEED_STAGE_TRAINING, 1),
    order("a", pb.SEED_STAGE_BLENDING, 4, barrier_gated=True, after_barrier=2),
]


def _train(rank: int, root: str, finish: Finish) -> None:
    """This rank's run, in its process group; ``finish`` records the results and ends it."""
    torch.manual_seed(0)
    model = TinyMLP()
    slots = insert_slots(model, {"a": "fc1"})
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    config = RuntimeConfig(
        device="cpu", rank=rank, world_size=WORLD, probe_every=0, report_every=0,
        barrier_frequency=2, blend_steps=3,
    )  # fmt: skip
    rt = ExecutionRuntime(model, slots, opt, config, probe_batch=data(1, seed=99)[0])
    for o in ORDERS:
        rt.submit(o)
    batches = data(4, seed=10 + rank)
    for step in range(STEPS):
        if step == COMMIT_AT[rank]:
            rt.barrier_committed(2)
        x, y = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        backward(F.cross_entropy(ddp(x), y))
        opt.step()
        rt.on_step(step)
    rt.wait_votes()
    out = rt.drain_outbox()
    result = {
        "acks": [[m.order_id, m.applied_at_step, m.ok] for k, m in out if k == "exec.ack"],
        "grads": [[m.barrier_step, m.grad_digest.hex()] for k, m in out if k == "barrier.vote"],
    }
    finish(result)


def test_a_gated_order_waits_until_every_rank_has_the_commit(tmp_path: pathlib.Path) -> None:
    """Rank 0 hears of the commit at step 1, rank 1 at step 6: both apply the BLENDING order
    (due at 4) at step 6, none refuses it; their gradient digests agree at every barrier."""
    run_ranks(_train, str(tmp_path), WORLD, timeout_s=100)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    blend = ORDERS[-1].order_id
    assert [a for a in r0["acks"] if a[0] == blend] == [[blend, 6, True]]
    assert sorted(r0["acks"]) == sorted(r1["acks"])
    assert r0["grads"] == r1["grads"]
    assert [s for s, g in r0["grads"] if g] == [2, 4, 6, 8]  # a seed trains from step 1 on
