"""kasmina.attach under bus trouble: nothing it does on the training thread raises a bus error
into the loop, and the lockstep warnings come once per episode, not once per boundary."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kasmina
from bus.testing import redis_server
from contracts import KasminaConfig, KeyRing, streams

CONFIG = KasminaConfig.load(env={}, overrides={"barrier.frequency": 5})


def _loss(model: nn.Module, opt: torch.optim.Optimizer) -> torch.Tensor:
    x = torch.randn(16, 8)
    opt.zero_grad()
    loss = F.cross_entropy(model(x), (x.sum(1) > 0).long())
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()
    return loss


@pytest.mark.redis
def test_an_event_log_of_the_wrong_type_never_reaches_the_training_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``events`` replaced by a hash while a lockstep loop runs: ``on_step`` at two barrier
    boundaries returns (no BusProtocolError) with one warning for both; once the log is
    restored the run settles again, and says so once."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    caplog.set_level(logging.INFO, logger="kasmina.attach")
    with redis_server(aof=False) as server, kasmina.attach(
        model, {"h": "1"}, opt, redis=server.url, keys=KeyRing.generate(), config=CONFIG,
        actors=True, lockstep=True, device="cpu",
    ) as kas:  # fmt: skip
        kas.settle_timeout_s = 0.5
        kas.on_step(0, _loss(model, opt))
        assert kas.settle(10)
        client = kas.bus.client  # type: ignore[attr-defined]
        events = streams.events(kas.run)
        kas.portal.call(client.rename, events, events + ":saved")
        kas.portal.call(client.hset, events, "x", "y")
        for step in range(1, 11):
            kas.on_step(step, _loss(model, opt))
        assert kas.unsettled == 2
        kas.portal.call(client.delete, events)
        kas.portal.call(client.rename, events + ":saved", events)
        kas.settle_timeout_s = 15
        for step in range(11, 16):
            kas.on_step(step, _loss(model, opt))
        assert kas.unsettled == 0
    said = [r.getMessage() for r in caplog.records if r.name == "kasmina.attach"]
    assert len([m for m in said if "did not settle" in m]) == 1
    assert len([m for m in said if "settles again" in m]) == 1
