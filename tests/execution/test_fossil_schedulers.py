"""A fossil joins an existing group of the user's optimizer, so the user's LR schedulers go on."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest
import torch
from torch.optim import lr_scheduler as sched

from leyline import pb
from tests.execution.execution_helpers import data, germinate, order, runtime, tiny, train

Make = Callable[[torch.optim.Optimizer], object]

SCHEDULERS: dict[str, Make] = {
    "OneCycleLR": lambda o: sched.OneCycleLR(o, max_lr=[0.1, 0.05], total_steps=100),
    "CyclicLR": lambda o: sched.CyclicLR(o, 0.01, 0.1, step_size_up=5),
    "LambdaLR": lambda o: sched.LambdaLR(o, lambda e: 0.9**e),
    "StepLR": lambda o: sched.StepLR(o, step_size=2, gamma=0.5),
    "CosineAnnealingWarmRestarts": lambda o: sched.CosineAnnealingWarmRestarts(o, T_0=3),
    "SequentialLR": lambda o: sched.SequentialLR(
        o, [sched.LinearLR(o, 0.5, total_iters=3), sched.ExponentialLR(o, 0.9)], milestones=[3]
    ),
}
STAGES = ("TRAINING", "BLENDING", "SHADOWING", "PROBATIONARY", "FOSSILIZED")


def _grown(make: Make) -> tuple[torch.nn.Module, dict, torch.optim.Optimizer, object, object]:
    model, slots = tiny(points={"b": "fc2"})
    fc1 = list(model.fc1.parameters())
    rest = [p for p in model.parameters() if all(p is not q for q in fc1)]
    opt = torch.optim.SGD([{"params": fc1}, {"params": rest, "lr": 0.05}], lr=0.1, momentum=0.9)
    scheduler = make(opt)
    rt = runtime(model, slots, opt, blend_steps=2)
    rt.submit(germinate("b", 1))
    for i, name in enumerate(STAGES):
        rt.submit(order("b", getattr(pb, f"SEED_STAGE_{name}"), 2 + 2 * i))
    return model, slots, opt, scheduler, rt


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_user_schedulers_step_after_fossilization_and_the_fossil_trains(name: str) -> None:
    """After FOSSILIZED the optimizer keeps its groups, every scheduler steps, the fossil trains."""
    model, slots, opt, scheduler, rt = _grown(SCHEDULERS[name])
    batches = data()
    for step in range(12):
        train(model, opt, rt, batches, range(step, step + 1))
        scheduler.step()  # type: ignore[attr-defined]
    assert slots["b"].fossil and len(opt.param_groups) == 2
    fossil = slots["b"].seed_parameters()
    group = {id(p) for p in opt.param_groups[1]["params"]}
    assert fossil and all(id(p) in group for p in fossil)  # the group of fc2 (the slot's host)
    before = [p.detach().clone() for p in fossil]
    for step in range(12, 15):
        train(model, opt, rt, batches, range(step, step + 1))
        scheduler.step()  # type: ignore[attr-defined]
    assert not all(torch.equal(a, b) for a, b in zip(before, fossil, strict=True))


def test_a_restored_fossil_takes_the_same_group(tmp_path: pathlib.Path) -> None:
    """A checkpoint of a fossilized run restores into a fresh run without adding a group."""
    model, _, opt, _, rt = _grown(SCHEDULERS["StepLR"])
    train(model, opt, rt, data(), range(12))
    path = str(tmp_path / "ck.pt")
    rt.checkpoint(path)
    model2, slots2, opt2, scheduler2, rt2 = _grown(SCHEDULERS["StepLR"])
    rt2.restore(path)
    assert slots2["b"].fossil and len(opt2.param_groups) == 2
    group = {id(p) for p in opt2.param_groups[1]["params"]}
    assert all(id(p) in group for p in slots2["b"].seed_parameters())
    train(model2, opt2, rt2, data(), range(12, 13))
    scheduler2.step()  # type: ignore[attr-defined]
