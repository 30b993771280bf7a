"""Slot stage semantics: identity, exact germination, host bit-identity, fossil, cull/reset."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from execution_helpers import (
    backward,
    data,
    germinate,
    host_state,
    kinds,
    order,
    runtime,
    tiny,
    train,
)
from torch import nn

from actors.execution import Mode, SeedSlot, host_parameters, insert_slots
from actors.execution.blueprints import ResidualMLP
from contracts import evidence as ev
from leyline import pb


def test_dormant_slot_returns_the_host_tensor_itself() -> None:
    """A dormant slot is a plain ``return h``: the very same tensor object comes back."""
    slot = SeedSlot("s0")
    h = torch.randn(3, 4)
    assert slot(h) is h


def test_insert_slots_wraps_named_submodules() -> None:
    """insert_slots wraps each named submodule and returns the slots by id."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 4)))
    slots = insert_slots(model, {"x": "0", "y": "2.0"})
    assert set(slots) == {"x", "y"}
    assert model.get_submodule("0.slot") is slots["x"]
    assert model.get_submodule("2.0.slot") is slots["y"]
    out = model(torch.randn(2, 4))
    assert out.shape == (2, 4)


def test_germination_changes_output_by_exactly_zero() -> None:
    """Germinating, entering TRAINING and even blending at alpha=1 leave the output bit-exact."""
    model, slots = tiny()
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt)
    probe = data(1, seed=5)[0][0]
    before = model(probe).detach()
    rt.submit(germinate("a", 0))
    rt.submit(germinate("b", 0, blueprint="lowrank"))
    rt.on_step(0)
    acks = kinds(rt.drain_outbox(), "exec.ack")
    assert all(a.ok for a in acks), acks
    assert [a.evidence.metrics["germination_max_abs_delta"] for a in acks] == [0.0, 0.0]
    g0 = [ev.BLUEPRINT_KNOWN, ev.BLUEPRINT_SIGNED_OFF, ev.PARAMS_FINITE, ev.SHAPE_MATCH]
    g0 += [ev.DTYPE_MATCH, ev.SEED_PARAMS, ev.SEED_MEMORY_BYTES]
    assert all(acks[0].evidence.metrics[name] > 0 for name in g0)
    assert torch.equal(model(probe), before)
    rt.submit(order("a", pb.SEED_STAGE_TRAINING, 1))
    rt.on_step(1)
    assert torch.equal(model(probe).detach(), before)
    with slots["a"].forced(Mode.RESIDUAL, 1.0), slots["b"].forced(Mode.RESIDUAL, 1.0):
        assert float((model(probe).detach() - before).abs().max()) == 0.0


def _dropout_model(seed: int) -> tuple[nn.Module, dict[str, SeedSlot]]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)
    )
    return model, insert_slots(model, {"a": "0", "b": "3"})


def test_training_seed_leaves_host_bit_identical() -> None:
    """With seeds in TRAINING for N steps (probes on), host params equal a seedless run bit for bit."""
    batches = data(6)

    def run(with_seeds: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        model, slots = _dropout_model(1)
        opt = torch.optim.Adam(host_parameters(model, slots), lr=1e-2)
        rt = runtime(model, slots, opt, probe_every=3, report_every=2)
        torch.manual_seed(123)
        if with_seeds:
            rt.submit(germinate("a", 1, params={"lr": 0.05}))
            rt.submit(germinate("b", 1, blueprint="lowrank"))
            rt.submit(order("a", pb.SEED_STAGE_TRAINING, 2))
            rt.submit(order("b", pb.SEED_STAGE_TRAINING, 2))
        train(model, opt, rt, batches, range(20))
        seeds = [
            cast(ResidualMLP, s.seed).fc2.weight.detach().clone()
            for s in slots.values()
            if s.blueprint == "residual_mlp"
        ]
        return host_state(model, slots), seeds

    host_plain, _ = run(False)
    host_seeded, seed_params = run(True)
    assert all(torch.equal(a, b) for a, b in zip(host_plain, host_seeded, strict=True))
    assert seed_params and float(seed_params[0].abs().sum()) > 0  # zero-init output side learned


def _to_fossil(rt_steps: int = 12) -> tuple[nn.Module, dict[str, SeedSlot], torch.optim.Optimizer]:
    model, slots = tiny(3)
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt, blend_steps=3)
    for stage, at in (
        (pb.SEED_STAGE_TRAINING, 1),
        (pb.SEED_STAGE_BLENDING, 3),
        (pb.SEED_STAGE_SHADOWING, 7),
        (pb.SEED_STAGE_PROBATIONARY, 8),
        (pb.SEED_STAGE_FOSSILIZED, 9),
    ):
        rt.submit(order("a", stage, at))
    rt.submit(germinate("a", 0, params={"lr": 0.05}))
    train(model, opt, rt, data(), range(rt_steps))
    return model, slots, opt


