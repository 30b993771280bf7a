"""Checkpoints, restore and rollback of one rank: what the SafetyActor's requests do.

A checkpoint holds the host (parameters and buffers), the host optimizer, the host's pruning
masks, and every slot (seed weights, seed optimizer, RNG stream, stage, alpha), all as they are at the end of the step it is
labelled with. Written at a step boundary (the end of ``on_step``):

- emergency checkpoints, when the SafetyActor asks (``request_checkpoint``);
- guard checkpoints (with ``checkpoint_dir`` set), at every boundary where a seed enters the
  forward: the last state the seed cannot have touched.

A rollback (``request_rollback``) waits until the named slots' seeds have left the forward (the
breaker culls them), then loads the host from the newest checkpoint taken no later than the step
those seeds entered it: the host is bit-identical to that checkpoint again. Slots keep their
current lifecycle (the seed actors own it) and the host keeps its current pruning masks (the
pruning controller owns them).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from actors.execution import pruning_orders
from actors.execution import restore as rs
from actors.execution.checkpoint import CheckpointError, read_checkpoint, write_atomic
from actors.execution.mailbox import KIND_TELEMETRY
from actors.execution.slotstate import SlotState
from actors.execution.stages import Mode
from leyline import pb

if TYPE_CHECKING:
    from actors.execution.runtime import ExecutionRuntime

log = logging.getLogger("kasmina.execution")

VERSION = 3  # 3: safetensors + JSON metadata (1 and 2 were torch.save pickles)
KEEP_GUARDS = 2  # guard checkpoints kept on disk per rank (older ones are deleted)


@dataclass(frozen=True)
class Rollback:
    """A request to roll the host back from the damage the seeds of ``slots`` may have done."""

    reason: str
    slots: tuple[str, ...]
    step: int

    @property
    def key(self) -> str:
        """The same on every rank that received the same request."""
        return f"rollback:{self.step}:{','.join(self.slots)}"


# -- writing ---------------------------------------------------------------------------------------
def checkpoint(rt: ExecutionRuntime, path: str) -> None:
    """Write host, host optimizer and every slot atomically to ``path`` (labelled ``rt.step``)."""
    payload = {
        "version": VERSION,
        "step": rt.step,
        "slots": {sid: _slot_entry(state) for sid, state in rt.states.items()},
        "host": {k: v.detach() for k, v in rs.host_state(rt.model).items()},
        "host_optimizer": rt.host_optimizer.state_dict(),
        "pruning": pruning_orders.saved(rt.pruner),
        "losses": [(int(s), float(v)) for s, v in rt.losses],  # G2's loss history
        # how TRAINING seeds learn (the loop passes ``batch=``): a resumed loop's first forward
        # must detach them as the uninterrupted one's does
        "shadow_fed": rt.shadow_fed,
    }
    write_atomic(payload, path)
    pruning_orders.export(rt, rt.step)  # a checkpoint boundary: the unit importance goes out


def _slot_entry(state: SlotState) -> dict[str, Any]:
    slot = state.slot
    entry: dict[str, Any] = {
        "stage": int(slot.stage),
        "alpha": float(slot.alpha),
        "blueprint": slot.blueprint,
        "artifact": state.artifact,
        "blend_mode": int(slot.blend_mode),
        "fossil": slot.fossil,
        "paused": state.paused,
        "params": dict(state.params),
        "stage_since": state.stage_since,
        "blend_start": state.blend_start,
        "blend_steps": state.blend_steps,
        "schedule": int(state.schedule),
        "phase": int(state.phase),  # inside a hysteresis band alpha alone does not tell it
        "phase_changes": int(state.phase_changes),
        "rng": None if slot.rng is None else [t.cpu() for t in slot.rng],
        "draws": slot.draws,  # compiled forwards run the seed on its stream only if it draws
        "evidence": state.saved_evidence(),
    }
    if slot.seed is not None and state.shape is not None:
        entry["out_shape"] = list(state.shape.out_shape)
        entry["in_shape"] = None if state.shape.in_shape is None else list(state.shape.in_shape)
        entry["dtype"] = str(state.shape.dtype).removeprefix("torch.")
        entry["seed"] = {k: v.detach().cpu() for k, v in slot.seed.state_dict().items()}
        if state.optimizer is not None:
            entry["optimizer"] = state.optimizer.state_dict()
    return entry


def restore(rt: ExecutionRuntime, path: str, *, host: bool = True) -> int:
    """Load a checkpoint (validated whole before anything changes); returns its step."""
    payload = read_checkpoint(path, device=str(rt.device))
    plan = rs.plan(rt, payload, host=host)
    rs.apply(rt, plan)
    return plan.step


# -- at each step boundary -------------------------------------------------------------------------
def ready(rt: ExecutionRuntime) -> list[str]:
    """Keys of the rollbacks that can run now (their seeds are out of the forward)."""
    while not rt.rollbacks.empty():
        rt.pending_rollbacks.append(rt.rollbacks.get_nowait())
    return [r.key for r in rt.pending_rollbacks if _out_of_forward(rt, r)]


def _out_of_forward(rt: ExecutionRuntime, r: Rollback) -> bool:
    return all(rt.slots[s].mode is Mode.IDENTITY for s in r.slots if s in rt.slots)


def at_boundary(
    rt: ExecutionRuntime, step: int, entering: list[str], agreed: set[str] | None
) -> None:
    """End of ``on_step(step)``: emergency and guard checkpoints, then due rollbacks."""
    if rt._checkpoint_wanted.is_set():
        rt._checkpoint_wanted.clear()
        emergency_checkpoint(rt, step, rt._checkpoint_reason)
    for sid in entering:
        rt.states[sid].forward_since = step
    if entering and rt.config.checkpoint_dir is not None:
        _guard(rt, step, rt.config.checkpoint_dir)
    if not rt.pending_rollbacks and rt.rollbacks.empty():
        return
    keys = set(ready(rt)) if agreed is None else agreed
    for r in [r for r in rt.pending_rollbacks if r.key in keys]:
        rt.pending_rollbacks.remove(r)
        _telemetry(rt, step, rollback(rt, r))


def _guard(rt: ExecutionRuntime, step: int, directory: str) -> None:
    path = os.path.join(directory, f"guard-rank{rt.rank}-step{step}.safetensors")
    if not _written(rt, step, path, "guard"):
        return
    rt.checkpoints.append((step, path))
    guards = [c for c in rt.checkpoints if os.path.basename(c[1]).startswith("guard-")]
    for old in guards[:-KEEP_GUARDS]:
        rt.checkpoints.remove(old)
        if os.path.exists(old[1]):
            os.remove(old[1])


def rollback(rt: ExecutionRuntime, r: Rollback) -> str:
    """Load the host from the newest checkpoint no later than the step the seeds of ``r.slots``
    entered the forward; returns what was done (for telemetry)."""
    entered = [
        rt.states[s].forward_since
        for s in r.slots
        if s in rt.states and rt.states[s].forward_since is not None
    ]
    if not entered:
        return (
            f"rollback ({r.reason}): no seed of {list(r.slots)} was in the forward; nothing to undo"
        )
    since = min(e for e in entered if e is not None)
    candidates = [c for c in rt.checkpoints if c[0] <= since]
    if not candidates:
        return f"rollback ({r.reason}) impossible: no checkpoint at or before step {since}"
    step, path = max(candidates)
    try:
        payload = read_checkpoint(path, device=str(rt.device))
        rs.apply(rt, rs.plan(rt, payload, host=True, slots=False, masks=False))
    except (OSError, CheckpointError, rs.RestoreError) as exc:
        return f"rollback ({r.reason}) failed, nothing changed: {exc}"
    rt.rolled_back.append((rt.step, step, path))
    return f"rolled the host back to {path} (step {step}) ({r.reason})"


def emergency_checkpoint(rt: ExecutionRuntime, step: int, reason: str) -> None:
    """Write the emergency checkpoint (when a directory is configured) and say so in telemetry."""
    directory = rt.config.checkpoint_dir
    if directory is None:
        detail = f"checkpoint requested ({reason}) but no checkpoint_dir is set"
    else:
        path = os.path.join(directory, f"emergency-rank{rt.rank}-step{step}.safetensors")
        if not _written(rt, step, path, "emergency"):
            return
        rt.checkpoints.append((step, path))
        detail = f"emergency checkpoint written to {path} ({reason})"
    _telemetry(rt, step, detail)


def _written(rt: ExecutionRuntime, step: int, path: str, what: str) -> bool:
    """Write a checkpoint to ``path``; a failure (missing directory, full or read-only disk) is
    reported as critical telemetry, never raised into the training loop: False."""
    try:
        checkpoint(rt, path)
    except Exception as exc:  # the loop goes on; a rollback to this point is then impossible
        log.error("%s checkpoint %s could not be written: %s", what, path, exc)
        _telemetry(rt, step, f"{what} checkpoint {path} could not be written: {exc}"[:500])
        return False
    return True


def _telemetry(rt: ExecutionRuntime, step: int, detail: str) -> None:
    rt.outbox.put(
        KIND_TELEMETRY,
        pb.TelemetryRaw(
            region=rt.config.region, step=step, severity=pb.SEVERITY_CRITICAL, message=detail
        ),
    )
