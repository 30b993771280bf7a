"""kasmina.attach under bus trouble: nothing it does on the training thread raises a bus error
into the loop, and the lockstep warnings come once per episode, not once per boundary."""

from __future__ import annotations

import logging
import socket

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


def test_attach_while_redis_is_down_trains_and_exits(caplog: pytest.LogCaptureFixture) -> None:
    """``attach`` to a Redis that does not answer returns (no BusUnavailable), the loop trains,
    and leaving the block ends within the final flush's bound, each said once in the log."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(16, 8)
    with kasmina.attach(
        model, {"mid": "1"}, optimizer=opt, redis=f"redis://127.0.0.1:{port}/0",
        keys=KeyRing.generate(), run="down", probe_batch=(x, (x.sum(1) > 0).long()),
        lockstep=False, config=CONFIG,
    ) as kas:  # fmt: skip
        kas.actor.final_flush_s = 0.2
        for step in range(5):
            kas.on_step(step, _loss(model, opt))
    said = [r.getMessage() for r in caplog.records]
    assert sum("unreachable at attach" in m for m in said) == 1
    assert sum("did not take the last messages" in m for m in said) == 1
