"""SeedState and its fold: ``evolve(state, event)`` for the three lifecycle event kinds.

Every SeedActor event carries ``seq = previous + 1``; folding a gap or a duplicate raises
(``actors.core.SeqGap`` / ``SeqDuplicate``), a transition outside the DESIGN §2 table raises
``IllegalTransition``.

Events:
- ``pb.LifecycleTransition`` — a stage change (``from_stage != to_stage``, always in the table).
- ``pb.LifecycleRefused`` — an explicit refusal; only ``seq`` (and ``last_step``) change.
- ``pb.LifecycleProgress`` — bookkeeping without a stage change: the step a report reached, what
  the slot now awaits, germination parameters, pause state, strikes. Its ``metrics`` map carries
  this bookkeeping under reserved ``@`` keys (``BK_*`` below); a text value travels in the key
  itself, ``"@blueprint=residual_mlp": 1.0``, so the event stays a plain Leyline message.
"""

from __future__ import annotations

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
from leyline import pb

__all__ = [
    "BK_ACKED",
    "BK_ALPHA_SCHEDULE",
    "BK_AWAITING",
    "BK_BASELINE_ACC",
    "BK_BLEND_MODE",
    "BK_BLEND_STEPS",
    "BK_BLUEPRINT",
    "BK_ENTERED",
    "BK_PARAM",
    "BK_PAUSED",
    "BK_PAUSED_AT",
    "BK_PENDING",
    "BK_REPORT",
    "BK_RETRY_AT",
    "BK_STRIKES",
    "BK_VAL_ACC",
    "RECENT_ACKS",
    "SeedState",
    "digest",
    "evolve",
    "from_plain",
    "initial_state",
    "to_plain",
]

# Text-valued keys: "<key>=<text>" with value 1.0.
BK_AWAITING = "@awaiting"  # "@awaiting=" (empty text) clears awaiting and the pending id
BK_PENDING = "@pending"  # id of the order / gate request being awaited
BK_ACKED = "@acked"  # an awaited order was acknowledged: clears awaiting, remembers the id
BK_BLUEPRINT = "@blueprint"
# Number-valued keys.
BK_PARAM = "@param:"  # prefix: germination blueprint parameters
BK_BLEND_MODE = "@blend_mode"
BK_ALPHA_SCHEDULE = "@alpha_schedule"
BK_BLEND_STEPS = "@blend_steps"
BK_BASELINE_ACC = "@baseline_acc"
BK_VAL_ACC = "@val_acc"
BK_PAUSED = "@paused"
BK_PAUSED_AT = "@paused_at"
BK_ENTERED = "@entered"
BK_STRIKES = "@strikes"
BK_RETRY_AT = "@retry_at"
BK_REPORT = "@report"  # marks the progress of a step report (its ``alpha`` is the slot's alpha)

_S = pb.SeedLifecycleStage

RECENT_ACKS = 8
"""Acknowledged order ids remembered: a repeated ack of one of them (another rank) is a no-op."""


@dataclass(frozen=True, slots=True)
class SeedState:
    """The lifecycle of one slot (immutable; change it only through ``evolve``)."""

    slot: str
    stage: Stage = _S.SEED_STAGE_UNKNOWN
    seq: int = 0
    stage_entered_step: int = 0
    last_step: int = 0
    awaiting: str | None = None  # None | "g0_evidence" | "gate:<G>" | "ack:<STAGE>[:<what>]"
    pending_id: str = ""
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
        retry_at=0,
    )
    if ev.to_stage == _S.SEED_STAGE_GERMINATED and ev.blueprint:
        new = replace(new, blueprint=ev.blueprint)
    if ev.to_stage in (_S.SEED_STAGE_CULLED, _S.SEED_STAGE_TERMINATED):
        new = replace(new, paused=False, paused_at=0)
    if ev.to_stage == _S.SEED_STAGE_DORMANT:
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
    metrics = dict(ev.metrics)
    if BK_REPORT in metrics:
        changes["alpha"] = ev.alpha
    texts: dict[str, str] = {}
    numbers: dict[str, float] = {}
    params: dict[str, float] = {}
    for key, value in metrics.items():
        if not key.startswith("@"):
            continue
        name, eq, text = key.partition("=")
        if eq:
            texts[name] = text
        elif name.startswith(BK_PARAM):
            params[name[len(BK_PARAM) :]] = value
        else:
            numbers[name] = value
    if BK_ACKED in texts:  # applied first: an ack ends the wait, later keys may start another
        acks = (*state.recent_acks, texts[BK_ACKED])[-RECENT_ACKS:]
        changes.update(awaiting=None, pending_id="", recent_acks=acks)
    if BK_AWAITING in texts:
        changes["awaiting"] = texts[BK_AWAITING] or None
        if not texts[BK_AWAITING]:
            changes["pending_id"] = ""
    if BK_PENDING in texts:
        changes["pending_id"] = texts[BK_PENDING]
    if BK_BLUEPRINT in texts:
        changes["blueprint"] = texts[BK_BLUEPRINT]
    if params:
        changes["params"] = tuple(sorted(params.items()))
    for key, attr in _INT_KEYS.items():
        if key in numbers:
            changes[attr] = int(numbers[key])
    for key, attr in _FLOAT_KEYS.items():
        if key in numbers:
            changes[attr] = numbers[key]
    if BK_PAUSED in numbers:
        changes["paused"] = numbers[BK_PAUSED] != 0.0
    return replace(state, **changes)


_INT_KEYS = {
    BK_BLEND_MODE: "blend_mode",
    BK_ALPHA_SCHEDULE: "alpha_schedule",
    BK_BLEND_STEPS: "blend_steps",
    BK_PAUSED_AT: "paused_at",
    BK_ENTERED: "stage_entered_step",
    BK_STRIKES: "strikes",
    BK_RETRY_AT: "retry_at",
}
_FLOAT_KEYS = {BK_BASELINE_ACC: "baseline_acc", BK_VAL_ACC: "val_acc"}


def to_plain(state: SeedState) -> dict[str, Any]:
    """A JSON-able dict of the state (canonical for digests and snapshots)."""
    plain = {name: getattr(state, name) for name in SeedState.__slots__}
    plain["stage"] = int(state.stage)
    plain["params"] = [[k, v] for k, v in state.params]
    plain["recent_acks"] = list(state.recent_acks)
    return plain


def from_plain(plain: dict[str, Any]) -> SeedState:
    """Inverse of ``to_plain``."""
    data = dict(plain)
    data["stage"] = _S.ValueType(int(data["stage"]))
    data["params"] = tuple((str(k), float(v)) for k, v in data["params"])
    data["recent_acks"] = tuple(str(x) for x in data["recent_acks"])
    return SeedState(**data)


def digest(state: SeedState) -> bytes:
    """sha256 of the canonical encoding of the state."""
    return digest_plain(to_plain(state))
