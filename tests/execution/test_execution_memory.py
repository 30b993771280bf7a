"""Memory management: the rank's seed memory budget at G0, TTL release of culled seeds' tensors,
and out-of-memory errors turned into refusals (germination) or culls (seed training)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator, Mapping

import pytest
import torch
import torch.nn.functional as F
from execution_helpers import data, germinate, kinds, order, runtime, tiny, train
from other_models import SmallCNN
from torch import Tensor, nn

from actors.execution import (
    Blueprint,
    RuntimeConfig,
    SlotShape,
    get_blueprint,
    host_parameters,
    insert_slots,
    register_blueprint,
    unregister_blueprint,
)
from actors.execution.errors import is_oom
from actors.gates import evaluate
from contracts import evidence as ev
from contracts.config import GateThresholds
from leyline import pb


def _request(blueprint: str = "residual_mlp", slot: str = "a", **kw: float) -> float:
    """The memory request of a seed germinated on a fresh TinyMLP with no budget."""
    model, slots = tiny()
    rt = runtime(model, slots, torch.optim.SGD(host_parameters(model, slots), lr=0.1))
    rt.submit(germinate(slot, 0, blueprint, params=kw))
    rt.on_step(0)
    (ack,) = kinds(rt.drain_outbox(), "exec.ack")
    assert ack.ok and ack.evidence.metrics[ev.SEED_MEMORY_BUDGET] == 0.0
    return float(ack.evidence.metrics[ev.SEED_MEMORY_REQUEST])


def test_budget_refuses_the_germination_that_would_exceed_it() -> None:
    """Two seeds fit a budget of their summed requests; one byte less refuses the second at G0
    with the budget, the use and the request in its evidence, and changes nothing."""
    ra, rb = _request("residual_mlp", "a"), _request("lowrank", "b")
    model, slots = tiny()
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt, seed_memory_budget=int(ra + rb) - 1)
    probe = data(1, seed=5)[0][0]
    rt.submit(germinate("a", 0))
    rt.submit(germinate("b", 0, "lowrank"))
    before = model(probe).detach()
    rt.on_step(0)
    first, second = kinds(rt.drain_outbox(), "exec.ack")
    assert first.ok and first.evidence.metrics[ev.SEED_MEMORY_IN_USE] == 0.0
    assert not second.ok and "seed memory budget exceeded" in second.error
    m = dict(second.evidence.metrics)
    assert m[ev.SEED_MEMORY_BUDGET] == ra + rb - 1
    assert m[ev.SEED_MEMORY_IN_USE] == ra and m[ev.SEED_MEMORY_REQUEST] == rb
    assert slots["b"].seed is None and torch.equal(model(probe).detach(), before)
    result = evaluate(pb.SEED_GATE_G0_SANITY, pb.Evidence(metrics=m), GateThresholds())
    (check,) = [c for c in result.checks if c.name == "seed_memory_headroom"]
    assert not result.passed and not check.passed and check.value == -1.0
    assert f"budget {int(ra + rb - 1)} B" in check.detail


def test_budget_with_room_passes_and_g0_reads_the_headroom() -> None:
    """With room for both seeds, both germinate and G0's headroom check passes."""
    ra, rb = _request("residual_mlp", "a"), _request("lowrank", "b")
    model, slots = tiny()
    rt = runtime(model, slots, torch.optim.SGD(host_parameters(model, slots), lr=0.1))
    rt.memory.budget = int(ra + rb)
    rt.submit(germinate("a", 0))
    rt.submit(germinate("b", 0, "lowrank"))
    rt.on_step(0)
    acks = kinds(rt.drain_outbox(), "exec.ack")
    assert [a.ok for a in acks] == [True, True]
    m = dict(acks[1].evidence.metrics)
    result = evaluate(pb.SEED_GATE_G0_SANITY, pb.Evidence(metrics=m), GateThresholds())
    (check,) = [c for c in result.checks if c.name == "seed_memory_headroom"]
    assert check.passed and check.value == 0.0


