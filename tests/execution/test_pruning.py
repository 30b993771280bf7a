"""Structured pruning: unit masks applied at a step boundary, refused when malformed, saved with
checkpoints; unit importance (first-order Taylor) tracked from the trainer's backward and
exported at checkpoint boundaries."""

from __future__ import annotations

import pathlib

import pytest
import torch
import torch.nn.functional as F
from execution_helpers import data, kinds, runtime, tiny, train
from torch import nn

from actors.execution import ExecutionRuntime, host_parameters
from actors.execution.pruning import Pruner, maskable_modules
from actors.execution.restore import RestoreError
from leyline import pb


def prune(order_id: str, at: int, masks: dict[str, list[bool]]) -> pb.PruningOrder:
    """A pruning order for ``masks`` (module -> keep flags) at step ``at``."""
    return pb.PruningOrder(
        order_id=order_id,
        apply_at_step=at,
        masks=[pb.UnitMask(module=m, keep=k) for m, k in masks.items()],
    )


def _setup(**kw: object) -> tuple[nn.Module, torch.optim.Optimizer, ExecutionRuntime]:
    model, slots = tiny()
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.05)
    return model, opt, runtime(model, slots, opt, **kw)


def _hidden(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of ``fc2`` (through its slot) for ``x``."""
    seen: list[torch.Tensor] = []
    handle = model.fc2.register_forward_hook(lambda m, i, o: seen.append(o.detach()))  # type: ignore[union-attr]
    model(x)
    handle.remove()
    return seen[0]


def test_a_mask_zeroes_its_units_from_the_step_after_it_applies() -> None:
    """Before the order's step the forward is unchanged; from the next step the masked units of
    ``fc2`` output exactly 0, the others are untouched, and no gradient reaches the masked rows."""
    model, opt, rt = _setup()
    keep = [i % 2 == 0 for i in range(16)]
    rt.submit_pruning(prune("p1", 2, {"fc2.host": keep}))
    batches = data(4)
    x = batches[0][0]
    train(model, opt, rt, batches, range(2))
    assert (_hidden(model, x) != 0).any(dim=0)[1::2].all()  # not yet
    train(model, opt, rt, batches, range(2, 3))
    after = _hidden(model, x)
    assert torch.equal(after[:, 1::2], torch.zeros_like(after[:, 1::2]))
    out = rt.drain_outbox()
    acks = kinds(out, "pruning.ack")
    assert [(a.order_id, a.ok, a.applied_at_step, a.pruned_units) for a in acks] == [
        ("p1", True, 2, 8)
    ]
    assert acks[0].total_units == 16 + 16 + 4
    opt.zero_grad()
    F.cross_entropy(model(x), batches[0][1]).backward()
    grad = model.fc2.host.weight.grad  # type: ignore[union-attr]
    assert grad is not None and torch.equal(grad[1::2], torch.zeros_like(grad[1::2]))
    assert grad[0::2].abs().sum() > 0


def test_masks_work_on_conv_channels() -> None:
    """A Conv2d channel mask zeroes whole channels of batched and unbatched outputs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 6, 6))
    pruner = Pruner(model, track=False)
    pruner.set_masks(pruner.check(prune("c", 0, {"0": [True, False, True, False]}).masks))
    out = model[0](torch.randn(2, 3, 6, 6))
    assert torch.equal(out[:, 1::2], torch.zeros_like(out[:, 1::2])) and out[:, 0].abs().sum() > 0
    single = model[0](torch.randn(3, 6, 6))
    assert torch.equal(single[1::2], torch.zeros_like(single[1::2]))
    pruner.set_masks({"0": torch.ones(4, dtype=torch.bool)})  # all kept: the hook goes away
    assert pruner.masks == {} and not model[0]._forward_hooks


