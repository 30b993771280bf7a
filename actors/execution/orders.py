"""Applying execution orders at a step boundary: one ack per order, stage transitions, release.

Every order due at step ``S`` is applied inside ``on_step(S)`` in ``apply_at_step`` order and
answered with exactly one :class:`pb.ExecutionAck` (ok, or refused with its reason): the step
confirmation the trainer and the SeedActor receive. A barrier-gated order (``barrier_gated``) is
due only once the commit of barrier ``after_barrier`` (or of a later one) has reached the rank
(in a data-parallel run: every rank); until then it waits, neither applied nor refused.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from actors.core import released
from actors.execution import stages as st
from actors.execution.errors import OrderError
from actors.execution.evidence import latency_overhead, slot_facts
from actors.execution.germination import germinate
from actors.execution.mailbox import KIND_ACK
from actors.execution.merge import merge_fossil
from actors.execution.optim import join_host_optimizer, scale_lr
from actors.execution.slot import slot_host
from actors.execution.slotstate import SlotState
from actors.seed.params import check_adjust
from contracts import evidence as ev
from leyline import pb

if TYPE_CHECKING:
    from actors.execution.runtime import ExecutionRuntime


def due(rt: ExecutionRuntime, step: int) -> list[pb.ExecutionOrder]:
    """The pending orders due at or before ``step`` (oldest due step first)."""
    return sorted((o for o in rt.pending if o.apply_at_step <= step), key=lambda o: o.apply_at_step)


def apply_due(
    rt: ExecutionRuntime, step: int, agreed: set[str] | None = None, commit: int = -1
) -> list[str]:
    """Apply every pending order due at or before ``step`` whose barrier (if gated) has
    committed (``commit``: the newest commit received); with ``agreed`` (a data-parallel run)
    only those every rank holds, refusing the others. Returns the slots whose seed entered the
    forward (moved to TRAINING)."""
    orders = due(rt, step)
    if not orders:
        return []
    held = _held(orders, commit, agreed)
    rt.pending = [o for o in rt.pending if o.apply_at_step > step or o.order_id in held]
    entering = []
    for order in orders:
        if order.order_id in held:
            continue
        if agreed is not None and order.order_id not in agreed:
            refuse(rt, order, step, f"not held by every rank at step {step}", retry=True)
        elif apply(rt, order, step, commit) and order.stage == st.TRAINING:
            entering.append(order.slot)
    return entering


def _held(orders: list[pb.ExecutionOrder], commit: int, agreed: set[str] | None) -> set[str]:
    """Ids of the due orders that wait on a barrier commit (``commit``: the newest received);
    with ``agreed``, only those every rank holds wait (the others are refused)."""
    held = {o.order_id for o in orders if not released(o, commit)}
    if agreed is not None:
        held &= agreed
    return held


def refuse(
    rt: ExecutionRuntime, order: pb.ExecutionOrder, step: int, reason: str, *, retry: bool = False
) -> None:
    """Answer an order with a refusal and change nothing (``retry``: it may be sent again)."""
    stage = rt.slots[order.slot].stage if order.slot in rt.slots else order.stage
    ack = pb.ExecutionAck(
        order_id=order.order_id,
        slot=order.slot,
        applied_at_step=step,
        rank=rt.rank,
        ok=False,
        error=reason,
        stage=pb.SeedLifecycleStage.ValueType(stage),
        retry=retry,
    )
    _answer(rt, ack)


def apply(rt: ExecutionRuntime, order: pb.ExecutionOrder, step: int, commit: int = -1) -> bool:
    """Apply one order and queue its ack; True when it was applied."""
    ack = pb.ExecutionAck(
        order_id=order.order_id, slot=order.slot, applied_at_step=step, rank=rt.rank
    )
    if order.barrier_gated:
        ack.barrier_gated, ack.committed_barrier = True, max(0, commit)
    state = rt.states.get(order.slot)
    before = (state.slot.stage, state.slot.seed) if state is not None else None
    try:
        evidence = _execute(rt, order, step)
        ack.ok = True
        ack.evidence.metrics.update(evidence)
        ack.evidence.blueprint = rt.slots[order.slot].blueprint
    except OrderError as exc:
        ack.ok = False
        ack.error = str(exc)
        ack.evidence.metrics.update(exc.evidence)
    except Exception as exc:  # nothing an order does may reach the training loop
        ack.ok = False
        ack.error = f"order failed: {type(exc).__name__}: {exc}"[:500]
        if state is not None and before is not None:
            _back_to_safety(rt, state, before)
    stage = rt.slots[order.slot].stage if order.slot in rt.slots else order.stage
    ack.stage = pb.SeedLifecycleStage.ValueType(stage)
    late = step - order.apply_at_step
    if late > 0 and order.barrier_gated:  # it waited for its barrier's commit, as it should
        ack.evidence.metrics["barrier_wait_steps"] = float(late)
    elif late > 0:
        ack.error = f"late: due at step {order.apply_at_step}, applied at {step}" + (
            f"; {ack.error}" if ack.error else ""
        )
        ack.evidence.metrics["late_steps"] = float(late)
    _answer(rt, ack)
    return ack.ok


def _answer(rt: ExecutionRuntime, ack: pb.ExecutionAck) -> None:
    """Queue ``ack`` for the bus and hand it to the trainer as a step confirmation."""
    metrics = ack.evidence.metrics  # unmeasured values stay unset: actors reject non-finite input
    for name in [k for k, v in metrics.items() if not math.isfinite(v)]:
        del metrics[name]
    rt.outbox.put(KIND_ACK, ack)
    rt.confirmed.add(ack)


def _back_to_safety(rt: ExecutionRuntime, state: SlotState, before: tuple[int, object]) -> None:
    """After an order failed half way: drop a seed it attached, return to the stage it left."""
    stage, seed = before
    slot = state.slot
    if slot.seed is not None and slot.seed is not seed:
        state.release(rt.device)
    if slot.stage != stage or slot.seed is None:
        slot.set_stage(stage if slot.seed is not None or stage in st.EMPTY_STAGES else st.DORMANT)


def _execute(rt: ExecutionRuntime, order: pb.ExecutionOrder, step: int) -> dict[str, float]:
    state = rt.states.get(order.slot)
    if state is None:
        raise OrderError(f"unknown slot {order.slot!r}")
    if order.HasField("adjust_optimizer") and (problem := check_adjust(order.adjust_optimizer)):
        raise OrderError(f"adjust_optimizer refused: {problem}")  # before anything changes
    evidence = transition(rt, state, order, step)
    state.paused = order.paused
    if order.HasField("adjust_optimizer") and state.optimizer is not None:
        adj = order.adjust_optimizer
        scale_lr(state.optimizer, adj.lr_scale or 1.0, adj.weight_decay)
    if order.counterfactual:
        evidence.update(rt.counterfactual(order.slot))
    if order.wants_evidence and state.slot.seed is not None and rt.probe_batch is not None:
        evidence.update(latency_overhead(rt.model, state.slot, rt.device, rt.probe_batch))
    evidence.update(state.metrics(step))
    evidence[ev.LOSS_SPIKE_SIGMA], n = rt.loss_spike(state.stage_since)
    evidence[ev.LOSS_SPIKE_N] = float(n)
    return evidence


def transition(
    rt: ExecutionRuntime, state: SlotState, order: pb.ExecutionOrder, step: int
) -> dict[str, float]:
    """Move the slot to the order's stage; returns the evidence the move produced."""
    slot, target = state.slot, order.stage
    if target == slot.stage:
        _same_seed(state, order)
        return {}
    evidence: dict[str, float] = {}
    if target == st.GERMINATED:
        evidence = _germinate(rt, state, order, step)
    elif slot.fossil and target != st.TERMINATED:
        raise OrderError(f"slot {slot.slot_id} is fossilized; only TERMINATED may follow")
    elif target in st.ISOLATED_STAGES or target == st.FOSSILIZED:
        evidence = _advance(rt, state, target, step)
    elif target in (st.CULLED, st.EMBARGOED, st.RESETTING, st.DORMANT, st.TERMINATED):
        evidence = _clear(rt, state, target, step)
    else:
        raise OrderError(f"stage {st.stage_name(target)} cannot be ordered")
    slot.set_stage(target)
    state.stage_since = step
    return evidence


