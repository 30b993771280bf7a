"""Exhaustive: every (stage, command) pair is the table's transition or an explicit refusal."""

from __future__ import annotations

from dataclasses import replace

import pytest
from cores_harness import command, germinate

from actors import seed
from actors.core import Context, Decision
from actors.seed import SeedState, is_allowed
from actors.seed.lifecycle import Stage
from leyline import pb

S = pb.SeedLifecycleStage
V = pb.VerdictAction
STAGES = list(S.values())
ACTIONS = [
    "germinate",
    "cull",
    "pause",
    "resume",
    "terminate",
    "emergency_stop",
    "adjust_optimizer",
]
SLOT = "blk.s0"
# docs/design.md §2: the stages that may move to CULLED (a live seed that is not permanent yet).
CULLABLE = {
    S.SEED_STAGE_GERMINATED,
    S.SEED_STAGE_TRAINING,
    S.SEED_STAGE_BLENDING,
    S.SEED_STAGE_SHADOWING,
    S.SEED_STAGE_PROBATIONARY,
}
IN_STAGE = {
    S.SEED_STAGE_TRAINING,
    S.SEED_STAGE_BLENDING,
    S.SEED_STAGE_SHADOWING,
    S.SEED_STAGE_PROBATIONARY,
}


def _state(stage: Stage, *, paused: bool = False) -> SeedState:
    base = seed.initial_state(SLOT)
    if stage == S.SEED_STAGE_UNKNOWN:
        return base
    return replace(base, stage=stage, seq=5, stage_entered_step=10, last_step=12, paused=paused)


def _expected(stage: Stage, action: str, paused: bool) -> list[Stage] | None:
    """Stages the slot passes through, or None for a refusal."""
    eff = S.SEED_STAGE_DORMANT if stage == S.SEED_STAGE_UNKNOWN else stage
    boot = [S.SEED_STAGE_DORMANT] if stage == S.SEED_STAGE_UNKNOWN else []
    if action in ("cull", "emergency_stop"):
        return [*boot, S.SEED_STAGE_CULLED, S.SEED_STAGE_EMBARGOED] if eff in CULLABLE else None
    if action == "terminate":
        ok = eff in (S.SEED_STAGE_DORMANT, S.SEED_STAGE_FOSSILIZED)
        return [*boot, S.SEED_STAGE_TERMINATED] if ok else None
    if action == "germinate":
        return boot if eff == S.SEED_STAGE_DORMANT and not paused else None
    if action == "pause":
        return boot if (eff in CULLABLE or eff == S.SEED_STAGE_DORMANT) and not paused else None
    if action == "resume":
        return boot if (eff in CULLABLE or eff == S.SEED_STAGE_DORMANT) and paused else None
    return boot if eff in IN_STAGE else None  # adjust_optimizer


def _message(action: str) -> pb.SeedCommand:
    return germinate(SLOT) if action == "germinate" else command(SLOT, action)


def _check_outcome(
    state: SeedState, msg: object, expected: list[Stage] | None, request: str = ""
) -> Decision:
    """Decide ``msg``; a refusal names ``request`` (when given) and why, a transition its cause."""
    decision = seed.decide(state, msg, Context(now_step=12, message_id="m"))  # type: ignore[arg-type]
    folded = state
    for event in decision.events:
        folded = seed.evolve(folded, event)
    transitions = [e for e in decision.events if isinstance(e, pb.LifecycleTransition)]
    refused = [e for e in decision.events if isinstance(e, pb.LifecycleRefused)]
    for t in transitions:
        assert is_allowed(t.from_stage, t.to_stage)
    stages = [t.to_stage for t in transitions]
    boot = [S.SEED_STAGE_DORMANT] if state.stage == S.SEED_STAGE_UNKNOWN else []
    assert all(t.cause for t in transitions)
    if expected is None:
        assert len(refused) == 1 and refused[0].reason and refused[0].request
        assert refused[0].request == (request or refused[0].request)
        assert stages == boot
        assert folded.stage == (boot[-1] if boot else state.stage)
    else:
        assert not refused
        assert stages == expected
    assert folded.seq == state.seq + len(decision.events)
    return decision


PAIRS = [
    pytest.param(
        stage, action, paused, id=f"{S.Name(stage)}-{action}-{'paused' if paused else 'live'}"
    )
    for stage in STAGES
    for action in ACTIONS
    for paused in (False, True)
    if not (paused and stage == S.SEED_STAGE_UNKNOWN)  # an UNKNOWN slot is never paused
]


