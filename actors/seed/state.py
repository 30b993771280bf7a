"""SeedState and its fold: ``evolve(state, event)`` for the three lifecycle event kinds.

Every SeedActor event carries ``seq = previous + 1``; folding a gap or a duplicate raises
(``actors.core.SeqGap`` / ``SeqDuplicate``), a transition outside the docs/design.md §2 table raises
``IllegalTransition``.

Events:
- ``pb.LifecycleTransition`` — a stage change (``from_stage != to_stage``, always in the table).
- ``pb.LifecycleRefused`` — an explicit refusal; only ``seq`` (and ``last_step``) change.
- ``pb.LifecycleProgress`` — bookkeeping without a stage change, in its own schema fields: the
  step a report reached (``step_report``, ``alpha``, ``val_acc``), an acknowledged order
  (``acked_id``), what the slot now awaits (``awaiting`` with ``pending_id`` and ``command_id``),
  the germination being probed (``germinate``, ``baseline_acc``), pause state, the stage clock,
  strikes, the next reset attempt. A field changes the state only when set (optional ones: when
  present). ``metrics`` carries measured numbers only and is never folded.

Command correlation: ``SeedState.command_id`` is the command whose chain the current wait belongs
to. It is set together with ``awaiting`` (from the progress event that starts the wait) and cleared
whenever the wait ends, so it is non-empty only while the slot awaits a reply to that chain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from actors.core import (
    IllegalTransition,
    Message,
    ReplayError,
    UnknownEvent,
    check_seq,
    digest_plain,
)
from actors.seed.lifecycle import Stage, is_allowed, stage_name
from actors.seed.wait import Wait
from leyline import pb

__all__ = [
    "RECENT_ACKS",
    "SeedState",
    "advanced",
    "digest",
    "evolve",
    "from_plain",
    "initial_state",
    "merge_reports",
    "reissue_report",
    "renumber",
    "to_plain",
]


RECENT_ACKS = 8
"""Acknowledged order ids remembered: a repeated ack of one of them (another rank) is a no-op."""


@dataclass(frozen=True, slots=True)
class SeedState:
    """The lifecycle of one slot (immutable; change it only through ``evolve``)."""

    slot: str
    stage: Stage = pb.SEED_STAGE_UNKNOWN
    seq: int = 0
    stage_entered_step: int = 0
    last_step: int = 0
    awaiting: Wait | None = None  # what the slot waits for (text only on the wire)
    pending_id: str = ""
    command_id: str = ""  # the command whose chain the current wait belongs to ("" = none)
    recent_acks: tuple[str, ...] = ()  # ids of the last RECENT_ACKS acknowledged orders
    blueprint: str = ""
    params: tuple[tuple[str, float], ...] = ()
    blend_mode: int = 0
    alpha_schedule: int = 0
    blend_steps: int = 0
    paused: bool = False
    paused_at: int = 0
    strikes: int = 0
    baseline_acc: float = 0.0
    val_acc: float = 0.0
    alpha: float = 0.0
    retry_at: int = 0
    pending_order: str = ""  # the awaited ExecutionOrder, serialized, hex ("" = none)


def initial_state(slot: str) -> SeedState:
    """The state of a slot before its bootstrap event (stage UNKNOWN, seq 0)."""
    return SeedState(slot=slot)


def evolve(state: SeedState, event: Message) -> SeedState:
    """Fold one lifecycle event."""
    if isinstance(event, pb.LifecycleTransition):
        return _transition(state, event)
    if isinstance(event, pb.LifecycleRefused):
        _check(state, event.slot, event.seq)
        return replace(state, seq=event.seq, last_step=max(state.last_step, event.step))
    if isinstance(event, pb.LifecycleProgress):
        _check(state, event.slot, event.seq)
        return _progress(state, event)
    raise UnknownEvent(f"SeedActor does not fold {type(event).__name__}")


def _check(state: SeedState, slot: str, seq: int) -> None:
    if slot != state.slot:
        raise ReplayError(f"event for slot {slot!r} folded into slot {state.slot!r}")
    check_seq(f"slot {state.slot}", state.seq, seq)


def _transition(state: SeedState, ev: pb.LifecycleTransition) -> SeedState:
    _check(state, ev.slot, ev.seq)
    if ev.from_stage != state.stage:
        raise IllegalTransition(
            f"slot {state.slot}: transition from {stage_name(ev.from_stage)} "
            f"but the slot is {stage_name(state.stage)}"
        )
    if not is_allowed(ev.from_stage, ev.to_stage):
        raise IllegalTransition(
            f"slot {state.slot}: {stage_name(ev.from_stage)} -> {stage_name(ev.to_stage)} "
            "is not in the lifecycle table"
        )
    new = replace(
        state,
        stage=ev.to_stage,
        seq=ev.seq,
        stage_entered_step=ev.step,
        last_step=max(state.last_step, ev.step),
        awaiting=None,
        pending_id="",
        command_id="",
        retry_at=0,
    )
    if ev.to_stage == pb.SEED_STAGE_GERMINATED and ev.blueprint:
        new = replace(new, blueprint=ev.blueprint)
    if ev.to_stage in (pb.SEED_STAGE_CULLED, pb.SEED_STAGE_TERMINATED):
        new = replace(new, paused=False, paused_at=0)
    if ev.to_stage == pb.SEED_STAGE_DORMANT:
        new = replace(
            new,
            blueprint="",
            params=(),
            blend_mode=0,
            alpha_schedule=0,
            blend_steps=0,
            baseline_acc=0.0,
            alpha=0.0,
        )
    return new


def _progress(state: SeedState, ev: pb.LifecycleProgress) -> SeedState:
    changes: dict[str, Any] = {"seq": ev.seq, "last_step": max(state.last_step, ev.step)}
    if ev.step_report:
        changes["alpha"] = ev.alpha
    if ev.val_acc > 0.0:
        changes["val_acc"] = ev.val_acc
    _wait_changes(state, ev, changes)
    if ev.HasField("germinate"):
        g = ev.germinate
        changes.update(
            blueprint=g.blueprint,
            params=tuple(sorted(g.params.items())),
            blend_mode=int(g.blend_mode),
            alpha_schedule=int(g.alpha_schedule),
            blend_steps=g.blend_steps,
            baseline_acc=ev.baseline_acc,
        )
    if ev.HasField("paused"):
        changes.update(paused=ev.paused, paused_at=ev.paused_at if ev.paused else 0)
    if ev.HasField("stage_entered_step"):
        changes["stage_entered_step"] = ev.stage_entered_step
    if ev.HasField("strikes"):
        changes["strikes"] = ev.strikes
    if ev.HasField("retry_at"):
        changes["retry_at"] = ev.retry_at
    return _replace(state, changes)


def _wait_changes(state: SeedState, ev: pb.LifecycleProgress, changes: dict[str, Any]) -> None:
    """What ``ev`` changes in the slot's wait (into ``changes``): an ack ends the wait (applied
    first), and a set ``awaiting`` starts the next one or ends it when empty."""
    if ev.acked_id:
        acks = (*state.recent_acks, ev.acked_id)[-RECENT_ACKS:]
        changes.update(
            awaiting=None, pending_id="", command_id="", recent_acks=acks, pending_order=""
        )
    if ev.HasField("awaiting"):
        waiting = bool(ev.awaiting)
        changes.update(
            awaiting=Wait.parse(ev.awaiting),
            pending_id=ev.pending_id if waiting else "",
            command_id=ev.command_id if waiting else "",
            pending_order="",
        )
    if ev.HasField("pending_order"):  # with the wait it starts, or an order sent again
        changes["pending_order"] = ev.pending_order.SerializeToString(deterministic=True).hex()


_REPORT_FIELDS = frozenset({"slot", "seq", "command_id", "step", "step_report", "alpha", "val_acc"})


def _report_only(event: Message) -> bool:
    """True for a step report's bookkeeping and nothing else (no command, no wait, no order)."""
    if type(event) is not pb.LifecycleProgress or not event.step_report or event.command_id:
        return False
    fields = event.ListFields()
    return len(fields) <= len(_REPORT_FIELDS) and all(f.name in _REPORT_FIELDS for f, _ in fields)


