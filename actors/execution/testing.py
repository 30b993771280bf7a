"""Test doubles for the execution side: a planted leaking blueprint, a tiny host network, and a
way to keep the digest thread busy."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from actors.execution.blueprints import (
    Blueprint,
    ResidualMLP,
    SlotShape,
    register_blueprint,
    unregister_blueprint,
)
from actors.execution.digest import snapshot, submit

LEAKY = "leaky"
LEAKY_TRAIN = "leaky_train"


class LeakySeed(nn.Module):
    """A zero-output seed that reads the *undetached* host activation through a side channel
    (a forward hook on the host submodule) and adds ``t - t.detach()``: the forward value is
    unchanged, but gradient flows into the host. Isolation checks must catch it."""

    def __init__(self, features: int, host: nn.Module) -> None:
        super().__init__()
        self.inner = ResidualMLP(features, features, features)
        self._side: list[Tensor] = []
        self._handle: RemovableHandle | None = host.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, args: object, out: object) -> None:
        if isinstance(out, Tensor):
            self._side[:] = [out]

    def forward(self, h: Tensor) -> Tensor:
        """The (leaking) delta."""
        z: Tensor = self.inner(h)
        if self._side:
            leak = self._side[0]
            z = z + (leak - leak.detach())
        return z

    def release(self) -> None:
        """Remove the side-channel hook."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._side.clear()


class TrainModeLeak(LeakySeed):
    """Like :class:`LeakySeed`, but the leak is only there in train mode: a check that runs the
    model in eval mode alone never sees it."""

    def forward(self, h: Tensor) -> Tensor:
        """The delta, leaking while training."""
        z: Tensor = self.inner(h)
        if self.training and self._side:
            leak = self._side[0]
            z = z + (leak - leak.detach())
        return z


def _build_leaky(shape: SlotShape, params: Mapping[str, float], host: nn.Module) -> nn.Module:
    return LeakySeed(shape.out_shape[-1], host)


def register_leaky() -> Blueprint:
    """Register the planted leaking blueprint (``"leaky"``); pair with :func:`unregister_leaky`."""
    bp = Blueprint(LEAKY, _build_leaky, lambda s: len(s.out_shape) >= 2, description="planted leak")
    return register_blueprint(bp, replace=True)


def unregister_leaky() -> None:
    """Remove the planted leaking blueprint."""
    unregister_blueprint(LEAKY)


def register_train_leak() -> Blueprint:
    """Register ``"leaky_train"`` (:class:`TrainModeLeak`); pair with :func:`unregister_train_leak`."""
    bp = Blueprint(
        LEAKY_TRAIN,
        lambda s, p, host: TrainModeLeak(s.out_shape[-1], host),
        lambda s: len(s.out_shape) >= 2,
        description="planted leak, train mode only",
    )
    return register_blueprint(bp, replace=True)


def unregister_train_leak() -> None:
    """Remove the planted train-mode leak."""
    unregister_blueprint(LEAKY_TRAIN)


class TinyMLP(nn.Module):
    """``in -> hidden -> hidden -> out`` MLP with ReLU, for fast tests and benchmarks."""

    def __init__(self, d_in: int = 8, hidden: int = 16, d_out: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, d_out)

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        out: Tensor = self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
        return out


@contextmanager
def digest_thread_held(timeout_s: float = 120.0) -> Iterator[Callable[[], None]]:
    """The digest thread busy with a job that ends when the block exits or the callable it
    yields is called: barrier votes cast meanwhile wait for their hash (none reaches the
    outbox until then)."""
    gate, started = threading.Event(), threading.Event()

    def hold(_: bytes) -> None:
        started.set()
        gate.wait(timeout_s)

    job = submit(snapshot(nn.Linear(2, 2), {}), hold)
    if not started.wait(timeout_s):
        raise TimeoutError("the digest thread did not start the holding job")
    try:
        yield gate.set
    finally:
        gate.set()
        job.wait(timeout_s)
