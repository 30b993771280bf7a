"""A ``batch=`` the host itself cannot take is the trainer's fault, not the seed's: no seed is
culled for it, and the trainer is told once."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from leyline import pb
from tests.execution.execution_helpers import backward, data, germinate, kinds, order, runtime, tiny


def test_a_batch_the_host_cannot_take_culls_no_seed(caplog: pytest.LogCaptureFixture) -> None:
    """Shadow batches of the wrong width (the host's own forward raises on them): the seed stays
    in TRAINING with no failure signal, one warning says why, and good batches train it again."""
    model, slots = tiny(0, {"a": "fc1"})
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rt = runtime(model, slots, opt)
    rt.submit(germinate("a", 1))
    rt.submit(order("a", pb.SEED_STAGE_TRAINING, 2))
    batches = data(4)
    caplog.set_level(logging.WARNING, logger="kasmina.execution")
    for step in range(12):
        x, y = batches[step % 4]
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        backward(loss)
        opt.step()
        shadow = (x[:, :5], y) if step < 8 else (x, y)  # the raw batch, before its last feature
        rt.on_step(step, loss, batch=shadow)
    signals = kinds(rt.drain_outbox(), "safety.signal")
    assert not [s for s in signals if s.kind == pb.SAFETY_SIGNAL_SEED_FAILED]
    assert slots["a"].seed is not None and slots["a"].stage == pb.SEED_STAGE_TRAINING
    warned = [r for r in caplog.records if "cannot take this batch" in r.getMessage()]
    assert len(warned) == 1
    assert rt.states["a"].shadow_gains  # the good batches fed the seed's shadow loss
