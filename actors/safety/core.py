"""SafetyActor core: a circuit breaker per slot and the run-wide emergency stop.

Per slot: CLOSED --(``strikes_to_open`` strikes inside ``strike_window_steps``)--> OPEN (verdict
CULL; the seed lifecycle culls and embargoes) --(``cooldown_steps``)--> HALF_OPEN --(a clean
``strike_window_steps``)--> CLOSED; a strike while HALF_OPEN reopens. Every signal is a STRIKE
verdict. A breaker opened by an isolation violation also asks execution for a rollback (a
CheckpointRequest with ``rollback``: the host goes back to before the seed entered the forward).
When the open breakers reach ``max(min(emergency_stop_min_open, known slots),
ceil(emergency_stop_open_fraction * known slots))`` the run is stopped once: a run-wide
EMERGENCY_STOP verdict and a CheckpointRequest.

Time is the training step carried by the inputs: ``pb.SafetySignal.step`` and ``pb.StepReport``
(ticks move breakers from OPEN to HALF_OPEN to CLOSED). A slot becomes known when a step report
first names it: a CLOSE verdict with zero strikes registers its breaker (an event, so the
known-slot count replays). A signal for a slot no report has named is refused (``unknown_slot``):
a trainer key cannot make up slots, open their breakers and so reach the emergency threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from actors.core import Context, Decision, Message, Outgoing, UnknownEvent, digest_plain
from contracts.errors import Reason
from leyline import pb

__all__ = [
    "Breaker",
    "SafetyState",
    "decide",
    "digest",
    "evolve",
    "from_plain",
    "initial_state",
    "to_plain",
]

B = pb.BreakerState
V = pb.VerdictAction


@dataclass(frozen=True, slots=True)
class Breaker:
    """One slot's breaker."""

    state: int = B.BREAKER_CLOSED
    strike_steps: tuple[int, ...] = ()  # strikes inside the window (ascending)
    opened_at: int = 0
    half_open_at: int = 0


@dataclass(frozen=True, slots=True)
class SafetyState:
    """Breakers by slot, the emergency latch, run-wide strikes."""

    breakers: dict[str, Breaker] = field(default_factory=dict)  # never mutated: replaced
    emergency: bool = False
    emergency_step: int = 0
    run_strikes: int = 0
    last_step: int = 0

    def open_slots(self) -> list[str]:
        """Slots whose breaker is OPEN, sorted."""
        return sorted(s for s, b in self.breakers.items() if b.state == B.BREAKER_OPEN)


def initial_state() -> SafetyState:
    """No breakers, no emergency."""
    return SafetyState()


class _Out:
    def __init__(self, state: SafetyState, ctx: Context) -> None:
        self.state, self.ctx = state, ctx
        self.events: list[Message] = []
        self.outgoing: list[Outgoing] = []

    def verdict(
        self,
        slot: str,
        action: int,
        breaker: int,
        strikes: int,
        step: int,
        reason: str,
        *,
        send: bool = True,
    ) -> None:
        v = pb.SafetyVerdict(
            slot=slot,
            action=pb.VerdictAction.ValueType(action),
            breaker=pb.BreakerState.ValueType(breaker),
            strikes=strikes,
            step=step,
            reason=reason,
            causation_id=self.ctx.message_id,
        )
        self.state = evolve(self.state, v)
        self.events.append(v)
        if send:
            self.outgoing.append(Outgoing("seed", slot or None, v))


def decide(state: SafetyState, msg: Message, ctx: Context) -> Decision:
    """Judge a SafetySignal, or tick breakers on a StepReport."""
    out = _Out(state, ctx)
    if isinstance(msg, pb.StepReport):
        for slot in sorted({s.slot for s in msg.slots if s.slot}):
            _register(out, slot, msg.step)
        _tick(out, msg.step)
    elif isinstance(msg, pb.SafetySignal):
        if msg.slot and msg.slot not in state.breakers:  # step reports name the run's slots
            return Decision.refuse(
                Reason.UNKNOWN_SLOT, f"no step report has named slot {msg.slot!r}"
            )
        _tick(out, msg.step)
        _strike(out, msg)
        _emergency(out, msg.step)
    else:
        return Decision.refuse(
            Reason.UNEXPECTED_KIND, f"SafetyActor does not handle {type(msg).__name__}"
        )
    return Decision(events=tuple(out.events), outgoing=tuple(out.outgoing))


def _register(out: _Out, slot: str, step: int) -> None:
    if slot not in out.state.breakers:
        out.verdict(
            slot, V.VERDICT_CLOSE, B.BREAKER_CLOSED, 0, step, "breaker registered", send=False
        )


def _tick(out: _Out, step: int) -> None:
    cfg = out.ctx.config.safety
    for slot in sorted(out.state.breakers):
        br = out.state.breakers[slot]
        if br.state == B.BREAKER_OPEN and step >= br.opened_at + cfg.cooldown_steps:
            out.verdict(
                slot,
                V.VERDICT_HALF_OPEN,
                B.BREAKER_HALF_OPEN,
                len(br.strike_steps),
                step,
                "cooldown over",
            )
        elif br.state == B.BREAKER_HALF_OPEN and step >= br.half_open_at + cfg.strike_window_steps:
            out.verdict(slot, V.VERDICT_CLOSE, B.BREAKER_CLOSED, 0, step, "clean window")


