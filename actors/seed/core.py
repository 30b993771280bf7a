"""SeedActor core: ``decide`` for one slot's lifecycle (docs/design.md §2).

Commands, step reports and safety verdicts are decided here; the answers to a slot's waits (gate
results, execution acks) in :mod:`actors.seed.replies`; the moves both make (cull, pause fields)
in :mod:`actors.seed.moves`.

Inputs: ``pb.SeedCommand``, ``pb.StepReport``, ``pb.GateResult``, ``pb.ExecutionAck``,
``pb.SafetyVerdict``. Every transition is one of the table's; every request that cannot be
honoured becomes an explicit ``pb.LifecycleRefused`` event. Choices made here:

- CULLED -> EMBARGOED at once, in the same decision as the cull; the embargo counts from the cull
  step, and EMBARGOED -> RESETTING waits for execution's ack of the cull order as well.
- Commands that need an order while the slot is in a stage (pause, resume, adjust_optimizer)
  are refused while the slot awaits another order or a gate result ("busy"); cull, emergency
  stop and terminate always act (a late result or ack is then refused as stale).
- A repeated ack of one of the last ``RECENT_ACKS`` acknowledged orders (another rank acking the
  same order; the first ack decides) and a step report not newer than the last one are no-ops; any other unexpected ack or gate result is
  refused.
- A paused slot does not advance on budgets; on resume its stage clock is shifted by the paused
  duration.

Command correlation (``command_id`` of every event): a command's own events (refusals included)
carry its message id; the events of its chain carry it too: the decisions on the gate result or
ack that answers a wait the chain started (germinate: the G0 request, DORMANT->GERMINATED or the
G0 refusal, GERMINATED->TRAINING; cull: the cull ack; ...). The chain id lives in
``SeedState.command_id``, folded from the progress event that starts each wait. Everything with
no command behind it carries "": the bootstrap UNKNOWN->DORMANT (even when a command triggered
it), step-budget gate requests and the transitions they lead to, safety verdicts, and the refusal
of a stale or mismatched result or ack. A client that sent a command therefore sees, as the first
LifecycleTransition / LifecycleRefused with its id, the command's outcome: for germinate
DORMANT->GERMINATED or the refusal (G0 failure, execution failure, or the command refused).
"""

from __future__ import annotations

from actors.core import Context, Decision, Message
from actors.seed.builder import Builder
from actors.seed.fast import report_progress
from actors.seed.lifecycle import (
    ACTIVE,
    EXIT_GATE,
    gate_name,
    stage_budget,
    stage_name,
)
from actors.seed.moves import cull, pause_fields
from actors.seed.params import check_adjust, check_germinate
from actors.seed.replies import on_ack, on_gate_result
from actors.seed.state import SeedState
from actors.seed.wait import Wait
from contracts import evidence as ev
from leyline import pb

__all__ = ["decide", "decide_general"]


_IN_STAGE_ORDERS = frozenset(
    {
        pb.SEED_STAGE_TRAINING,
        pb.SEED_STAGE_BLENDING,
        pb.SEED_STAGE_SHADOWING,
        pb.SEED_STAGE_PROBATIONARY,
    }
)
_PAUSABLE = ACTIVE | {pb.SEED_STAGE_DORMANT}


def decide(state: SeedState, msg: Message, ctx: Context) -> Decision:
    """Decide what one message means for this slot."""
    fast = report_progress(state, msg, ctx.config)  # most reports only advance the progress
    return fast if fast is not None else decide_general(state, msg, ctx)


def decide_general(state: SeedState, msg: Message, ctx: Context) -> Decision:
    """``decide`` without its fast path (:mod:`actors.seed.fast`): every message through the
    :class:`Builder`."""
    b = Builder(state, ctx)
    if b.state.stage == pb.SEED_STAGE_UNKNOWN:
        b.transition(pb.SEED_STAGE_DORMANT, "bootstrap")
    if isinstance(msg, pb.StepReport):
        if b.state.stage != pb.SEED_STAGE_TERMINATED:
            _on_report(b, msg)
        return b.decision()
    if isinstance(msg, pb.SeedCommand):
        b.chain = ctx.message_id  # a command's own events, refusals included, carry its id
        b.command = (ctx.message_id, msg.WhichOneof("action") or "")
    refusal = _misaddressed(b.state, msg)
    if refusal:
        b.refuse(_request_name(msg), refusal)
    else:
        _dispatch(b, msg)
    return b.decision()


