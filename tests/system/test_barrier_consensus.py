"""Three-phase barrier on a bus: the proposal opens a barrier and the timer times it out on time,
with no further vote arriving."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from actors.execution import ExecutionRuntime, RuntimeConfig, host_parameters, insert_slots
from actors.execution.digest import state_digest
from actors.execution.testing import TinyMLP, digest_thread_held
from actors.hosting import FRAME
from bus import Bus
from bus.testing import eventually
from contracts import KasminaConfig, KeyRing, Signer, kinds, streams
from leyline import pb
from scenarios.cluster import read_events, running_cluster

CONFIG = KasminaConfig.load(
    env={},
    overrides={
        "barrier.frequency": 5,
        "barrier.world_size": 2,
        "barrier.timeout_s": 0.4,
        "barrier.tick_s": 0.05,
    },
)


async def _vote(bus: Bus, run: str, ring: KeyRing, step: int, rank: int) -> None:
    vote = pb.BarrierVote(barrier_step=step, rank=rank, world_size=2, digest=b"d")
    inbox = streams.inbox(run, "barrier")
    frame = Signer(ring, f"execution:{rank}").seal(kinds.BARRIER_VOTE, vote, stream=inbox)
    await bus.publish(inbox, {FRAME: frame, "kind": kinds.BARRIER_VOTE.encode()})


async def _committed(bus: Bus, run: str, ring: KeyRing) -> None:
    """Until the run's log holds a barrier commit (at most 20 s)."""

    async def committed() -> bool:
        return any(k == kinds.BARRIER_COMMIT for _, k, _ in await read_events(bus, run, ring))

    await eventually(committed, timeout_s=20.0)


async def test_a_lone_vote_times_out_by_the_clock(bus: Bus, run_id: str) -> None:
    """One rank of two votes and nothing else arrives: the BarrierActor's timer times the
    barrier out once the proposal's deadline passes, naming the missing rank."""
    ring = KeyRing.generate()
    async with running_cluster(
        bus, run=run_id, slots=[], ring=ring, config=CONFIG, actors=["barrier"]
    ) as cl:
        sent = time.time_ns()
        await _vote(bus, run_id, ring, 10, 0)

        async def timed_out() -> bool:
            return any(
                k == kinds.BARRIER_TIMEOUT for _, k, _ in await read_events(bus, run_id, ring)
            )

        await eventually(timed_out, timeout_s=20.0)
        (shell,) = cl.shells
        assert shell.housekeeping.timed >= 1
    events = [(k, m) for _, k, m in await read_events(bus, run_id, ring)]
    order = [k for k, _ in events if k.startswith("barrier.")]
    assert order == [kinds.BARRIER_PROPOSE, kinds.BARRIER_VOTE, kinds.BARRIER_TIMEOUT]
    proposal = events[0][1]
    timeout = next(m for k, m in events if k == kinds.BARRIER_TIMEOUT)
    assert list(timeout.missing_ranks) == [1] and timeout.observed_step == 0
    assert timeout.deadline_ns == proposal.deadline_ns >= sent + int(0.4e9)


async def test_a_full_barrier_commits_and_never_times_out(bus: Bus, run_id: str) -> None:
    """Both ranks vote: the barrier commits to every rank and the timer, past the deadline,
    sends nothing."""
    ring = KeyRing.generate()
    async with running_cluster(
        bus, run=run_id, slots=[], ring=ring, config=CONFIG, actors=["barrier"]
    ) as cl:
        await _vote(bus, run_id, ring, 10, 1)
        await _vote(bus, run_id, ring, 10, 0)

        await _committed(bus, run_id, ring)
        (shell,) = cl.shells
        assert await shell.housekeeping.tick(time.time_ns() + int(5e9)) is False
    kinds_seen = [k for _, k, _ in await read_events(bus, run_id, ring)]
    assert kinds.BARRIER_TIMEOUT not in kinds_seen
    assert kinds_seen.count(kinds.BARRIER_PROPOSE) == 1


async def test_a_commit_reaches_the_runs_ranks_only_whatever_the_registry_holds(
    bus: Bus, run_id: str
) -> None:
    """Made-up ranks a writer adds to the execution registry get no copy of the commit (each
    would be a stream no one reads or trims, written at every barrier): ranks 0 and 1 of a world
    of two do."""
    ring = KeyRing.generate()
    made_up = [streams.inbox(run_id, "execution", str(r)) for r in range(2, 60)]
    real = [streams.inbox(run_id, "execution", str(r)) for r in (0, 1)]
    await bus.register(streams.registry(run_id, "execution"), *real, *made_up)
    async with running_cluster(
        bus, run=run_id, slots=[], ring=ring, config=CONFIG, actors=["barrier"]
    ):
        await _vote(bus, run_id, ring, 10, 1)
        await _vote(bus, run_id, ring, 10, 0)

        await _committed(bus, run_id, ring)
    inboxes = await bus.streams(streams.inbox(run_id, "execution", "*"))
    assert inboxes == sorted(real)


async def test_a_runtime_vote_hashed_off_the_training_thread_commits_its_step(
    bus: Bus, run_id: str
) -> None:
    """A real runtime's vote for barrier 5, hashed after later steps ran (its digest thread was
    busy), reaches the BarrierActor with step 5 and that step's digest, and the barrier commits
    back to the runtime."""
    torch.manual_seed(0)
    model = TinyMLP()
    slots = insert_slots(model, {"a": "fc1"})
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    runtime = ExecutionRuntime(model, slots, opt, RuntimeConfig(device="cpu", probe_every=0,
                               report_every=0, barrier_frequency=5))  # fmt: skip
    config = KasminaConfig.load(
        env={}, overrides={"barrier.frequency": 5, "barrier.world_size": 1, "barrier.timeout_s": 60}
    )
    ring = KeyRing.generate()
    async with running_cluster(
        bus, run=run_id, slots=[], runtimes=[runtime], ring=ring, config=config, actors=["barrier"]
    ) as cl:
        with digest_thread_held():
            for step in range(1, 8):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
                await cl.step(step)
                if step == 5:
                    at_barrier = state_digest(model, slots)
            assert runtime.outbox_pending() and runtime.committed_barrier < 5

        async def committed() -> bool:
            return runtime.committed_barrier == 5

        await eventually(committed, timeout_s=20.0)
    votes = [m for _, k, m in await read_events(bus, run_id, ring) if k == kinds.BARRIER_VOTE]
    assert [(v.barrier_step, v.digest) for v in votes] == [(5, at_barrier)]
    assert state_digest(model, slots) != at_barrier
