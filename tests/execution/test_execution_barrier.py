"""Barrier-gated orders, sampled-gradient digests and step confirmations on a real torch model."""

from __future__ import annotations

import torch
from execution_helpers import data, germinate, kinds, order, runtime, tiny, train

from actors import barrier
from actors.core import Context, fold
from actors.execution import host_parameters
from actors.execution.confirm import StepConfirmation
from contracts.config import KasminaConfig
from leyline import pb


def _training(**kw: object):  # type: ignore[no-untyped-def]
    """A runtime whose slot ``a`` holds a seed in TRAINING after step 1."""
    model, slots = tiny()
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt, **kw)
    rt.submit(germinate("a", 0))
    rt.submit(order("a", pb.SEED_STAGE_TRAINING, 1))
    train(model, opt, rt, data(), range(2))
    return model, slots, opt, rt


def _blend(at: int, after: int) -> pb.ExecutionOrder:
    return order("a", pb.SEED_STAGE_BLENDING, at, barrier_gated=True, after_barrier=after)


def test_a_gated_order_waits_for_its_barriers_commit() -> None:
    """A BLENDING order gated on barrier 10 does not apply at its step 20 before the commit of
    barrier 10 arrives; it applies at the first boundary after, acked with the commit."""
    model, slots, opt, rt = _training()
    rt.submit(_blend(20, 10))
    train(model, opt, rt, data(), range(2, 24))
    assert slots["a"].stage == pb.SEED_STAGE_TRAINING
    assert not [c for c in rt.confirmations() if c.stage == "BLENDING"]
    rt.barrier_committed(10)
    train(model, opt, rt, data(), range(24, 25))
    assert slots["a"].stage == pb.SEED_STAGE_BLENDING
    ack = kinds(rt.drain_outbox(), "exec.ack")[-1]
    assert ack.ok and ack.applied_at_step == 24 and ack.barrier_gated
    assert ack.committed_barrier == 10 and ack.evidence.metrics["barrier_wait_steps"] == 4.0
    assert not ack.error  # waiting for the commit is the rule, not lateness


def test_a_later_commit_releases_and_an_early_commit_does_not() -> None:
    """A commit of an earlier barrier leaves the order waiting; one of a later barrier (the
    awaited one timed out) releases it; with the commit in time it applies on its own step."""
    model, slots, opt, rt = _training()
    rt.submit(_blend(20, 10))
    rt.barrier_committed(0)
    train(model, opt, rt, data(), range(2, 21))
    assert slots["a"].stage == pb.SEED_STAGE_TRAINING
    rt.barrier_committed(20)
    train(model, opt, rt, data(), range(21, 22))
    assert slots["a"].stage == pb.SEED_STAGE_BLENDING
    model, slots, opt, rt = _training()
    rt.submit(_blend(20, 10))
    rt.barrier_committed(10)
    train(model, opt, rt, data(), range(2, 21))
    (blend,) = [c for c in rt.confirmations() if c.stage == "BLENDING"]
    assert blend.step == 20 and blend.barrier == 10 and blend.ok


def test_every_answered_order_is_a_step_confirmation() -> None:
    """Each applied or refused order reaches the trainer once, in order, through
    ``confirmations()`` and the ``on_confirm`` callback alike, matching its ack."""
    seen: list[StepConfirmation] = []
    model, _, opt, rt = _training(on_confirm=seen.append)
    rt.submit(order("b", pb.SEED_STAGE_BLENDING, 3))  # slot b holds no seed: refused
    train(model, opt, rt, data(), range(2, 4))
    got = rt.confirmations()
    assert got == seen and not rt.confirmations()
    assert [(c.slot, c.stage, c.step, c.ok) for c in got] == [
        ("a", "GERMINATED", 0, True),
        ("a", "TRAINING", 1, True),
        ("b", "DORMANT", 3, False),
    ]
    acks = kinds(rt.drain_outbox(), "exec.ack")
    assert [StepConfirmation.from_ack(a) for a in acks] == got
    assert "holds no seed" in got[-1].error and got[-1].barrier is None


def test_sampled_gradient_digests_agree_and_a_tampered_rank_is_reported() -> None:
    """Two replicas on the same data vote the same sampled seed-gradient digest; a rank whose
    seed gradient was altered votes another, and the barrier reports it as gradient evidence."""
    votes = []
    for rank in (0, 1, 2):
        model, slots, opt, rt = _training(barrier_frequency=4, rank=rank, world_size=3)
        if rank == 2:  # a faulty rank: its seed gradients come out scaled
            for p in slots["a"].seed_parameters():
                p.register_hook(lambda g: g * 1.5)
        train(model, opt, rt, data(), range(2, 5))
        rt.wait_votes()
        (vote,) = [v for v in kinds(rt.drain_outbox(), "barrier.vote") if v.barrier_step == 4]
        votes.append(vote)
    assert len(votes[0].grad_digest) == 32
    assert votes[0].grad_digest == votes[1].grad_digest != votes[2].grad_digest
    cfg = KasminaConfig.load(env={}, overrides={"barrier.world_size": 3, "barrier.frequency": 4})
    state, events = barrier.initial_state(), []
    for vote in votes:
        d = barrier.decide(state, vote, Context(config=cfg))
        state = fold(barrier.evolve, state, d.events)
        events += d.events
    reports = [e for e in events if isinstance(e, pb.ByzantineReport)]
    assert [(r.rank, r.gradient) for r in reports if r.gradient] == [(2, True)]
    assert any(isinstance(e, pb.BarrierCommit) for e in events)
