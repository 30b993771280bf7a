"""A host optimizer rebuilt over ``model.parameters()`` while a seed lives: the runtime warns once
(log and telemetry), and fossilization still joins the seed to it (parameters it already holds are
skipped, not added twice)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from actors.execution import insert_slots
from actors.execution.optim import join_host_optimizer
from leyline import pb
from tests.execution.execution_helpers import backward, data, germinate, kinds, order, runtime

STAGES = (
    pb.SEED_STAGE_TRAINING,
    pb.SEED_STAGE_BLENDING,
    pb.SEED_STAGE_SHADOWING,
    pb.SEED_STAGE_PROBATIONARY,
    pb.SEED_STAGE_FOSSILIZED,
)


def test_join_skips_parameters_the_host_optimizer_holds() -> None:
    """Joining [b, c] to an optimizer over [a, b]: no duplicate-parameter error, only c is added
    (to the existing group), and joining [a, c] again adds nothing."""
    a, b, c = (nn.Parameter(torch.zeros(2)) for _ in range(3))
    host = torch.optim.SGD([a, b], lr=0.1)
    join_host_optimizer(host, [b, c], None)
    assert [[id(p) for p in g["params"]] for g in host.param_groups] == [[id(a), id(b), id(c)]]
    join_host_optimizer(host, [a, c], None)
    assert [len(g["params"]) for g in host.param_groups] == [3]


def test_seed_in_a_rebuilt_host_optimizer_is_warned_once_and_fossilizes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The user rebuilds the optimizer mid-TRAINING: one warning, and FOSSILIZED is acked ok."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    slots = insert_slots(model, {"s": "0"})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rt = runtime(model, slots, opt)
    rt.submit(germinate("s", 1))
    for i, stage in enumerate(STAGES):
        rt.submit(order("s", stage, 2 + i))
    batches = data(4, seed=2)
    out = []
    for step in range(10):
        if step == 3:  # a new training phase: a fresh optimizer over the whole model
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            rt.host_optimizer = opt
        x, y = batches[step % 4]
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        backward(loss)
        opt.step()
        rt.on_step(step, loss)
        out += rt.drain_outbox()
    warned = [t for t in kinds(out, "telemetry.raw") if t.severity == pb.SEVERITY_WARNING]
    assert [(t.slot, "host optimizer holds the seed" in t.message) for t in warned] == [("s", True)]
    assert sum("host optimizer holds the seed" in r.getMessage() for r in caplog.records) == 1
    acks = kinds(out, "exec.ack")
    assert acks[-1].stage == pb.SEED_STAGE_FOSSILIZED and acks[-1].ok, acks[-1].error
    held = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(held) == len(set(held))
