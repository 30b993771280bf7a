"""The seed core's answers to the waits a slot started: gate results and execution acks.

An awaited result or ack carries the waiting chain's command id (``Builder.chain``); an unexpected
or mismatched one is refused.
"""

from __future__ import annotations

from typing import Any

from actors.gates.checks import describe_failures
from actors.seed.builder import Builder
from actors.seed.lifecycle import ACTIVE, EXIT_GATE, gate_name, stage_name
from actors.seed.moves import cull, pause_fields
from actors.seed.wait import Wait
from contracts import evidence as ev
from leyline import pb

__all__ = ["on_ack", "on_gate_result"]


def on_gate_result(b: Builder, res: pb.GateResult) -> None:
    st = b.state
    request = f"gate {gate_name(res.gate)} result"
    if st.awaiting != Wait.gate(gate_name(res.gate)) or res.request_id != st.pending_id:
        b.refuse(
            request, f"unexpected (awaiting {st.awaiting or 'nothing'}, request {res.request_id!r})"
        )
        return
    gate = res.gate
    exit_gate, to = EXIT_GATE.get(st.stage, (None, st.stage))
    if exit_gate != gate:
        b.refuse(request, f"gate {gate_name(gate)} does not guard stage {stage_name(st.stage)}")
        return
    b.chain = st.command_id  # the awaited result: its outcome belongs to the waiting chain
    if res.passed:
        b.transition(to, f"gate {gate_name(gate)} passed", gate=gate)
        if to == pb.SEED_STAGE_GERMINATED:
            b.await_order(pb.SEED_STAGE_TRAINING)
        elif to in (pb.SEED_STAGE_SHADOWING, pb.SEED_STAGE_PROBATIONARY):
            b.await_order(to, counterfactual=True, evidence_for=EXIT_GATE[to][0])
        elif to == pb.SEED_STAGE_BLENDING:
            b.await_order(to, evidence_for=EXIT_GATE[to][0])
        else:  # FOSSILIZED, or DORMANT after a reset
            b.await_order(to)
        return
    failure = f"gate {gate_name(gate)} failed: {describe_failures(res)}"
    if gate == pb.SEED_GATE_G0_SANITY:
        b.refuse("germinate", failure)
        b.await_order(pb.SEED_STAGE_DORMANT, "drop_probe")  # execution drops the probe seed
    elif gate == pb.SEED_GATE_G5_RESET:
        retry = b.now + b.ctx.config.lifecycle.reset_retry_steps
        b.progress(awaiting="", retry_at=retry)
        b.refuse("reset", failure)
    else:
        cull(b, failure, gate=gate)


# --------------------------------------------------------------------------- acks


def on_ack(b: Builder, ack: pb.ExecutionAck) -> None:
    st = b.state
    request = f"ack of {stage_name(ack.stage)} order"
    wait = st.awaiting
    if wait is None or not wait.acked or ack.order_id != st.pending_id:
        b.refuse(
            request, f"unexpected (awaiting {st.awaiting or 'nothing'}, order {ack.order_id!r})"
        )
        return
    b.chain = st.command_id  # the awaited ack: its outcome belongs to the waiting chain
    if not ack.ok and ack.retry and b.reissue():  # not held by every rank yet: nothing changed
        return
    failed = "" if ack.ok else f"execution failed: {ack.error or 'no reason given'}"
    if wait.kind == "evidence":
        _ack_probe(b, ack, failed)
    elif wait.what:  # an in-stage order: pause / resume / adjust / drop_probe
        _ack_in_stage(b, ack, wait.what, failed)
    else:
        _ack_stage(b, ack, wait.name, failed, request)


def _ack_in_stage(b: Builder, ack: pb.ExecutionAck, what: str, failed: str) -> None:
    """The ack of an in-stage order (pause, resume, adjust, drop_probe)."""
    fields: dict[str, Any] = {}
    if not failed and what in ("pause", "resume"):
        fields = pause_fields(b, what == "pause")
    b.progress(acked_id=ack.order_id, **fields)
    if failed:
        b.refuse(what, failed)


#: G0's own checks of the attached seed that execution measures and refuses on
_G0_FLAGS = (ev.PARAMS_FINITE, ev.SHAPE_MATCH, ev.DTYPE_MATCH)


def _judged_by_g0(metrics: dict[str, float]) -> bool:
    """Execution refusals G0 records itself, with the failing check's value and threshold: the
    slot taken, a G0 check of the seed failed (parameters not finite, the wrong output shape or
    dtype), or the rank's seed memory budget exceeded (its evidence holds the budget, the use
    and the request)."""
    if metrics.get(ev.SLOT_FREE) == 0.0 or any(metrics.get(k) == 0.0 for k in _G0_FLAGS):
        return True
    budget = metrics.get(ev.SEED_MEMORY_BUDGET, 0.0)
    use = metrics.get(ev.SEED_MEMORY_IN_USE, 0.0) + metrics.get(ev.SEED_MEMORY_REQUEST, 0.0)
    return budget > 0 and use > budget


def _ack_probe(b: Builder, ack: pb.ExecutionAck, failed: str) -> None:
    """The ack of a germination probe: its G0 evidence goes to the GateActor."""
    b.progress(acked_id=ack.order_id)
    metrics = dict(ack.evidence.metrics)
    if failed and not _judged_by_g0(metrics):  # a slot not free or over budget goes to G0
        b.refuse("germinate", failed)
        b.await_order(pb.SEED_STAGE_DORMANT, "drop_probe")
        return
    # G0's slot facts: what execution found at the slot, and this actor's own stage
    st = b.state
    free = st.stage == pb.SEED_STAGE_DORMANT and not st.paused
    metrics[ev.SLOT_FREE] = float(free and metrics.get(ev.SLOT_FREE, 1.0) == 1.0)
    embargoed = st.stage == pb.SEED_STAGE_EMBARGOED
    metrics[ev.SLOT_EMBARGOED] = float(embargoed or metrics.get(ev.SLOT_EMBARGOED, 0.0) != 0.0)
    b.request_gate(pb.SEED_GATE_G0_SANITY, metrics, ack.evidence.blueprint or st.blueprint)


def _ack_stage(
    b: Builder, ack: pb.ExecutionAck, stage_label: str, failed: str, request: str
) -> None:
    """The ack of the order that starts stage ``stage_label`` (its name)."""
    before = b.state.stage
    if stage_label == "TRAINING" and before == pb.SEED_STAGE_GERMINATED:
        if failed:
            b.progress(acked_id=ack.order_id)
            cull(b, failed)
            return
        b.transition(pb.SEED_STAGE_TRAINING, "execution confirmed the seed is attached")
    fields = {}
    if not failed and stage_label == stage_name(b.state.stage):
        fields["stage_entered_step"] = max(b.state.stage_entered_step, ack.applied_at_step)
    b.progress(acked_id=ack.order_id, **fields)
    if stage_label == "RESETTING":
        if failed:
            b.progress(retry_at=b.now + b.ctx.config.lifecycle.reset_retry_steps)
            b.refuse("reset", failed)
        else:
            b.request_gate(
                pb.SEED_GATE_G5_RESET, dict(ack.evidence.metrics), ack.evidence.blueprint
            )
    elif failed:
        if before in ACTIVE:
            cull(b, failed)
        else:
            b.refuse(request, failed)
