"""A decision under construction: each event is numbered and folded as it is emitted.

Folding while building keeps later steps of one decision (e.g. the bootstrap before the
command, the cull before the embargo) consistent with the state they produce, and guarantees
that the live state equals the fold of the emitted events.

Every event carries ``command_id = Builder.chain``: the command whose chain the decision belongs
to. It starts as "" (so the bootstrap never carries a command) and ``decide`` sets it once it
knows: the command's own id for a command, the awaited chain's id for the gate result or ack
that answers the slot's wait, "" for anything else (budgets, safety verdicts, stale replies).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actors.core import Context, Decision, Message, Outgoing, next_boundary
from actors.seed.lifecycle import BARRIER_GATED, Gate, Stage, gate_name, stage_name
from actors.seed.outcomes import outcomes_of
from actors.seed.state import SeedState, evolve
from actors.seed.wait import Wait
from leyline import pb

__all__ = ["Builder"]


#: an awaited order is sent again once reports are this many barrier intervals past its step
RESEND_AFTER_BOUNDARIES = 2


class Builder:
    """Collects events (numbered and folded on emit) and outgoing messages for one decision."""

    def __init__(self, state: SeedState, ctx: Context) -> None:
        self.state = state
        self.ctx = ctx
        self.events: list[Message] = []
        self.outgoing: list[Outgoing] = []
        self.chain = ""  # command_id of every event emitted from now on
        self.command = ("", "")  # (id, action) of the command being decided, if the input is one
        self._ids = 0

    @property
    def now(self) -> int:
        """The decision's training step: the larger of the context's and the folded one."""
        return max(self.ctx.now_step, self.state.last_step)

    def new_id(self) -> str:
        """A fresh id for an order or a gate request."""
        value = self.ctx.new_id(self._ids)
        self._ids += 1
        return value

    def _emit(
        self, event: pb.LifecycleTransition | pb.LifecycleRefused | pb.LifecycleProgress
    ) -> None:
        event.slot = self.state.slot
        event.seq = self.state.seq + 1
        event.command_id = self.chain
        self.state = evolve(self.state, event)
        self.events.append(event)

    def transition(
        self, to: Stage, cause: str, *, gate: Gate | None = None, blueprint: str = ""
    ) -> None:
        """Emit ``current -> to`` (the fold raises if the table does not allow it)."""
        event = pb.LifecycleTransition(
            from_stage=self.state.stage,
            to_stage=to,
            step=self.now,
            cause=cause,
            causation_id=self.ctx.message_id,
            blueprint=blueprint or self.state.blueprint,
        )
        if gate is not None:
            event.has_gate = True
            event.gate = gate
        self._emit(event)

    def refuse(self, request: str, reason: str) -> None:
        """Emit an explicit refusal (the stage does not change, seq does)."""
        self._emit(
            pb.LifecycleRefused(
                stage=self.state.stage,
                request=request,
                reason=reason,
                causation_id=self.ctx.message_id,
                step=self.now,
            )
        )

    def progress(self, *, step: int | None = None, **fields: Any) -> None:
        """Emit a bookkeeping event: ``fields`` are ``pb.LifecycleProgress`` fields."""
        self._emit(pb.LifecycleProgress(step=self.now if step is None else step, **fields))

    def order(
        self, stage: Stage, order_id: str, *, gated: bool = False, **fields: object
    ) -> pb.ExecutionOrder:
        """Send an ExecutionOrder to every rank, applied on the next barrier boundary; a
        ``gated`` one also waits for the commit of the barrier one period before that boundary
        (the first barrier after this decision)."""
        freq = self.ctx.config.barrier.frequency
        order = pb.ExecutionOrder(
            order_id=order_id,
            slot=self.state.slot,
            stage=stage,
            apply_at_step=next_boundary(self.now, freq),
            paused=self.state.paused,
        )
        if gated:
            order.barrier_gated = True
            order.after_barrier = order.apply_at_step - freq
        for name, value in fields.items():
            if isinstance(value, Message):
                getattr(order, name).CopyFrom(value)
            else:
                setattr(order, name, value)
        self.outgoing.append(Outgoing("execution", None, order))
        return order

    def await_order(
        self, stage: Stage, what: str = "", *, gated: bool | None = None, **fields: object
    ) -> pb.ExecutionOrder:
        """Record that the slot awaits the ack of a new order, and send it. ``gated`` defaults
        to the rule: a move into a stage of ``BARRIER_GATED`` waits for a barrier commit."""
        if gated is None:
            gated = not what and stage in BARRIER_GATED
        order_id = self.new_id()
        order = self.order(stage, order_id, gated=gated, **fields)
        self.progress(
            awaiting=str(Wait.ack(stage_name(stage), what)),
            pending_id=order_id,
            pending_order=order,
        )
        return order

    def resend_missed(self, step: int) -> None:
        """Send the awaited order again when a step report shows its step passed long ago
        without an acknowledgement (it was never received, or refused as stale because no
        trainer read it in time): the same order id, due at the next boundary. Execution
        applies an order id once, so a copy of one that did arrive changes nothing."""
        if not self.state.pending_order:
            return
        order = pb.ExecutionOrder.FromString(bytes.fromhex(self.state.pending_order))
        freq = max(1, self.ctx.config.barrier.frequency)
        if step <= order.apply_at_step + RESEND_AFTER_BOUNDARIES * freq:
            return
        order.apply_at_step = next_boundary(step, freq)
        self.outgoing.append(Outgoing("execution", None, order))
        self.progress(step=step, pending_order=order)

    def reissue(self) -> bool:
        """Send the awaited order again under a new id, after a refusal that changed nothing on
        any rank (not every rank held it at its step, e.g. one rank's bus was cut): due 1, 2, 4,
        then every 8 barrier intervals on, so the lagging rank can catch up and, once back, is
        in step again within 8 intervals. False once
        ``lifecycle.order_retries`` copies were sent: the refusal then counts as a failure."""
        if not self.state.pending_order:
            return False
        order = pb.ExecutionOrder.FromString(bytes.fromhex(self.state.pending_order))
        if order.attempt >= self.ctx.config.lifecycle.order_retries:
            return False
        freq = max(1, self.ctx.config.barrier.frequency)
        order.attempt += 1
        order.order_id = self.new_id()
        order.apply_at_step = next_boundary(self.now + freq * 2 ** min(order.attempt - 1, 3), freq)
        if order.barrier_gated:
            order.after_barrier = order.apply_at_step - freq
        self.outgoing.append(Outgoing("execution", None, order))
        self.progress(
            awaiting=str(self.state.awaiting),  # the same wait, for the new id
            pending_id=order.order_id,
            command_id=self.state.command_id,
            pending_order=order,
        )
        return True

    def request_gate(self, gate: Gate, metrics: Mapping[str, float], blueprint: str = "") -> None:
        """Record that the slot awaits a gate result, and send the GateRequest."""
        request_id = self.new_id()
        self.progress(awaiting=str(Wait.gate(gate_name(gate))), pending_id=request_id)
        request = pb.GateRequest(
            request_id=request_id,
            slot=self.state.slot,
            gate=gate,
            step=self.now,
            stage=self.state.stage,
            evidence=pb.Evidence(
                metrics=dict(metrics), blueprint=blueprint or self.state.blueprint
            ),
        )
        self.outgoing.append(Outgoing("gate", None, request))

    def decision(self) -> Decision:
        """The finished decision, with a ``command.outcome`` record per command it concerns."""
        command_id, action = self.command
        outcomes = outcomes_of(self.events, command_id=command_id, action=action)
        return Decision(
            events=tuple(self.events),
            outgoing=tuple(self.outgoing),
            folded=self.state,
            outcomes=tuple(outcomes),
        )
