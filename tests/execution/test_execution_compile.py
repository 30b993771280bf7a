"""torch.compile: slots compile; alpha ramps never recompile; a lifecycle change at most once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from execution_helpers import backward, data, germinate, order, runtime, tiny
from torch._dynamo.testing import CompileCounter

from actors.execution import host_parameters
from leyline import pb


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_alpha_ramp_never_recompiles_and_stages_compile_once() -> None:
    """Alpha changing every step adds no compile; each lifecycle change adds at most one."""
    model, slots = tiny(0, {"a": "fc1"})
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.05)
    rt = runtime(model, slots, opt, blend_steps=6, probe_every=2)
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    batches = data()
    plan = {
        2: germinate("a", 2),
        4: order("a", pb.SEED_STAGE_TRAINING, 4),
        7: order("a", pb.SEED_STAGE_BLENDING, 7),
        16: order("a", pb.SEED_STAGE_SHADOWING, 16),
    }
    counts: dict[int, int] = {}
    alphas: list[float] = []
    for step in range(19):
        if step in plan:
            rt.submit(plan[step])
        x, y = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        backward(F.cross_entropy(compiled(x), y))
        opt.step()
        rt.on_step(step)
        counts[step] = counter.frame_count
        alphas.append(float(slots["a"].alpha))
    ramp = alphas[7:13]
    assert len(set(ramp)) == len(ramp) and ramp[-1] == 1.0  # alpha really moved every step
    assert counts[8] == counts[14]  # the whole ramp ran on one graph
    for boundary in (2, 4, 7, 16):
        assert counts[boundary + 1] - counts[boundary] <= 1
    assert counts[18] <= 4, counts
