"""Hosts and seed blueprints unlike the project's own: a CNN with BatchNorm and dropout, an MLP
with LayerNorm/GELU and dropout, a residual network with slots inside the residual branch; seeds
that draw random numbers, hold their host, write their input, or leak only in train mode."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from actors.execution import Blueprint, SlotShape, register_blueprint, unregister_blueprint
from actors.execution.blueprints import ResidualMLP


class SmallCNN(nn.Module):
    """conv-BN-ReLU x2, dropout, linear head (inputs ``(N, 3, 8, 8)``, 5 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        out: Tensor = self.head(self.drop(x.flatten(1)))
        return out


class NormMLP(nn.Module):
    """Linear-LayerNorm-GELU-dropout blocks (inputs ``(N, 12)``, 3 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(12, 24)
        self.norm = nn.LayerNorm(24)
        self.mid = nn.Linear(24, 24)
        self.drop = nn.Dropout(0.2)
        self.out = nn.Linear(24, 3)

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        h = F.gelu(self.norm(self.inp(x)))
        h = self.drop(F.gelu(self.mid(h)))
        out: Tensor = self.out(h)
        return out


class Block(nn.Module):
    """``x + branch(x)`` with the branch ``fc -> GELU -> fc2``."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.fc2 = nn.Linear(d, d)

    def forward(self, x: Tensor) -> Tensor:
        """The residual block."""
        out: Tensor = x + self.fc2(F.gelu(self.fc(x)))
        return out


class ResNetMLP(nn.Module):
    """Two residual blocks between an input and an output layer (inputs ``(N, 10)``, 4 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(10, 16)
        self.b1 = Block(16)
        self.b2 = Block(16)
        self.out = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        out: Tensor = self.out(self.b2(self.b1(F.gelu(self.inp(x)))))
        return out


def batches(shape: tuple[int, ...], classes: int, n: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    """``n`` fixed random batches of inputs ``shape`` and labels below ``classes``."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(*shape, generator=g), torch.randint(0, classes, (shape[0],), generator=g))
        for _ in range(n)
    ]


# -- seeds ------------------------------------------------------------------------------------------
class DropoutSeed(nn.Module):
    """A zero-output seed with dropout inside (it draws random numbers in train mode)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.inner = ResidualMLP(d, 2 * d, d)
        self.drop = nn.Dropout(0.5)

    def forward(self, h: Tensor) -> Tensor:
        """The delta."""
        out: Tensor = self.inner(self.drop(h))
        return out


class HostHolder(nn.Module):
    """A zero-output seed that keeps its host as a submodule (its parameters become the seed's)."""

    def __init__(self, d: int, host: nn.Module) -> None:
        super().__init__()
        self.inner = ResidualMLP(d, d, d)
        self.host = host

    def forward(self, h: Tensor) -> Tensor:
        """The delta."""
        out: Tensor = self.inner(h)
        return out


class WeightSharer(nn.Module):
    """A zero-output seed whose parameter is a view of the host's weight storage."""

    def __init__(self, d: int, host: nn.Module) -> None:
        super().__init__()
        self.inner = ResidualMLP(d, d, d)
        weight = next(host.parameters())
        self.shared = nn.Parameter(weight.data)  # new Parameter object, same storage

    def forward(self, h: Tensor) -> Tensor:
        """The delta."""
        out: Tensor = self.inner(h)
        return out


class InputWriter(nn.Module):
    """A zero-output seed that writes its input in place (``relu_``) before using it."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.inner = ResidualMLP(d, d, d)

    def forward(self, h: Tensor) -> Tensor:
        """The delta (and a rewritten input)."""
        out: Tensor = self.inner(h.relu_())
        return out


class TrainOnlyLeak(nn.Module):
    """A zero-output seed that, in train mode only, adds ``t - t.detach()`` of the *undetached*
    host activation (captured by a hook on the host): no value change, gradient into the host."""

    def __init__(self, d: int, host: nn.Module) -> None:
        super().__init__()
        self.inner = ResidualMLP(d, d, d)
        self._side: list[Tensor] = []
        self._handle: RemovableHandle | None = host.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, args: object, out: object) -> None:
        if isinstance(out, Tensor):
            self._side[:] = [out]

    def forward(self, h: Tensor) -> Tensor:
        """The delta, leaking while training."""
        z: Tensor = self.inner(h)
        if self.training and self._side:
            leak = self._side[0]
            z = z + 1e-3 * (leak - leak.detach())
        return z

    def release(self) -> None:
        """Remove the hook on the host."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._side.clear()


def _feat(shape: SlotShape) -> int:
    return shape.out_shape[-1]


def _features_ok(shape: SlotShape) -> bool:
    return len(shape.out_shape) >= 2 and shape.dtype.is_floating_point


FACTORIES = {
    "t_dropout": lambda s, p, host: DropoutSeed(_feat(s)),
    "t_host_holder": lambda s, p, host: HostHolder(_feat(s), host),
    "t_weight_sharer": lambda s, p, host: WeightSharer(_feat(s), host),
    "t_input_writer": lambda s, p, host: InputWriter(_feat(s)),
    "t_train_leak": lambda s, p, host: TrainOnlyLeak(_feat(s), host),
}


@contextmanager
def blueprints(*names: str) -> Iterator[None]:
    """Register the named test blueprints for the duration."""
    for name in names:
        register_blueprint(Blueprint(name, FACTORIES[name], _features_ok), replace=True)
    try:
        yield
    finally:
        for name in names:
            unregister_blueprint(name)


def host_tensors(model: nn.Module, skip: str = ".slot.") -> dict[str, Tensor]:
    """Copies of every host parameter and buffer (slot contents left out)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if skip not in k}


_INTS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t: Tensor) -> Tensor:
    """``t``'s bits: a floating tensor viewed as integers (so -0.0 and +0.0 differ, and a NaN
    equals the same NaN), any other tensor as it is."""
    return t.contiguous().view(_INTS[t.element_size()]) if t.is_floating_point() else t


def same(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> list[str]:
    """Names whose tensors differ (bit for bit: dtype, shape and every bit, a zero's sign too)."""
    return sorted(k for k in a if not _identical(a[k], b[k]))


def _identical(x: Tensor, y: Tensor) -> bool:
    return x.dtype == y.dtype and x.shape == y.shape and torch.equal(bits(x), bits(y))
