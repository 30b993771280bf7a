"""Isolation, zero disruption and recovery on hosts and blueprints unlike the project's own:
a CNN with BatchNorm and dropout, an MLP with LayerNorm/GELU, slots inside a residual branch."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from execution_helpers import backward, germinate, kinds, order
from execution_helpers import runtime as _runtime
from other_models import (
    NormMLP,
    ResNetMLP,
    SmallCNN,
    batches,
    blueprints,
    host_tensors,
    same,
)
from torch import Tensor, nn

from actors.execution import ExecutionRuntime, digest, host_parameters, insert_slots
from actors.execution.restore import RestoreError
from leyline import pb


def _loop(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    rt: ExecutionRuntime,
    data: list[tuple[Tensor, Tensor]],
    steps: int,
    plan: dict[int, list[pb.ExecutionOrder]] | None = None,
    *,
    forward: Callable[[Tensor], Tensor] | None = None,
    shadow: bool = False,
) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for step in range(steps):
        for o in (plan or {}).get(step, []):
            rt.submit(o)
        x, y = data[step % len(data)]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy((forward if forward is not None else model)(x), y)
        backward(loss)
        opt.step()
        rt.on_step(step, loss, batch=(x, y) if shadow else None)
        out.extend(rt.drain_outbox())
    return out


def _build(
    factory: Callable[[], nn.Module], points: dict[str, str], seed: int = 0
) -> tuple[nn.Module, dict[str, Any], torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = factory()
    slots = insert_slots(model, points)
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.05, momentum=0.9)
    return model, slots, opt


PROBES = {
    "SmallCNN": ((16, 3, 8, 8), 5),
    "NormMLP": ((16, 12), 3),
    "ResNetMLP": ((16, 10), 4),
    "Sequential": ((16, 256), 8),
}


def runtime(
    model: nn.Module, slots: dict[str, Any], opt: torch.optim.Optimizer, **kw: Any
) -> ExecutionRuntime:
    """A CPU runtime with a probe batch shaped for the model."""
    shape, classes = PROBES[type(getattr(model, "_orig_mod", model)).__name__]
    return _runtime(model, slots, opt, probe_batch=batches(shape, classes, 1, seed=99)[0], **kw)


def _acks(out: list[tuple[str, Any]]) -> dict[str, pb.ExecutionAck]:
    return {a.order_id: a for a in kinds(out, "exec.ack")}


# -- 1: a seed that draws random numbers -----------------------------------------------------------
def test_dropout_seed_leaves_every_host_tensor_of_a_bn_dropout_cnn_identical() -> None:
    """A seed with dropout, TRAINING inside a CNN with BatchNorm and dropout: every host parameter
    and BatchNorm statistic is bit-identical to a run without it (the seed has its own RNG)."""
    data = batches((6, 3, 8, 8), 5, 4, seed=1)
    runs = []
    with blueprints("t_dropout"):
        for plan in (
            {},
            {1: [germinate("c", 1, "t_dropout")], 2: [order("c", pb.SEED_STAGE_TRAINING, 2)]},
        ):
            model, slots, opt = _build(SmallCNN, {"c": "conv2"})
            rt = runtime(model, slots, opt)
            torch.manual_seed(123)  # the host's dropout masks come from here
            out = _loop(model, opt, rt, data, 12, plan)
            runs.append((host_tensors(model), slots, out))
    (base, _, _), (seeded, slots, out) = runs
    assert all(a.ok for a in kinds(out, "exec.ack"))
    assert slots["c"].stage == pb.SEED_STAGE_TRAINING and slots["c"].rng is not None
    assert len(base) >= 10  # conv/bn/head weights and BatchNorm running statistics
    assert same(base, seeded) == []


def test_a_restored_seed_keeps_drawing_on_its_own_stream(tmp_path: pathlib.Path) -> None:
    """The fact that a seed draws random numbers (found at germination) survives a checkpoint:
    a compiled forward runs such a seed on its own stream only when it knows, so a restored
    run that forgot it would draw the host's dropout masks from the seed."""
    data = batches((6, 3, 8, 8), 5, 4, seed=1)
    path = str(tmp_path / "ck.ckpt")
    with blueprints("t_dropout"):
        model, slots, opt = _build(SmallCNN, {"c": "conv2"})
        rt = runtime(model, slots, opt)
        plan = {1: [germinate("c", 1, "t_dropout")], 2: [order("c", pb.SEED_STAGE_TRAINING, 2)]}
        _loop(model, opt, rt, data, 4, plan)
        assert slots["c"].draws
        rt.checkpoint(path)
        model, slots, opt = _build(SmallCNN, {"c": "conv2"})
        runtime(model, slots, opt).restore(path)
    assert slots["c"].draws and slots["c"].rng is not None


