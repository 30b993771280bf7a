"""Fossil merge: a fossilized low-rank or width seed folded into the host's weights gives the
unmerged fossil's outputs, the unmerge restores the pre-merge host bitwise, and seeds that do not
fold exactly stay ordinary fossils."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from execution_helpers import backward, germinate, kinds, order, runtime
from other_models import NormMLP, SmallCNN, batches, host_tensors, same
from torch import Tensor, nn

from actors.execution import ExecutionRuntime, host_parameters, insert_slots
from actors.execution.testing import TinyMLP
from leyline import pb
from scenarios.demo.tasks import Host, load_task

FOSSIL_AT = 12


@dataclass
class Case:
    """A host, where its slot goes, which blueprint grows there, and its data."""

    build: Callable[[], nn.Module]
    point: str
    blueprint: str
    data: Callable[[], list[tuple[Tensor, Tensor]]]
    params: dict[str, float]


def _digits() -> list[tuple[Tensor, Tensor]]:
    split = load_task("digits")
    return [(split.x_train[i : i + 64], split.y_train[i : i + 64]) for i in range(0, 640, 64)]


def _digits_host() -> nn.Module:
    return Host(64, 16, 10)


MERGED = {
    "digits-width": Case(_digits_host, "mlp", "width", _digits, {"hidden": 8, "lr": 0.01}),
    "digits-lowrank": Case(_digits_host, "mlp", "lowrank", _digits, {"rank": 2, "lr": 0.01}),
    "tiny-lowrank": Case(
        TinyMLP, "fc1", "lowrank", lambda: batches((16, 8), 4, 6, 1), {"rank": 3, "lr": 0.01}
    ),
    "norm-lowrank": Case(
        NormMLP, "mid", "lowrank", lambda: batches((16, 12), 3, 6, 2), {"rank": 4, "lr": 0.01}
    ),
}
UNMERGED = {
    "tiny-residual": Case(TinyMLP, "fc2", "residual_mlp", lambda: batches((16, 8), 4, 6, 1), {}),
    "tiny-width-on-linear": Case(
        TinyMLP, "fc1", "width", lambda: batches((16, 8), 4, 6, 1), {"hidden": 4}
    ),
    "cnn-conv": Case(SmallCNN, "conv2", "conv_adapter", lambda: batches((8, 3, 8, 8), 5, 4, 3), {}),
    "norm-lowrank-after-gelu": Case(
        NormMLP, "norm", "lowrank", lambda: batches((16, 12), 3, 6, 2), {"rank": 2}
    ),
}


@dataclass
class Run:
    """A model trained to a fossil, with what the test compares."""

    model: nn.Module
    rt: ExecutionRuntime
    opt: torch.optim.Optimizer
    before: dict[str, Tensor]  # host tensors just before the fossil order applied
    data: list[tuple[Tensor, Tensor]]


def _run(case: Case, merge: bool, host_opt: str = "adam") -> Run:
    """Train a seed of ``case`` for real (shadow loss), fossilize it at ``FOSSIL_AT``."""
    torch.manual_seed(0)
    model = case.build()
    slots = insert_slots(model, {"s": case.point})
    params = host_parameters(model, slots)
    opt: torch.optim.Optimizer = (
        torch.optim.Adam(params, lr=1e-3)
        if host_opt == "adam"
        else torch.optim.SGD(params, lr=0.05, momentum=0.9)
    )
    data = case.data()
    rt = runtime(model, slots, opt, probe_batch=data[0], fossil_merge=merge)
    rt.submit(germinate("s", 0, case.blueprint, params=case.params))
    rt.submit(order("s", pb.SEED_STAGE_TRAINING, 0))
    rt.submit(order("s", pb.SEED_STAGE_FOSSILIZED, FOSSIL_AT))
    before: dict[str, Tensor] = {}
    for step in range(FOSSIL_AT + 1):
        x, y = data[step % len(data)]
        opt.zero_grad(set_to_none=True)
        backward(F.cross_entropy(model(x), y))
        opt.step()
        before = host_tensors(model)
        rt.on_step(step, batch=(x, y))
    assert all(a.ok for a in kinds(rt.drain_outbox(), "exec.ack"))
    return Run(model, rt, opt, before, data)


def _out(model: nn.Module, x: Tensor) -> Tensor:
    model.eval()
    with torch.no_grad():
        out: Tensor = model(x)
    model.train()
    return out


@pytest.mark.parametrize("name", sorted(MERGED))
def test_merged_fossil_matches_the_unmerged_one_and_unmerges_exactly(name: str) -> None:
    """The merged fossil's outputs equal the unmerged twin's within float tolerance, the slot is
    the identity, and the unmerge restores every host tensor bitwise and the twin's outputs."""
    case = MERGED[name]
    merged, twin = _run(case, merge=True), _run(case, merge=False)
    slot = merged.rt.slots["s"]
    seed = twin.rt.slots["s"].seed
    assert seed is not None
    assert slot.seed is None and slot.fossil and slot.stage == pb.SEED_STAGE_FOSSILIZED
    x = torch.cat([x for x, _ in merged.data[:3]])
    ref = _out(twin.model, x)
    got = _out(merged.model, x)
    assert not torch.equal(ref, _out_without_seed(twin, x))  # the seed does change the outputs
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    merged.rt.unmerge("s")
    assert not same(merged.before, host_tensors(merged.model))
    assert torch.equal(_out(merged.model, x), ref)
    assert merged.rt.slots["s"].seed is not None and not merged.rt.merged


