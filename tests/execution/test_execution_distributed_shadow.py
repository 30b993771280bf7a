"""Data-parallel on the ``batch=`` (shadow-loss) path, two gloo CPU processes, an MLP with
LayerNorm/GELU/dropout: seed gradients are averaged, so seed parameters and barrier digests are
identical across ranks after 200 steps; an order one rank hears of late is refused on both."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
import torch.nn.functional as F
from execution_helpers import Finish, backward, germinate, order, run_ranks
from other_models import NormMLP, batches
from torch.nn.parallel import DistributedDataParallel

from actors.execution import ExecutionRuntime, RuntimeConfig, host_parameters, insert_slots
from actors.execution.mailbox import state_digest
from leyline import pb

WORLD = 2
STEPS = 200
ON_TIME = [
    germinate("m", 2, params={"lr": 0.01}),
    order("m", pb.SEED_STAGE_TRAINING, 3),
]
LATE = germinate("i", 50, blueprint="lowrank")  # rank 1 hears of it only at step 52


def _train(rank: int, root: str, finish: Finish) -> None:
    """This rank's run, in its process group; ``finish`` records the results and ends it."""
    torch.manual_seed(0)
    model = NormMLP()
    slots = insert_slots(model, {"m": "mid", "i": "inp"})
    ddp = DistributedDataParallel(model)
    opt = torch.optim.Adam(host_parameters(model, slots), lr=1e-3)
    cfg = RuntimeConfig(
        device="cpu", rank=rank, world_size=WORLD, probe_every=0, report_every=0,
        barrier_frequency=20,
    )  # fmt: skip
    rt = ExecutionRuntime(model, slots, opt, cfg, probe_batch=batches((16, 12), 3, 1, 99)[0])
    for o in [*ON_TIME, *([LATE] if rank == 0 else [])]:
        rt.submit(o)
    data = batches((16, 12), 3, 8, seed=100 + rank)  # each rank sees different data
    torch.manual_seed(rank)  # and draws different dropout masks
    history = []
    for step in range(STEPS):
        if rank == 1 and step == 52:
            rt.submit(LATE)
        x, y = data[step % len(data)]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(ddp(x), y)
        backward(loss)
        opt.step()
        rt.on_step(step, loss, batch=(x, y))
        history.append([int(s.stage) for s in slots.values()])
    rt.wait_votes()
    out = rt.drain_outbox()
    result = {
        "history": history,
        "acks": [[m.order_id, m.applied_at_step, m.ok] for k, m in out if k == "exec.ack"],
        "votes": [[m.barrier_step, m.digest.hex()] for k, m in out if k == "barrier.vote"],
        "digest": state_digest(model, slots).hex(),
        "seed": [p.detach().tolist() for p in slots["m"].seed_parameters()],
        "grad_steps": rt.states["m"].grad_steps,
    }
    finish(result)


@pytest.mark.timeout(600)
def test_shadow_path_keeps_seeds_and_digests_identical_across_ranks(tmp_path: pathlib.Path) -> None:
    """200 steps on the batch= path: seed parameters, barrier votes and digests are identical on
    both ranks; the order rank 1 received late is refused on both, at its own step each."""
    run_ranks(_train, str(tmp_path), WORLD, timeout_s=560)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    assert r0["grad_steps"] == r1["grad_steps"] >= STEPS - 10
    assert r0["seed"] == r1["seed"]
    assert r0["votes"] == r1["votes"] and len(r0["votes"]) == STEPS // 20
    assert r0["digest"] == r1["digest"]
    assert r0["history"] == r1["history"] and r0["history"][-1] == [
        pb.SEED_STAGE_TRAINING,
        pb.SEED_STAGE_DORMANT,
    ]
    late0 = [a for a in r0["acks"] if a[0] == LATE.order_id]
    late1 = [a for a in r1["acks"] if a[0] == LATE.order_id]
    assert late0 == [[LATE.order_id, 50, False]] and late1 == [[LATE.order_id, 52, False]]
    assert sorted(a for a in r0["acks"] if a[0] != LATE.order_id) == sorted(
        a for a in r1["acks"] if a[0] != LATE.order_id
    )