# -- 2: a seed that holds its host -----------------------------------------------------------------
@pytest.mark.parametrize("blueprint", ["t_host_holder", "t_weight_sharer"])
def test_seed_sharing_host_module_or_storage_is_refused(blueprint: str) -> None:
    """A seed holding a host module, or a parameter on the host's storage, is refused at attach
    with its reason; the slot stays DORMANT and a later FOSSILIZED order cannot break the loop."""
    data = batches((8, 12), 3, 3, seed=2)
    model, slots, opt = _build(NormMLP, {"m": "mid"})
    rt = runtime(model, slots, opt)
    groups = [len(g["params"]) for g in opt.param_groups]
    plan = {
        1: [germinate("m", 1, blueprint)],
        2: [order("m", pb.SEED_STAGE_TRAINING, 2)],
        3: [order("m", pb.SEED_STAGE_FOSSILIZED, 3)],
    }
    with blueprints(blueprint):
        out = _loop(model, opt, rt, data, 5, plan)
    acks = list(_acks(out).values())
    assert [a.ok for a in acks] == [False, False, False]
    assert "shares" in acks[0].error and acks[0].evidence.metrics["seed_shares_host"] >= 1
    assert slots["m"].seed is None and slots["m"].stage == pb.SEED_STAGE_DORMANT
    assert [len(g["params"]) for g in opt.param_groups] == groups


# -- 3: a seed that writes its input; a leak only train mode shows ---------------------------------
def test_seed_writing_its_input_is_refused_and_counted_as_a_violation() -> None:
    """In a residual branch, a seed that writes the host activation in place is refused at attach;
    let through (strict_attach=False), each write is an isolation violation signal."""
    data = batches((8, 10), 4, 3, seed=3)
    with blueprints("t_input_writer"):
        model, slots, opt = _build(ResNetMLP, {"r": "b1.fc"})
        out = _loop(
            model,
            opt,
            runtime(model, slots, opt),
            data,
            3,
            {1: [germinate("r", 1, "t_input_writer")]},
        )
        (ack,) = kinds(out, "exec.ack")
        assert not ack.ok and ack.evidence.metrics["seed_writes_input"] == 1.0
        model, slots, opt = _build(ResNetMLP, {"r": "b1.fc"})
        rt = runtime(model, slots, opt, strict_attach=False)
        plan = {
            1: [germinate("r", 1, "t_input_writer")],
            2: [order("r", pb.SEED_STAGE_TRAINING, 2)],
        }
        out = _loop(model, opt, rt, data, 6, plan)
    signals = [s for s in kinds(out, "safety.signal") if "in place" in s.detail]
    assert signals and all(s.kind == pb.SAFETY_SIGNAL_ISOLATION_VIOLATION for s in signals)
    assert rt.states["r"].isolation_violations >= len(signals)


def test_leak_only_in_train_mode_is_caught_by_the_probe() -> None:
    """A seed leaking gradient into the host only in train mode passes the eval-mode attach check
    but the sampled probe (which also runs in train mode) reports the violation."""
    data = batches((8, 10), 4, 3, seed=4)
    model, slots, opt = _build(ResNetMLP, {"r": "b2.fc"})
    rt = runtime(model, slots, opt, probe_every=2)
    plan = {1: [germinate("r", 1, "t_train_leak")], 2: [order("r", pb.SEED_STAGE_TRAINING, 2)]}
    with blueprints("t_train_leak"):
        out = _loop(model, opt, rt, data, 7, plan)
    assert all(a.ok for a in kinds(out, "exec.ack"))
    leaks = [
        s for s in kinds(out, "safety.signal") if s.kind == pb.SAFETY_SIGNAL_ISOLATION_VIOLATION
    ]
    assert leaks and leaks[0].slot == "r" and rt.states["r"].isolation_violations >= 2


