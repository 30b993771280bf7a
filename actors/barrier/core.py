"""BarrierActor core: epoch-aligned barriers across data-parallel ranks.

Every ``frequency`` steps each rank votes ``(rank, barrier_step, digest)``. When all
``world_size`` votes are in, the barrier commits with the majority digest (a tie goes to the
digest of the lowest rank among the tied ones); every rank whose digest differs gets a
ByzantineReport (logged, never a rejection). A repeated vote with the same digest is idempotent; a
repeated vote with another digest is reported and not counted. When a vote for
``barrier_step + timeout_steps`` (or later) arrives while that earlier barrier still misses
ranks, a BarrierTimeout names them and the barrier is closed (time counted in steps, no clock).

Events: the accepted BarrierVote itself, BarrierCommit, ByzantineReport, BarrierTimeout.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from actors.core import Context, Decision, Message, Outgoing, UnknownEvent, digest_plain
from contracts.errors import Reason
from leyline import pb

__all__ = [
    "KEEP",
    "BarrierState",
    "decide",
    "digest",
    "evolve",
    "from_plain",
    "initial_state",
    "to_plain",
]

KEEP = 32
"""Closed (committed or timed-out) barriers remembered, to judge late and repeated votes."""


@dataclass(frozen=True, slots=True)
class BarrierState:
    """Open barriers' votes and the recently closed ones."""

    pending: dict[int, dict[int, bytes]] = field(default_factory=dict)  # step -> rank -> digest
    committed: dict[int, bytes] = field(default_factory=dict)  # step -> majority digest
    committed_votes: dict[int, dict[int, bytes]] = field(default_factory=dict)
    timed_out: tuple[int, ...] = ()
    commits: int = 0
    byzantine: int = 0
    timeouts: int = 0


def initial_state() -> BarrierState:
    """No barriers yet."""
    return BarrierState()


def decide(state: BarrierState, msg: Message, ctx: Context) -> Decision:
    """Handle one BarrierVote."""
    if not isinstance(msg, pb.BarrierVote):
        return Decision.refuse(
            Reason.UNEXPECTED_KIND, f"BarrierActor does not handle {type(msg).__name__}"
        )
    cfg = ctx.config.barrier
    world = msg.world_size or cfg.world_size
    refused = _refusal(state, msg, world, cfg.frequency)
    if refused is not None:
        return refused
    step, rank = msg.barrier_step, msg.rank
    seen = state.committed_votes.get(step) or state.pending.get(step, {})
    earlier = seen.get(rank, state.committed.get(step))
    if earlier is not None:  # a vote again, or one after the commit
        if rank in seen and earlier == msg.digest:
            return Decision()  # the same vote again: idempotent
        report = pb.ByzantineReport(
            barrier_step=step, rank=rank, digest=msg.digest, majority_digest=earlier
        )
        return Decision(events=(report,))
    vote = pb.BarrierVote()
    vote.CopyFrom(msg)
    vote.world_size = world
    new = evolve(state, vote)
    events: list[Message] = [vote, *_timeouts(new, step, world, cfg.timeout_steps)]
    votes = new.pending.get(step, {})
    if len(votes) < world:
        return Decision(events=tuple(events))
    commit = _commit(step, votes, events)
    return Decision(events=tuple(events), outgoing=(Outgoing("execution", None, commit),))


def _refusal(state: BarrierState, msg: pb.BarrierVote, world: int, every: int) -> Decision | None:
    """The refusal of a vote no barrier can take (None: it can be counted)."""
    step, rank = msg.barrier_step, msg.rank
    if rank >= world:
        return Decision.refuse(Reason.UNKNOWN_RANK, f"rank {rank} outside a world of {world}")
    if step % every:
        return Decision.refuse(
            Reason.NOT_A_BARRIER_STEP, f"step {step} is not a barrier step (every {every})"
        )
    if step in state.timed_out:
        return Decision.refuse(Reason.BARRIER_TIMED_OUT, f"barrier {step} already timed out")
    return None