def merge_reports(previous: Message, event: Message) -> pb.LifecycleProgress | None:
    """Two step-report events folded one after the other as one ``lifecycle.progress``, or None.

    Both must carry a step report's bookkeeping only (``step``, ``alpha``, ``val_acc``), and
    ``event`` the next ``seq`` and a step not below ``previous``'s. The merged event is ``event`` numbered as
    ``previous``, with the latest positive ``val_acc`` of the two: folded where ``previous`` was,
    it gives the state the two give (last step, alpha, validation accuracy), one ``seq`` lower.
    The fast path's event (``actors.seed.fast``), which only its decision holds, becomes the
    merged event itself; any other ``event`` is left as it is (the merged event is a copy).
    """
    if not (
        (event is _KNOWN_BARE[1] or _report_only(event))
        and (previous is _KNOWN_BARE[0] or _report_only(previous))
    ):
        return None
    assert isinstance(previous, pb.LifecycleProgress) and isinstance(event, pb.LifecycleProgress)
    if event.seq != previous.seq + 1 or event.step < previous.step or event.slot != previous.slot:
        return None
    if event is _KNOWN_BARE[1]:  # the fast path's own event, held by its decision alone: taken
        merged, _KNOWN_BARE[1] = event, None
    else:
        merged = pb.LifecycleProgress()
        merged.CopyFrom(event)
    merged.seq = previous.seq
    if merged.val_acc <= 0.0:
        merged.val_acc = previous.val_acc
    _KNOWN_BARE[0] = merged
    return merged