@pytest.mark.parametrize(
    ("masks", "reason"),
    [
        ({"nope": [True] * 16}, "unknown module 'nope'"),
        ({"fc2.host": [True] * 15}, "has 15 flags; the module has 16"),
        ({"fc2.host": [False] * 16}, "would prune every one"),
        ({}, "holds no mask"),
        ({"a.seed": [True, False]}, "unknown module"),
    ],
)
def test_malformed_orders_are_refused_with_a_reason_and_change_nothing(
    masks: dict[str, list[bool]], reason: str
) -> None:
    """Unknown module, wrong shape, a module pruned whole, no mask: refused as it arrives (the
    ack at the step it was received, not its due step), nothing changed."""
    model, opt, rt = _setup()
    rt.submit_pruning(prune("ok", 0, {"fc1.host": [True] * 15 + [False]}))
    rt.submit_pruning(prune("bad", 1, masks))
    train(model, opt, rt, data(2), range(3))
    acks = {a.order_id: a for a in kinds(rt.drain_outbox(), "pruning.ack")}
    assert acks["ok"].ok and not acks["bad"].ok
    assert reason in acks["bad"].error and acks["bad"].applied_at_step == 0
    assert set(rt.pruner.masks) == {"fc1.host"} and not rt.pending_pruning


def test_a_duplicate_module_in_one_order_is_refused() -> None:
    """An order naming a module twice is refused whole."""
    _, _, rt = _setup()
    order = prune("dup", 0, {"head": [True, True, True, False]})
    order.masks.append(pb.UnitMask(module="head", keep=[True] * 4))
    rt.submit_pruning(order)
    rt.on_step(0)
    (ack,) = kinds(rt.drain_outbox(), "pruning.ack")
    assert not ack.ok and "named twice" in ack.error and rt.pruner.masks == {}


def test_importance_is_the_first_order_taylor_score_of_each_unit() -> None:
    """Exported every ``importance_every`` steps: per unit, -sum(a * dL/da) over the batch (the
    first-order estimate of the loss rise if it were zero), averaged over the window's backward
    passes, as computed by hand with autograd."""
    model, opt, rt = _setup(importance_every=2)
    batches = data(2, batch=8)
    expected = torch.zeros(16, dtype=torch.float64)
    for step in range(3):
        x, y = batches[step % 2]
        opt.zero_grad()
        acts: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        handle = model.fc2.host.register_forward_hook(lambda m, i, o, a=acts: a.append(o))  # type: ignore[union-attr,misc]
        loss = F.cross_entropy(model(x), y)
        handle.remove()
        acts[0].register_hook(grads.append)
        loss.backward()
        if step > 0:  # the first window ends at step 0
            expected -= (acts[0].detach() * grads[0]).sum(0).double()
        opt.step()
        rt.on_step(step, loss)
    reports = kinds(rt.drain_outbox(), "pruning.importance")
    assert [(r.step, r.since_step) for r in reports] == [(0, 0), (2, 1)]
    assert reports[1].backward_passes == 2
    fc2 = {m.module: m for m in reports[1].modules}["fc2.host"]
    assert fc2.layer == "Linear" and list(fc2.keep) == [True] * 16
    got = torch.tensor(list(fc2.importance), dtype=torch.float64)
    assert torch.allclose(got, expected / 2, rtol=1e-5, atol=1e-9)
    assert sorted(m.module for m in reports[1].modules) == sorted(maskable_modules(model))


def test_masks_survive_a_checkpoint_round_trip_and_a_checkpoint_exports_importance(
    tmp_path: pathlib.Path,
) -> None:
    """A checkpoint holds the masks and sends an importance report; restoring it into a fresh
    runtime brings the masks back (same outputs); a rollback keeps the current masks."""
    model, opt, rt = _setup(importance_every=100)
    keep = [True, False] * 8
    rt.submit_pruning(prune("p", 1, {"fc1.host": keep}))
    batches = data(4)
    train(model, opt, rt, batches, range(4))
    rt.drain_outbox()
    path = str(tmp_path / "ck.safetensors")
    rt.checkpoint(path)
    (report,) = kinds(rt.drain_outbox(), "pruning.importance")
    assert report.step == 3 and report.backward_passes == 3
    assert list({m.module: m for m in report.modules}["fc1.host"].keep) == keep
    x = batches[0][0]
    before = model(x).detach()
    model2, _, rt2 = _setup()
    model2.load_state_dict(model.state_dict())
    assert not torch.equal(model2(x), before)
    assert rt2.restore(path) == 3
    assert torch.equal(rt2.pruner.masks["fc1.host"], torch.tensor(keep))
    assert torch.equal(model2(x), before)