@pytest.mark.parametrize(("stage", "action", "paused"), PAIRS)
def test_stage_command_pair(stage: Stage, action: str, paused: bool) -> None:
    """Each (stage, command, paused) gives the table's transition or exactly one refusal event."""
    state = _state(stage, paused=paused)
    expected = _expected(stage, action, paused)
    if stage == S.SEED_STAGE_TERMINATED:
        expected = None
    decision = _check_outcome(state, _message(action), expected, request=action)
    orders = [o.message for o in decision.outgoing if isinstance(o.message, pb.ExecutionOrder)]
    if expected is not None and action == "terminate":
        assert [(o.stage, bool(o.order_id)) for o in orders] == [(S.SEED_STAGE_TERMINATED, True)]
    folded = state
    for event in decision.events:
        folded = seed.evolve(folded, event)
    if expected is not None and action in ("pause", "resume") and not orders:
        assert folded.paused == (action == "pause")  # a slot with no seed pauses at once
    causes = [e.cause for e in decision.events if isinstance(e, pb.LifecycleTransition)]
    if expected is not None and action in ("cull", "emergency_stop"):
        # leyline.proto: the cause is human-readable, "command cull" for a commanded cull
        first = "command cull" if action == "cull" else "emergency stop"
        assert causes[len(expected) - 2].startswith(first)
    if expected == [] and stage in IN_STAGE and action != "germinate":
        # wire.md §9: an in-stage order (pause, resume, adjust_optimizer) of a seed is awaited
        # as ack:<STAGE>:<what>, its order for the slot's own stage
        assert str(folded.awaiting).startswith(f"ack:{S.Name(stage)[len('SEED_STAGE_') :]}:")
        assert len(str(folded.awaiting).split(":")) == 3
        assert [o.stage for o in orders] == [stage]


@pytest.mark.parametrize("action", [V.VERDICT_CULL, V.VERDICT_EMERGENCY_STOP], ids=V.Name)
@pytest.mark.parametrize("stage", STAGES, ids=S.Name)
def test_stage_verdict_pair(stage: Stage, action: pb.VerdictAction.ValueType) -> None:
    """Breaker-open and emergency-stop verdicts cull active stages and are refused elsewhere."""
    state = _state(stage)
    eff = S.SEED_STAGE_DORMANT if stage == S.SEED_STAGE_UNKNOWN else stage
    boot = [S.SEED_STAGE_DORMANT] if stage == S.SEED_STAGE_UNKNOWN else []
    expected = [*boot, S.SEED_STAGE_CULLED, S.SEED_STAGE_EMBARGOED] if eff in CULLABLE else None
    verdict = pb.SafetyVerdict(slot=SLOT, action=action, strikes=state.strikes)
    _check_outcome(state, verdict, expected)


@pytest.mark.parametrize("stage", STAGES, ids=S.Name)
def test_unawaited_results_and_acks_refused(stage: Stage) -> None:
    """A gate result or an ack the slot does not await is refused explicitly in every stage."""
    state = _state(stage)
    for msg in (
        pb.GateResult(
            request_id="nope", slot=SLOT, gate=pb.SEED_GATE_G1_GRADIENT_HEALTH, passed=True
        ),
        pb.ExecutionAck(order_id="nope", slot=SLOT, ok=True),
    ):
        _check_outcome(state, msg, None)


@pytest.mark.parametrize("stage", STAGES, ids=S.Name)
def test_other_slot_refused_as_unknown_slot(stage: Stage) -> None:
    """Commands, verdicts, results and acks for another slot are refused as unknown_slot and
    change nothing (a cull verdict for another slot never culls this one)."""
    state = _state(stage)
    for msg in (
        command("other", "cull"),
        command("other", "emergency_stop"),
        pb.SafetyVerdict(slot="other", action=V.VERDICT_CULL, strikes=3),
        pb.SafetyVerdict(slot="other", action=V.VERDICT_EMERGENCY_STOP),
        pb.GateResult(request_id="r", slot="other", gate=pb.SEED_GATE_G1_GRADIENT_HEALTH),
        pb.ExecutionAck(order_id="o", slot="other", ok=True),
    ):
        decision = seed.decide(state, msg, Context(message_id="m"))
        refused = [e for e in decision.events if isinstance(e, pb.LifecycleRefused)]
        assert [r.reason for r in refused] == ["unknown_slot"]
        moved = [e.to_stage for e in decision.events if isinstance(e, pb.LifecycleTransition)]
        assert moved == ([S.SEED_STAGE_DORMANT] if stage == S.SEED_STAGE_UNKNOWN else [])
        assert not decision.outgoing


def test_every_table_pair_is_checked_by_the_fold() -> None:
    """The fold accepts exactly the table's transitions and raises IllegalTransition otherwise."""
    from actors.core import IllegalTransition

    for frm in STAGES:
        for to in STAGES:
            state = replace(seed.initial_state(SLOT), stage=frm, seq=1)
            event = pb.LifecycleTransition(slot=SLOT, from_stage=frm, to_stage=to, seq=2)
            if is_allowed(frm, to):
                assert seed.evolve(state, event).stage == to
            else:
                with pytest.raises(IllegalTransition):
                    seed.evolve(state, event)


@pytest.mark.parametrize("stage", STAGES, ids=S.Name)
def test_a_message_of_an_unsupported_type_is_refused_by_its_type_name(stage: Stage) -> None:
    """A message the seed core does not take (a barrier vote) is refused naming its type."""
    decision = _check_outcome(_state(stage), pb.BarrierVote(), None, request="BarrierVote")
    (refused,) = [e for e in decision.events if isinstance(e, pb.LifecycleRefused)]
    assert "unsupported" in refused.reason