def _dispatch(b: Builder, msg: Message) -> None:
    """Hand a message addressed to this live slot to its handler."""
    if isinstance(msg, pb.SeedCommand):
        _on_command(b, msg)
    elif isinstance(msg, pb.GateResult):
        on_gate_result(b, msg)
    elif isinstance(msg, pb.ExecutionAck):
        if not (msg.order_id and msg.order_id in b.state.recent_acks):
            on_ack(b, msg)  # an order acked again (another rank) is idempotent
    elif isinstance(msg, pb.SafetyVerdict):
        _on_verdict(b, msg)
    else:
        b.refuse(_request_name(msg), f"unsupported message {type(msg).__name__}")


def _misaddressed(state: SeedState, msg: Message) -> str:
    """Why this slot refuses ``msg`` whatever it says ("" when it does not)."""
    slot = getattr(msg, "slot", None)
    if slot is None:
        return f"unsupported message {type(msg).__name__}"
    if slot != state.slot and not (isinstance(msg, pb.SafetyVerdict) and slot == ""):
        return "unknown_slot"
    if state.stage == pb.SEED_STAGE_TERMINATED:
        return "slot terminated"
    return ""


def _request_name(msg: Message) -> str:
    if isinstance(msg, pb.SeedCommand):
        return msg.WhichOneof("action") or "empty command"
    if isinstance(msg, pb.GateResult):
        return f"gate {gate_name(msg.gate)} result"
    if isinstance(msg, pb.ExecutionAck):
        return f"ack of {stage_name(msg.stage)} order"
    if isinstance(msg, pb.SafetyVerdict):
        return f"safety verdict {pb.VerdictAction.Name(msg.action)}"
    return type(msg).__name__


# --------------------------------------------------------------------------- commands


def _on_command(b: Builder, cmd: pb.SeedCommand) -> None:
    action = cmd.WhichOneof("action")
    why = f" ({cmd.reason})" if cmd.reason else ""
    if action is None:
        b.refuse("empty command", "command names no action")
    elif action == "germinate":
        _germinate(b, cmd.germinate)
    elif action in ("cull", "emergency_stop"):
        _cull_command(b, action, why)
    elif action == "terminate":
        _terminate(b, why)
    elif action in ("pause", "resume"):
        _pause(b, action == "pause")
    else:  # adjust_optimizer
        _adjust(b, action, cmd.adjust_optimizer)


def _cull_command(b: Builder, action: str, why: str) -> None:
    stage = b.state.stage
    if stage in ACTIVE:
        stop = action == "emergency_stop"
        cull(b, ("emergency stop" if stop else "command cull") + why, urgent=stop)
    else:
        b.refuse(action, f"nothing to cull in stage {stage_name(stage)}")


def _terminate(b: Builder, why: str) -> None:
    stage = b.state.stage
    if stage in (pb.SEED_STAGE_DORMANT, pb.SEED_STAGE_FOSSILIZED):
        b.transition(pb.SEED_STAGE_TERMINATED, "command terminate" + why)
        b.order(pb.SEED_STAGE_TERMINATED, b.new_id())
    else:
        b.refuse("terminate", f"terminate not allowed in stage {stage_name(stage)}")


def _adjust(b: Builder, action: str, adjust: pb.AdjustOptimizer) -> None:
    stage = b.state.stage
    if stage not in _IN_STAGE_ORDERS:
        b.refuse(action, f"no seed optimizer in stage {stage_name(stage)}")
    elif b.state.awaiting is not None:
        b.refuse(action, f"busy: awaiting {b.state.awaiting}")
    elif (bad := check_adjust(adjust)) is not None:
        b.refuse(action, bad)
    else:
        b.await_order(stage, "adjust", adjust_optimizer=adjust)


def _germinate(b: Builder, g: pb.Germinate) -> None:
    st = b.state
    if st.stage == pb.SEED_STAGE_EMBARGOED:
        b.refuse("germinate", "slot embargoed")
    elif st.stage != pb.SEED_STAGE_DORMANT:
        b.refuse("germinate", f"germinate not allowed in stage {stage_name(st.stage)}")
    elif st.paused:
        b.refuse("germinate", "slot paused")
    elif st.awaiting is not None:
        b.refuse("germinate", f"busy: awaiting {st.awaiting}")
    elif not g.blueprint and not g.artifact_id:
        b.refuse("germinate", "germinate names no blueprint and no artifact")
    elif (bad := check_germinate(g)) is not None:
        b.refuse("germinate", bad)
    else:
        order_id = b.new_id()
        order = b.order(
            pb.SEED_STAGE_GERMINATED,
            order_id,
            germinate=g,
            wants_evidence=True,
            evidence_for=pb.SEED_GATE_G0_SANITY,
        )
        b.progress(
            awaiting=str(Wait.evidence()),
            pending_id=order_id,
            germinate=g,
            baseline_acc=st.val_acc,
            pending_order=order,
            # a new seed: the strikes of the slot's earlier seeds are not its own (G4 counts them)
            **({"strikes": 0} if st.strikes else {}),
        )