def _out_without_seed(run: Run, x: Tensor) -> Tensor:
    from actors.execution.stages import Mode

    with run.rt.slots["s"].forced(Mode.IDENTITY):
        return _out(run.model, x)


def test_width_merge_grows_the_host_and_its_optimizer_state() -> None:
    """A width fossil makes the host's hidden layer wider by the seed's units; the host Adam and
    SGD-momentum states grow with it, and training goes on; the ack says it merged."""
    for host_opt in ("adam", "sgd"):
        run = _run(MERGED["digits-width"], merge=True, host_opt=host_opt)
        first, last = run.model.mlp.host[0], run.model.mlp.host[2]  # type: ignore[index]
        assert first.weight.shape == (24, 64) and last.weight.shape == (10, 24)
        assert first.out_features == 24 and last.in_features == 24
        for p in host_parameters(run.model, run.rt.slots):
            for v in run.opt.state[p].values():
                assert v.dim() == 0 or v.shape == p.shape
        for x, y in run.data[:3]:
            run.opt.zero_grad()
            loss = F.cross_entropy(run.model(x), y)
            backward(loss)
            run.opt.step()
            assert torch.isfinite(loss)
        run.rt.unmerge("s")
        assert first.weight.shape == (16, 64) and first.out_features == 16


def test_fossil_ack_reports_the_merge() -> None:
    """The FOSSILIZED ack carries fossil_merged = 1 when merged, 0 when the seed stays."""
    torch.manual_seed(0)
    model = TinyMLP()
    slots = insert_slots(model, {"a": "fc1", "b": "fc2"})
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt, fossil_merge=True)
    rt.submit(germinate("a", 0, "lowrank"))
    rt.submit(germinate("b", 0))
    for sid in "ab":
        rt.submit(order(sid, pb.SEED_STAGE_FOSSILIZED, 1))
    rt.on_step(0)
    rt.on_step(1)
    acks = [a for a in kinds(rt.drain_outbox(), "exec.ack") if a.stage == pb.SEED_STAGE_FOSSILIZED]
    assert {a.slot: a.evidence.metrics["fossil_merged"] for a in acks} == {"a": 1.0, "b": 0.0}
    assert slots["a"].seed is None and slots["b"].seed is not None


@pytest.mark.parametrize("name", sorted(UNMERGED))
def test_seeds_that_do_not_fold_exactly_stay_fossils(name: str) -> None:
    """Residual MLPs, conv adapters, width seeds on a single Linear and low-rank seeds after a
    non-linear layer stay ordinary fossils: same outputs and host as without the option."""
    case = UNMERGED[name]
    on, off = _run(case, merge=True), _run(case, merge=False)
    assert on.rt.slots["s"].seed is not None and not on.rt.merged
    x = on.data[0][0]
    assert torch.equal(_out(on.model, x), _out(off.model, x))
    assert not same(host_tensors(on.model), host_tensors(off.model))
    with pytest.raises(ValueError):
        on.rt.unmerge("s")


def test_merged_fossil_checkpoint_round_trip_and_slot_not_free(tmp_path: pathlib.Path) -> None:
    """A merged model checkpoints and restores to the same outputs; the merged fossil's slot is
    not free for a germination."""
    run = _run(MERGED["digits-width"], merge=True)
    x = run.data[0][0]
    out = _out(run.model, x)
    path = str(tmp_path / "ck.pt")
    run.rt.checkpoint(path)
    run.rt.restore(path)
    assert torch.equal(_out(run.model, x), out)
    assert run.rt.slots["s"].stage == pb.SEED_STAGE_FOSSILIZED and run.rt.slots["s"].seed is None
    run.rt.submit(germinate("s", FOSSIL_AT + 1))
    run.rt.on_step(FOSSIL_AT + 1)
    (ack,) = kinds(run.rt.drain_outbox(), "exec.ack")
    assert not ack.ok and ack.evidence.metrics["slot_free"] == 0.0
