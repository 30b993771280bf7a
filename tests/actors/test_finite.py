"""Non-finite numbers never reach a core: ``finite`` finds a NaN or an infinity in any float field
of a message, however deep (nested, repeated, in a map), and passes every finite message."""

from __future__ import annotations

import importlib
import math
import threading
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2
from google.protobuf.message import Message

from actors.hosting import finite
from leyline import pb

NAN, INF = math.nan, math.inf
# the module (the package exports its function under the same name)
finite_module = importlib.import_module("actors.hosting.finite")


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


def _struct(leaf: float) -> struct_pb2.Struct:
    """A Struct holding ``leaf`` three levels down (in a list inside a struct inside a struct)."""
    inner = struct_pb2.Struct()
    inner.update({"ok": 1.0, "list": [2.0, {"deep": leaf}]})
    outer = struct_pb2.Struct()
    outer.update({"a": 0.5})
    outer.fields["b"].struct_value.CopyFrom(inner)
    return outer


def test_a_type_that_holds_itself_is_checked_all_the_way_down() -> None:
    """A message type nested in itself (Struct, Value, ListValue) is checked at every depth."""
    assert finite(_struct(3.0)) is True
    assert finite(_struct(NAN)) is False
    assert finite(_struct(-INF)) is False


def _keyword_message(**values: float) -> Message:
    """A message of a type whose float fields are named as Python keywords."""
    proto = descriptor_pb2.FileDescriptorProto(name="kw_finite.proto", package="kwfinite",
                                               syntax="proto3")  # fmt: skip
    kind = proto.message_type.add(name="Kw")
    for number, name in enumerate(("from", "lambda", "ok"), start=1):
        kind.field.add(name=name, number=number, type=descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
                       label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("kwfinite.Kw"))
    message = cls()
    for name, value in values.items():
        setattr(message, name, value)
    return message


def test_float_fields_named_as_python_keywords_are_checked() -> None:
    """A float field named ``from`` or ``lambda`` is read and checked like any other."""
    assert finite(_keyword_message(ok=1.0, **{"from": 2.0, "lambda": 3.0})) is True
    assert finite(_keyword_message(**{"from": NAN})) is False
    assert finite(_keyword_message(**{"lambda": INF})) is False


def test_a_check_being_written_in_one_thread_is_waited_for_in_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A type's check written by one thread while another meets the type: the other waits for it
    and gets its answer (it used to dispatch to itself until RecursionError)."""
    message = _keyword_message(ok=1.0)
    kind = message.DESCRIPTOR
    inside, go = threading.Event(), threading.Event()
    original = finite_module._compile

    def slow_compile(desc: Any) -> Any:
        if desc is kind:
            inside.set()
            go.wait(10)
        return original(desc)

    monkeypatch.setattr(finite_module, "_compile", slow_compile)
    answers: dict[str, object] = {}

    def check(name: str) -> None:
        try:
            answers[name] = finite(message)
        except RecursionError as exc:
            answers[name] = exc

    writer = threading.Thread(target=check, args=("writer",))
    writer.start()
    assert inside.wait(10)
    other = threading.Thread(target=check, args=("other",))
    other.start()
    other.join(0.5)  # (a self-dispatching check fails within this; a waiting one does not end)
    go.set()
    writer.join(10)
    other.join(10)
    assert answers == {"writer": True, "other": True}
