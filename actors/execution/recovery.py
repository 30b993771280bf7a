"""Checkpoint and restore of the runtime's seeds, and the emergency checkpoint the SafetyActor
asks for (written at the next step boundary, on the training thread)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from actors.execution.blueprints import SlotShape, get_blueprint
from actors.execution.checkpoint import read_checkpoint, write_atomic
from actors.execution.germination import sync_grads
from actors.execution.mailbox import KIND_TELEMETRY
from actors.execution.optim import seed_optimizer
from actors.execution.slotstate import SlotState
from leyline import pb

if TYPE_CHECKING:
    from actors.execution.runtime import ExecutionRuntime


def checkpoint(rt: ExecutionRuntime, path: str) -> None:
    """Write seeds, stages, alpha and optimizer states atomically to ``path``."""
    slots = {sid: _slot_entry(state) for sid, state in rt.states.items()}
    write_atomic({"version": 1, "step": rt.step, "slots": slots}, path)


def _slot_entry(state: SlotState) -> dict[str, Any]:
    slot = state.slot
    entry: dict[str, Any] = {
        "stage": int(slot.stage),
        "alpha": float(slot.alpha),
        "blueprint": slot.blueprint,
        "blend_mode": int(slot.blend_mode),
        "fossil": slot.fossil,
        "paused": state.paused,
        "params": dict(state.params),
        "stage_since": state.stage_since,
        "blend_start": state.blend_start,
        "blend_steps": state.blend_steps,
        "schedule": int(state.schedule),
    }
    if slot.seed is not None and state.shape is not None:
        entry["out_shape"] = list(state.shape.out_shape)
        entry["in_shape"] = None if state.shape.in_shape is None else list(state.shape.in_shape)
        entry["dtype"] = str(state.shape.dtype).removeprefix("torch.")
        entry["seed"] = {k: v.detach().cpu() for k, v in slot.seed.state_dict().items()}
        if state.optimizer is not None:
            entry["optimizer"] = state.optimizer.state_dict()
    return entry


def restore(rt: ExecutionRuntime, path: str) -> int:
    """Rebuild seeds, stages, alpha and seed optimizers from a checkpoint; returns its step.

    Fossilized seeds are restored into the slot; their parameters must already be in the
    host optimizer's state being restored by the trainer (they are part of the model)."""
    payload = read_checkpoint(path, device=str(rt.device))
    for sid, entry in payload["slots"].items():
        state = rt.states[sid]
        state.release(rt.device)
        if "seed" in entry:
            _restore_seed(rt, state, entry)
        slot = state.slot
        slot.set_stage(int(entry["stage"]))
        slot.alpha.fill_(float(entry["alpha"]))
        state.paused = bool(entry["paused"])
        state.stage_since = int(entry["stage_since"])
        state.blend_start = int(entry["blend_start"])
        state.blend_steps = int(entry["blend_steps"])
        state.schedule = int(entry["schedule"])
    return int(payload["step"])


def _restore_seed(rt: ExecutionRuntime, state: SlotState, entry: dict[str, Any]) -> None:
    slot = state.slot
    bp = get_blueprint(entry["blueprint"])
    shape = SlotShape(
        tuple(entry["out_shape"]),
        getattr(torch, entry["dtype"]),
        None if entry["in_shape"] is None else tuple(entry["in_shape"]),
    )
    seed = bp.build(shape, entry["params"], rt.hosts.get(slot.slot_id, slot)).to(
        rt.device, shape.dtype
    )
    seed.load_state_dict(entry["seed"])
    slot.attach(seed, blueprint=bp.name, reads_input=bp.reads_input, blend_mode=entry["blend_mode"])
    state.shape, state.params = shape, dict(entry["params"])
    slot.fossil = bool(entry["fossil"])
    if not slot.fossil:
        state.optimizer = seed_optimizer(list(seed.parameters()), state.params)
        if "optimizer" in entry:
            state.optimizer.load_state_dict(entry["optimizer"])
    if rt.world_size > 1 and dist.is_available() and dist.is_initialized():
        sync_grads(slot, rt.world_size)


def emergency_checkpoint(rt: ExecutionRuntime, step: int, reason: str) -> None:
    """Write the emergency checkpoint (when a directory is configured) and say so in telemetry."""
    directory = rt.config.checkpoint_dir
    if directory is None:
        detail = f"checkpoint requested ({reason}) but no checkpoint_dir is set"
    else:
        path = f"{directory}/emergency-rank{rt.rank}-step{step}.pt"
        checkpoint(rt, path)
        rt.checkpoints.append(path)
        detail = f"emergency checkpoint written to {path} ({reason})"
    rt.outbox.put(
        KIND_TELEMETRY,
        pb.TelemetryRaw(
            region=rt.config.region, step=step, severity=pb.SEVERITY_CRITICAL, message=detail
        ),
    )
