"""A seed on a float16 host (``model.half()``): it learns with finite parameters while the host
stays bit-identical to the same training without Kasmina."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actors.execution import insert_slots
from leyline import pb
from tests.execution.execution_helpers import backward, data, germinate, kinds, order, runtime

STEPS = 30


def _host() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Linear(8, 24), nn.GELU(), nn.Linear(24, 24), nn.GELU(), nn.Linear(24, 4)
    ).half()


def _run(kasmina: bool) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[object]]:
    """Host parameters, seed parameters after the first step and at the end, safety signals."""
    model = _host()
    slots = insert_slots(model, {"mid": "2"}) if kasmina else {}
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rt = None
    if kasmina:
        rt = runtime(model, slots, opt, probe_batch=(data(1, seed=9)[0][0].half(), None))
        rt.submit(germinate("mid", 0))
        rt.submit(order("mid", pb.SEED_STAGE_TRAINING, 1))
    start: list[Tensor] = []
    for step, (x, y) in enumerate(data(STEPS)):
        x = x.half()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).float(), y)
        backward(loss)
        opt.step()
        if rt is not None:
            rt.on_step(step, loss.detach(), batch=(x, y))
            if step == 0:
                start = [p.detach().clone() for p in slots["mid"].seed_parameters()]
    host = [p.detach().clone() for n, p in model.named_parameters() if ".seed." not in n]
    if rt is None:
        return host, [], [], []
    seed = [p.detach().clone() for p in slots["mid"].seed_parameters()]
    return host, start, seed, kinds(rt.drain_outbox(), "safety.signal")


def test_a_seed_on_a_float16_host_learns_with_finite_parameters() -> None:
    """Adam's default eps is 0 in float16 (a zero gradient stepped by 0/0): the seed's optimizer
    uses one float16 can hold, so after 29 TRAINING steps its parameters are finite and moved,
    no safety signal was raised, and the host equals the run without Kasmina bit for bit."""
    plain, _, _, _ = _run(kasmina=False)
    host, start, seed, signals = _run(kasmina=True)
    assert seed and all(p.dtype == torch.float16 for p in seed)
    assert all(bool(torch.isfinite(p).all()) for p in seed)
    assert any(not torch.equal(a, b) for a, b in zip(start, seed, strict=True))
    assert signals == []
    assert len(host) == len(plain)
    assert all(torch.equal(a, b) for a, b in zip(host, plain, strict=True))