def test_a_checkpoint_whose_masks_do_not_fit_is_refused_whole(tmp_path: pathlib.Path) -> None:
    """Masks naming a module this host lacks, or of another width: RestoreError, nothing set."""
    from actors.execution.checkpoint import read_checkpoint, write_atomic

    model, opt, rt = _setup()
    rt.submit_pruning(prune("p", 0, {"head": [True, True, False, True]}))
    train(model, opt, rt, data(2), range(1))
    path = tmp_path / "ck.safetensors"
    rt.checkpoint(str(path))
    payload = read_checkpoint(path)
    for bad in (
        {"nope": torch.ones(4, dtype=torch.bool)},
        {"head": torch.ones(5, dtype=torch.bool)},
    ):
        payload["pruning"] = bad
        write_atomic(payload, path)
        _, _, fresh = _setup()
        with pytest.raises(RestoreError, match="checkpoint mask"):
            fresh.restore(str(path))
        assert fresh.pruner.masks == {}


def test_a_mask_follows_its_module_when_a_merged_width_seed_grows_it() -> None:
    """A module that gains units at the end (a width fossil merged into it) keeps its masked
    units at zero and the new units unmasked; shrinking back restores the original mask."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    pruner = Pruner(model, track=False)
    keep = [True, False, True, True, False, True]
    pruner.set_masks(pruner.check(prune("g", 0, {"0": keep}).masks))
    first, old = model[0], model[0].weight
    with torch.no_grad():  # grow as the width merge does: new rows at the end
        first.weight = nn.Parameter(torch.cat([old, torch.randn(2, 4)]))
        first.bias = nn.Parameter(torch.cat([model[0].bias, torch.ones(2)]))
        first.out_features = 8
    out = first(torch.randn(3, 4))
    assert out.shape == (3, 8) and torch.equal(out[:, [1, 4]], torch.zeros(3, 2))
    assert (out[:, 6:] != 0).all() and pruner.counts() == (2, 8 + 2)
    first.weight, first.out_features = nn.Parameter(old), 6
    first.bias = nn.Parameter(first.bias[:6].detach())
    assert first(torch.randn(3, 4)).shape == (3, 6)
    assert pruner.masks["0"].tolist() == keep


def test_orders_a_rank_cannot_hold_are_refused_on_receipt() -> None:
    """An order due far beyond the horizon, or one more than the pending bound, is refused when
    it arrives (its ack says why) and not kept: no signer makes a rank hold orders without bound."""
    from actors.execution.pruning_orders import HORIZON_STEPS, MAX_PENDING

    model, opt, rt = _setup()
    keep = {"fc1.host": [True] * 15 + [False]}
    rt.submit_pruning(prune("far", 2**64 - 1, keep))
    rt.submit_pruning(prune("edge", HORIZON_STEPS, keep))  # exactly at the horizon: kept
    for i in range(MAX_PENDING):
        rt.submit_pruning(prune(f"p{i}", 10_000 + i, keep))
    train(model, opt, rt, data(2), range(1))
    acks = {a.order_id: a for a in kinds(rt.drain_outbox(), "pruning.ack")}
    assert set(acks) == {"far", f"p{MAX_PENDING - 1}"}
    assert (
        "steps ahead" in acks["far"].error
        and "already waiting" in acks[f"p{MAX_PENDING - 1}"].error
    )
    assert len(rt.pending_pruning) == MAX_PENDING
    assert {o.order_id for o in rt.pending_pruning} >= {"edge", "p0"}
