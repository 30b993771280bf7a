"""Barrier votes off the training thread: at a barrier step the runtime snapshots what the state
digest reads (:func:`actors.execution.digest.snapshot`: the host fingerprint and one copy of the
seed bytes), the digest thread hashes the copy, and the vote for that step goes into the outbox
when its digest is ready. Every rank votes the digest of the same step, whatever the timing."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from actors.execution import digest
from actors.execution.mailbox import KIND_BARRIER_VOTE, Outbox
from leyline import pb

if TYPE_CHECKING:
    from actors.execution.runtime import ExecutionRuntime

MAX_PENDING = 2  # votes hashing at once per runtime; a third waits (bounds the copies held)


class BarrierVotes:
    """The votes of one runtime whose digest is still being computed."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.pending: deque[digest.Job] = deque()

    def cast(self, rt: ExecutionRuntime, step: int, grad_digest: bytes) -> None:
        """Vote for barrier ``step``: snapshot now, hash on the digest thread, queue the vote
        when its digest is ready. Waits only when ``MAX_PENDING`` votes are still hashing."""
        while self.pending and self.pending[0].done.done():
            self.pending.popleft().wait()  # raises what the hashing raised
        if len(self.pending) >= MAX_PENDING:
            self.pending.popleft().wait()
        vote = pb.BarrierVote(barrier_step=step, rank=rt.rank, world_size=rt.world_size,
                              grad_digest=grad_digest)  # fmt: skip
        snap = digest.snapshot(rt.model, rt.slots)
        self.pending.append(digest.submit(snap, lambda value: self._publish(vote, value)))

    def _publish(self, vote: pb.BarrierVote, value: bytes) -> None:
        vote.digest = value
        self.outbox.put(KIND_BARRIER_VOTE, vote)

    def hashing(self) -> bool:
        """True while a vote cast is not yet in the outbox."""
        return any(not job.done.done() for job in self.pending)

    def wait(self, timeout: float | None = None) -> None:
        """Return once every vote cast so far is in the outbox (``TimeoutError`` after
        ``timeout`` seconds per vote)."""
        while self.pending:
            self.pending[0].wait(timeout)
            self.pending.popleft()