def test_request_scales_with_the_seed_and_the_batch() -> None:
    """A wider seed asks for more; ``memory_batch`` scales the activation estimate only."""
    small, wide = _request(hidden=4), _request(hidden=64)
    assert wide > small > 0
    model, slots = tiny()
    rt = runtime(model, slots, torch.optim.SGD(host_parameters(model, slots), lr=0.1))
    rt2_model, rt2_slots = tiny()
    rt2 = runtime(
        rt2_model,
        rt2_slots,
        torch.optim.SGD(host_parameters(rt2_model, rt2_slots), lr=0.1),
        memory_batch=160,  # the probe batch holds 16 examples
    )
    for r in (rt, rt2):
        r.submit(germinate("a", 0, params={"hidden": 4}))
        r.on_step(0)
    assert rt2.states["a"].activation_bytes == 10 * rt.states["a"].activation_bytes > 0
    (ack,) = kinds(rt2.drain_outbox(), "exec.ack")
    grown = ack.evidence.metrics[ev.SEED_MEMORY_REQUEST] - small
    assert grown == 9 * rt.states["a"].activation_bytes


def test_fraction_budget_and_bad_settings() -> None:
    """A fraction of the device's memory is a budget; nonsense settings are refused."""
    model, slots = tiny()
    rt = runtime(
        model,
        slots,
        torch.optim.SGD(host_parameters(model, slots), lr=0.1),
        seed_memory_fraction=1e-12,
    )
    assert rt.memory.budget is not None and rt.memory.budget < 1e4
    rt.submit(germinate("a", 0))
    rt.on_step(0)
    (ack,) = kinds(rt.drain_outbox(), "exec.ack")
    assert not ack.ok and "budget" in ack.error and slots["a"].seed is None
    for bad in (
        {"seed_memory_fraction": 0.0},
        {"seed_memory_fraction": 1.5},
        {"seed_memory_budget": -1},
        {"release_ttl_steps": -1},
        {"memory_batch": 0},
    ):
        with pytest.raises(ValueError):
            RuntimeConfig(**bad)  # type: ignore[arg-type]


def _cull(rt_slot: str, at: int) -> pb.ExecutionOrder:
    return order(rt_slot, pb.SEED_STAGE_CULLED, at)


@pytest.mark.parametrize("ttl", [0, 3])
def test_culled_seed_tensors_are_released_after_the_ttl(ttl: int) -> None:
    """A culled seed's module, gradients and optimizer state are held ``ttl`` steps (counted in
    the budget's use), then released: parameter bytes held drop to 0 and nothing references
    them."""
    model, slots = tiny()
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt, release_ttl_steps=ttl)
    batches = data()
    rt.submit(germinate("a", 0))
    rt.submit(order("a", pb.SEED_STAGE_TRAINING, 1))
    train(model, opt, rt, batches, range(4))
    seed = slots["a"].seed
    assert seed is not None and rt.states["a"].optimizer is not None
    refs = [weakref.ref(seed), *(weakref.ref(p) for p in seed.parameters())]
    refs.append(weakref.ref(rt.states["a"].optimizer))
    assert any(p.grad is not None for p in seed.parameters()) or rt.states["a"].optimizer.state
    del seed
    rt.submit(_cull("a", 4))
    train(model, opt, rt, batches, range(4, 5))
    assert slots["a"].seed is None and rt.states["a"].optimizer is None
    if ttl:
        assert rt.memory.held_param_bytes() > 0 and all(r() is not None for r in refs)
        train(model, opt, rt, batches, range(5, 4 + ttl))
        assert rt.memory.held_param_bytes() > 0
        train(model, opt, rt, batches, range(4 + ttl, 5 + ttl))
    assert rt.memory.held_param_bytes() == 0 and not rt.memory.held
    gc.collect()
    assert all(r() is None for r in refs)


