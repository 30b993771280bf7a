"""A fossil is part of the host, yet a non-finite output of it never reaches the loss: it is
zeroed in the forward (the host's activation passes alone on that batch) and raised as a safety
signal, so the host's parameters stay finite and training goes on."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actors.execution import Blueprint, insert_slots, register_blueprint, unregister_blueprint
from actors.execution.mailbox import KIND_SAFETY
from leyline import pb
from tests.execution.execution_helpers import germinate, kinds, order, runtime

S = pb.SeedLifecycleStage


class Spiky(nn.Module):
    """A residual seed whose output holds one NaN while ``armed``."""

    armed = False

    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        nn.init.zeros_(self.lin.weight)  # zero output at birth
        nn.init.zeros_(self.lin.bias)

    def forward(self, h: Tensor) -> Tensor:
        out: Tensor = self.lin(h)
        if Spiky.armed:
            bad = torch.zeros_like(out)
            bad[0, 0] = float("nan")
            out = out + bad
        return out


def test_a_fossil_that_emits_nan_is_zeroed_signalled_and_training_goes_on() -> None:
    """A fossil emitting a NaN on steps 12 and 13: the loss stays finite, every host parameter
    (the fossil's included) stays finite, the slot's output on those steps equals the host's
    activation, and one NON_FINITE_OUTPUT signal per report names the fossil."""
    register_blueprint(
        Blueprint("t_spiky", lambda s, p, host: Spiky(s.out_shape[-1]), lambda s: True),
        replace=True,
    )
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
        slots = insert_slots(model, {"s": "1"})
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        probe = (torch.randn(16, 6), torch.randint(0, 3, (16,)))
        rt = runtime(model, slots, opt, report_every=5, probe_batch=probe)
        stages = (S.SEED_STAGE_TRAINING, S.SEED_STAGE_BLENDING, S.SEED_STAGE_SHADOWING,
                  S.SEED_STAGE_PROBATIONARY, S.SEED_STAGE_FOSSILIZED)  # fmt: skip
        rt.submit(germinate("s", 0, blueprint="t_spiky"))
        for at, stage in enumerate(stages, start=1):
            rt.submit(order("s", stage, 2 * at))
        g = torch.Generator().manual_seed(1)
        outbox: list[tuple[str, object]] = []
        for step in range(20):
            Spiky.armed = step in (12, 13)
            x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
            if Spiky.armed:
                with torch.no_grad():
                    h = torch.relu(model[0](x))
                    assert torch.equal(slots["s"](h), h)  # the fossil's NaN output is dropped
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            assert torch.isfinite(loss)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            rt.on_step(step, loss)
            outbox.extend(rt.outbox.drain())
        assert slots["s"].fossil
        assert all(torch.isfinite(p).all() for p in model.parameters())
        signals = [
            s for s in kinds(outbox, KIND_SAFETY) if s.kind == pb.SAFETY_SIGNAL_NON_FINITE_OUTPUT
        ]
        assert [(s.slot, s.step, "fossil output" in s.detail) for s in signals] == [("s", 15, True)]
        assert signals[0].value == 4.0  # the two armed training forwards and the two checks
    finally:
        Spiky.armed = False
        unregister_blueprint("t_spiky")
