"""BarrierActor state and its fold: open barriers (proposal, votes) and the recently closed ones."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from actors.core import Message, UnknownEvent, digest_plain
from leyline import pb

__all__ = ["KEEP", "BarrierState", "digest", "evolve", "from_plain", "initial_state", "to_plain"]

KEEP = 32
"""Closed (committed or timed-out) barriers remembered, to judge late and repeated votes."""


@dataclass(frozen=True, slots=True)
class BarrierState:
    """Open barriers' votes and the recently closed ones."""

    pending: dict[int, dict[int, bytes]] = field(default_factory=dict)  # step -> rank -> digest
    grads: dict[int, dict[int, bytes]] = field(default_factory=dict)  # step -> rank -> grad digest
    # proposed and open: step -> (deadline in ns, the world size whose votes commit it)
    opened: dict[int, tuple[int, int]] = field(default_factory=dict)
    committed: dict[int, bytes] = field(default_factory=dict)  # step -> majority digest
    committed_votes: dict[int, dict[int, bytes]] = field(default_factory=dict)
    timed_out: tuple[int, ...] = ()
    commits: int = 0
    byzantine: int = 0
    timeouts: int = 0
    proposals: int = 0


def initial_state() -> BarrierState:
    """No barriers yet."""
    return BarrierState()


def _trim(steps: dict[int, Any]) -> dict[int, Any]:
    return {s: steps[s] for s in sorted(steps)[-KEEP:]}


def _without(steps: dict[int, Any], step: int) -> dict[int, Any]:
    return {s: v for s, v in steps.items() if s != step}


def _vote(state: BarrierState, event: pb.BarrierVote) -> BarrierState:
    step = event.barrier_step
    votes = dict(state.pending.get(step, {}))
    votes.setdefault(event.rank, event.digest)
    grads = dict(state.grads.get(step, {}))
    if event.grad_digest:
        grads.setdefault(event.rank, event.grad_digest)
    return replace(
        state,
        pending={**state.pending, step: votes},
        grads={**state.grads, step: grads} if grads else state.grads,
    )


def _close(state: BarrierState, step: int) -> BarrierState:
    return replace(
        state,
        pending=_without(state.pending, step),
        grads=_without(state.grads, step),
        opened=_without(state.opened, step),
    )


def evolve(state: BarrierState, event: Message) -> BarrierState:
    """Fold one barrier event."""
    if isinstance(event, pb.BarrierProposal):
        step = event.barrier_step
        return replace(
            state,
            pending={**state.pending, step: dict(state.pending.get(step, {}))},
            opened={**state.opened, step: (int(event.deadline_ns), int(event.world_size))},
            proposals=state.proposals + 1,
        )
    if isinstance(event, pb.BarrierVote):
        return _vote(state, event)
    if isinstance(event, pb.BarrierCommit):
        step = event.barrier_step
        votes = state.pending.get(step, {})
        closed = _close(state, step)
        return replace(
            closed,
            committed=_trim({**state.committed, step: event.digest}),
            committed_votes=_trim({**state.committed_votes, step: votes}),
            commits=state.commits + 1,
        )
    if isinstance(event, pb.ByzantineReport):
        return replace(state, byzantine=state.byzantine + 1)
    if isinstance(event, pb.BarrierTimeout):
        closed = _close(state, event.barrier_step)
        timed_out = tuple(sorted({*state.timed_out, event.barrier_step}))[-KEEP:]
        return replace(closed, timed_out=timed_out, timeouts=state.timeouts + 1)
    raise UnknownEvent(f"BarrierActor does not fold {type(event).__name__}")


def _votes(v: dict[int, bytes]) -> dict[str, str]:
    return {str(r): d.hex() for r, d in sorted(v.items())}


def _unvotes(v: dict[str, str]) -> dict[int, bytes]:
    return {int(r): bytes.fromhex(d) for r, d in v.items()}


def to_plain(state: BarrierState) -> dict[str, Any]:
    """JSON-able form (digests as hex)."""
    return {
        "pending": {str(s): _votes(v) for s, v in sorted(state.pending.items())},
        "grads": {str(s): _votes(v) for s, v in sorted(state.grads.items())},
        "opened": {str(s): list(o) for s, o in sorted(state.opened.items())},
        "committed": {str(s): d.hex() for s, d in sorted(state.committed.items())},
        "committed_votes": {str(s): _votes(v) for s, v in sorted(state.committed_votes.items())},
        "timed_out": list(state.timed_out),
        "commits": state.commits,
        "byzantine": state.byzantine,
        "timeouts": state.timeouts,
        "proposals": state.proposals,
    }


def from_plain(plain: dict[str, Any]) -> BarrierState:
    """Inverse of ``to_plain`` (a snapshot from before proposals reads as having none)."""
    return BarrierState(
        pending={int(s): _unvotes(v) for s, v in plain["pending"].items()},
        grads={int(s): _unvotes(v) for s, v in plain.get("grads", {}).items()},
        opened={int(s): (int(o[0]), int(o[1])) for s, o in plain.get("opened", {}).items()},
        committed={int(s): bytes.fromhex(d) for s, d in plain["committed"].items()},
        committed_votes={int(s): _unvotes(v) for s, v in plain["committed_votes"].items()},
        timed_out=tuple(int(s) for s in plain["timed_out"]),
        commits=int(plain["commits"]),
        byzantine=int(plain["byzantine"]),
        timeouts=int(plain["timeouts"]),
        proposals=int(plain.get("proposals", 0)),
    )


def digest(state: BarrierState) -> bytes:
    """sha256 of the canonical encoding."""
    return digest_plain(to_plain(state))
