"""The shell's merged step-report events (actors/hosting/merging.py): which item carries each,
and a merged event kept out of the log owed and reissued, again and again until it is written."""

from __future__ import annotations

from dataclasses import replace

from google.protobuf.message import Message

from actors.core import Decision
from actors.hosting import Meta
from actors.hosting.merging import OpenEvents
from actors.logic import seed_logic
from bus import Append, Entry, Handled
from contracts import Envelope, KasminaConfig, kinds
from leyline import pb

SLOT = "l0.s0"


def _decide(logic: object, step: int, val: float) -> Decision:
    report = pb.StepReport(step=step, val_accuracy=val)
    report.slots.add(slot=SLOT, alpha=step / 10)
    env = Envelope(2, kinds.STEP_REPORT, f"m{step}", "t", "k", step, "", "r", "tr", b"", b"")
    return logic.handle(kinds.STEP_REPORT, report, Meta(env, f"{step}-0", "in"))  # type: ignore[attr-defined]


def _items(n: int) -> list[Handled]:
    return [Handled(Entry("in", f"{i + 1}-0", {}), "g") for i in range(n)]


def _sign(event: Message, cause: str) -> Append:
    return Append("events", {"m": event.SerializeToString(), "cause": cause.encode()})


def _events(item: Handled) -> list[pb.LifecycleProgress]:
    return [pb.LifecycleProgress.FromString(a.fields["m"]) for a in item.appends]


def test_a_merged_event_whose_carrier_a_rival_committed_is_reissued_until_written() -> None:
    """Two reports merged onto the second item; that item not committed but the first was: the
    merged event is owed, reissued after the (rebuilt) state on the next batch's first item,
    before that item's own events; not committed there either, it stays owed."""
    logic = seed_logic(SLOT, KasminaConfig())
    logic.apply(_decide(logic, 1, 0.5))  # the bootstrap and the first report
    merging = OpenEvents(logic)
    assert merging.start(reissue=True) == []
    assert merging.take(_decide(logic, 2, 0.75), 0, "m2")
    assert merging.take(_decide(logic, 3, 0.0), 1, "m3")
    handled = _items(2)
    merging.seal(handled, _sign)
    assert _events(handled[0]) == [] and [e.val_acc for e in _events(handled[1])] == [0.75]
    assert merging.committed([True, False]) is False  # nothing of the state is unwritten
    assert [(e.seq, e.step, e.val_acc) for e, _ in merging.owed] == [(3, 3, 0.75)]
    # the rebuild: the rival's event for the third report (seq 3) is in the log
    logic.state = replace(logic.state, seq=3, last_step=3, alpha=0.3, val_acc=0.5)
    reissued = merging.start(reissue=True)
    assert [(e.seq, e.step, e.val_acc, cause) for e, cause in reissued] == [(4, 3, 0.75, "m3")]
    assert logic.state.seq == 4 and logic.state.val_acc == 0.75 and merging.owed == []
    assert merging.take(_decide(logic, 4, 0.0), 0, "m4")
    handled = _items(1)
    merging.seal(handled, _sign)
    assert [(e.seq, e.step) for e in _events(handled[0])] == [(4, 3), (5, 4)]
    assert merging.committed([False]) is True  # applied, not written: rebuild, owe it again
    assert [(e.seq, e.val_acc) for e, _ in merging.owed] == [(4, 0.75)]


def test_an_owed_event_is_dropped_when_the_state_has_a_newer_step() -> None:
    """After the rebuild the log holds a newer report (the rival's): the owed event is stale, as
    its reports would be, and nothing is reissued."""
    logic = seed_logic(SLOT, KasminaConfig())
    logic.apply(_decide(logic, 1, 0.5))
    merging = OpenEvents(logic)
    merging.start(reissue=True)
    merging.take(_decide(logic, 2, 0.75), 0, "m2")
    merging.take(_decide(logic, 3, 0.0), 1, "m3")
    merging.seal(_items(2), _sign)
    merging.committed([True, False])
    logic.state = replace(logic.state, seq=3, last_step=9)
    assert merging.start(reissue=False) == [] and len(merging.owed) == 1  # no item to ride on
    assert merging.start(reissue=True) == [] and merging.owed == [] and logic.state.seq == 3