def test_a_held_seed_counts_against_the_budget_until_released() -> None:
    """With a TTL, a culled seed still uses the budget: the next germination is refused until
    the hold expires, then it fits."""
    ra = _request()
    model, slots = tiny()
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt, release_ttl_steps=2, seed_memory_budget=int(ra * 1.5))
    batches = data()
    rt.submit(germinate("a", 0))
    rt.submit(_cull("a", 1))
    rt.submit(germinate("a", 2))
    rt.submit(germinate("a", 3))
    train(model, opt, rt, batches, range(4))
    acks = kinds(rt.drain_outbox(), "exec.ack")
    assert [a.ok for a in acks] == [True, True, False, True]
    assert acks[2].evidence.metrics[ev.SEED_MEMORY_IN_USE] > 0 and "budget" in acks[2].error


# -- out of memory ---------------------------------------------------------------------------------
class OomAt(nn.Module):
    """A real blueprint's seed whose training forward raises ``torch.OutOfMemoryError`` from
    its ``fail_at``-th call on (fault injection)."""

    def __init__(self, inner: nn.Module, fail_at: int) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.fail_at = fail_at

    def forward(self, h: Tensor) -> Tensor:
        """The inner seed's delta, until the injected failure."""
        if self.training and torch.is_grad_enabled():  # the user's training forwards
            self.calls += 1
            if self.calls >= self.fail_at:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        out: Tensor = self.inner(h)
        return out


def _oom_blueprint(base: str, fail_at: int) -> Blueprint:
    inner = get_blueprint(base)

    def build(shape: SlotShape, params: Mapping[str, float], host: nn.Module) -> nn.Module:
        return OomAt(inner.build(shape, params, host), fail_at)

    return register_blueprint(
        Blueprint(f"oom_{base}", build, inner.accepts, reads_input=inner.reads_input),
        replace=True,
    )


@pytest.fixture
def oom_blueprints() -> Iterator[None]:
    """Fault-injecting blueprints around residual_mlp and conv_adapter."""
    yield
    for name in ("oom_residual_mlp", "oom_conv_adapter", "oom_build", "huge_build"):
        unregister_blueprint(name)


def _digits_like(model: str) -> tuple[nn.Module, dict[str, object], list[tuple[Tensor, Tensor]]]:
    torch.manual_seed(0)
    if model == "cnn":
        net: nn.Module = SmallCNN()
        slots = insert_slots(net, {"a": "conv2"})
        g = torch.Generator().manual_seed(1)
        batches = [
            (torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 5, (8,))) for _ in range(4)
        ]
        return net, dict(slots), batches
    net, slots = tiny()
    return net, dict(slots), data()


@pytest.mark.usefixtures("oom_blueprints")
@pytest.mark.parametrize(("model", "base"), [("mlp", "residual_mlp"), ("cnn", "conv_adapter")])
def test_oom_in_the_seed_forward_culls_it_and_the_loop_goes_on(model: str, base: str) -> None:
    """A seed whose forward runs out of memory at training step N leaves the forward in that
    very forward (the user's loop sees no exception), is released at the next boundary and
    raises an out-of-memory safety signal; the host keeps training."""
    bp = _oom_blueprint(base, fail_at=4)  # call 1: germination's dry run with autograd on
    net, slots, batches = _digits_like(model)
    opt = torch.optim.SGD(host_parameters(net, slots), lr=0.05)  # type: ignore[arg-type]
    rt = runtime(net, slots, opt, probe_batch=batches[0])  # type: ignore[arg-type]
    rt.submit(germinate("a", 0, bp.name))
    rt.submit(order("a", pb.SEED_STAGE_TRAINING, 0))
    for step in range(8):  # the user's loop, unguarded
        x, y = batches[step % len(batches)]
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        rt.on_step(step, loss)
    out = rt.drain_outbox()
    (signal,) = kinds(out, "safety.signal")
    assert signal.kind == pb.SAFETY_SIGNAL_OUT_OF_MEMORY and signal.slot == "a"
    assert "out of memory" in signal.detail and signal.step == 3
    assert slots["a"].seed is None and rt.oom_culls == 1  # type: ignore[attr-defined]
    assert rt.states["a"].optimizer is None


