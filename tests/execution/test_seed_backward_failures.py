"""A seed whose backward raises never makes the user's ``loss.backward()`` raise: in every stage
where it is in the forward, the user's backward returns and the seed is culled as failed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actors.execution import Blueprint, SlotShape, register_blueprint, unregister_blueprint
from actors.execution.mailbox import KIND_SAFETY
from leyline import pb
from tests.execution.execution_helpers import backward, data, germinate, kinds, order, runtime, tiny


class _Boom(torch.autograd.Function):
    """The identity whose backward raises once armed."""

    armed = False

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        if _Boom.armed:
            raise RuntimeError("seed backward bug")
        return grad


class BadBackward(nn.Module):
    """A zero-output seed whose output goes through :class:`_Boom`."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(width, width), nn.Linear(width, width)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, h: Tensor) -> Tensor:
        out: Tensor = _Boom.apply(self.down(torch.relu(self.up(h))))
        return out


@contextmanager
def _blueprint() -> Iterator[None]:
    def ok(s: SlotShape) -> bool:
        return len(s.out_shape) >= 2

    factory = Blueprint("t_bad_backward", lambda s, p, host: BadBackward(s.out_shape[-1]), ok)
    register_blueprint(factory, replace=True)
    try:
        yield
    finally:
        _Boom.armed = False
        unregister_blueprint("t_bad_backward")


PATHS = {"TRAINING": ["TRAINING"], "BLENDING": ["TRAINING", "BLENDING"]}
PATHS["SHADOWING"] = [*PATHS["BLENDING"], "SHADOWING"]
PATHS["PROBATIONARY"] = [*PATHS["SHADOWING"], "PROBATIONARY"]


@pytest.mark.parametrize(("stage", "shadow"), [(s, False) for s in PATHS] + [("BLENDING", True)])
def test_user_backward_returns_and_the_seed_is_culled(stage: str, shadow: bool) -> None:
    """The user's backward returns in every stage; the seed leaves with SEED_FAILED."""
    with _blueprint():
        model, slots = tiny(points={"a": "fc1"})
        opt = torch.optim.SGD([p for n, p in model.named_parameters() if ".slot." not in n], 0.1)
        rt = runtime(model, slots, opt, blend_steps=20)
        rt.submit(germinate("a", 1, "t_bad_backward"))
        path = PATHS[stage]
        for i, name in enumerate(path):
            rt.submit(order("a", getattr(pb, f"SEED_STAGE_{name}"), 2 + i))
        batches = data()
        armed_at = 3 + len(path)
        for step in range(armed_at + 2):
            _Boom.armed = step >= armed_at
            x, y = batches[step % len(batches)]
            opt.zero_grad()
            backward(F.cross_entropy(model(x), y))  # never raises
            opt.step()
            if step == armed_at:
                assert slots["a"].stage == getattr(pb, f"SEED_STAGE_{stage}")
            rt.on_step(step, None, batch=(x, y) if shadow else None)
        assert slots["a"].seed is None
        signals = kinds(rt.drain_outbox(), KIND_SAFETY)
        failed = [s for s in signals if s.kind == pb.SAFETY_SIGNAL_SEED_FAILED]
        assert len(failed) == 1 and "seed backward bug" in failed[0].detail