def reissue_report(state: SeedState, merged: Message) -> pb.LifecycleProgress | None:
    """A merged step-report event that never reached the log (its carrying entry was committed
    by another shell), numbered to follow ``state``: folded there it sets the step, alpha and
    accuracy its reports set. None when ``state`` holds a newer step (the event is then stale,
    as its reports would be), has no lifecycle yet or is terminated, or ``merged`` is not a
    report's bookkeeping of this slot."""
    if not _report_only(merged) or state.stage in _NO_REPORTS:
        return None
    assert isinstance(merged, pb.LifecycleProgress)
    if merged.slot != state.slot or merged.step < state.last_step:
        return None
    again = pb.LifecycleProgress()
    again.CopyFrom(merged)
    again.seq = state.seq + 1
    return again


_NO_REPORTS = frozenset({pb.SEED_STAGE_UNKNOWN, pb.SEED_STAGE_TERMINATED})


# The last merged event, and the last event of a step report decided on the fast path
# (``actors.seed.fast``): both hold a report's bookkeeping only, being built as one, so merging
# them does not check them again (the merged event with the run's next report, the fast event
# with the open one).
_KNOWN_BARE: list[Message | None] = [None, None]


_FIELDS = SeedState.__slots__
_FIELD_SET = frozenset(_FIELDS)
_SLOTS = tuple((name, getattr(SeedState, name).__set__) for name in _FIELDS)
_new = object.__new__


def _replace(state: SeedState, changes: dict[str, Any]) -> SeedState:
    """``dataclasses.replace`` for the hot path (one per step report): the same result, a third
    of the cost (no ``__init__`` call over every field; each slot set through its descriptor)."""
    if not changes.keys() <= _FIELD_SET:
        raise TypeError(f"not SeedState fields: {sorted(changes.keys() - _FIELD_SET)}")
    new: SeedState = _new(SeedState)
    for name, put in _SLOTS:
        put(new, changes[name] if name in changes else getattr(state, name))
    return new


