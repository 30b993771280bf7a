"""Refusals the stage table does not reach: a slot busy with an order, malformed commands, messages
of the wrong type, failed in-stage orders; each names what was asked and why (docs/design.md §2:
every request that cannot be honoured becomes an explicit LifecycleRefused event)."""

from __future__ import annotations

from cores_harness import SeedSim, command, germinate

from actors.core import Message
from leyline import pb

S = pb.SeedLifecycleStage
V = pb.VerdictAction


def _refused(sim: SeedSim, msg: Message) -> list[tuple[str, str]]:
    decision = sim.send(msg)
    out = [(e.request, e.reason) for e in decision.events if isinstance(e, pb.LifecycleRefused)]
    assert all(request and reason for request, reason in out), out
    return out


def _training(auto_after: bool) -> SeedSim:
    sim = SeedSim()
    sim.report(1)
    sim.send(germinate(sim.slot))
    assert sim.state.stage == S.SEED_STAGE_TRAINING
    sim.auto = auto_after
    return sim


def _adjust(sim: SeedSim, lr_scale: float) -> pb.SeedCommand:
    return pb.SeedCommand(slot=sim.slot, adjust_optimizer=pb.AdjustOptimizer(lr_scale=lr_scale))


def test_commands_while_an_order_is_awaited_are_refused_as_busy() -> None:
    """Awaiting the ack of a pause: another pause, an optimizer adjustment are refused as busy;
    a germinate while the probe is awaited too."""
    sim = _training(auto_after=False)
    sim.send(command(sim.slot, "pause"))
    for action, msg in (
        ("pause", command(sim.slot, "pause")),
        ("adjust_optimizer", _adjust(sim, 0.5)),
    ):
        (refusal,) = _refused(sim, msg)
        assert refusal[0] == action and "busy" in refusal[1]
    dormant = SeedSim(auto=False)
    dormant.send(germinate(dormant.slot))
    (refusal,) = _refused(dormant, germinate(dormant.slot))
    assert refusal[0] == "germinate" and "busy" in refusal[1]


def test_malformed_commands_are_refused_with_a_reason() -> None:
    """A command with no action, a germinate naming neither blueprint nor artifact, an
    out-of-range optimizer adjustment: each one refusal naming the request."""
    sim = _training(auto_after=True)
    assert len(_refused(sim, pb.SeedCommand(slot=sim.slot))) == 1
    (refusal,) = _refused(sim, _adjust(sim, -1.0))
    assert refusal[0] == "adjust_optimizer"
    dormant = SeedSim()
    (refusal,) = _refused(dormant, pb.SeedCommand(slot=dormant.slot, germinate=pb.Germinate()))
    assert refusal[0] == "germinate"


def test_a_message_of_a_type_the_seed_does_not_take_is_refused_by_type() -> None:
    """A gate request sent to a slot's inbox is refused, named by its type."""
    sim = SeedSim()
    (refusal,) = _refused(sim, pb.GateRequest(slot=sim.slot, request_id="r"))
    assert refusal[0] == "GateRequest"


def test_a_slotless_cull_verdict_is_refused_as_unknown_slot() -> None:
    """A breaker-open verdict naming no slot is refused (unknown_slot), naming the verdict."""
    sim = _training(auto_after=True)
    (refusal,) = _refused(sim, pb.SafetyVerdict(action=V.VERDICT_CULL, strikes=3))
    assert refusal[1] == "unknown_slot" and "VERDICT_CULL" in refusal[0]
    assert sim.state.stage == S.SEED_STAGE_TRAINING


def test_a_failed_pause_order_leaves_the_slot_running_and_says_why() -> None:
    """Execution failing the pause order: the slot is not paused, the pause is refused with the
    failure."""
    sim = _training(auto_after=False)
    sim.send(command(sim.slot, "pause"))
    order = sim.orders[-1]
    ack = sim.ack_for(order, ok=False)
    ack.error = "device lost"
    (refusal,) = _refused(sim, ack)
    assert refusal == ("pause", "execution failed: device lost")
    assert not sim.state.paused and sim.state.awaiting is None


def test_a_commands_reason_is_added_to_the_cause_of_its_transition() -> None:
    """cull with reason "drift": the CULLED transition's cause ends in "(drift)"; without a
    reason the cause has no parenthesis."""
    for reason, expect in (("drift", True), ("", False)):
        sim = _training(auto_after=True)
        cmd = command(sim.slot, "cull")
        cmd.reason = reason
        sim.send(cmd)
        (cause,) = [
            e.cause
            for e in sim.events
            if isinstance(e, pb.LifecycleTransition) and e.to_stage == S.SEED_STAGE_CULLED
        ]
        assert cause.endswith("(drift)") if expect else "(" not in cause


def test_an_older_report_never_moves_a_fresh_slot_back() -> None:
    """A new slot that saw step 5 ignores a report of step 3 (another rank's late copy)."""
    sim = SeedSim(auto=False)
    sim.report(5, {})
    assert sim.state.last_step == 5
    assert sim.report(3, {}).events == ()
    assert sim.state.last_step == 5


def test_the_end_of_an_embargo_is_a_transition_with_a_cause() -> None:
    """EMBARGOED -> RESETTING when the embargo is over, with a cause like every transition."""
    sim = _training(auto_after=True)
    sim.send(command(sim.slot, "cull"))
    sim.advance(10_000)
    resets = [
        e
        for e in sim.events
        if isinstance(e, pb.LifecycleTransition) and e.to_stage == S.SEED_STAGE_RESETTING
    ]
    assert resets and all(e.cause for e in resets)