def _same_seed(state: SlotState, order: pb.ExecutionOrder) -> None:
    """An order for the stage the slot is in changes nothing; a germination of another seed
    than the one the slot holds is refused (it would be acknowledged yet never built)."""
    if not order.HasField("germinate") or state.slot.seed is None:
        return
    g, slot = order.germinate, state.slot
    if (g.blueprint and g.blueprint != slot.blueprint) or g.artifact_id != state.artifact:
        held = state.artifact[:12] or slot.blueprint
        raise OrderError(f"slot {slot.slot_id} already holds a seed ({held})")


def _germinate(
    rt: ExecutionRuntime, state: SlotState, order: pb.ExecutionOrder, step: int
) -> dict[str, float]:
    slot = state.slot
    facts = slot_facts(slot)
    if not facts[ev.SLOT_FREE]:
        raise OrderError(f"slot {slot.slot_id} is not free ({st.stage_name(slot.stage)})", facts)
    return germinate(rt, state, order, step)


def _advance(rt: ExecutionRuntime, state: SlotState, target: int, step: int) -> dict[str, float]:
    slot = state.slot
    if slot.seed is None:
        raise OrderError(f"slot {slot.slot_id} holds no seed")
    if target == st.BLENDING:
        state.blend_start = step
        state.blend_steps = state.blend_steps or rt.config.blend_steps
        state.phase = st.EARLY
        slot.alpha.zero_()
    elif target in (st.SHADOWING, st.PROBATIONARY):
        slot.alpha.fill_(1.0)
    elif target == st.FOSSILIZED:
        merged = rt.config.fossil_merge and merge_fossil(rt, state)
        if not merged:
            host = slot_host(rt.model, slot)
            near = list(host.parameters()) if host is not None else []
            join_host_optimizer(
                rt.host_optimizer, slot.seed_parameters(), state.optimizer, near=near
            )
        state.optimizer = None
        return {"fossil_merged": float(merged)} if rt.config.fossil_merge else {}
    return {}


def _clear(rt: ExecutionRuntime, state: SlotState, target: int, step: int) -> dict[str, float]:
    slot = state.slot
    if not (target == st.TERMINATED and slot.fossil):
        state.retire(rt.memory, step)
    if target in (st.RESETTING, st.DORMANT):
        slot.set_stage(target)
        return rt.reset_evidence(state)
    return {}
