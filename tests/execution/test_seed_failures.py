"""A seed that raises never breaks the training loop: wherever it raises (the user's forward, the
shadow-loss step, the isolation probe, a gate's counterfactual), it leaves the forward at once, a
safety signal says why, and the host trains on as if it had never been there."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actors.execution import (
    Blueprint,
    ExecutionRuntime,
    SlotShape,
    insert_slots,
    register_blueprint,
    unregister_blueprint,
)
from actors.execution.mailbox import KIND_SAFETY
from leyline import pb
from tests.execution.execution_helpers import germinate, kinds, order, runtime

TRAINING = pb.SEED_STAGE_TRAINING


class Trap(nn.Module):
    """A zero-output seed that raises once armed, in the modes it is told to."""

    armed = False

    def __init__(self, width: int, modes: tuple[bool, ...]) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        self.modes = modes

    def forward(self, h: Tensor) -> Tensor:
        if Trap.armed and self.training in self.modes:
            raise RuntimeError("seed bug")
        out: Tensor = self.down(torch.relu(self.up(h)))
        return out


class Reshaper(nn.Module):
    """A zero-output seed that folds its input by a batch size fixed at birth: fine until a batch
    of another size arrives (a short last batch)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mix = nn.Linear(width, width)
        nn.init.zeros_(self.mix.weight)
        nn.init.zeros_(self.mix.bias)

    def forward(self, h: Tensor) -> Tensor:
        out: Tensor = self.mix(h.reshape(8, -1)).reshape(8, -1)
        return out


def _ok(shape: SlotShape) -> bool:
    return len(shape.out_shape) == 2


@contextmanager
def _blueprints(modes: tuple[bool, ...]) -> Iterator[None]:
    register_blueprint(
        Blueprint("t_trap", lambda s, p, host: Trap(s.out_shape[-1], modes), _ok), replace=True
    )
    register_blueprint(
        Blueprint("t_reshaper", lambda s, p, host: Reshaper(s.out_shape[-1]), _ok), replace=True
    )
    Trap.armed = False
    try:
        yield
    finally:
        Trap.armed = False
        unregister_blueprint("t_trap")
        unregister_blueprint("t_reshaper")


def _host() -> tuple[nn.Module, dict[str, object]]:
    """A small GELU/LayerNorm regressor-classifier, with a slot after its first block."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Linear(6, 12),
        nn.LayerNorm(12),
        nn.GELU(),
        nn.Linear(12, 12),
        nn.GELU(),
        nn.Linear(12, 3),
    )
    return model, insert_slots(model, {"s": "2"})


def _loop(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    rt: ExecutionRuntime,
    steps: range,
    *,
    arm_at: int,
    shadow: bool,
    batch: int = 8,
) -> list[float]:
    """The user's loop; the seed's trap is armed from step ``arm_at``; returns the losses."""
    g = torch.Generator().manual_seed(11)
    losses = []
    for step in steps:
        Trap.armed = step >= arm_at
        size = batch if step % 5 else 5  # every fifth batch is short
        x, y = torch.randn(size, 6, generator=g), torch.randint(0, 3, (size,), generator=g)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        rt.on_step(step, loss, batch=(x, y) if shadow else None)
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize(
    ("modes", "shadow", "probe_every"),
    [
        ((False,), True, 0),  # eval only: the shadow-loss step raises
        ((False,), False, 2),  # eval only: the isolation probe raises
        ((True,), False, 0),  # train only: the user's own forward raises
        ((True, False), True, 3),  # everywhere
    ],
)
def test_a_seed_that_starts_raising_is_culled_and_training_goes_on(
    modes: tuple[bool, ...], shadow: bool, probe_every: int
) -> None:
    """Armed at step 4 while TRAINING: no exception reaches the loop, the seed leaves the slot
    with one SEED_FAILED signal naming it, and every loss stays finite."""
    with _blueprints(modes):
        model, slots = _host()
        opt = torch.optim.Adam([p for n, p in model.named_parameters() if ".slot." not in n])
        rt = runtime(
            model, slots, opt, probe_every=probe_every, probe_batch=(torch.randn(8, 6), None)
        )  # fmt: skip
        rt.submit(germinate("s", 0, "t_trap"))
        rt.submit(order("s", TRAINING, 1))
        losses = _loop(model, opt, rt, range(12), arm_at=4, shadow=shadow)
        assert slots["s"].seed is None  # type: ignore[attr-defined]
        signals = kinds(rt.drain_outbox(), KIND_SAFETY)
        failed = [s for s in signals if s.kind == pb.SAFETY_SIGNAL_SEED_FAILED]
        assert [s.slot for s in failed] == ["s"] and "RuntimeError: seed bug" in failed[0].detail
        assert rt.seed_failures == 1
        assert all(torch.isfinite(torch.tensor(losses)))


def test_a_seed_that_breaks_on_a_short_batch_leaves_without_breaking_the_forward() -> None:
    """A seed shaped by the batch size at birth raises on the first short batch inside the
    user's forward: the forward returns the host's output, the seed is culled at the step's
    end, and the host's outputs match a host that never had a seed from then on."""
    with _blueprints((True,)):
        model, slots = _host()
        twin = _host()[0]
        twin.load_state_dict(model.state_dict())
        opt = torch.optim.SGD([p for n, p in model.named_parameters() if ".slot." not in n], 0.1)
        rt = runtime(model, slots, opt, probe_batch=(torch.randn(8, 6), torch.randint(0, 3, (8,))))
        rt.submit(germinate("s", 0, "t_reshaper"))
        rt.submit(order("s", TRAINING, 1))
        _loop(model, opt, rt, range(6), arm_at=99, shadow=True)  # step 5 is short
        assert slots["s"].seed is None  # type: ignore[attr-defined]
        failed = [
            s
            for s in kinds(rt.drain_outbox(), KIND_SAFETY)
            if s.kind == pb.SAFETY_SIGNAL_SEED_FAILED
        ]
        assert len(failed) == 1 and "the seed's forward" in failed[0].detail
        x = torch.randn(5, 6)
        twin.load_state_dict(model.state_dict())
        assert torch.equal(model(x), twin(x))
