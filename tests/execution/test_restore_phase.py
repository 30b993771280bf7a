"""A checkpoint taken while alpha sits inside a hysteresis band restores the blend phase the run
had (alpha alone does not tell it), so training goes on exactly as without the interruption."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actors.execution import ExecutionRuntime, insert_slots
from leyline import pb
from tests.execution.execution_helpers import germinate, order, runtime

S = pb.SeedLifecycleStage


def _build(init: int) -> tuple[nn.Module, torch.optim.Optimizer, ExecutionRuntime]:
    torch.manual_seed(init)
    model = nn.Sequential(
        nn.Linear(5, 10), nn.SiLU(), nn.Linear(10, 10), nn.SiLU(), nn.Linear(10, 2)
    )
    slots = insert_slots(model, {"s": "2"})
    opt = torch.optim.SGD([p for n, p in model.named_parameters() if ".slot." not in n], lr=0.05)
    probe = (torch.randn(8, 5, generator=torch.Generator().manual_seed(9)), None)
    return model, opt, runtime(model, slots, opt, blend_steps=100, probe_batch=probe)


def _run(model: nn.Module, opt: torch.optim.Optimizer, rt: ExecutionRuntime, steps: range) -> None:
    g = torch.Generator().manual_seed(4)
    data = [
        (torch.randn(8, 5, generator=g), torch.randint(0, 2, (8,), generator=g)) for _ in range(4)
    ]
    for step in steps:
        x, y = data[step % 4]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        rt.on_step(step, loss, batch=(x, y))


def _same(a: nn.Module, b: nn.Module) -> bool:
    pairs: list[tuple[Tensor, Tensor]] = list(
        zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    return all(torch.equal(x, y) for x, y in pairs)


def test_a_restore_inside_a_hysteresis_band_keeps_the_running_phase(tmp_path: Path) -> None:
    """Alpha 0.31 on its way up: the running seed is still EARLY (MID starts at 0.32); the
    restored one is EARLY too, and after three more steps both models are bit-identical."""
    model, opt, rt = _build(0)
    for o in (
        germinate("s", 0),
        order("s", S.SEED_STAGE_TRAINING, 1),
        order("s", S.SEED_STAGE_BLENDING, 2),
    ):
        rt.submit(o)
    _run(model, opt, rt, range(33))
    assert abs(float(rt.slots["s"].alpha) - 0.31) < 1e-6 and rt.states["s"].phase == 0
    rt.checkpoint(str(tmp_path / "band.safetensors"))
    twin, twin_opt, twin_rt = _build(7)
    twin_rt.restore(str(tmp_path / "band.safetensors"))
    assert twin_rt.states["s"].phase == 0
    _run(model, opt, rt, range(33, 36))
    _run(twin, twin_opt, twin_rt, range(33, 36))
    assert _same(model, twin)


def test_a_restore_keeps_what_the_gates_judge_the_seed_on(tmp_path: Path) -> None:
    """A seed restored mid-BLENDING carries the measurements its gates read (the facts measured
    at germination such as the host's size, the gradient and shadow-gain counters): the slot's
    reported evidence is the running run's, key for key, before and after three more steps."""
    model, opt, rt = _build(0)
    for o in (
        germinate("s", 0),
        order("s", S.SEED_STAGE_TRAINING, 1),
        order("s", S.SEED_STAGE_BLENDING, 20),
    ):
        rt.submit(o)
    _run(model, opt, rt, range(30))
    before = rt.states["s"].metrics(30)
    assert "host_params" in before and before["grad_steps"] > 0
    rt.checkpoint(str(tmp_path / "evidence.safetensors"))
    twin, twin_opt, twin_rt = _build(7)
    twin_rt.restore(str(tmp_path / "evidence.safetensors"))
    assert twin_rt.states["s"].metrics(30) == before
    _run(model, opt, rt, range(30, 33))
    _run(twin, twin_opt, twin_rt, range(30, 33))
    assert twin_rt.states["s"].metrics(33) == rt.states["s"].metrics(33)
