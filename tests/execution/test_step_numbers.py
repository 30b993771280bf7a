"""Steps handed to ``on_step`` must be a global count: one that restarts (``enumerate(loader)``
inside an epoch loop) is told once, in the log and a WARNING telemetry item, and counted."""

from __future__ import annotations

import logging

import pytest
import torch

from leyline import pb
from tests.execution.execution_helpers import data, kinds, runtime, tiny, train


def test_a_step_count_that_restarts_each_epoch_is_warned_once_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Twelve steps counted globally warn of nothing; then three epochs numbered 0-5 each: three
    restarts counted, one warning naming the steps, in the log and as WARNING telemetry."""
    model, slots = tiny(points={"a": "fc1"})
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    rt = runtime(model, slots, opt)
    with caplog.at_level(logging.WARNING, logger="kasmina.execution"):
        train(model, opt, rt, data(6), range(12))  # a global count first: no warning
        assert rt.stepped_back == 0 and not caplog.records
        for _ in range(3):
            train(model, opt, rt, data(6), range(6))
    assert rt.stepped_back == 3
    (line,) = [r.getMessage() for r in caplog.records]
    assert "on_step(0) after on_step(11)" in line and "global step count" in line
    warned = [
        t for t in kinds(rt.drain_outbox(), "telemetry.raw") if t.severity == pb.SEVERITY_WARNING
    ]
    assert [t.message for t in warned] == [line]