def _copier() -> Callable[[SeedState], SeedState]:
    """A copy of every slot of a state, written out one slot after the other (as ``dataclasses``
    writes ``__init__``): a third cheaper than a loop over the 23 slots."""
    lines = [f"    put_{name}(new, state.{name})" for name in _FIELDS]
    source = (
        "def copy(state):\n    new = _new(SeedState)\n" + "\n".join(lines) + "\n    return new\n"
    )
    scope: dict[str, Any] = {"_new": _new, "SeedState": SeedState}
    scope.update((f"put_{name}", put) for name, put in _SLOTS)
    exec(source, scope)  # the source is built from the class's own slot names
    copy: Callable[[SeedState], SeedState] = scope["copy"]
    return copy


_copy = _copier()
# The state ``advanced`` built last, held by its decision alone until it is renumbered (the
# shell decides a report and merges its event without a turn for anything else in between).
_FRESH: list[SeedState | None] = [None]
_PUT = dict(_SLOTS)
_SET_SEQ, _SET_LAST_STEP = _PUT["seq"], _PUT["last_step"]
_SET_ALPHA, _SET_VAL_ACC = _PUT["alpha"], _PUT["val_acc"]


def advanced(state: SeedState, event: pb.LifecycleProgress) -> SeedState:
    """``evolve(state, event)`` for a step report's bare bookkeeping (``step_report``, ``alpha``,
    ``val_acc``, nothing else) numbered ``state.seq + 1`` with a step above ``state.last_step``:
    the same state, without the general fold's checks. The caller (``actors.seed.fast``) vouches
    for the event."""
    new = _FRESH[0] = _copy(state)
    _SET_SEQ(new, event.seq)
    _SET_LAST_STEP(new, event.step)
    _SET_ALPHA(new, event.alpha)
    if event.val_acc > 0.0:
        _SET_VAL_ACC(new, event.val_acc)
    return new


def renumber(state: SeedState, merged: Message) -> SeedState:
    """The state two step-report events folded to (``state``), numbered as their merged event
    (``merge_reports``): the same state one ``seq`` lower, which is what folding the merged event
    where the first was gives. A copy of the slots, not a second fold of the event; the state
    the fast path folded last (``advanced``), which only its decision holds, is renumbered
    itself rather than copied."""
    if not isinstance(merged, pb.LifecycleProgress) or merged.seq != state.seq - 1:
        raise ReplayError(f"slot {state.slot}: not a merged event numbered before {state.seq}")
    if state is _FRESH[0]:  # the fast path's fold, which only its decision holds: taken
        _FRESH[0] = None
        new = state
    else:
        new = _copy(state)
    _SET_SEQ(new, merged.seq)
    return new


def to_plain(state: SeedState) -> dict[str, Any]:
    """A JSON-able dict of the state (canonical for digests and snapshots)."""
    plain = {name: getattr(state, name) for name in SeedState.__slots__}
    plain["stage"] = int(state.stage)
    plain["params"] = [[k, v] for k, v in state.params]
    plain["recent_acks"] = list(state.recent_acks)
    plain["awaiting"] = None if state.awaiting is None else str(state.awaiting)
    return plain


def from_plain(plain: dict[str, Any]) -> SeedState:
    """Inverse of ``to_plain``."""
    data = dict(plain)
    data["stage"] = pb.SeedLifecycleStage.ValueType(int(data["stage"]))
    data["params"] = tuple((str(k), float(v)) for k, v in data["params"])
    data["recent_acks"] = tuple(str(x) for x in data["recent_acks"])
    data["awaiting"] = Wait.parse(data["awaiting"] or "")
    return SeedState(**data)


def digest(state: SeedState) -> bytes:
    """sha256 of the canonical encoding of the state."""
    return digest_plain(to_plain(state))