def test_oom_in_the_seed_optimizer_step_culls_it() -> None:
    """An out-of-memory from the seed optimizer's step is a cull with a safety signal."""
    model, slots = tiny()
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt)
    rt.submit(germinate("a", 0))
    rt.submit(order("a", pb.SEED_STAGE_TRAINING, 0))
    train(model, opt, rt, data(), range(2))
    seed_opt = rt.states["a"].optimizer
    assert seed_opt is not None

    def fail(*_a: object, **_k: object) -> None:
        raise RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory")

    seed_opt.step = fail  # type: ignore[method-assign]
    train(model, opt, rt, data(), range(2, 4))
    (signal,) = kinds(rt.drain_outbox(), "safety.signal")
    assert signal.kind == pb.SAFETY_SIGNAL_OUT_OF_MEMORY and slots["a"].seed is None


@pytest.mark.usefixtures("oom_blueprints")
def test_oom_during_germination_is_a_refusal() -> None:
    """A build that runs out of memory, and one that asks the allocator for an absurd size, are
    refused with ``seed_oom`` in the evidence; the slot stays empty and the host unchanged."""

    def oom_build(shape: SlotShape, params: Mapping[str, float], host: nn.Module) -> nn.Module:
        if torch.empty(0).device.type != "meta":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return get_blueprint("residual_mlp").build(shape, params, host)

    def huge_build(shape: SlotShape, params: Mapping[str, float], host: nn.Module) -> nn.Module:
        torch.empty(2**45)  # 128 TiB of scratch: the CPU allocator refuses it
        return get_blueprint("residual_mlp").build(shape, params, host)

    accepts = get_blueprint("residual_mlp").accepts
    register_blueprint(Blueprint("oom_build", oom_build, accepts), replace=True)
    register_blueprint(Blueprint("huge_build", huge_build, accepts), replace=True)
    model, slots = tiny()
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt)
    probe = data(1, seed=5)[0][0]
    before = model(probe).detach()
    rt.submit(germinate("a", 0, "oom_build"))
    rt.submit(germinate("b", 0, "huge_build"))
    rt.on_step(0)
    acks = kinds(rt.drain_outbox(), "exec.ack")
    assert [a.ok for a in acks] == [False, False]
    for ack in acks:
        assert "out of memory during germination" in ack.error
        assert ack.evidence.metrics[ev.SEED_OOM] == 1.0
    assert slots["a"].seed is None and slots["b"].seed is None
    assert torch.equal(model(probe).detach(), before)


def test_is_oom_tells_memory_errors_apart() -> None:
    """Allocator failures count as out of memory; other runtime errors do not."""
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_oom(MemoryError())
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert not is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_oom(ValueError("out of memory"))


def test_memory_telemetry_shows_held_seeds_until_released() -> None:
    """With a TTL, the runtime-wide telemetry reports the held seed's parameter bytes, then 0
    and one release once the hold has expired."""
    model, slots = tiny()
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt, release_ttl_steps=2, report_every=1)
    rt.submit(germinate("a", 0))
    rt.submit(_cull("a", 1))
    train(model, opt, rt, data(), range(4))
    wide = [m for m in kinds(rt.drain_outbox(), "telemetry.raw") if not m.slot]
    held = [(m.step, m.metrics["seed_memory_held_param_bytes"]) for m in wide]
    assert [s for s, _ in held] == [1, 2, 3]
    assert held[0][1] > 0 and held[1][1] == held[0][1] and held[2][1] == 0.0
    assert wide[-1].metrics["seed_memory_released"] == 1.0
    assert wide[-1].metrics["seed_memory_in_use"] == 0.0
