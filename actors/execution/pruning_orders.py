"""Pruning orders and importance exports of one rank, at step boundaries.

A :class:`pb.PruningOrder` due at step ``S`` is applied inside ``on_step(S)``, after the seed
orders, so the forward of step ``S + 1`` is the first to see its masks. In a data-parallel run it
takes effect only if every rank holds it at ``S`` (the same agreement as execution orders), so
the masks of every rank stay identical. Each order gets one :class:`pb.PruningAck` per rank: ok
with the masked and total unit counts, or refused with its reason and nothing changed.

Importance reports go out at checkpoint boundaries: every ``importance_every`` steps, and with
every checkpoint the runtime writes (emergency, guard, or asked for by the trainer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from actors.execution.mailbox import KIND_PRUNING_ACK, KIND_PRUNING_IMPORTANCE
from actors.execution.pruning import Pruner, PruningError, unit_count
from leyline import pb

if TYPE_CHECKING:
    from actors.execution.runtime import ExecutionRuntime


def key(order: pb.PruningOrder) -> str:
    """The id ranks agree on (never equal to an execution order's id)."""
    return f"pruning:{order.order_id}"


def due(rt: ExecutionRuntime, step: int) -> list[pb.PruningOrder]:
    """Pending pruning orders due at or before ``step`` (oldest due step first)."""
    orders = rt.pending_pruning
    if not orders:
        return []
    return sorted((o for o in orders if o.apply_at_step <= step), key=lambda o: o.apply_at_step)


#: the most pruning orders a rank holds waiting for their step; more are refused on receipt
MAX_PENDING = 64
#: how far ahead of the rank's step an order may be due; one due later is refused on receipt
HORIZON_STEPS = 1_000_000


def take(rt: ExecutionRuntime) -> list[str]:
    """Move submitted orders to the pending list; returns the keys due now (for agreement).

    An order is judged on receipt as far as it can be: masks that do not fit the host, a step
    beyond :data:`HORIZON_STEPS` ahead, or one order too many waiting (:data:`MAX_PENDING`) is
    refused at once (its ack says why) and not kept, so no signer makes a rank hold orders
    without bound."""
    while not rt.pruning_inbox.empty():
        order = rt.pruning_inbox.get_nowait()
        why = _refused_on_receipt(rt, order)
        if why:
            _ack(rt, order, rt.step, why)
        else:
            rt.pending_pruning.append(order)
    return [key(o) for o in due(rt, rt.step)]


def _refused_on_receipt(rt: ExecutionRuntime, order: pb.PruningOrder) -> str:
    """Why ``order`` is refused as it arrives ("" when it waits for its step)."""
    if order.apply_at_step > max(rt.step, 0) + HORIZON_STEPS:
        return f"due at step {order.apply_at_step}, over {HORIZON_STEPS} steps ahead of {rt.step}"
    if len(rt.pending_pruning) >= MAX_PENDING:
        return f"{MAX_PENDING} pruning orders are already waiting for their step"
    try:
        rt.pruner.check(order.masks)
    except PruningError as exc:
        return str(exc)
    return ""


def apply_due(rt: ExecutionRuntime, step: int, agreed: set[str] | None) -> None:
    """Apply (or refuse) every pending order due at ``step``; one ack each."""
    orders = due(rt, step)
    if not orders:
        return
    rt.pending_pruning = [o for o in rt.pending_pruning if o.apply_at_step > step]
    for order in orders:
        if agreed is not None and key(order) not in agreed:
            _ack(rt, order, step, f"not held by every rank at step {step}")
            continue
        try:
            if not order.order_id:
                raise PruningError("the order has no order_id")
            rt.pruner.set_masks(rt.pruner.check(order.masks))
        except PruningError as exc:
            _ack(rt, order, step, str(exc))
        else:
            _ack(rt, order, step, "")


def _ack(rt: ExecutionRuntime, order: pb.PruningOrder, step: int, error: str) -> None:
    pruned, total = rt.pruner.counts()
    ack = pb.PruningAck(
        order_id=order.order_id,
        applied_at_step=step,
        rank=rt.rank,
        ok=not error,
        error=error,
        pruned_units=pruned,
        total_units=total,
    )
    rt.outbox.put(KIND_PRUNING_ACK, ack)


def export(rt: ExecutionRuntime, step: int) -> None:
    """Queue the importance report of the window that ends at ``step`` (when tracking)."""
    if rt.pruner.track and step >= 0 and rt.pruner.since <= step:
        rt.outbox.put(KIND_PRUNING_IMPORTANCE, rt.pruner.report(rt.rank, step, rt.config.region))


def at_boundary(rt: ExecutionRuntime, step: int) -> None:
    """End of ``on_step(step)``: the periodic importance export."""
    every = rt.config.importance_every
    if every > 0 and step % every == 0:
        export(rt, step)


# -- checkpoints ---------------------------------------------------------------------------------
def saved(pruner: Pruner) -> dict[str, Tensor]:
    """The masks as a checkpoint holds them (only modules that are masked)."""
    pruner.refit()
    return {name: keep.detach().cpu() for name, keep in pruner.masks.items()}


def restored(pruner: Pruner, payload: dict[str, Any]) -> dict[str, Tensor]:
    """The checkpoint's masks, checked against the host (raises :class:`PruningError`)."""
    masks = payload.get("pruning", {})
    if not isinstance(masks, dict):
        raise PruningError("checkpoint pruning entry is not a mapping")
    out: dict[str, Tensor] = {}
    for name, keep in masks.items():
        module = pruner.modules.get(name)
        if module is None:
            raise PruningError(f"checkpoint masks unknown module {name!r}")
        if not isinstance(keep, Tensor) or keep.dtype != torch.bool:
            raise PruningError(f"checkpoint mask for {name!r} is not a bool tensor")
        if tuple(keep.shape) != (unit_count(module),):
            raise PruningError(f"checkpoint mask for {name!r} has shape {tuple(keep.shape)}")
        out[name] = keep.to(next(iter(module.parameters())).device)
    return out
