"""Data-parallel pruning (gloo, 2 CPU processes): a mask order applies at the same step on both
ranks or on neither, and the masks survive each rank's checkpoint round trip identically."""

from __future__ import annotations

import json
import os
import pathlib

import torch
import torch.nn.functional as F
from execution_helpers import Finish, backward, data, run_ranks
from test_pruning import prune
from torch.nn.parallel import DistributedDataParallel

from actors.execution import ExecutionRuntime, RuntimeConfig, host_parameters, insert_slots
from actors.execution.mailbox import state_digest
from actors.execution.testing import TinyMLP

WORLD = 2
STEPS = 8
KEEP = [i % 3 != 0 for i in range(16)]
BOTH = prune("both", 3, {"fc2.host": KEEP, "head": [True, True, True, False]})
ALONE = prune("alone", 5, {"fc1.host": [False] + [True] * 15})  # only rank 0 ever holds it


def _runtime(rank: int) -> tuple[torch.nn.Module, dict[str, object], ExecutionRuntime]:
    torch.manual_seed(0)
    model = TinyMLP()
    slots = insert_slots(model, {"a": "fc1", "b": "fc2"})
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    cfg = RuntimeConfig(
        device="cpu", rank=rank, world_size=WORLD, probe_every=0, report_every=0,
        barrier_frequency=0, importance_every=4,
    )  # fmt: skip
    return model, dict(slots), ExecutionRuntime(model, slots, opt, cfg)


def _train(rank: int, root: str, finish: Finish) -> None:
    """This rank's run, in its process group; ``finish`` records the results and ends it."""
    model, slots, rt = _runtime(rank)
    ddp = DistributedDataParallel(model)
    if rank == 0:
        rt.submit_pruning(BOTH)
        rt.submit_pruning(ALONE)
    batches = data(4, seed=10 + rank)
    for step in range(STEPS):
        if rank == 1 and step == BOTH.apply_at_step:  # just in time
            rt.submit_pruning(BOTH)
        x, y = batches[step % len(batches)]
        rt.host_optimizer.zero_grad(set_to_none=True)
        backward(F.cross_entropy(ddp(x), y))
        rt.host_optimizer.step()
        rt.on_step(step)
    path = os.path.join(root, f"ck{rank}.safetensors")
    rt.checkpoint(path)
    out = rt.drain_outbox()
    _, _, fresh = _runtime(rank)
    fresh.restore(path)
    result = {
        "acks": [[m.order_id, m.applied_at_step, m.ok] for k, m in out if k == "pruning.ack"],
        "masks": {n: k.tolist() for n, k in rt.pruner.masks.items()},
        "restored": {n: k.tolist() for n, k in fresh.pruner.masks.items()},
        "reports": [m.step for k, m in out if k == "pruning.importance"],
        "digest": state_digest(model, slots).hex(),  # type: ignore[arg-type]
    }
    finish(result)


def test_two_ranks_apply_masks_together_and_restore_them_identically(
    tmp_path: pathlib.Path,
) -> None:
    """The order both ranks hold applies at its step on both; the one only rank 0 holds is
    refused on both; masks, restored masks and parameters agree across ranks."""
    run_ranks(_train, str(tmp_path), WORLD, timeout_s=100)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    assert r0["acks"] == [["both", 3, True], ["alone", 5, False]]
    assert r1["acks"] == [["both", 3, True]]  # rank 1 never heard of "alone"
    expected = {"fc2.host": KEEP, "head": [True, True, True, False]}
    assert r0["masks"] == r1["masks"] == r0["restored"] == r1["restored"] == expected
    assert r0["digest"] == r1["digest"]
    assert r0["reports"] == r1["reports"] == [0, 4, 7]