def _pause(b: Builder, pause: bool) -> None:
    st, action = b.state, "pause" if pause else "resume"
    if st.stage not in _PAUSABLE:
        b.refuse(action, f"{action} not allowed in stage {stage_name(st.stage)}")
    elif st.paused == pause:
        b.refuse(action, "already paused" if pause else "not paused")
    elif st.awaiting is not None:
        b.refuse(action, f"busy: awaiting {st.awaiting}")
    elif st.stage == pb.SEED_STAGE_DORMANT:
        b.progress(**pause_fields(b, pause))  # no seed: nothing to tell execution
    else:
        order_id = b.new_id()
        order = b.order(st.stage, order_id, paused=pause)
        b.progress(
            awaiting=str(Wait.ack(stage_name(st.stage), action)),
            pending_id=order_id,
            pending_order=order,
        )


# --------------------------------------------------------------------------- step reports


def _on_report(b: Builder, report: pb.StepReport) -> None:
    if report.step <= b.state.last_step and b.state.seq > 1:
        return  # stale or repeated (another rank's copy): nothing new
    mine = next((s for s in report.slots if s.slot == b.state.slot), None)
    b.progress(
        step=report.step,
        step_report=True,
        alpha=mine.alpha if mine else b.state.alpha,
        val_acc=max(0.0, report.val_accuracy),
    )
    st = b.state
    if st.awaiting is not None and st.awaiting.acked:
        b.resend_missed(report.step)
    if not st.paused and st.awaiting is None:
        _advance(b, report, mine)


def _advance(b: Builder, report: pb.StepReport, mine: pb.SlotReport | None) -> None:
    """A step on for a slot neither paused nor waiting: an embargo or a reset retry may be due,
    or the stage's budget used up (its exit gate requested)."""
    st = b.state
    elapsed = report.step - st.stage_entered_step
    if st.stage == pb.SEED_STAGE_EMBARGOED:
        if elapsed >= b.ctx.config.lifecycle.embargo_steps:
            b.transition(pb.SEED_STAGE_RESETTING, "embargo over")
            _order_reset(b)
        return
    if st.stage == pb.SEED_STAGE_RESETTING:
        if st.retry_at and report.step >= st.retry_at:
            _order_reset(b)
        return
    budget = stage_budget(st.stage, b.ctx.config, st.blend_steps)
    if budget is not None and elapsed >= budget and mine is not None:
        _request_exit_gate(b, report, mine)


def _request_exit_gate(b: Builder, report: pb.StepReport, mine: pb.SlotReport) -> None:
    """The stage used its budget: request its exit gate with the slot's measured evidence."""
    st = b.state
    gate, _ = EXIT_GATE[st.stage]
    metrics = dict(mine.metrics)
    if gate == pb.SEED_GATE_G4_SYSTEM_IMPACT:
        if st.baseline_acc > 0.0:
            metrics.setdefault(ev.BASELINE_ACC, st.baseline_acc)
        if report.val_accuracy > 0.0:
            metrics.setdefault(ev.VAL_ACC, report.val_accuracy)
        metrics.setdefault(ev.OPEN_STRIKES, float(st.strikes))
    b.request_gate(gate, metrics)


def _order_reset(b: Builder) -> None:
    b.progress(retry_at=0)
    b.await_order(pb.SEED_STAGE_RESETTING, wants_evidence=True, evidence_for=pb.SEED_GATE_G5_RESET)


# --------------------------------------------------------------------------- safety


def _on_verdict(b: Builder, verdict: pb.SafetyVerdict) -> None:
    request = f"safety verdict {pb.VerdictAction.Name(verdict.action)}"
    stopping = verdict.action in (pb.VERDICT_CULL, pb.VERDICT_EMERGENCY_STOP)
    if not verdict.slot and verdict.action != pb.VERDICT_EMERGENCY_STOP:
        b.refuse(request, "unknown_slot")
        return
    if not stopping or (verdict.slot and verdict.strikes != b.state.strikes):
        b.progress(strikes=verdict.strikes)
    if not stopping:
        return
    cause = "circuit breaker open" if verdict.action == pb.VERDICT_CULL else "emergency stop"
    if b.state.stage in ACTIVE:
        cull(b, cause + (f": {verdict.reason}" if verdict.reason else ""), urgent=True)
    else:
        b.refuse(request, f"nothing to cull in stage {stage_name(b.state.stage)}")
