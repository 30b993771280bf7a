"""A seed factory receives the host module: a seed that keeps an unregistered reference to it
and writes its tensors is refused (nothing of the host changed) or, writing only later, reported
as an isolation violation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from actors.execution import Blueprint, register_blueprint, unregister_blueprint
from actors.execution.blueprints import ResidualMLP, SlotShape
from leyline import pb
from tests.execution.execution_helpers import data, germinate, kinds, order, runtime, tiny, train


class HiddenRef(nn.Module):
    """Keeps the host in a plain list and nudges its weights in train-mode forwards, from its
    ``after``-th forward on (0: from the first, which germination's checks run)."""

    def __init__(self, d: int, host: nn.Module, after: int) -> None:
        super().__init__()
        self.inner = ResidualMLP(d, d, d)
        self._host = [host]
        self.calls, self.after = 0, after

    def forward(self, h: Tensor) -> Tensor:
        self.calls += 1
        if self.training and self.calls > self.after:
            with torch.no_grad():
                weight = self._host[0].weight
                assert isinstance(weight, Tensor)
                weight.mul_(0.999)
        return self.inner(h)  # type: ignore[no-any-return]


FACTORIES: dict[str, Any] = {
    "x_ref_now": lambda s, p, host: HiddenRef(s.out_shape[-1], host, 0),
    "x_ref_later": lambda s, p, host: HiddenRef(s.out_shape[-1], host, 12),
}


@contextmanager
def blueprints() -> Iterator[None]:
    """The two blueprints, registered for the test."""
    for name, factory in FACTORIES.items():
        register_blueprint(
            Blueprint(name, factory, lambda s: isinstance(s, SlotShape)), replace=True
        )
    try:
        yield
    finally:
        for name in FACTORIES:
            unregister_blueprint(name)


def _run(blueprint: str | None, steps: int = 8) -> tuple[nn.Module, list[Any], list[Any]]:
    model, slots = tiny(0, {"a": "fc1"})
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rt = runtime(model, slots, opt)
    if blueprint is not None:
        rt.submit(germinate("a", 1, blueprint))
        rt.submit(order("a", pb.SEED_STAGE_TRAINING, 2))
    train(model, opt, rt, data(4), range(steps))
    out = rt.drain_outbox()
    return model, kinds(out, "exec.ack"), kinds(out, "safety.signal")


def _host(model: nn.Module) -> dict[str, Tensor]:
    return {k: v for k, v in model.state_dict().items() if ".slot." not in k}


def test_a_seed_that_writes_the_host_at_germination_is_refused_and_undone() -> None:
    """Writing the host from the first forward: the germination is refused with the reason and
    the host trains exactly as in a seedless run."""
    base, _, _ = _run(None)
    with blueprints():
        for name, reason in (("x_ref_now", "host tensor"),):
            model, acks, _ = _run(name)
            germ = [a for a in acks if a.order_id == f"a-{pb.SEED_STAGE_GERMINATED}-1"]
            assert germ and not germ[0].ok and reason in germ[0].error, (name, germ)
            for key, value in _host(base).items():
                assert torch.equal(value, _host(model)[key]), (name, key)


def test_a_seed_that_writes_the_host_later_is_an_isolation_violation() -> None:
    """A seed that starts writing the host through its hidden reference after germination is
    reported (``SAFETY_SIGNAL_ISOLATION_VIOLATION``, naming the host tensors)."""
    with blueprints():
        _, acks, signals = _run("x_ref_later", steps=40)
    assert all(a.ok for a in acks)
    found = [s for s in signals if s.kind == pb.SAFETY_SIGNAL_ISOLATION_VIOLATION]
    assert found and "host tensors" in found[0].detail
