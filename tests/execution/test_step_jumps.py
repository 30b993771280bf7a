"""A loop whose step numbers go up by more than one at every ``on_step`` (micro-batches counted
under gradient accumulation) is told once: stage budgets and cadences count step numbers."""

from __future__ import annotations

import logging

import pytest
import torch
from execution_helpers import kinds, runtime, tiny

from leyline import pb


@pytest.mark.parametrize(("steps", "warned"), [
    (range(3, 80, 4), True),  # 3, 7, 11, ...: every call jumps by 4
    (range(0, 40), False),  # one more at each call
    ([0, 1, 2, 10, 11, 12, 30, 31], False),  # a few jumps, never three in a row
])  # fmt: skip
def test_steps_that_jump_at_every_call_are_told_once(
    steps: range | list[int], warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Three calls in a row whose step went up by more than one give one log warning and one
    WARNING telemetry item naming gradient accumulation, and are counted; consecutive steps and
    isolated jumps (a resume, an evaluation pause) say nothing."""
    model, slots = tiny()
    rt = runtime(model, slots, torch.optim.SGD(model.parameters(), lr=0.1))
    with caplog.at_level(logging.WARNING, logger="kasmina.execution"):
        for step in steps:
            rt.on_step(step)
    told = [r.getMessage() for r in caplog.records if "more than one" in r.getMessage()]
    items = [
        t for t in kinds(rt.drain_outbox(), "telemetry.raw")
        if t.severity == pb.SEVERITY_WARNING and "gradient accumulation" in t.message
    ]  # fmt: skip
    assert len(told) == len(items) == int(warned)
    if warned:
        assert "on_step(15) after on_step(11)" in told[0]  # the third jump in a row
        assert rt.step_jumps == len(steps) - 1
