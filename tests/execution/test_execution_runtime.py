"""ExecutionRuntime: order timing, acks, outbox traffic, counterfactuals, emergency checkpoints."""

from __future__ import annotations

import os
import pathlib
import threading

import torch
import torch.nn.functional as F
from execution_helpers import data, germinate, kinds, order, runtime, tiny, train
from torch import nn

from actors.execution import host_parameters
from leyline import pb


def test_orders_apply_exactly_at_their_step() -> None:
    """An order submitted early waits; it applies in on_step(apply_at_step), never before."""
    model, slots = tiny()
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt)
    rt.submit(germinate("a", 3))
    train(model, opt, rt, data(), range(3))
    assert slots["a"].seed is None and not rt.drain_outbox()
    train(model, opt, rt, data(), range(3, 4))
    (ack,) = kinds(rt.drain_outbox(), "exec.ack")
    assert ack.ok and ack.applied_at_step == 3 and ack.stage == pb.SEED_STAGE_GERMINATED
    assert ack.order_id and not ack.error and ack.evidence.blueprint == "residual_mlp"


def test_late_orders_apply_at_the_next_boundary_marked_late() -> None:
    """An order whose step has passed applies at the next boundary with a late marker."""
    model, slots = tiny()
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt)
    train(model, opt, rt, data(), range(5))
    rt.submit(germinate("a", 2))
    train(model, opt, rt, data(), range(5, 6))
    (ack,) = kinds(rt.drain_outbox(), "exec.ack")
    assert ack.ok and ack.applied_at_step == 5
    assert ack.error.startswith("late") and ack.evidence.metrics["late_steps"] == 3.0


def test_impossible_orders_are_acked_with_an_error() -> None:
    """Training a slot without a seed, or an unknown slot, is refused with a reason."""
    model, slots = tiny()
    rt = runtime(model, slots, torch.optim.SGD(host_parameters(model, slots), lr=0.1))
    rt.submit(order("a", pb.SEED_STAGE_TRAINING, 0))
    rt.submit(order("zz", pb.SEED_STAGE_TRAINING, 0))
    rt.on_step(0)
    acks = kinds(rt.drain_outbox(), "exec.ack")
    assert [a.ok for a in acks] == [False, False]
    assert "no seed" in acks[0].error and "unknown slot" in acks[1].error


def test_submit_is_safe_from_other_threads() -> None:
    """Orders submitted concurrently from several threads are all applied and acked once."""
    model, slots = tiny()
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt)

    def push(i: int) -> None:
        for j in range(25):
            o = order("a", pb.SEED_STAGE_DORMANT, 1)
            o.order_id = f"{i}-{j}"
            rt.submit(o)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rt.on_step(1)
    acks = kinds(rt.drain_outbox(), "exec.ack")
    assert len({a.order_id for a in acks}) == 100 and all(a.ok for a in acks)


def test_outbox_carries_reports_telemetry_and_barrier_votes() -> None:
    """Step reports every report_every, telemetry for seeded slots, votes every barrier step."""
    model, slots = tiny()
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt, report_every=2, barrier_frequency=4, probe_every=2)
    rt.submit(germinate("a", 0))
    rt.submit(order("a", pb.SEED_STAGE_TRAINING, 1))
    train(model, opt, rt, data(), range(9))
    rt.wait_votes()  # the digests are hashed off the training thread
    out = rt.drain_outbox()
    reports = kinds(out, "step.report")
    assert [r.step for r in reports] == [0, 2, 4, 6, 8]
    last = {s.slot: s for s in reports[-1].slots}
    assert last["a"].stage == pb.SEED_STAGE_TRAINING and last["b"].stage == pb.SEED_STAGE_DORMANT
    metrics = last["a"].metrics
    assert metrics["grad_steps"] == 7 and metrics["grad_norm_last"] > 0
    assert metrics["isolation_violations"] == 0 and metrics["isolation_probes"] == 4
    assert metrics["training_steps"] == 7 and metrics["seed_host_norm_ratio"] > 0
    assert "seed_loss_initial" in metrics and "seed_loss_final" in metrics
    assert [t.slot for t in kinds(out, "telemetry.raw")] == ["a"] * 5
    votes = kinds(out, "barrier.vote")
    assert [v.barrier_step for v in votes] == [0, 4, 8]
    assert len(votes[0].digest) == 32 and votes[0].digest != votes[1].digest
    assert not rt.drain_outbox()


