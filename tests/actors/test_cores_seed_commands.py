"""Command correlation: which events carry a command's id, and what a waiting client sees first."""

from __future__ import annotations

import pytest
from cores_harness import PASSING, SeedSim, command, germinate

from actors.core import Message
from contracts import evidence as ev
from leyline import pb

S = pb.SeedLifecycleStage
G = pb.SeedLifecycleGate
V = pb.VerdictAction


def _transitions(sim: SeedSim) -> dict[tuple[int, int], str]:
    """(from, to) -> command_id of the last such transition."""
    return {
        (e.from_stage, e.to_stage): e.command_id
        for e in sim.events
        if isinstance(e, pb.LifecycleTransition)
    }


def _trained() -> SeedSim:
    sim = SeedSim()
    sim.report(1)
    sim.send(germinate(sim.slot))
    assert sim.state.stage == S.SEED_STAGE_TRAINING
    return sim


def test_germinate_outcome_is_dormant_to_germinated_not_bootstrap() -> None:
    """Germinate's first correlated outcome is DORMANT->GERMINATED; the bootstrap it triggered has ""."""
    sim = SeedSim()
    cmd = germinate(sim.slot)
    sim.send(cmd)
    cid = sim.id_of(cmd)
    bootstrap = sim.events[0]
    assert isinstance(bootstrap, pb.LifecycleTransition)
    assert bootstrap.to_stage == S.SEED_STAGE_DORMANT and bootstrap.command_id == ""
    outcome = sim.outcome(cid)
    assert isinstance(outcome, pb.LifecycleTransition)
    assert (outcome.from_stage, outcome.to_stage) == (S.SEED_STAGE_DORMANT, S.SEED_STAGE_GERMINATED)
    assert _transitions(sim)[(S.SEED_STAGE_GERMINATED, S.SEED_STAGE_TRAINING)] == cid
    waits = [e for e in sim.events if isinstance(e, pb.LifecycleProgress) and e.awaiting]
    assert [w.awaiting for w in waits[:2]] == ["g0_evidence", "gate:G0_SANITY"]
    assert all(w.command_id == cid for w in waits[:3])


def test_budget_driven_transitions_carry_no_command() -> None:
    """Transitions a step budget starts (gate G1 onwards) carry "" and end the germinate chain."""
    sim = _trained()
    assert sim.state.command_id == ""
    sim.advance(400)
    assert sim.state.stage == S.SEED_STAGE_BLENDING
    assert _transitions(sim)[(S.SEED_STAGE_TRAINING, S.SEED_STAGE_BLENDING)] == ""


def test_germinate_g0_failure_outcome_is_the_refusal() -> None:
    """A failing G0 refuses germinate with the command's id; the slot stays DORMANT."""
    sim = SeedSim()
    sim.evidence[G.SEED_GATE_G0_SANITY] = dict(
        PASSING[G.SEED_GATE_G0_SANITY], **{ev.PARAMS_FINITE: 0.0}
    )
    sim.report(1)
    cmd = germinate(sim.slot)
    sim.send(cmd)
    outcome = sim.outcome(sim.id_of(cmd))
    assert isinstance(outcome, pb.LifecycleRefused)
    assert outcome.request == "germinate" and "G0" in outcome.reason
    assert sim.state.stage == S.SEED_STAGE_DORMANT and sim.state.awaiting is None


def test_germinate_execution_failure_outcome_is_the_refusal() -> None:
    """Execution failing to build the probe refuses germinate with the command's id."""
    sim = SeedSim(auto=False)
    sim.report(1)
    cmd = germinate(sim.slot)
    sim.send(cmd)
    sim.send(sim.ack_for(sim.orders[-1], ok=False))
    outcome = sim.outcome(sim.id_of(cmd))
    assert isinstance(outcome, pb.LifecycleRefused)
    assert outcome.request == "germinate" and "execution failed" in outcome.reason


