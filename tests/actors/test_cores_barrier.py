"""BarrierActor core: propose, vote, commit; Byzantine reports, duplicates, timeouts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from actors import barrier
from actors.barrier.core import from_plain, to_plain
from actors.core import Context, Decision, Message, fold
from contracts.config import KasminaConfig
from leyline import pb

CFG = KasminaConfig.load(env={}, overrides={"barrier.world_size": 3, "barrier.frequency": 10})


class Driver:
    """Feeds votes to a BarrierActor core."""

    def __init__(self) -> None:
        self.state = barrier.initial_state()
        self.events: list[Message] = []

    def vote(
        self, step: int, rank: int, digest: bytes, grad: bytes = b"", now_s: float = 0.0
    ) -> Decision:
        vote = pb.BarrierVote(barrier_step=step, rank=rank, digest=digest, grad_digest=grad)
        return self.feed(vote, now_s)

    def feed(self, message: Message, now_s: float = 0.0) -> Decision:
        d = barrier.decide(self.state, message, Context(config=CFG, now_s=now_s))
        self.state = fold(barrier.evolve, self.state, d.events)
        self.events.extend(d.events)
        return d


def _of(d: Decision, cls: type) -> list[Message]:
    return [e for e in d.events if isinstance(e, cls)]


def test_commit_when_all_ranks_agree() -> None:
    """All world_size votes with one digest -> BarrierCommit with every rank."""
    drv = Driver()
    assert not _of(drv.vote(10, 0, b"x"), pb.BarrierCommit)
    assert not _of(drv.vote(10, 1, b"x"), pb.BarrierCommit)
    d = drv.vote(10, 2, b"x")
    (commit,) = _of(d, pb.BarrierCommit)
    assert commit.digest == b"x" and list(commit.ranks) == [0, 1, 2]  # type: ignore[attr-defined]
    assert d.outgoing[0].to == "execution"
    assert drv.state.commits == 1 and not drv.state.pending


def test_byzantine_rank_reported_commit_still_happens() -> None:
    """A digest differing from the majority is reported; the commit carries the majority digest."""
    drv = Driver()
    drv.vote(10, 0, b"good")
    drv.vote(10, 1, b"evil")
    d = drv.vote(10, 2, b"good")
    (report,) = _of(d, pb.ByzantineReport)
    assert report.rank == 1 and report.majority_digest == b"good"  # type: ignore[attr-defined]
    assert _of(d, pb.BarrierCommit)[0].digest == b"good"  # type: ignore[attr-defined]


def test_duplicate_vote_same_digest_is_idempotent() -> None:
    """The same vote twice changes nothing and emits nothing."""
    drv = Driver()
    drv.vote(10, 0, b"x")
    before = drv.state
    assert drv.vote(10, 0, b"x").empty and drv.state == before


def test_duplicate_vote_other_digest_reported_not_counted() -> None:
    """A rank changing its vote is reported; its first vote stands."""
    drv = Driver()
    drv.vote(10, 0, b"x")
    d = drv.vote(10, 0, b"y")
    assert len(_of(d, pb.ByzantineReport)) == 1
    assert drv.state.pending[10][0] == b"x"


def test_missing_rank_times_out_on_later_vote() -> None:
    """A vote for barrier_step + timeout_steps while ranks are missing -> BarrierTimeout."""
    drv = Driver()
    drv.vote(10, 0, b"x")
    drv.vote(10, 1, b"x")
    assert not _of(drv.vote(20, 0, b"y"), pb.BarrierTimeout)
    d = drv.vote(30, 0, b"z")
    (timeout,) = _of(d, pb.BarrierTimeout)
    assert timeout.barrier_step == 10 and list(timeout.missing_ranks) == [2]  # type: ignore[attr-defined]
    assert timeout.observed_step == 30  # type: ignore[attr-defined]
    assert barrier.decide(
        drv.state, pb.BarrierVote(barrier_step=10, rank=2, digest=b"x"), Context(config=CFG)
    ).rejected


def test_out_of_world_rank_and_off_boundary_rejected() -> None:
    """Votes from ranks outside the world or off a barrier step are rejected without events."""
    drv = Driver()
    assert drv.vote(10, 7, b"x").rejected
    assert drv.vote(15, 0, b"x").rejected
    assert not drv.events


def test_a_vote_cannot_size_the_barrier() -> None:
    """A vote naming another world size (a huge one that would build a set of every rank, or
    1 that would commit alone) is refused without events; one naming the run's, or none, counts
    towards the run's world of 3."""
    drv = Driver()
    for world in (2**32 - 1, 3_000_000, 1):
        vote = pb.BarrierVote(barrier_step=10, rank=0, digest=b"x", world_size=world)
        d = drv.feed(vote)
        assert d.rejected and "the run's is 3" in d.detail
    assert not drv.events
    drv.feed(pb.BarrierVote(barrier_step=10, rank=0, digest=b"x", world_size=3))
    d = drv.vote(10, 1, b"x")
    assert not _of(d, pb.BarrierCommit)
    d = drv.vote(10, 2, b"x")
    assert len(_of(d, pb.BarrierCommit)) == 1


