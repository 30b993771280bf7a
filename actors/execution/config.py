"""RuntimeConfig: the settings of one :class:`~actors.execution.runtime.ExecutionRuntime`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from actors.execution.distill import check_kd_settings
from actors.execution.slot import SeedSlot, SlottedModule
from contracts.config import KasminaConfig


def default_device() -> torch.device:
    """``cuda`` (the current device) when available, else ``cpu``."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter or buffer (the slots' own aside); None when
    it holds no tensor."""
    for m in model.modules():
        if isinstance(m, SeedSlot):
            continue
        for t in (*m._parameters.values(), *m._buffers.values()):
            if t is not None:
                return t.device
    return None


def runtime_device(model: nn.Module, configured: str | torch.device | None) -> torch.device:
    """The device a runtime works on: the model's own (cpu for a model without tensors). The
    model is never moved: a ``configured`` device other than the model's is a ValueError."""
    own = model_device(model)
    if configured is None:
        return own if own is not None else torch.device("cpu")
    want = torch.device(configured)
    if own is None:
        return want
    if want.type != own.type or (want.index is not None and want.index != own.index):
        raise ValueError(
            f"device={str(want)!r} but the model is on {str(own)!r}: Kasmina never moves the "
            f"model; move it first (model.to({str(want)!r})) or leave device= out"
        )
    return own


def place_slots(model: nn.Module, device: torch.device) -> None:
    """Move each slot on a tensorless submodule (inserted on the cpu) to ``device``; slots are
    Kasmina's, and the host is never moved."""
    for m in model.modules():
        if isinstance(m, SlottedModule) and model_device(m.host) is None:
            m.slot.to(device)


@dataclass(frozen=True)
class RuntimeConfig:
    """Where the runtime runs, how often it probes, reports and votes, and how it attaches seeds.

    Cadences are in training steps; 0 turns the periodic action off."""

    device: str | torch.device | None = None  # None: the model's (never moved; see runtime_device)
    rank: int = 0
    world_size: int = 1
    probe_every: int = 25  # sampled isolation probe (KasminaConfig safety.probe_every_steps)
    report_every: int = 10  # step report + telemetry
    barrier_frequency: int = 100  # barrier vote (state digest)
    blend_steps: int = 100  # default blend ramp when an order names none
    strict_attach: bool = True  # refuse a germination whose graph walk reaches the host
    region: str = ""  # telemetry region label
    seed_salt: int = 0  # mixed into every seed's initialisation seed
    checkpoint_dir: str | None = None  # where emergency checkpoints go
    max_seed_params: int | None = None  # largest seed (elements); None: the host's size, >= 1M
    kernel_cache_bytes: int = 256 * 2**20  # loaded artifacts kept on the device (LRU budget)
    kernel_cache_ttl_s: float = 3600.0  # a kernel unused this long is dropped
    # knowledge distillation (with a teacher handed to the runtime; see actors/execution/distill)
    kd_temperature: float = 4.0  # T of the KD loss (germinate param kd_temperature overrides)
    kd_weight: float = 0.3  # w of the KD loss; 0: no distillation (germinate param kd_weight)
    teacher_autocast: str = ""  # "", "bfloat16" or "float16": autocast for the teacher forward
    teacher_chunk: int = 0  # teacher micro-batch (examples per forward); 0: the whole batch
    alpha_hysteresis: float = 0.02  # half-width of the blend-phase bands at alpha 0.3 and 0.7
    # memory management (docs/operations.md): the rank's seed memory budget, enforced at G0 over
    # every live seed; None and None: no budget. Both set: the smaller.
    seed_memory_budget: int | None = None  # bytes
    seed_memory_fraction: float | None = None  # of the device's memory (cpu: physical memory)
    memory_batch: int | None = None  # examples per step for the activation estimate (None: probe)
    release_ttl_steps: int = 0  # a culled seed's tensors are released this many steps later
    fossil_merge: bool = False  # merge a fossilized linear/low-rank/width seed into the host
    importance_every: int = 0  # unit importance tracked and exported (structured pruning)

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in a world of {self.world_size}")
        if self.kernel_cache_bytes < 0 or self.kernel_cache_ttl_s <= 0:
            raise ValueError("kernel_cache_bytes must be >= 0 and kernel_cache_ttl_s > 0")
        cadences = ("probe_every", "report_every", "barrier_frequency", "blend_steps")
        for name in (*cadences, "importance_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.alpha_hysteresis < 0.2:
            raise ValueError(f"alpha_hysteresis must be in [0, 0.2), got {self.alpha_hysteresis}")
        check_kd_settings(
            self.kd_temperature, self.kd_weight, self.teacher_autocast, self.teacher_chunk
        )
        self._check_memory()

    def _check_memory(self) -> None:
        if self.release_ttl_steps < 0:
            raise ValueError(f"release_ttl_steps must be >= 0, got {self.release_ttl_steps}")
        if self.seed_memory_budget is not None and self.seed_memory_budget < 0:
            raise ValueError(
                f"seed_memory_budget must be >= 0 bytes, got {self.seed_memory_budget}"
            )
        fraction = self.seed_memory_fraction
        if fraction is not None and not 0.0 < fraction <= 1.0:
            raise ValueError(f"seed_memory_fraction must be in (0, 1], got {fraction}")
        if self.memory_batch is not None and self.memory_batch < 1:
            raise ValueError(f"memory_batch must be >= 1, got {self.memory_batch}")

    @classmethod
    def from_config(cls, config: KasminaConfig, **settings: Any) -> RuntimeConfig:
        """The settings a run's :class:`KasminaConfig` fixes (probe cadence, barrier and report
        cadence, blend ramp, world size), with ``settings`` for the rest or to override."""
        derived: dict[str, Any] = {
            "probe_every": config.safety.probe_every_steps,
            "report_every": config.barrier.frequency,
            "barrier_frequency": config.barrier.frequency,
            "blend_steps": config.lifecycle.blend_steps,
            "world_size": config.barrier.world_size,
            "kernel_cache_bytes": config.artifacts.cache_bytes,
            "kernel_cache_ttl_s": config.artifacts.cache_ttl_s,
        }
        derived.update(settings)
        return cls(**derived)

    def resolved_device(self, model: nn.Module | None = None) -> torch.device:
        """The device for ``model`` (see :func:`runtime_device`); without a model, the
        configured device or the default one."""
        if model is not None:
            return runtime_device(model, self.device)
        return torch.device(self.device) if self.device is not None else default_device()