def _timeouts(state: BarrierState, step: int, world: int, timeout_steps: int) -> list[Message]:
    """Timeouts of the open barriers that a vote for ``step`` shows are overdue."""
    return [
        pb.BarrierTimeout(
            barrier_step=other,
            missing_ranks=sorted(set(range(world)) - set(state.pending[other])),
            observed_step=step,
        )
        for other in sorted(state.pending)
        if other != step and other + timeout_steps <= step
    ]


def _commit(step: int, votes: dict[int, bytes], events: list[Message]) -> pb.BarrierCommit:
    """The commit of a full barrier, after a Byzantine report per vote off the majority (both
    appended to ``events``)."""
    majority = _majority(votes)
    events += [
        pb.ByzantineReport(barrier_step=step, rank=r, digest=votes[r], majority_digest=majority)
        for r in sorted(votes)
        if votes[r] != majority
    ]
    commit = pb.BarrierCommit(barrier_step=step, digest=majority, ranks=sorted(votes))
    events.append(commit)
    return commit


def _majority(votes: dict[int, bytes]) -> bytes:
    counts = Counter(votes.values())
    best = max(counts.values())
    return next(votes[r] for r in sorted(votes) if counts[votes[r]] == best)


def _trim(steps: dict[int, Any]) -> dict[int, Any]:
    return {s: steps[s] for s in sorted(steps)[-KEEP:]}


def evolve(state: BarrierState, event: Message) -> BarrierState:
    """Fold one barrier event."""
    if isinstance(event, pb.BarrierVote):
        votes = dict(state.pending.get(event.barrier_step, {}))
        votes.setdefault(event.rank, event.digest)
        return replace(state, pending={**state.pending, event.barrier_step: votes})
    if isinstance(event, pb.BarrierCommit):
        pending = dict(state.pending)
        votes = pending.pop(event.barrier_step, {})
        return replace(
            state,
            pending=pending,
            committed=_trim({**state.committed, event.barrier_step: event.digest}),
            committed_votes=_trim({**state.committed_votes, event.barrier_step: votes}),
            commits=state.commits + 1,
        )
    if isinstance(event, pb.ByzantineReport):
        return replace(state, byzantine=state.byzantine + 1)
    if isinstance(event, pb.BarrierTimeout):
        pending = dict(state.pending)
        pending.pop(event.barrier_step, None)
        timed_out = tuple(sorted({*state.timed_out, event.barrier_step}))[-KEEP:]
        return replace(state, pending=pending, timed_out=timed_out, timeouts=state.timeouts + 1)
    raise UnknownEvent(f"BarrierActor does not fold {type(event).__name__}")


def to_plain(state: BarrierState) -> dict[str, Any]:
    """JSON-able form (digests as hex)."""

    def votes(v: dict[int, bytes]) -> dict[str, str]:
        return {str(r): d.hex() for r, d in sorted(v.items())}

    return {
        "pending": {str(s): votes(v) for s, v in sorted(state.pending.items())},
        "committed": {str(s): d.hex() for s, d in sorted(state.committed.items())},
        "committed_votes": {str(s): votes(v) for s, v in sorted(state.committed_votes.items())},
        "timed_out": list(state.timed_out),
        "commits": state.commits,
        "byzantine": state.byzantine,
        "timeouts": state.timeouts,
    }


def from_plain(plain: dict[str, Any]) -> BarrierState:
    """Inverse of ``to_plain``."""

    def votes(v: dict[str, str]) -> dict[int, bytes]:
        return {int(r): bytes.fromhex(d) for r, d in v.items()}

    return BarrierState(
        pending={int(s): votes(v) for s, v in plain["pending"].items()},
        committed={int(s): bytes.fromhex(d) for s, d in plain["committed"].items()},
        committed_votes={int(s): votes(v) for s, v in plain["committed_votes"].items()},
        timed_out=tuple(int(s) for s in plain["timed_out"]),
        commits=int(plain["commits"]),
        byzantine=int(plain["byzantine"]),
        timeouts=int(plain["timeouts"]),
    )


def digest(state: BarrierState) -> bytes:
    """sha256 of the canonical encoding."""
    return digest_plain(to_plain(state))
