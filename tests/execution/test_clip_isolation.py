"""A user loop that clips the gradient norm over ``model.parameters()`` (the common loop, seeds
included) keeps the host bit-identical to a seedless run while a seed trains from the shadow
loss: the seed's parameters carry no gradient from the user's backward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actors.execution import ExecutionRuntime, insert_slots
from leyline import pb
from tests.execution.execution_helpers import germinate, order, runtime


def _model() -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Linear(7, 14),
        nn.LayerNorm(14),
        nn.Tanh(),
        nn.Linear(14, 14),
        nn.Tanh(),
        nn.Linear(14, 4),
    )


def _run(seeded: bool, steps: int = 12) -> tuple[list[Tensor], list[Tensor]]:
    """Host tensors after ``steps`` of a clipped AdamW loop, and the seed's parameters."""
    model = _model()
    slots = insert_slots(model, {"s": "3"}) if seeded else {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rt: ExecutionRuntime | None = None
    if seeded:
        rt = runtime(model, slots, opt, probe_batch=(torch.randn(8, 7), None))
        rt.submit(germinate("s", 0))
        rt.submit(order("s", pb.SEED_STAGE_TRAINING, 1))
    g = torch.Generator().manual_seed(2)
    seed_start: list[Tensor] = []
    for step in range(steps):
        x, y = torch.randn(16, 7, generator=g), torch.randint(0, 4, (16,), generator=g)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.05)
        opt.step()
        if rt is not None:
            rt.on_step(step, batch=(x, y))
            if step == 1:
                seed_start = [p.detach().clone() for p in rt.slots["s"].seed_parameters()]
    host = [v.detach().clone() for k, v in model.state_dict().items() if ".slot." not in k]
    seed = [] if rt is None else [p.detach().clone() for p in rt.slots["s"].seed_parameters()]
    assert not seeded or any(not torch.equal(a, b) for a, b in zip(seed_start, seed, strict=True))
    return host, seed


def test_a_clip_over_the_whole_model_leaves_the_host_as_without_seeds() -> None:
    """Seeded and seedless hosts match bit for bit after ten TRAINING steps under a tight clip,
    while the seed's own parameters moved."""
    plain, _ = _run(False)
    seeded, seed = _run(True)
    assert seed
    assert all(torch.equal(a, b) for a, b in zip(plain, seeded, strict=True))
