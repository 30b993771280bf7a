"""Memory management of one rank's seeds: the seed memory budget G0 enforces across every live
seed, TTL release of culled seeds' tensors, and what a seed costs.

A seed's cost (its *footprint*) is counted the same way before it is built (on a meta-device
ghost) and while it lives: parameter bytes x 4 (the parameters, their gradients and Adam's two
moments) + buffer bytes + an activation estimate computed from shapes alone (see
:func:`activation_bytes`; on the slot's probe shape, scaled to ``RuntimeConfig.memory_batch``
examples). A culled seed whose
tensors are held for ``release_ttl_steps`` still counts until it is released.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from actors.execution import ranks
from actors.execution.blueprints import SlotShape
from actors.execution.config import RuntimeConfig
from actors.execution.errors import OrderError, is_oom
from actors.execution.mailbox import KIND_TELEMETRY
from contracts import evidence as ev
from leyline import pb

if TYPE_CHECKING:
    from actors.execution.runtime import ExecutionRuntime
    from actors.execution.slotstate import SlotState

log = logging.getLogger("kasmina.execution")

STATE_COPIES = 4  # parameters, gradients, Adam's exp_avg and exp_avg_sq


def param_bytes(module: nn.Module) -> int:
    """Bytes of the module's parameters."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


def buffer_bytes(module: nn.Module) -> int:
    """Bytes of the module's buffers."""
    return sum(b.numel() * b.element_size() for b in module.buffers())


