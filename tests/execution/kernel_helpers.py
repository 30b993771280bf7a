"""Helpers of the kernel tests: a custom seed no registry knows, sealed artifacts, a runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from execution_helpers import order, runtime
from torch import Tensor, nn

from actors.artifacts import DirectoryStore, Sealed, seal
from actors.execution import ExecutionRuntime, host_parameters
from actors.execution.kernelcache import KernelCache
from actors.execution.kernels import pack_program
from contracts import KeyRing
from leyline import pb


class GatedSeed(nn.Module):
    """``up(tanh(down h) * sigmoid(gate))`` with ``up`` zero: a seed defined only in this file."""

    def __init__(self, features: int = 16, rank: int = 4) -> None:
        super().__init__()
        self.down = nn.Linear(features, rank)
        self.gate = nn.Parameter(torch.zeros(rank))
        self.up = nn.Linear(rank, features)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        """The delta added at the slot."""
        out: Tensor = self.up(torch.tanh(self.down(h)) * torch.sigmoid(self.gate))
        return out


def program(ring: KeyRing, features: int = 16, rank: int = 4, name: str = "gated") -> Sealed:
    """A sealed program artifact of a :class:`GatedSeed`."""
    torch.manual_seed(rank)
    manifest, payload = pack_program(GatedSeed(features, rank), name, (features,))
    return seal(manifest, payload, ring)


def kernel_runtime(
    model: nn.Module, slots: dict[str, Any], ring: KeyRing, root: Path, **cache: Any
) -> ExecutionRuntime:
    """A CPU runtime whose kernel cache verifies with ``ring`` and reads the store at ``root``."""
    kernels = KernelCache(torch.device("cpu"), ring=ring, source=DirectoryStore(root), **cache)
    opt = torch.optim.SGD(host_parameters(model, slots), lr=0.1)
    return runtime(model, slots, opt, kernels=kernels)


def germinate_artifact(slot: str, at: int, artifact_id: str, **kw: Any) -> pb.ExecutionOrder:
    """A germination order by artifact id."""
    germ = pb.Germinate(artifact_id=artifact_id, **kw)
    return order(slot, pb.SEED_STAGE_GERMINATED, at, germinate=germ)