def _evaluate(batch: tuple[torch.Tensor, torch.Tensor]):  # type: ignore[no-untyped-def]
    def evaluate(model: nn.Module) -> tuple[float, float]:
        with torch.no_grad():
            out = model(batch[0])
        return float(F.cross_entropy(out, batch[1])), float(
            (out.argmax(-1) == batch[1]).float().mean()
        )

    return evaluate


def test_counterfactual_compares_alpha_one_and_zero() -> None:
    """A counterfactual order reports validation loss/accuracy at alpha 1 and 0; alpha restored."""
    model, slots = tiny(2)
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    val = data(1, batch=64, seed=42)[0]
    rt = runtime(model, slots, opt, evaluate=_evaluate(val), blend_steps=2)
    rt.submit(germinate("a", 0, params={"lr": 0.05}))
    rt.submit(order("a", pb.SEED_STAGE_TRAINING, 1))
    rt.submit(order("a", pb.SEED_STAGE_BLENDING, 6))
    rt.submit(order("a", pb.SEED_STAGE_SHADOWING, 9, counterfactual=True, wants_evidence=True))
    train(model, opt, rt, data(), range(10))
    ack = kinds(rt.drain_outbox(), "exec.ack")[-1]
    m = ack.evidence.metrics
    with torch.no_grad():
        on = F.cross_entropy(model(val[0]), val[1])
    assert m["cf_loss_on"] == float(on)
    assert m["cf_loss_off"] != m["cf_loss_on"] and 0 <= m["cf_acc_off"] <= 1
    assert m["latency_overhead"] >= 0 and "loss_spike_sigma" in m
    assert m["latency_added_us"] >= 0 and m["latency_n"] == 5  # the floor's figure, beside it
    assert float(slots["a"].alpha) == 1.0


def test_emergency_checkpoint_round_trip(tmp_path: pathlib.Path) -> None:
    """Seeds, stages, alpha and optimizer state survive a checkpoint written atomically."""
    model, slots = tiny(3)
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt, blend_steps=10)
    rt.submit(germinate("a", 0, params={"lr": 0.05}))
    rt.submit(germinate("b", 0, blueprint="lowrank", alpha_schedule=pb.ALPHA_SCHEDULE_COSINE))
    rt.submit(order("a", pb.SEED_STAGE_TRAINING, 1))
    rt.submit(order("b", pb.SEED_STAGE_TRAINING, 1))
    rt.submit(order("a", pb.SEED_STAGE_BLENDING, 3))
    train(model, opt, rt, data(), range(6))
    path = tmp_path / "emergency.pt"
    rt.checkpoint(str(path))
    assert os.listdir(tmp_path) == ["emergency.pt"]
    x = data(1, seed=4)[0][0]
    expected = model(x).detach()

    model2, slots2 = tiny(3)
    model2.load_state_dict(
        {k: v for k, v in model.state_dict().items() if ".slot." not in k}, strict=False
    )
    rt2 = runtime(model2, slots2, torch.optim.SGD(host_parameters(model2, slots2), lr=0.1))
    assert rt2.restore(str(path)) == 5
    assert (
        slots2["a"].stage == pb.SEED_STAGE_BLENDING and slots2["b"].stage == pb.SEED_STAGE_TRAINING
    )
    assert float(slots2["a"].alpha) == float(slots["a"].alpha) > 0
    assert torch.equal(model2(x), expected)
    opt_a, opt_a2 = rt.states["a"].optimizer, rt2.states["a"].optimizer
    assert opt_a is not None and opt_a2 is not None
    s1, s2 = opt_a.state_dict()["state"], opt_a2.state_dict()["state"]
    assert s1.keys() == s2.keys() and all(
        torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1
    )


def test_a_culled_slots_telemetry_follows_it_after_its_seed_is_gone() -> None:
    """A slot whose seed was culled sends one more telemetry record, with its new stage and α 0
    (Prometheus gauges would otherwise keep its last seeded stage for good), then none while
    its stage stays; a slot never seeded sends none."""
    model, slots = tiny()
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt, report_every=2)
    rt.submit(germinate("a", 0))
    rt.submit(order("a", pb.SEED_STAGE_TRAINING, 1))
    rt.submit(order("a", pb.SEED_STAGE_CULLED, 3))
    train(model, opt, rt, data(), range(9))
    items = kinds(rt.drain_outbox(), "telemetry.raw")
    assert [(t.slot, t.step, t.metrics["stage"]) for t in items] == [
        ("a", 0, pb.SEED_STAGE_GERMINATED),
        ("a", 2, pb.SEED_STAGE_TRAINING),
        ("a", 4, pb.SEED_STAGE_CULLED),  # the seed is gone: its last record
    ]
    assert items[-1].metrics.get("alpha", 0.0) == 0.0
