"""BarrierActor core: three-phase consensus (propose, vote, commit) across data-parallel ranks.

Every ``frequency`` steps each rank votes ``(rank, barrier_step, digest, grad_digest)``.

- **Propose.** The first vote for a barrier step the actor has not seen opens it: a
  BarrierProposal names the step, the ranks whose votes commit it (``world_size``) and a wall-clock
  deadline (``barrier.timeout_s`` after the proposal, from ``ctx.now_s``; recorded in the event, so
  replay never reads a clock).
- **Vote.** Each vote is recorded as an event. A repeated vote with the same digest is idempotent;
  a repeated vote with another digest is reported and not counted.
- **Commit.** When all ``world_size`` votes are in, the barrier commits with the majority state
  digest (a tie goes to the digest of the lowest rank among the tied ones) and the commit goes to
  every rank: orders gated on this barrier may apply from then on. Every rank whose state digest
  differs gets a ByzantineReport; so does every rank whose sampled-gradient digest differs from the
  majority of the gradient digests sent (``gradient`` set). Reports are logged, never a rejection.
- **Timeout.** A barrier still missing ranks times out (BarrierTimeout naming them, barrier
  closed) when a BarrierTick (the shell's timer, driven by the clock) reaches its deadline, or when
  a vote for ``barrier_step + timeout_steps`` (or later) arrives.

Events: BarrierProposal, the accepted BarrierVote, BarrierCommit, ByzantineReport, BarrierTimeout.
"""

from __future__ import annotations

from collections import Counter

from actors.barrier.state import (
    KEEP,
    BarrierState,
    digest,
    evolve,
    from_plain,
    initial_state,
    to_plain,
)
from actors.core import Context, Decision, Message, Outgoing
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
    "timer",
    "to_plain",
]


def decide(state: BarrierState, msg: Message, ctx: Context) -> Decision:
    """Handle one BarrierVote or BarrierTick."""
    if isinstance(msg, pb.BarrierTick):
        return _on_tick(state, msg, ctx)
    if not isinstance(msg, pb.BarrierVote):
        return Decision.refuse(
            Reason.UNEXPECTED_KIND, f"BarrierActor does not handle {type(msg).__name__}"
        )
    return _on_vote(state, msg, ctx)


def _on_tick(state: BarrierState, msg: pb.BarrierTick, ctx: Context) -> Decision:
    """Expire the open barriers whose deadline the tick has passed (a tick from the future is
    refused)."""
    now = int(msg.now_ns)
    if ctx.now_s and now > (ctx.now_s + ctx.config.security.clock_tolerance_s) * 1e9:
        return Decision.refuse(Reason.INVALID, f"tick at {now} ns is ahead of the clock")
    return Decision(events=tuple(_expired(state, now)))


def _on_vote(state: BarrierState, msg: pb.BarrierVote, ctx: Context) -> Decision:
    """Record a vote (opening the barrier if it is the first); the commit once every rank voted."""
    cfg = ctx.config.barrier
    world = cfg.world_size  # the run's, never a vote's word (a vote cannot size the barrier)
    if msg.world_size and msg.world_size != world:
        return Decision.refuse(
            Reason.INVALID, f"vote for a world of {msg.world_size}, the run's is {world}"
        )
    refused = _refusal(state, msg, world, cfg.frequency)
    if refused is not None:
        return refused
    again = _vote_again(state, msg)
    if again is not None:
        return again
    step, rank = msg.barrier_step, msg.rank
    events: list[Message] = []
    if step not in state.opened and step not in state.pending:
        deadline = int((ctx.now_s + cfg.timeout_s) * 1e9)
        events.append(
            pb.BarrierProposal(
                barrier_step=step, world_size=world, deadline_ns=deadline, opened_by=rank
            )
        )
    vote = pb.BarrierVote()
    vote.CopyFrom(msg)
    vote.world_size = world
    events.append(vote)
    new = state
    for event in events:
        new = evolve(new, event)
    events += _overdue(new, step, world, cfg.timeout_steps)
    votes = new.pending.get(step, {})
    if len(votes) < world:
        return Decision(events=tuple(events))
    commit = _commit(step, votes, new.grads.get(step, {}), events)
    return Decision(events=tuple(events), outgoing=(Outgoing("execution", None, commit),))


def _vote_again(state: BarrierState, msg: pb.BarrierVote) -> Decision | None:
    """The decision on a rank's second vote for a barrier, or one after its commit: nothing for
    the same vote again, a Byzantine report for a different one; None for a first vote."""
    step, rank = msg.barrier_step, msg.rank
    seen = state.committed_votes.get(step) or state.pending.get(step, {})
    earlier = seen.get(rank, state.committed.get(step))
    if earlier is None:
        return None
    if rank in seen and earlier == msg.digest:
        return Decision()  # the same vote again: idempotent
    report = pb.ByzantineReport(
        barrier_step=step, rank=rank, digest=msg.digest, majority_digest=earlier
    )
    return Decision(events=(report,))


def timer(state: BarrierState, now_ns: int) -> pb.BarrierTick | None:
    """A BarrierTick once an open barrier's deadline has passed (the shell's timer sends it to
    the actor's own inbox), else None."""
    if any(deadline <= now_ns for deadline, _ in state.opened.values()):
        return pb.BarrierTick(now_ns=now_ns)
    return None


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


def _missing(state: BarrierState, step: int, world: int) -> list[int]:
    return sorted(set(range(world)) - set(state.pending.get(step, {})))


def _expired(state: BarrierState, now_ns: int) -> list[Message]:
    """Timeouts of the open barriers whose proposal deadline is at or before ``now_ns``."""
    return [
        pb.BarrierTimeout(
            barrier_step=step, missing_ranks=_missing(state, step, world), deadline_ns=deadline
        )
        for step, (deadline, world) in sorted(state.opened.items())
        if deadline <= now_ns
    ]


def _overdue(state: BarrierState, step: int, world: int, timeout_steps: int) -> list[Message]:
    """Timeouts of the open barriers that a vote for ``step`` shows are overdue."""
    return [
        pb.BarrierTimeout(
            barrier_step=other, missing_ranks=_missing(state, other, world), observed_step=step
        )
        for other in sorted(state.pending)
        if other != step and other + timeout_steps <= step
    ]


def _commit(
    step: int, votes: dict[int, bytes], grads: dict[int, bytes], events: list[Message]
) -> pb.BarrierCommit:
    """The commit of a full barrier, after a Byzantine report per vote off the majority state
    digest and per sampled-gradient digest off the majority (all appended to ``events``)."""
    majority = _majority(votes)
    events += [
        pb.ByzantineReport(barrier_step=step, rank=r, digest=votes[r], majority_digest=majority)
        for r in sorted(votes)
        if votes[r] != majority
    ]
    if len(grads) > 1:
        usual = _majority(grads)
        events += [
            pb.ByzantineReport(
                barrier_step=step, rank=r, digest=grads[r], majority_digest=usual, gradient=True
            )
            for r in sorted(grads)
            if grads[r] != usual
        ]
    commit = pb.BarrierCommit(barrier_step=step, digest=majority, ranks=sorted(votes))
    events.append(commit)
    return commit


def _majority(votes: dict[int, bytes]) -> bytes:
    counts = Counter(votes.values())
    best = max(counts.values())
    return next(votes[r] for r in sorted(votes) if counts[votes[r]] == best)
