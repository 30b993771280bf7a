"""BatchNorm re-estimation per arm does not depend on the model's mode flag at ``on_step``: a loop
that evaluates with ``model.eval()`` after each step (and calls ``train()`` at the next) has its
BatchNorm judged as trained. Real runtime and actors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from gate_harness import Task, run
from torch import Tensor, nn

from actors.execution import (
    Blueprint,
    SlotShape,
    get_blueprint,
    register_blueprint,
    unregister_blueprint,
)
from leyline import pb

G4 = pb.SEED_GATE_G4_SYSTEM_IMPACT


class Shift(nn.Module):
    """A learned per-channel constant: before a BatchNorm it adds nothing the BatchNorm keeps."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.c = nn.Parameter(torch.zeros(width))

    def forward(self, h: Tensor) -> Tensor:
        """The constant, broadcast to ``h``."""
        return self.c.expand_as(h)


@pytest.fixture
def shift() -> Iterator[str]:
    """A planted blueprint ``shift``, removed afterwards."""

    def build(shape: SlotShape, params: Any, host: nn.Module) -> nn.Module:
        return Shift(int(shape.out_shape[-1]))

    register_blueprint(Blueprint("shift", build, get_blueprint("width").accepts))
    yield "shift"
    unregister_blueprint("shift")


class BNNet(nn.Module):
    """8 -> 16 -> [slot] -> BatchNorm -> ReLU -> 3."""

    def __init__(self) -> None:
        super().__init__()
        self.lin1 = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.out = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        out: Tensor = self.out(torch.relu(self.bn(self.lin1(x))))
        return out


def three_classes(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` points in 8-d, the class the argmax of a noisy random projection."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 3, generator=torch.Generator().manual_seed(99))
    x = torch.randn(n, 8, generator=g)
    return x, (torch.tanh(x @ w) + 0.3 * torch.randn(n, 3, generator=g)).argmax(1)


def test_a_shift_before_batchnorm_is_culled_when_the_loop_leaves_eval_mode(shift: str) -> None:
    """A constant added before a BatchNorm changes nothing once each arm has its own statistics:
    with the model in eval mode at every on_step, G4 still finds 0 fixes and 0 breaks and culls."""
    task = Task(
        BNNet(),
        ("s0", "lin1"),
        three_classes(4096, 0),
        three_classes(1024, 1),
        blueprint=shift,
        params={"lr": 5e-2},
        eval_between_steps=True,
        steps=400,
        germinate_at=2,
        stages=(60, 40, 20, 40),
        lr=3e-3,
        name="bn-eval",
    )
    out = run(task)
    assert out.path[-2:] == ["CULLED", "EMBARGOED"], out.path
    lcb = out.check(G4, "cf_gain_lcb")
    assert not lcb.passed and lcb.value == 0.0
    assert "0 fixes, 0 breaks" in lcb.detail