def test_train_mode_probes_leave_batchnorm_statistics_and_rng_alone() -> None:
    """Probing every step (eval and train mode) leaves the CNN's BatchNorm statistics, dropout
    masks and so every host tensor bit-identical to a run that never probes."""
    data = batches((6, 3, 8, 8), 5, 3, seed=5)
    runs = []
    for every in (0, 1):
        model, slots, opt = _build(SmallCNN, {"c": "conv1"})
        rt = runtime(model, slots, opt, probe_every=every)
        plan = {0: [germinate("c", 0, "conv_adapter")], 1: [order("c", pb.SEED_STAGE_TRAINING, 1)]}
        torch.manual_seed(7)
        _loop(model, opt, rt, data, 8, plan)
        runs.append((host_tensors(model), rt.states["c"].isolation_probes))
    (quiet, none), (probed, probes) = runs
    assert none == 0 and probes >= 6
    assert same(quiet, probed) == []


# -- 4: absurd parameters, and anything an order raises --------------------------------------------
@pytest.mark.parametrize(
    "params", [{"hidden": 1e15}, {"hidden": 5e8}, {"hidden": float("nan")}, {"rank": 1e12}]
)
def test_absurd_germinate_parameters_are_refused_before_allocation(
    params: dict[str, float],
) -> None:
    """Absurd germinate parameters give a refused ack with a reason; nothing escapes on_step."""
    data = batches((8, 12), 3, 2, seed=6)
    model, slots, opt = _build(NormMLP, {"m": "mid"})
    rt = runtime(model, slots, opt)
    blueprint = "lowrank" if "rank" in params else "residual_mlp"
    out = _loop(model, opt, rt, data, 3, {1: [germinate("m", 1, blueprint, params=params)]})
    (ack,) = kinds(out, "exec.ack")
    assert not ack.ok and ("bounds" in ack.error or "limit" in ack.error), ack.error
    assert slots["m"].seed is None and slots["m"].stage == pb.SEED_STAGE_DORMANT


def test_an_order_that_raises_is_refused_and_training_continues() -> None:
    """A seed whose release raises: the cull order is refused with the error, the loop goes on."""
    data = batches((8, 12), 3, 2, seed=7)
    model, slots, opt = _build(NormMLP, {"m": "inp"})
    rt = runtime(model, slots, opt)
    plan = {1: [germinate("m", 1)], 2: [order("m", pb.SEED_STAGE_TRAINING, 2)]}
    _loop(model, opt, rt, data, 3, plan)
    seed = slots["m"].seed
    assert seed is not None
    with mock.patch.object(type(seed), "release", create=True, side_effect=RuntimeError("boom")):
        out = _loop(model, opt, rt, data, 6, {4: [order("m", pb.SEED_STAGE_CULLED, 4)]})
    (ack,) = kinds(out, "exec.ack")
    assert not ack.ok and "RuntimeError: boom" in ack.error
    assert rt.step == 5


# -- 5: restore ----------------------------------------------------------------------------------
def _fossilize(
    model: nn.Module, slots: dict[str, Any], opt: torch.optim.Optimizer, rt: ExecutionRuntime
) -> None:
    stages = ["TRAINING", "BLENDING", "SHADOWING", "PROBATIONARY", "FOSSILIZED"]
    plan = {1: [germinate("m", 1, blend_steps=2)]}
    for i, name in enumerate(stages):
        plan[2 + 2 * i] = [order("m", getattr(pb, f"SEED_STAGE_{name}"), 2 + 2 * i)]
    _loop(model, opt, rt, batches((8, 12), 3, 2, seed=8), 13, plan)
    assert slots["m"].fossil


def test_restored_fossil_joins_the_host_optimizer_and_keeps_training(
    tmp_path: pathlib.Path,
) -> None:
    """A fossil restored from a checkpoint is in the host optimizer's param groups and trains."""
    model, slots, opt = _build(NormMLP, {"m": "mid"})
    rt = runtime(model, slots, opt)
    _fossilize(model, slots, opt, rt)
    path = str(tmp_path / "ck.pt")
    rt.checkpoint(path)
    model2, slots2, opt2 = _build(NormMLP, {"m": "mid"}, seed=1)
    rt2 = runtime(model2, slots2, opt2)
    assert rt2.restore(path) == 12
    fossil = slots2["m"].seed_parameters()
    held = {id(p) for g in opt2.param_groups for p in g["params"]}
    assert fossil and all(id(p) in held for p in fossil)
    before = [p.detach().clone() for p in fossil]
    _loop(model2, opt2, rt2, batches((8, 12), 3, 1, seed=9), 1)
    assert not all(torch.equal(a, b) for a, b in zip(before, fossil, strict=True))
    assert same(host_tensors(model), host_tensors(model2)) != []  # it really trained on


