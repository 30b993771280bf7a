"""``publish --wait``'s look for an attached trainer: an outage there skips the look, it never
ends a wait whose command is already sent."""

from __future__ import annotations

import pytest

from actors.outcome import Outcome
from bus import open_bus
from bus.testing import FaultyBus
from contracts import KasminaConfig, KeyRing
from kasmina.commands.publish import _Watch
from kasmina.wiring import Wiring
from leyline import pb

pytestmark = pytest.mark.anyio


async def test_the_trainer_look_rides_out_an_outage(capsys: pytest.CaptureFixture[str]) -> None:
    """With the command awaiting a trainer's ack and Redis unavailable for the look, the look
    returns quietly; once Redis answers, it says no trainer is attached."""
    inner = open_bus("memory://publish-watch")
    bus = FaultyBus(inner, {"range", "members", "info"})
    watch = _Watch(Wiring(bus, "pw", KeyRing.generate(), KasminaConfig()))  # type: ignore[arg-type]
    awaiting = pb.CommandOutcome(
        command_id="c", result=pb.OUTCOME_ACCEPTED, awaiting="ack:TRAINING"
    )
    watch.progress(Outcome.of(awaiting, "1-0"))
    await watch.check_trainers()
    assert bus.failures >= 1 and watch.trainer_line == ""
    bus.heal()
    await watch.check_trainers()
    assert watch.trainer_line.startswith("no trainer attached to run pw")
    await inner.close()