def activation_bytes(ghost: nn.Module, src_shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """An estimate, from shapes alone (no forward is run), of the bytes one forward of ``ghost``
    keeps for its backward on an input of ``src_shape``: each ``nn.Linear`` leaf's output
    (``rows x out_features``), each convolution's (``out_channels`` maps of the input's spatial
    size) and, for every other leaf and for the seed's own output, one input-sized tensor."""
    size = torch.empty((), dtype=dtype).element_size()
    n = _numel(src_shape)
    rows = n // max(src_shape[-1], 1) if src_shape else 1
    per_map = n // max(src_shape[1], 1) if len(src_shape) > 2 else rows
    total = n  # the seed's output
    for m in ghost.modules():
        if list(m.children()):
            continue
        if isinstance(m, nn.Linear):
            total += rows * m.out_features
        elif isinstance(m, nn.modules.conv._ConvNd):
            total += per_map * m.out_channels
        else:
            total += n
    return total * size


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def batch_scale(config: RuntimeConfig, shape: SlotShape) -> float:
    """Activation scale from the probe batch to ``memory_batch`` examples (1 when unset)."""
    probe = shape.out_shape[0] if shape.out_shape else 1
    return config.memory_batch / max(probe, 1) if config.memory_batch else 1.0


def footprint(module: nn.Module, dtype: torch.dtype | None, activations: int) -> int:
    """A seed's bytes: parameters x ``STATE_COPIES`` + buffers + ``activations``; ``dtype``
    sizes the parameters of a ghost that will be cast to it (None: as they are)."""
    if dtype is None:
        params = param_bytes(module)
    else:
        size = torch.empty((), dtype=dtype).element_size()
        params = sum(p.numel() for p in module.parameters()) * size
    return STATE_COPIES * params + buffer_bytes(module) + activations


def request_bytes(params: int, buffers: int, dtype: torch.dtype) -> int:
    """The footprint of ``params`` parameter and ``buffers`` buffer elements of ``dtype``
    (activations not included)."""
    size = torch.empty((), dtype=dtype).element_size()
    return (STATE_COPIES * params + buffers) * size


def memory_evidence(rt: ExecutionRuntime, request: int) -> dict[str, float]:
    """G0's memory evidence: the rank's budget (0: none), its seeds' use now, the request."""
    in_use = rt.memory.in_use(
        (s.slot.seed, s.activation_bytes) for s in rt.states.values() if s.slot.seed is not None
    )
    return {
        ev.SEED_MEMORY_BUDGET: float(rt.memory.budget or 0),
        ev.SEED_MEMORY_IN_USE: float(in_use),
        ev.SEED_MEMORY_REQUEST: float(request),
    }


def check_budget(rt: ExecutionRuntime, request: int) -> dict[str, float]:
    """Refuse a seed of ``request`` bytes that would take the rank past its seed memory budget
    (the refusal's evidence holds the budget, the use and the request)."""
    evidence = memory_evidence(rt, request)
    budget, in_use = rt.memory.budget, int(evidence[ev.SEED_MEMORY_IN_USE])
    if budget is not None and in_use + request > budget:
        evidence.update({ev.BLUEPRINT_KNOWN: 1.0, ev.BLUEPRINT_SIGNED_OFF: 1.0})
        raise OrderError(
            f"seed memory budget exceeded: request {request:,} B + in use {in_use:,} B"
            f" > budget {budget:,} B (RuntimeConfig.seed_memory_budget)",
            evidence,
        )
    return evidence


def memory_metrics(rt: ExecutionRuntime) -> dict[str, float]:
    """The rank's ``seed_memory_*`` telemetry (empty until a budget is set or a seed has been
    held, released after a hold or culled for running out of memory)."""
    mem = rt.memory
    if mem.budget is None and not (mem.held or mem.released or rt.oom_culls):
        return {}
    in_use = memory_evidence(rt, 0)[ev.SEED_MEMORY_IN_USE]
    return {
        "seed_memory_budget": float(mem.budget or 0),
        "seed_memory_in_use": in_use,
        "seed_memory_held": float(len(mem.held)),
        "seed_memory_held_param_bytes": float(mem.held_param_bytes()),
        "seed_memory_released": float(mem.released),
        "seed_oom_culls": float(rt.oom_culls),
    }


def device_bytes(device: torch.device) -> int:
    """Total memory of ``device`` (the host's physical memory for cpu)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def resolve_budget(config: RuntimeConfig, device: torch.device) -> int | None:
    """The rank's seed memory budget in bytes: the smaller of ``seed_memory_budget`` and
    ``seed_memory_fraction`` of the device's memory; None (no budget) when neither is set."""
    limits = []
    if config.seed_memory_budget is not None:
        limits.append(int(config.seed_memory_budget))
    if config.seed_memory_fraction is not None:
        limits.append(int(config.seed_memory_fraction * device_bytes(device)))
    return min(limits) if limits else None


@dataclass
class Held:
    """A culled seed's tensors, held until ``release_at``."""

    slot: str
    release_at: int
    module: nn.Module | None
    optimizer: torch.optim.Optimizer | None
    bytes: int


class SeedMemory:
    """The budget and the held (culled, not yet released) seeds of one rank."""

    def __init__(self, config: RuntimeConfig, device: torch.device) -> None:
        self.device = device
        self.ttl = config.release_ttl_steps
        self.budget = resolve_budget(config, device)
        self.held: list[Held] = []
        self.released = 0  # seeds whose tensors have been released after a hold

    def in_use(self, live: Iterable[tuple[nn.Module, int]]) -> int:
        """Bytes the rank's seeds use: each live ``(seed, activation estimate)`` and every held
        seed."""
        return sum(footprint(m, None, act) for m, act in live) + self.held_bytes()

    def held_bytes(self) -> int:
        """Footprint of the held seeds."""
        return sum(h.bytes for h in self.held)

    def held_param_bytes(self) -> int:
        """Parameter bytes the held seeds still keep alive (0 once every hold has expired)."""
        return sum(param_bytes(h.module) for h in self.held if h.module is not None)

    def hold(
        self, slot: str, module: nn.Module, opt: torch.optim.Optimizer | None, at: int
    ) -> None:
        """Keep a culled seed's tensors until step ``at + ttl``."""
        self.held.append(Held(slot, at + self.ttl, module, opt, footprint(module, None, 0)))

    def expire(self, step: int) -> int:
        """Release every hold due at ``step``; returns how many were released."""
        due = [h for h in self.held if h.release_at <= step]
        if not due:
            return 0
        self.held = [h for h in self.held if h.release_at > step]
        for h in due:
            drop_tensors(h.module, h.optimizer)
            h.module = h.optimizer = None
        self.released += len(due)
        collect(self.device)
        return len(due)


def drop_tensors(module: nn.Module | None, opt: torch.optim.Optimizer | None) -> None:
    """Clear a seed's gradients and optimizer state (the module is dropped by its owner)."""
    if opt is not None:
        opt.state.clear()
        opt.param_groups.clear()
    if module is not None:
        for p in module.parameters():
            p.grad = None


def collect(device: torch.device) -> None:
    """Collect garbage and give cached device memory back."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def seeds_leaving(rt: ExecutionRuntime) -> None:
    """Take out every seed whose forward raised since the last step; in a data-parallel run,
    also every seed that left another rank outside an agreed order (it raised or ran out of
    memory there, or its germination failed there), so that the ranks go on with the same seeds
    and the same collectives over their gradients. Called first thing in a step's close, and
    again before its orders apply (a seed may fail in the close itself)."""
    if rt.distributed:
        failing = {sid for sid, s in rt.states.items() if s.slot.failure is not None}
        left = rt.left | failing
        elsewhere = ranks.left_anywhere(sorted(rt.states), left, rt.rank, rt.device)
        for sid, rank in elsewhere.items():
            state = rt.states[sid]
            if sid not in left and state.slot.seed is not None:
                state.release(rt.device)
                _left_elsewhere(rt, sid, rank)
    forward_failures(rt)
    rt.left.clear()  # agreed (its own forward failures included: never announced twice)


def _left_elsewhere(rt: ExecutionRuntime, sid: str, rank: int) -> None:
    """Say that the seed at ``sid`` left this rank because it left ``rank``: a log line and a
    WARNING telemetry item (the failing rank's safety signal culls the slot)."""
    detail = f"slot {sid}: its seed left rank {rank}; it leaves rank {rt.rank} too"
    log.warning(detail)
    raw = pb.TelemetryRaw(slot=sid, region=rt.config.region, step=rt.step,
                          severity=pb.SEVERITY_WARNING, message=detail)  # fmt: skip
    rt.outbox.put(KIND_TELEMETRY, raw)


def forward_failures(rt: ExecutionRuntime) -> None:
    """Take out every seed whose forward raised since the last step (``SeedSlot.failure``)."""
    for state in rt.states.values():
        if state.slot.failure is not None:
            oom, error = state.slot.failure
            (out_of_memory if oom else seed_failed)(rt, state, "the seed's forward", error)


def seed_raised(rt: ExecutionRuntime, state: SlotState, where: str, exc: Exception) -> None:
    """The seed raised ``exc`` in ``where``: out of memory, or any other error; either way it
    leaves at once and the training loop goes on."""
    if is_oom(exc):
        out_of_memory(rt, state, where, f"{exc}")
    else:
        seed_failed(rt, state, where, f"{type(exc).__name__}: {exc}")


def seed_failed(rt: ExecutionRuntime, state: SlotState, where: str, error: str) -> None:
    """A seed raised (not out of memory): it leaves the forward, its tensors are released and a
    safety signal tells the SafetyActor, which culls it."""
    slot_id = state.slot.slot_id
    state.release(rt.device)
    rt.left.add(slot_id)
    rt.seed_failures += 1
    rt._safety(slot_id, pb.SAFETY_SIGNAL_SEED_FAILED, 1.0, f"{where} raised {error}"[:300])


def out_of_memory(rt: ExecutionRuntime, state: SlotState, where: str, error: str) -> None:
    """A seed ran out of memory: it leaves the forward, its tensors are released at once (no
    TTL: the memory is wanted now) and a safety signal tells the SafetyActor, which culls it."""
    slot_id = state.slot.slot_id
    state.release(rt.device)
    rt.left.add(slot_id)
    rt.oom_culls += 1
    detail = f"out of memory in {where}: {error}"[:300]
    rt._safety(slot_id, pb.SAFETY_SIGNAL_OUT_OF_MEMORY, 1.0, detail)
