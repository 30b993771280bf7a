"""Non-finite numbers never reach a core: ``finite`` finds a NaN or an infinity in any float field
of a message, however deep (nested, repeated, in a map), and passes every finite message."""

from __future__ import annotations

import math

import pytest
from google.protobuf.message import Message

from actors.hosting import finite
from leyline import pb

NAN, INF = math.nan, math.inf


def _importance(*values: float) -> pb.ImportanceReport:
    return pb.ImportanceReport(
        modules=[pb.ModuleImportance(module="m", importance=list(values), keep=[True, False])]
    )


FINITE = [
    pb.StepReport(),
    pb.StepReport(step=3, loss=1.5, val_loss=-2.0, slots=[pb.SlotReport(alpha=0.5)]),
    pb.TelemetryRaw(metrics={"a": 1.0, "b": -1e300}),
    pb.GateRequest(evidence=pb.Evidence(metrics={"m": 0.0})),
    _importance(1.0, 2.0, 1e-300),
    pb.Heartbeat(rejected={"invalid": 3}),
]

NON_FINITE = [
    pb.StepReport(loss=NAN),
    pb.StepReport(val_accuracy=INF),
    pb.StepReport(val_loss=-INF),
    pb.TelemetryRaw(metrics={"a": 1.0, "b": NAN}),
    pb.TelemetryRaw(metrics={"a": INF}),
    pb.StepReport(slots=[pb.SlotReport(alpha=0.5), pb.SlotReport(alpha=NAN)]),
    pb.StepReport(slots=[pb.SlotReport(metrics={"x": 1.0}), pb.SlotReport(metrics={"x": -INF})]),
    pb.GateRequest(evidence=pb.Evidence(metrics={"m": NAN})),
    _importance(1.0, NAN),
    _importance(INF, 2.0),
]


@pytest.mark.parametrize("message", FINITE, ids=lambda m: type(m).__name__)
def test_a_message_of_finite_numbers_passes(message: Message) -> None:
    """Finite values anywhere (and integer, string, bool fields) pass."""
    assert finite(message) is True


@pytest.mark.parametrize("message", NON_FINITE, ids=lambda m: type(m).__name__)
def test_a_nan_or_an_infinity_anywhere_is_found(message: Message) -> None:
    """A NaN or an infinity in a field, a map value, a repeated field or a nested message,
    after finite ones, is found."""
    assert finite(message) is False