def test_cull_chain_carries_the_command_until_the_embargo_ends() -> None:
    """Cull: X->CULLED and CULLED->EMBARGOED carry its id; the budget-driven reset carries ""."""
    sim = _trained()
    cmd = command(sim.slot, "cull")
    sim.send(cmd)
    cid = sim.id_of(cmd)
    outcome = sim.outcome(cid)
    assert isinstance(outcome, pb.LifecycleTransition)
    assert (outcome.from_stage, outcome.to_stage) == (S.SEED_STAGE_TRAINING, S.SEED_STAGE_CULLED)
    assert _transitions(sim)[(S.SEED_STAGE_CULLED, S.SEED_STAGE_EMBARGOED)] == cid
    sim.advance(sim.config.lifecycle.embargo_steps + 10)
    trans = _transitions(sim)
    assert trans[(S.SEED_STAGE_EMBARGOED, S.SEED_STAGE_RESETTING)] == ""
    assert trans[(S.SEED_STAGE_RESETTING, S.SEED_STAGE_DORMANT)] == ""


def test_terminate_transition_carries_the_command() -> None:
    """terminate's DORMANT->TERMINATED carries the command's id."""
    sim = SeedSim()
    sim.report(1)
    cmd = command(sim.slot, "terminate")
    sim.send(cmd)
    outcome = sim.outcome(sim.id_of(cmd))
    assert isinstance(outcome, pb.LifecycleTransition)
    assert outcome.to_stage == S.SEED_STAGE_TERMINATED


@pytest.mark.parametrize(
    ("action", "setup"),
    [
        ("terminate", "trained"),
        ("germinate", "trained"),
        ("resume", "trained"),
        ("cull", "dormant"),
        ("pause", "terminated"),
    ],
)
def test_refused_command_carries_its_own_id(action: str, setup: str) -> None:
    """An illegal command is refused with its own message id as command_id."""
    sim = _trained() if setup == "trained" else SeedSim()
    if setup != "trained":
        sim.report(1)
    if setup == "terminated":
        sim.send(command(sim.slot, "terminate"))
    cmd = germinate(sim.slot) if action == "germinate" else command(sim.slot, action)
    decision = sim.send(cmd)
    (event,) = decision.events
    assert isinstance(event, pb.LifecycleRefused) and event.request == action
    assert event.command_id == sim.id_of(cmd)
    assert sim.outcome(sim.id_of(cmd)) is event


def test_refusals_mid_chain_keep_the_chain() -> None:
    """A refused command or a stale ack during germination leaves the G0 outcome on germinate."""
    sim = SeedSim(auto=False)
    sim.report(1)
    cmd = germinate(sim.slot)
    sim.send(cmd)
    order = sim.orders[-1]
    pause = command(sim.slot, "pause")
    (busy,) = sim.send(pause).events
    assert isinstance(busy, pb.LifecycleRefused) and busy.command_id == sim.id_of(pause)
    stale = pb.ExecutionAck(order_id="nope", slot=sim.slot, stage=order.stage, ok=True)
    (refused,) = sim.send(stale).events
    assert isinstance(refused, pb.LifecycleRefused) and refused.command_id == ""
    sim.auto = True
    sim.send(sim.ack_for(order))
    outcome = sim.outcome(sim.id_of(cmd))
    assert isinstance(outcome, pb.LifecycleTransition)
    assert outcome.to_stage == S.SEED_STAGE_GERMINATED


def test_safety_verdict_cull_carries_no_command() -> None:
    """A circuit-breaker cull has no command behind it: its events carry ""."""
    sim = _trained()
    decision = sim.send(pb.SafetyVerdict(slot=sim.slot, action=V.VERDICT_CULL, strikes=3))
    assert decision.events and all(e.command_id == "" for e in decision.events)  # type: ignore[attr-defined]


def _bookkeeping_keys(events: list[Message]) -> list[str]:
    return [
        key
        for e in events
        if isinstance(e, pb.LifecycleProgress)
        for key in e.metrics
        if key.startswith("@")
    ]


def test_no_reserved_metric_keys_on_a_full_walk() -> None:
    """No progress event of a walk to FOSSILIZED and through a cull uses an "@" metrics key."""
    sim = _trained()
    for _ in range(4):
        sim.advance(400)
    assert sim.state.stage == S.SEED_STAGE_FOSSILIZED
    other = _trained()
    other.send(command(other.slot, "pause"))
    other.send(command(other.slot, "resume"))
    other.send(pb.SafetyVerdict(slot=other.slot, action=V.VERDICT_STRIKE, strikes=1))
    other.send(command(other.slot, "cull"))
    other.advance(other.config.lifecycle.embargo_steps + 10)
    assert other.state.stage == S.SEED_STAGE_DORMANT
    assert _bookkeeping_keys(sim.events + other.events) == []