def test_fold_replays_and_plain_roundtrips() -> None:
    """Folding the emitted events rebuilds the state; plain form and digest round-trip."""
    drv = Driver()
    for step in (10, 20, 30, 40):
        for rank in range(3):
            if not (step == 20 and rank == 2):
                drv.vote(step, rank, b"d" if rank else b"e")
    assert fold(barrier.evolve, barrier.initial_state(), drv.events) == drv.state
    again = from_plain(to_plain(drv.state))
    assert again == drv.state and barrier.digest(again) == barrier.digest(drv.state)
    assert drv.state.timeouts == 1 and drv.state.byzantine == 3


_votes = st.lists(
    st.tuples(st.integers(1, 8), st.integers(0, 3), st.sampled_from([b"a", b"b"])), max_size=60
)


@settings(max_examples=100, deadline=None)
@given(_votes)
def test_random_votes_fold_to_live_state(items: list[tuple[int, int, bytes]]) -> None:
    """Random votes (duplicates, conflicts, gaps): fold == live; each barrier commits at most once."""
    drv = Driver()
    for k, rank, digest in items:
        drv.vote(k * 10, rank, digest)
    assert fold(barrier.evolve, barrier.initial_state(), drv.events) == drv.state
    commits = [e.barrier_step for e in drv.events if isinstance(e, pb.BarrierCommit)]
    assert len(commits) == len(set(commits))
    timeouts = {e.barrier_step for e in drv.events if isinstance(e, pb.BarrierTimeout)}
    assert not timeouts & set(commits)


def test_first_vote_proposes_the_barrier_with_its_deadline() -> None:
    """The first vote for a step opens it with one BarrierProposal (world, clock deadline)
    before the vote; later votes propose nothing."""
    drv = Driver()
    d = drv.vote(10, 1, b"x", now_s=100.0)
    proposal, vote = d.events
    assert isinstance(proposal, pb.BarrierProposal) and isinstance(vote, pb.BarrierVote)
    assert proposal.world_size == 3 and proposal.opened_by == 1
    assert proposal.deadline_ns == int((100.0 + CFG.barrier.timeout_s) * 1e9)
    assert not _of(drv.vote(10, 0, b"x", now_s=101.0), pb.BarrierProposal)
    drv.vote(10, 2, b"x")
    assert drv.state.proposals == 1 and not drv.state.opened


def test_tick_past_the_deadline_times_the_barrier_out() -> None:
    """A BarrierTick at or after the proposal's deadline times the barrier out, naming the
    missing ranks; a tick before it does nothing; a later vote for it is refused."""
    drv = Driver()
    drv.vote(10, 0, b"x", now_s=100.0)
    deadline = int((100.0 + CFG.barrier.timeout_s) * 1e9)
    assert barrier.timer(drv.state, deadline - 1) is None
    assert drv.feed(pb.BarrierTick(now_ns=deadline - 1)).empty
    tick = barrier.timer(drv.state, deadline)
    assert isinstance(tick, pb.BarrierTick)
    (timeout,) = _of(drv.feed(tick), pb.BarrierTimeout)
    assert list(timeout.missing_ranks) == [1, 2] and timeout.deadline_ns == deadline  # type: ignore[attr-defined]
    assert drv.state.timeouts == 1 and barrier.timer(drv.state, deadline * 2) is None
    assert drv.vote(10, 1, b"x").rejected


def test_tick_ahead_of_the_clock_is_refused() -> None:
    """A tick claiming a time beyond the decider's clock (and its tolerance) changes nothing."""
    drv = Driver()
    drv.vote(10, 0, b"x", now_s=100.0)
    far = int((100.0 + CFG.barrier.timeout_s + 10 * CFG.security.clock_tolerance_s) * 1e9)
    d = drv.feed(pb.BarrierTick(now_ns=far), now_s=100.0)
    assert d.rejected and not d.events and drv.state.opened


def test_gradient_disagreement_is_byzantine_evidence_not_a_refusal() -> None:
    """A rank whose sampled-gradient digest differs from the others' is reported (gradient
    set); the barrier still commits with the agreeing state digest."""
    drv = Driver()
    drv.vote(10, 0, b"s", grad=b"g")
    drv.vote(10, 1, b"s", grad=b"bad")
    d = drv.vote(10, 2, b"s", grad=b"g")
    (report,) = _of(d, pb.ByzantineReport)
    assert report.gradient and report.rank == 1  # type: ignore[attr-defined]
    assert report.digest == b"bad" and report.majority_digest == b"g"  # type: ignore[attr-defined]
    assert _of(d, pb.BarrierCommit) and drv.state.byzantine == 1
    assert fold(barrier.evolve, barrier.initial_state(), drv.events) == drv.state
