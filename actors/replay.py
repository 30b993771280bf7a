"""Replay: every actor's state is the fold of the run's event stream with the cores' own ``evolve``.

``fold_events(events)`` takes ``(entry_id, kind, message)`` triples in stream order (already
verified and parsed) and builds a ``RunState``; ``fold_events(tail, start=snapshot)`` continues
from a snapshot (``RunState.to_bytes`` / ``RunState.from_bytes``) and equals the full fold when
``tail`` is the entries after ``snapshot.last_entry_id``. ``verify_digests`` checks recorded
``state.digest`` entries against the re-fold; ``timeline`` is the projection behind
``kasmina replay --json`` (lifecycle rows also carry ``seq`` and ``command_id``, the command
whose chain led to the event, "" for none).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from actors import barrier, gates, safety, seed
from actors.barrier.core import from_plain as barrier_from
from actors.barrier.core import to_plain as barrier_plain
from actors.barrier.spec import SPEC as BARRIER
from actors.core import Message, ReplayError
from actors.gates.core import from_plain as gates_from
from actors.gates.core import to_plain as gates_plain
from actors.gates.spec import SPEC as GATES
from actors.safety.core import from_plain as safety_from
from actors.safety.core import to_plain as safety_plain
from actors.safety.spec import SPEC as SAFETY
from actors.seed.lifecycle import gate_name, stage_name
from actors.seed.spec import SPEC as SEED
from actors.telemetry import counters as telemetry
from actors.telemetry.spec import SPEC as TELEMETRY
from contracts import kinds
from leyline import pb

__all__ = ["FORMAT_VERSION", "RunState", "fold_events", "timeline", "verify_digests"]

FORMAT_VERSION = 1
Event = tuple[str, str, Message]  # (entry id, kind, message): a LogRecord's ``event``


@dataclass(frozen=True, slots=True)
class RunState:
    """The state of every actor of a run, as folded from its event stream."""

    seeds: dict[str, seed.SeedState] = field(default_factory=dict)
    gates: gates.GateState = field(default_factory=gates.initial_state)
    gate_results: tuple[pb.GateResult, ...] = ()
    safety: safety.SafetyState = field(default_factory=safety.initial_state)
    barrier: barrier.BarrierState = field(default_factory=barrier.initial_state)
    telemetry: telemetry.TelemetryCounters = field(default_factory=telemetry.initial_state)
    events: int = 0
    unfolded: int = 0  # entries of kinds no core folds (requests, orders, digests, ...)
    last_entry_id: str = ""

    def digests(self) -> dict[tuple[str, str], bytes]:
        """``(actor, key) -> digest``: ``("seed", slot)`` per slot, ``(name, "")`` for the others."""
        out = {("seed", slot): seed.digest(s) for slot, s in sorted(self.seeds.items())}
        out[("gate", "")] = gates.digest(self.gates)
        out[("safety", "")] = safety.digest(self.safety)
        out[("barrier", "")] = barrier.digest(self.barrier)
        out[("telemetry", "")] = telemetry.digest(self.telemetry)
        return out

    def digest_of(self, actor: str, key: str = "") -> bytes | None:
        """The digest of one actor (None for a slot never seen)."""
        return self.digests().get((actor, key))

    def to_bytes(self) -> bytes:
        """A versioned, canonical snapshot."""
        plain = {
            "format": "kasmina-runstate",
            "version": FORMAT_VERSION,
            "seeds": {slot: seed.to_plain(s) for slot, s in sorted(self.seeds.items())},
            "gates": gates_plain(self.gates),
            "gate_results": [
                r.SerializeToString(deterministic=True).hex() for r in self.gate_results
            ],
            "safety": safety_plain(self.safety),
            "barrier": barrier_plain(self.barrier),
            "telemetry": telemetry.to_plain(self.telemetry),
            "events": self.events,
            "unfolded": self.unfolded,
            "last_entry_id": self.last_entry_id,
        }
        return json.dumps(plain, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RunState:
        """Inverse of ``to_bytes``; raises ReplayError on another format or version."""
        try:
            plain = json.loads(data)
        except ValueError as exc:
            raise ReplayError(f"not a run-state snapshot: {exc}") from None
        if not isinstance(plain, dict) or plain.get("format") != "kasmina-runstate":
            raise ReplayError("not a run-state snapshot")
        if plain.get("version") != FORMAT_VERSION:
            raise ReplayError(f"unsupported run-state snapshot version {plain.get('version')!r}")
        return cls(
            seeds={slot: seed.from_plain(s) for slot, s in plain["seeds"].items()},
            gates=gates_from(plain["gates"]),
            gate_results=tuple(
                pb.GateResult.FromString(bytes.fromhex(h)) for h in plain["gate_results"]
            ),
            safety=safety_from(plain["safety"]),
            barrier=barrier_from(plain["barrier"]),
            telemetry=telemetry.from_plain(plain["telemetry"]),
            events=int(plain["events"]),
            unfolded=int(plain["unfolded"]),
            last_entry_id=str(plain["last_entry_id"]),
        )


def _fold_one(state: RunState, entry_id: str, kind: str, message: Message) -> RunState:
    if kind in SEED.own_events:
        slot = str(getattr(message, "slot", ""))
        current = state.seeds.get(slot) or SEED.initial(slot)
        return replace(state, seeds={**state.seeds, slot: SEED.evolve(current, message)})
    if kind in GATES.own_events:
        assert isinstance(message, pb.GateResult)
        return replace(
            state,
            gates=GATES.evolve(state.gates, message),
            gate_results=(*state.gate_results, message),
        )
    if kind in SAFETY.own_events:
        return replace(state, safety=SAFETY.evolve(state.safety, message))
    if kind in BARRIER.own_events:
        return replace(state, barrier=BARRIER.evolve(state.barrier, message))
    if kind in TELEMETRY.own_events:
        return replace(state, telemetry=TELEMETRY.evolve(state.telemetry, message))
    return replace(state, unfolded=state.unfolded + 1)


def fold_events(
    events: Iterable[Event],
    start: RunState | None = None,
    *,
    quarantine: list[dict[str, str]] | None = None,
) -> RunState:
    """Fold ``(entry_id, kind, message)`` entries, from scratch or from a snapshot.

    An entry the cores refuse to fold (a duplicate, a gap, an illegal transition: the log was
    doctored) raises ReplayError, or, with ``quarantine``, is left out of the state and listed
    there (``entry_id``, ``kind``, ``reason``) so the fold goes on."""
    state = start if start is not None else RunState()
    for entry_id, kind, message in events:
        try:
            state = _fold_one(state, entry_id, kind, message)
        except ReplayError as exc:
            if quarantine is None:
                raise type(exc)(f"at entry {entry_id} ({kind}): {exc}") from None
            quarantine.append(
                {"entry_id": entry_id, "kind": kind, "reason": f"{type(exc).__name__}: {exc}"}
            )
            continue
        state = replace(state, events=state.events + 1, last_entry_id=entry_id)
    return state


def verify_digests(
    events: Iterable[Event], *, quarantine: list[dict[str, str]] | None = None
) -> list[dict[str, Any]]:
    """Re-fold and compare every recorded ``state.digest`` entry; one dict per mismatch.
    ``quarantine`` as for :func:`fold_events`."""
    state = RunState()
    mismatches: list[dict[str, Any]] = []
    for entry_id, kind, message in events:
        if kind == kinds.STATE_DIGEST:
            assert isinstance(message, pb.StateDigest)
            computed = state.digest_of(message.actor, message.key)
            if computed != message.digest:
                mismatches.append(
                    {
                        "entry_id": entry_id,
                        "actor": message.actor,
                        "key": message.key,
                        "recorded": message.digest.hex(),
                        "computed": computed.hex() if computed is not None else None,
                    }
                )
        state = fold_events([(entry_id, kind, message)], start=state, quarantine=quarantine)
    return mismatches


def _step(message: Message) -> int:
    for name in ("step", "barrier_step", "applied_at_step", "apply_at_step", "step_to"):
        if hasattr(message, name):
            return int(getattr(message, name))
    if isinstance(message, pb.CriticalEvent):
        return int(message.event.step)
    return 0


def _check(c: pb.GateCheck) -> dict[str, Any]:
    return {
        "name": c.name,
        "passed": c.passed,
        "value": c.value,
        "threshold": c.threshold,
        "comparator": c.comparator,
        "missing": c.missing,
        "detail": c.detail,
    }


def timeline(events: Iterable[Event], stream: str = "") -> Iterator[dict[str, Any]]:
    """One JSON-able dict per entry (docs/design.md §7 ``replay --json`` field names)."""
    for entry_id, kind, message in events:
        row: dict[str, Any] = {
            "entry_id": entry_id,
            "stream": stream,
            "kind": kind,
            "slot": str(getattr(message, "slot", "")),
            "step": _step(message),
        }
        if isinstance(message, pb.LifecycleTransition | pb.LifecycleRefused | pb.LifecycleProgress):
            row.update(_lifecycle_fields(message))
        else:
            row.update(_other_fields(message))
        yield row


def _lifecycle_fields(
    message: pb.LifecycleTransition | pb.LifecycleRefused | pb.LifecycleProgress,
) -> dict[str, Any]:
    row: dict[str, Any] = {}
    if isinstance(message, pb.LifecycleTransition):
        row.update({"from": stage_name(message.from_stage), "to": stage_name(message.to_stage)})
        row["cause"] = message.cause
        if message.has_gate:
            row["gate"] = gate_name(message.gate)
    elif isinstance(message, pb.LifecycleRefused):
        row.update(stage=stage_name(message.stage), request=message.request, reason=message.reason)
    elif message.HasField("awaiting"):
        row["awaiting"] = message.awaiting
    row["seq"] = message.seq
    row["command_id"] = message.command_id
    return row


def _other_fields(message: Message) -> dict[str, Any]:
    if isinstance(message, pb.GateResult):
        return {
            "gate": gate_name(message.gate),
            "passed": message.passed,
            "reason": message.reason,
            "checks": [_check(c) for c in message.checks],
        }
    if isinstance(message, pb.SafetyVerdict):
        return {
            "action": pb.VerdictAction.Name(message.action),
            "breaker": pb.BreakerState.Name(message.breaker),
            "strikes": message.strikes,
            "reason": message.reason,
        }
    if isinstance(message, pb.BarrierTimeout):
        return {"missing_ranks": list(message.missing_ranks), "by_clock": bool(message.deadline_ns)}
    if isinstance(message, pb.ByzantineReport):
        return {"rank": message.rank, "gradient": message.gradient}
    if isinstance(message, pb.ExecutionOrder | pb.GateRequest):
        return {"stage": stage_name(message.stage)}
    return {}