def test_a_restore_that_cannot_complete_changes_nothing(tmp_path: pathlib.Path) -> None:
    """A checkpoint naming an unknown blueprint is refused whole: every slot keeps its seed,
    stage and optimizer (no slot is left TRAINING without a seed)."""
    data = batches((8, 12), 3, 2, seed=10)
    with blueprints("t_dropout"):
        model, slots, opt = _build(NormMLP, {"a": "inp", "b": "mid"})
        rt = runtime(model, slots, opt)
        plan = {
            1: [germinate("a", 1), germinate("b", 1, "t_dropout")],
            2: [order("a", pb.SEED_STAGE_TRAINING, 2), order("b", pb.SEED_STAGE_TRAINING, 2)],
        }
        _loop(model, opt, rt, data, 4, plan)
        path = str(tmp_path / "ck.pt")
        rt.checkpoint(path)
    model2, slots2, opt2 = _build(NormMLP, {"a": "inp", "b": "mid"}, seed=2)
    rt2 = runtime(model2, slots2, opt2)
    _loop(
        model2,
        opt2,
        rt2,
        data,
        4,
        {1: [germinate("a", 1, "lowrank")], 2: [order("a", pb.SEED_STAGE_TRAINING, 2)]},
    )
    seed_a, host_before = slots2["a"].seed, host_tensors(model2)
    with pytest.raises(RestoreError, match="t_dropout"):
        rt2.restore(path)
    assert slots2["a"].seed is seed_a and slots2["a"].stage == pb.SEED_STAGE_TRAINING
    assert slots2["b"].seed is None and slots2["b"].stage == pb.SEED_STAGE_DORMANT
    assert rt2.states["a"].optimizer is not None and same(host_before, host_tensors(model2)) == []


# -- 6: a compiled model -----------------------------------------------------------------------------
def test_compiled_model_handed_to_the_runtime_germinates_and_trains() -> None:
    """``torch.compile(model)`` given to the runtime: germination passes (the checks reach the
    eager module through the wrapper) and the compiled forward trains the seed."""
    torch._dynamo.reset()
    try:
        torch.manual_seed(0)
        model = ResNetMLP()
        slots = insert_slots(model, {"r": "b1.fc"})
        opt = torch.optim.SGD(host_parameters(model, slots), lr=0.05)
        compiled = torch.compile(model, backend="aot_eager")
        rt = runtime(compiled, slots, opt)
        plan = {1: [germinate("r", 1)], 2: [order("r", pb.SEED_STAGE_TRAINING, 2)]}
        out = _loop(model, opt, rt, batches((8, 10), 4, 3, seed=11), 6, plan, forward=compiled)
    finally:
        torch._dynamo.reset()
    acks = kinds(out, "exec.ack")
    assert [a.ok for a in acks] == [True, True], [a.error for a in acks]
    assert acks[0].evidence.metrics["attach_isolation_violation"] == 0.0
    assert rt.states["r"].grad_steps > 0


# -- 9: the barrier digest ---------------------------------------------------------------------------
def test_barrier_digest_reads_seed_parameters_and_a_host_fingerprint_only() -> None:
    """The digest hashes every seed byte but only a fixed sample of each host tensor, and still
    changes when the host or a seed changes."""
    model, slots, opt = _build(
        lambda: nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 8)), {"s": "0"}
    )
    rt = runtime(model, slots, opt)
    _loop(
        model,
        opt,
        rt,
        [(torch.randn(4, 256), torch.randint(0, 8, (4,)))],
        2,
        {0: [germinate("s", 0, params={"hidden": 4.0})]},
    )
    hashed: list[int] = []
    real = digest._bytes
    with mock.patch.object(
        digest, "_bytes", side_effect=lambda t: hashed.append(t.numel()) or real(t)
    ):
        first = digest.state_digest(model, slots)
    seed_elems = sum(p.numel() for p in slots["s"].parameters())
    host_elems = sum(p.numel() for p in host_parameters(model, slots))
    assert sum(hashed) <= seed_elems + 4 * (digest.FINGERPRINT_SAMPLES + 1)
    assert host_elems > 100_000 and sum(hashed) < host_elems / 2
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    second = digest.state_digest(model, slots)
    with torch.no_grad():
        slots["s"].seed_parameters()[0][0, 0] += 1.0
    assert len({first, second, digest.state_digest(model, slots)}) == 3
