"""Barrier votes hashed off the training thread: the training thread only snapshots, the vote
carries the digest of its own step, the wait is bounded, and a forked child still gets it."""

from __future__ import annotations

import multiprocessing
from typing import Any
from unittest import mock

import torch
from execution_helpers import data, germinate, kinds, order, runtime, tiny, train
from torch import nn

from actors.execution import ExecutionRuntime, digest, host_parameters
from actors.execution.digest import state_digest
from actors.execution.testing import digest_thread_held
from actors.execution.votes import MAX_PENDING
from leyline import pb


def _training() -> tuple[nn.Module, dict[str, Any], torch.optim.Optimizer, ExecutionRuntime]:
    model, slots = tiny()
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt, barrier_frequency=4)
    rt.submit(germinate("a", 0))
    rt.submit(order("a", pb.SEED_STAGE_TRAINING, 1))
    train(model, opt, rt, data(), range(2))
    rt.wait_votes()
    rt.drain_outbox()
    return model, slots, opt, rt


def test_the_vote_carries_its_steps_digest_though_seeds_trained_on_before_the_hash() -> None:
    """With the digest thread busy, on_step returns at the barrier step without a vote; the
    seeds train on; the vote that comes later holds the digest of the barrier step's state."""
    model, slots, opt, rt = _training()
    with digest_thread_held():
        train(model, opt, rt, data(), range(2, 5))
        at_barrier = state_digest(model, slots)
        train(model, opt, rt, data(), range(5, 7))
        assert not kinds(rt.drain_outbox(), "barrier.vote")  # not hashed yet: nobody waited
        assert len(rt.votes.pending) == 1
    assert state_digest(model, slots) != at_barrier  # the seed moved since the barrier
    rt.wait_votes(60)
    (vote,) = kinds(rt.drain_outbox(), "barrier.vote")
    assert vote.barrier_step == 4 and vote.digest == at_barrier and len(vote.grad_digest) == 32
    assert not rt.votes.pending


def test_votes_still_hashing_are_bounded() -> None:
    """With MAX_PENDING votes still hashing, the next barrier step waits for the oldest (so the
    snapshots held stay bounded), and every vote arrives, in step order."""
    model, _, opt, rt = _training()
    waited: list[int] = []
    real_wait = digest.Job.wait

    with digest_thread_held() as release:

        def waiting(job: digest.Job, timeout: float | None = None) -> bytes:
            if not job.done.done():  # the training thread blocks here: let the thread go on
                waited.append(len(rt.votes.pending))
                release()
            return real_wait(job, timeout)

        with mock.patch.object(digest.Job, "wait", waiting):
            train(model, opt, rt, data(), range(2, 4 * MAX_PENDING + 1))
            assert not waited and len(rt.votes.pending) == MAX_PENDING
            train(model, opt, rt, data(), range(4 * MAX_PENDING + 1, 4 * MAX_PENDING + 5))
    assert waited == [MAX_PENDING - 1]  # once, at the next barrier, for the oldest vote
    rt.wait_votes(60)
    steps = [v.barrier_step for v in kinds(rt.drain_outbox(), "barrier.vote")]
    assert steps == [4 * k for k in range(1, MAX_PENDING + 2)]


def _child_votes(rt: ExecutionRuntime, conn: Any) -> None:
    rt.wait_votes(60)
    conn.send([(v.barrier_step, v.digest) for v in kinds(rt.drain_outbox(), "barrier.vote")])


def test_a_vote_pending_at_a_fork_is_hashed_by_the_child() -> None:
    """A child forked while a vote waits for the parent's digest thread (absent in the child)
    hashes it itself: the same step, the same digest, no hang."""
    model, slots, opt, rt = _training()
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    with digest_thread_held():
        train(model, opt, rt, data(), range(2, 5))
        at_barrier = state_digest(model, slots)
        child = ctx.Process(target=_child_votes, args=(rt, send))
        child.start()
        try:
            assert receive.poll(60), "the child's vote never came"
            assert receive.recv() == [(4, at_barrier)]
        finally:
            child.kill()
            child.join()
    rt.wait_votes(60)
    assert [v.digest for v in kinds(rt.drain_outbox(), "barrier.vote")] == [at_barrier]
