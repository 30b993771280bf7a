"""Gradient isolation: attach-time graph walk and sampled autograd probes catch a planted leak."""

from __future__ import annotations

import torch
from execution_helpers import data, germinate, kinds, order, runtime, tiny, train

from actors.execution import autograd_probe, graph_walk, host_parameters
from leyline import pb


def test_planted_leak_raises_one_signal_per_probe(leaky: str) -> None:
    """A leaking seed in TRAINING, probed at 3 steps, yields exactly 3 isolation signals."""
    model, slots = tiny(0)
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt, strict_attach=False, probe_every=2)
    rt.submit(germinate("b", 0, blueprint=leaky))
    rt.submit(order("b", pb.SEED_STAGE_TRAINING, 1))
    train(model, opt, rt, data(), range(2))
    attach = [s for s in kinds(rt.drain_outbox(), "safety.signal") if s.step == 0]
    assert len(attach) == 1  # the attach-time graph walk saw it too
    train(model, opt, rt, data(), range(2, 8))  # probes at steps 2, 4, 6
    signals = kinds(rt.drain_outbox(), "safety.signal")
    assert [s.step for s in signals] == [2, 4, 6]
    assert all(s.kind == pb.SAFETY_SIGNAL_ISOLATION_VIOLATION and s.slot == "b" for s in signals)
    assert all(s.value >= 1 for s in signals)
    assert rt.states["b"].metrics(8)["isolation_violations"] == 4.0


def test_strict_attach_refuses_a_leaking_seed(leaky: str) -> None:
    """With strict attach (the default) a leaking seed is refused and fully released."""
    model, slots = tiny(0)
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt)
    rt.submit(germinate("b", 0, blueprint=leaky))
    rt.on_step(0)
    out = rt.drain_outbox()
    (ack,) = kinds(out, "exec.ack")
    assert not ack.ok and ack.stage == pb.SEED_STAGE_DORMANT
    assert kinds(out, "safety.signal")[0].kind == pb.SAFETY_SIGNAL_ISOLATION_VIOLATION
    assert slots["b"].seed is None
    assert not model.get_submodule("fc2.host")._forward_hooks


def test_clean_seeds_pass_both_checks() -> None:
    """Built-in seeds in TRAINING and BLENDING raise no isolation signal over many probes."""
    model, slots = tiny(1)
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt, probe_every=1, blend_steps=4)
    rt.submit(germinate("a", 0))
    rt.submit(germinate("b", 0, blueprint="lowrank"))
    for sid in ("a", "b"):
        rt.submit(order(sid, pb.SEED_STAGE_TRAINING, 1))
        rt.submit(order(sid, pb.SEED_STAGE_BLENDING, 3))
    train(model, opt, rt, data(), range(8))
    out = rt.drain_outbox()
    assert not kinds(out, "safety.signal")
    assert all(a.ok for a in kinds(out, "exec.ack"))
    assert rt.states["a"].isolation_probes == 7


def test_graph_walk_and_probe_on_raw_tensors() -> None:
    """The walk finds a reachable host parameter; the probe reports a non-zero gradient."""
    host = torch.nn.Linear(3, 3)
    seed = torch.nn.Linear(3, 3)
    x = torch.randn(2, 3)
    h = host(x)
    clean = seed(h.detach())
    leaking = seed(h)
    params = list(host.parameters())
    assert not graph_walk(clean, params).violated and not autograd_probe(clean, params).violated
    walk, probe = graph_walk(leaking, params), autograd_probe(leaking, params)
    assert walk.violated and walk.reachable == 2
    assert probe.violated and probe.max_abs_grad > 0