def test_fossilized_seed_trains_with_the_host() -> None:
    """After fossilization the seed is in the host optimizer and keeps learning with the host."""
    model, slots, opt = _to_fossil()
    slot = slots["a"]
    assert slot.stage == pb.SEED_STAGE_FOSSILIZED and slot.mode is Mode.FOSSIL
    seed_params = slot.seed_parameters()
    in_host = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in in_host for p in seed_params)
    before = [p.detach().clone() for p in seed_params]
    x, y = data(1, seed=7)[0]
    opt.zero_grad()
    backward(F.cross_entropy(model(x), y))
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, seed_params, strict=True))


def test_culled_and_reset_slots_return_to_exact_identity(leaky: str) -> None:
    """Cull and reset drop the seed, its hooks and optimizer; the slot output equals the host's."""
    model, slots = tiny(4)
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt, strict_attach=False)
    rt.submit(germinate("a", 0, params={"lr": 0.1}))
    rt.submit(germinate("b", 0, blueprint=leaky))
    for sid in ("a", "b"):
        rt.submit(order(sid, pb.SEED_STAGE_TRAINING, 1))
        rt.submit(
            order(
                sid,
                pb.SEED_STAGE_BLENDING,
                2,
            )
        )
    train(model, opt, rt, data(), range(6))
    assert slots["a"].seed is not None and float(slots["a"].alpha) > 0
    host_fc2 = model.get_submodule("fc2.host")
    assert len(host_fc2._forward_hooks) == 1  # the planted side channel
    for sid in ("a", "b"):
        rt.submit(order(sid, pb.SEED_STAGE_CULLED, 6))
    train(model, opt, rt, data(), range(6, 7))
    x = data(1, seed=8)[0][0]
    inputs = {"fc1": x, "fc2": torch.relu(model.get_submodule("fc1")(x))}
    for sid, path in (("a", "fc1"), ("b", "fc2")):
        slot = slots[sid]
        assert slot.seed is None and not slot.hook_handles and rt.states[sid].optimizer is None
        assert sum(p.numel() for p in slot.parameters()) == 0
        h = model.get_submodule(f"{path}.host")(inputs[path])
        assert torch.equal(model.get_submodule(path)(inputs[path]), h)
    assert len(host_fc2._forward_hooks) == 0
    rt.drain_outbox()
    for stage, at in (
        (pb.SEED_STAGE_EMBARGOED, 7),
        (pb.SEED_STAGE_RESETTING, 8),
        (pb.SEED_STAGE_DORMANT, 9),
    ):
        rt.submit(order("a", stage, at))
    train(model, opt, rt, data(), range(7, 10))
    acks = kinds(rt.drain_outbox(), "exec.ack")
    assert all(a.ok for a in acks)
    g5 = acks[-1].evidence.metrics
    assert g5["module_released"] == g5["hooks_released"] == g5["optimizer_released"] == 1.0
    assert g5["params_remaining"] == 0.0 and g5["reset_max_abs_delta"] == 0.0
    assert slots["a"].stage == pb.SEED_STAGE_DORMANT


def test_non_finite_seed_output_never_reaches_the_host() -> None:
    """A seed emitting NaN leaves the slot output equal to h and raises a safety signal."""
    model, slots = tiny(5)
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt)
    rt.submit(germinate("a", 0))
    rt.submit(order("a", pb.SEED_STAGE_TRAINING, 0 + 1))
    train(model, opt, rt, data(), range(2))
    seed = slots["a"].seed
    assert seed is not None
    with torch.no_grad():
        for p in seed.parameters():
            p.fill_(float("nan"))
    x = data(1, seed=9)[0][0]
    h = model.get_submodule("fc1.host")(x)
    for mode in (Mode.TRAINING, Mode.RESIDUAL, Mode.CONVEX):
        with slots["a"].forced(mode, 0.5):
            assert torch.equal(model.get_submodule("fc1")(x), h)
    rt.drain_outbox()
    train(model, opt, rt, data(), range(2, 3))
    signals = kinds(rt.drain_outbox(), "safety.signal")
    found = {s.kind for s in signals}
    assert pb.SAFETY_SIGNAL_NON_FINITE_OUTPUT in found


def test_blend_forms_follow_the_design() -> None:
    """Residual blending is h + a*s(h.detach()); convex is lerp(h, h + s, a); host grad factor 1."""
    torch.manual_seed(0)
    slot = SeedSlot("s")
    seed = nn.Linear(4, 4)
    slot.attach(seed, blueprint="t", reads_input=False, blend_mode=pb.BLEND_MODE_RESIDUAL)
    slot.set_stage(pb.SEED_STAGE_BLENDING)
    slot.alpha.fill_(0.25)
    h = torch.randn(3, 4, requires_grad=True)
    out = slot(h)
    assert torch.allclose(out, h + 0.25 * seed(h))
    backward(out.sum())
    assert h.grad is not None and torch.equal(h.grad, torch.ones_like(h))
    slot.blend_mode = pb.BLEND_MODE_CONVEX
    slot.set_stage(pb.SEED_STAGE_BLENDING)
    assert torch.allclose(slot(h), torch.lerp(h, h + seed(h), 0.25))
