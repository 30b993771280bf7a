"""The runtime checks an order itself before it changes anything (the SeedActor checks the same
bounds, but a runtime driven directly, or by a bad controller, must not take them on trust)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from actors.execution import (
    Blueprint,
    ExecutionRuntime,
    host_parameters,
    insert_slots,
    orders,
    register_blueprint,
    unregister_blueprint,
)
from actors.execution.mailbox import KIND_ACK
from leyline import pb
from tests.execution.execution_helpers import germinate, kinds, order, runtime, tiny

S = pb.SeedLifecycleStage


def _rt(*, train: bool = True) -> ExecutionRuntime:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 9), nn.ELU(), nn.Linear(9, 9), nn.ELU(), nn.Linear(9, 2))
    slots = insert_slots(model, {"s": "2"})
    opt = torch.optim.SGD([p for n, p in model.named_parameters() if ".slot." not in n], lr=0.1)
    rt = runtime(model, slots, opt, probe_batch=(torch.randn(6, 4), None))
    rt.submit(germinate("s", 0))
    if train:
        rt.submit(order("s", S.SEED_STAGE_TRAINING, 1))
    for step in range(2):
        rt.on_step(step)
    assert rt.slots["s"].seed is not None
    rt.drain_outbox()
    return rt


def _acks(rt: ExecutionRuntime, step: int) -> list[pb.ExecutionAck]:
    rt.on_step(step)
    return kinds(rt.drain_outbox(), KIND_ACK)


@pytest.mark.parametrize("lr_scale", [math.nan, -1e6, math.inf, 1e6])
def test_an_optimizer_adjustment_out_of_bounds_is_refused_and_changes_nothing(
    lr_scale: float,
) -> None:
    """A non-finite, negative or huge learning-rate scale is refused with its reason; the seed's
    learning rate is what it was."""
    rt = _rt()
    opt = rt.states["s"].optimizer
    assert opt is not None
    before = [g["lr"] for g in opt.param_groups]
    adjust = pb.AdjustOptimizer(lr_scale=lr_scale, weight_decay=-1)
    rt.submit(order("s", S.SEED_STAGE_TRAINING, 2, adjust_optimizer=adjust))
    (ack,) = _acks(rt, 2)
    assert not ack.ok and "lr_scale" in ack.error
    assert [g["lr"] for g in opt.param_groups] == before


def test_a_second_germination_of_another_seed_is_refused() -> None:
    """GERMINATED again with another blueprint is refused (the seed is kept); with the same
    blueprint it is the no-op it always was."""
    rt = _rt(train=False)
    seed = rt.slots["s"].seed
    rt.submit(germinate("s", 2, "lowrank"))
    (ack,) = _acks(rt, 2)
    assert not ack.ok and "already holds a seed (residual_mlp)" in ack.error
    assert rt.slots["s"].seed is seed
    rt.submit(
        order("s", S.SEED_STAGE_TRAINING, 3, germinate=pb.Germinate(blueprint="residual_mlp"))
    )
    (ack,) = _acks(rt, 3)
    assert ack.ok and rt.slots["s"].seed is seed


class _Recurrent(nn.Module):
    """A GRU encoder (its output is a tuple: sequence and last state) and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 6, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq, _ = self.gru(x)
        out: torch.Tensor = self.head(seq[:, -1])
        return out


def test_a_slot_on_a_tuple_output_refuses_germination_with_a_clear_reason() -> None:
    """A slot after a GRU (which returns a tuple) refuses a germination and says why; the slot
    stays DORMANT and the model's forward is unchanged."""
    torch.manual_seed(2)
    model = _Recurrent()
    slots = insert_slots(model, {"r": "gru"})
    opt = torch.optim.SGD(model.head.parameters(), lr=0.1)
    x = torch.randn(4, 5, 3)
    rt = runtime(model, slots, opt, probe_batch=(x, None))
    before = model(x)
    rt.submit(germinate("r", 0))
    (ack,) = _acks(rt, 0)
    assert not ack.ok and "returns tuple, not a tensor" in ack.error
    assert ack.stage == S.SEED_STAGE_DORMANT and torch.equal(model(x), before)


class _Frozen(nn.Module):
    """A zero-output seed whose parameters are all frozen."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        nn.init.zeros_(self.lin.weight)
        nn.init.zeros_(self.lin.bias)
        self.requires_grad_(False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lin(h)
        return out


def test_a_seed_with_nothing_to_train_is_refused_at_germination() -> None:
    """A seed none of whose parameters requires a gradient could never learn: its germination
    is refused with that reason and the slot stays empty."""
    register_blueprint(
        Blueprint("t_frozen", lambda s, p, host: _Frozen(s.out_shape[-1]), lambda s: True),
        replace=True,
    )
    try:
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(4, 9), nn.ELU(), nn.Linear(9, 2))
        slots = insert_slots(model, {"s": "1"})
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        rt = runtime(model, slots, opt, probe_batch=(torch.randn(6, 4), None))
        rt.submit(germinate("s", 0, "t_frozen"))
        (ack,) = _acks(rt, 0)
    finally:
        unregister_blueprint("t_frozen")
    assert not ack.ok and "no trainable parameter" in ack.error
    assert rt.slots["s"].seed is None and ack.stage == S.SEED_STAGE_DORMANT


def test_an_order_not_held_by_every_rank_is_refused_for_retry_and_changes_nothing() -> None:
    """In a data-parallel step where another rank lacks a due order (its bus was cut), the order
    is refused with ``retry`` set (its sender may send it again) and the slot is untouched."""
    model, slots = tiny()
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    rt = runtime(model, slots, opt)
    rt.submit(germinate("a", 0))
    rt.pending.extend(rt.inbox.drain())
    orders.apply_due(rt, 0, agreed=set())
    (ack,) = [m for k, m in rt.drain_outbox() if k == "exec.ack"]
    assert (ack.ok, ack.retry) == (False, True) and "not held by every rank" in ack.error
    assert slots["a"].seed is None and slots["a"].stage == pb.SEED_STAGE_DORMANT