def _strike(out: _Out, sig: pb.SafetySignal) -> None:
    cfg = out.ctx.config.safety
    reason = pb.SafetySignalKind.Name(sig.kind) + (f": {sig.detail}" if sig.detail else "")
    if not sig.slot:  # run-wide: recorded, no slot to tell
        strikes = out.state.run_strikes + 1
        out.verdict("", V.VERDICT_STRIKE, B.BREAKER_CLOSED, strikes, sig.step, reason, send=False)
        return
    br = out.state.breakers[sig.slot]
    recent = [s for s in br.strike_steps if s > sig.step - cfg.strike_window_steps]
    n = len(recent) + 1
    out.verdict(sig.slot, V.VERDICT_STRIKE, br.state, n, sig.step, reason)
    opens = (
        (br.state == B.BREAKER_CLOSED and n >= cfg.strikes_to_open)
        or br.state == B.BREAKER_HALF_OPEN
        # the seed has already left the forward: out of memory, or it raised
        or sig.kind in (pb.SAFETY_SIGNAL_OUT_OF_MEMORY, pb.SAFETY_SIGNAL_SEED_FAILED)
    )
    if opens:
        out.verdict(
            sig.slot, V.VERDICT_CULL, B.BREAKER_OPEN, n, sig.step, f"breaker open: {reason}"
        )
        if sig.kind == pb.SAFETY_SIGNAL_ISOLATION_VIOLATION and cfg.rollback_on_isolation:
            _rollback(out, sig.slot, sig.step, reason)


def _rollback(out: _Out, slot: str, step: int, reason: str) -> None:
    """A leak may have moved the host: roll it back to before the seed entered the forward."""
    request = pb.CheckpointRequest(
        reason=f"rollback: {reason}", step=step, slots=[slot], rollback=True
    )
    out.events.append(request)
    out.outgoing.append(Outgoing("execution", None, request))


def _emergency(out: _Out, step: int) -> None:
    if out.state.emergency:
        return
    cfg = out.ctx.config.safety
    opened = out.state.open_slots()
    known = len(out.state.breakers)
    # a run with fewer slots than emergency_stop_min_open stops when all of them are open
    floor = min(cfg.emergency_stop_min_open, known)
    needed = max(floor, math.ceil(cfg.emergency_stop_open_fraction * known), 1)
    if len(opened) < needed:
        return
    reason = f"{len(opened)} of {known} breakers open"
    out.verdict("", V.VERDICT_EMERGENCY_STOP, B.BREAKER_OPEN, len(opened), step, reason)
    request = pb.CheckpointRequest(reason=f"emergency stop: {reason}", step=step, slots=opened)
    out.events.append(request)
    out.outgoing.append(Outgoing("execution", None, request))


def evolve(state: SafetyState, event: Message) -> SafetyState:
    """Fold a SafetyVerdict (a CheckpointRequest changes nothing)."""
    if isinstance(event, pb.CheckpointRequest):
        return state
    if not isinstance(event, pb.SafetyVerdict):
        raise UnknownEvent(f"SafetyActor does not fold {type(event).__name__}")
    last = max(state.last_step, event.step)
    if not event.slot:
        if event.action == V.VERDICT_EMERGENCY_STOP:
            return replace(state, emergency=True, emergency_step=event.step, last_step=last)
        return replace(state, run_strikes=event.strikes, last_step=last)
    br = state.breakers.get(event.slot, Breaker())
    if event.action == V.VERDICT_STRIKE:
        steps = (*br.strike_steps, event.step)
        br = replace(br, strike_steps=steps[len(steps) - event.strikes :] if event.strikes else ())
    elif event.action == V.VERDICT_CULL:
        br = replace(br, state=B.BREAKER_OPEN, opened_at=event.step)
    elif event.action == V.VERDICT_HALF_OPEN:
        br = replace(br, state=B.BREAKER_HALF_OPEN, half_open_at=event.step)
    elif event.action == V.VERDICT_CLOSE:
        br = Breaker()
    breakers = dict(state.breakers)
    breakers[event.slot] = br
    return replace(state, breakers=breakers, last_step=last)


def to_plain(state: SafetyState) -> dict[str, Any]:
    """JSON-able form."""
    return {
        "breakers": {
            slot: [b.state, list(b.strike_steps), b.opened_at, b.half_open_at]
            for slot, b in sorted(state.breakers.items())
        },
        "emergency": state.emergency,
        "emergency_step": state.emergency_step,
        "run_strikes": state.run_strikes,
        "last_step": state.last_step,
    }


def from_plain(plain: dict[str, Any]) -> SafetyState:
    """Inverse of ``to_plain``."""
    breakers = {
        slot: Breaker(int(st), tuple(int(x) for x in steps), int(op), int(ho))
        for slot, (st, steps, op, ho) in plain["breakers"].items()
    }
    return SafetyState(
        breakers=breakers,
        emergency=bool(plain["emergency"]),
        emergency_step=int(plain["emergency_step"]),
        run_strikes=int(plain["run_strikes"]),
        last_step=int(plain["last_step"]),
    )


def digest(state: SafetyState) -> bytes:
    """sha256 of the canonical encoding."""
    return digest_plain(to_plain(state))
