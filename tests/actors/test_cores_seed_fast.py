"""The SeedActor's fast path for step reports (actors/seed/fast.py) decides exactly what the
general path decides, for any state and report it takes, and takes the common ones."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.core import Context, Decision, lone_decision
from actors.hosting import Meta
from actors.logic import seed_logic
from actors.seed.core import decide, decide_general
from actors.seed.fast import report_progress
from actors.seed.state import SeedState, advanced, evolve, merge_reports, renumber
from actors.seed.wait import Wait
from contracts import Envelope, KasminaConfig, kinds
from leyline import pb

SLOT = "l0.s0"
CONFIG = KasminaConfig.load(
    env={},
    overrides={
        "lifecycle.training_steps": 5,
        "lifecycle.blend_steps": 4,
        "lifecycle.shadowing_steps": 3,
        "lifecycle.probationary_steps": 6,
        "lifecycle.embargo_steps": 4,
    },
)

_waits = st.sampled_from(
    [
        None,
        Wait.evidence(),
        Wait.gate("G1_GRADIENT_HEALTH"),
        Wait.ack("TRAINING"),
        Wait.ack("TRAINING", "pause"),
    ]
)
_order = pb.ExecutionOrder(order_id="o1", slot=SLOT, stage=pb.SEED_STAGE_TRAINING, apply_at_step=4)
_states = st.builds(
    SeedState,
    slot=st.just(SLOT),
    stage=st.sampled_from(list(pb.SeedLifecycleStage.values())),
    seq=st.integers(0, 6),
    stage_entered_step=st.integers(0, 30),
    last_step=st.integers(0, 30),
    awaiting=_waits,
    pending_id=st.sampled_from(["", "o1"]),
    command_id=st.sampled_from(["", "c1"]),
    paused=st.booleans(),
    paused_at=st.integers(0, 5),
    blend_steps=st.integers(0, 3),
    strikes=st.integers(0, 2),
    baseline_acc=st.sampled_from([0.0, 0.4]),
    val_acc=st.sampled_from([0.0, 0.3, 0.9]),
    alpha=st.sampled_from([0.0, 0.25, 1.0]),
    retry_at=st.integers(0, 40),
    pending_order=st.sampled_from(["", _order.SerializeToString(deterministic=True).hex()]),
)
_slot_reports = st.lists(
    st.tuples(st.sampled_from([SLOT, "l0.s1", ""]), st.sampled_from([0.0, 0.5, 1.0])),
    max_size=3,
)


def _report(
    step: int, val: float, slots: list[tuple[str, float]], loss: float = 0.1
) -> pb.StepReport:
    report = pb.StepReport(step=step, val_accuracy=val, loss=loss)
    for slot, alpha in slots:
        report.slots.add(slot=slot, alpha=alpha, metrics={"grad_norm": 1.0})
    return report


def _ctx(now_step: int = 0) -> Context:
    return Context(now_step=now_step, message_id="m1", config=CONFIG, now_s=1.0)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _states,
    st.integers(0, 40),
    st.sampled_from([0.0, -0.5, 0.5, 0.75, math.nan, -0.0]),
    _slot_reports,
    st.integers(0, 40),
)
def test_the_fast_path_decides_what_the_general_path_decides(
    state: SeedState, step: int, val: float, slots: list[tuple[str, float]], now_step: int
) -> None:
    """For any state and step report, the fast decision (when there is one) equals the general
    path's: the same event, the same folded state, nothing sent, no outcome record."""
    report = _report(step, val, slots)
    fast = report_progress(state, report, CONFIG)
    general = decide_general(state, report, _ctx(now_step))
    if fast is not None:
        assert fast == general
        assert decide(state, report, _ctx(now_step)) == general


@pytest.mark.parametrize(
    "stage",
    [
        pb.SEED_STAGE_DORMANT,
        pb.SEED_STAGE_GERMINATED,
        pb.SEED_STAGE_TRAINING,
        pb.SEED_STAGE_BLENDING,
        pb.SEED_STAGE_SHADOWING,
        pb.SEED_STAGE_PROBATIONARY,
        pb.SEED_STAGE_FOSSILIZED,
    ],
)
@pytest.mark.parametrize("wait", [None, Wait.gate("G2_STABILITY")])
@pytest.mark.parametrize("paused", [False, True])
def test_a_report_that_only_advances_takes_the_fast_path(
    stage: int, wait: Wait | None, paused: bool
) -> None:
    """A newer report inside the stage's budget, a wait for a gate, or a pause: the fast path
    decides it, and its decision is the general path's."""
    state = SeedState(slot=SLOT, stage=stage, seq=3, stage_entered_step=10, last_step=11,
                      awaiting=wait, paused=paused, val_acc=0.3, alpha=0.5)  # fmt: skip
    report = _report(12, 0.0, [("l0.s1", 0.9), (SLOT, 0.75)])
    fast = report_progress(state, report, CONFIG)
    assert fast is not None and fast == decide_general(state, report, _ctx())
    (event,) = fast.events
    assert isinstance(event, pb.LifecycleProgress)
    assert (event.seq, event.step, event.alpha, event.val_acc) == (4, 12, 0.75, 0.0)
    assert fast.folded == replace(state, seq=4, last_step=12, alpha=0.75)


@pytest.mark.parametrize(
    ("stage", "changes", "step"),
    [
        (pb.SEED_STAGE_UNKNOWN, {"seq": 0}, 12),  # the bootstrap
        (pb.SEED_STAGE_TERMINATED, {}, 12),
        (pb.SEED_STAGE_EMBARGOED, {}, 12),
        (pb.SEED_STAGE_RESETTING, {"retry_at": 12}, 12),
        (pb.SEED_STAGE_TRAINING, {}, 11),  # not newer
        (pb.SEED_STAGE_TRAINING, {}, 15),  # the training budget (5 steps) used up
        (pb.SEED_STAGE_TRAINING, {"awaiting": Wait.ack("TRAINING", "pause")}, 12),
    ],
)
def test_reports_that_may_do_more_take_the_general_path(
    stage: int, changes: dict[str, object], step: int
) -> None:
    """The bootstrap, a terminated slot, an embargo or reset that acts on steps, a stale report,
    a used-up budget and an acknowledged wait are left to the general path."""
    state = replace(
        SeedState(slot=SLOT, stage=stage, seq=3, stage_entered_step=10, last_step=11), **changes
    )
    assert report_progress(state, _report(step, 0.5, [(SLOT, 0.5)]), CONFIG) is None
    assert report_progress(state, pb.SeedCommand(slot=SLOT), CONFIG) is None


def test_the_folded_state_and_the_merged_state_match_the_general_fold() -> None:
    """``advanced`` is ``evolve`` for a bare report event, and a fast event merged into the open
    one gives, renumbered, the merged event folded where the open one was."""
    base = SeedState(slot=SLOT, stage=pb.SEED_STAGE_TRAINING, seq=3, stage_entered_step=4,
                     last_step=4, val_acc=0.2)  # fmt: skip
    first = pb.LifecycleProgress(slot=SLOT, seq=4, step=5, step_report=True, alpha=0.1,
                                 val_acc=0.6)  # fmt: skip
    after_first = advanced(base, first)
    assert after_first == evolve(base, first)
    decision = report_progress(after_first, _report(6, 0.0, [(SLOT, 0.2)]), CONFIG)
    assert decision is not None and decision.folded == evolve(after_first, decision.events[0])
    merged = merge_reports(first, decision.events[0])
    assert merged is not None and (merged.seq, merged.step, merged.val_acc) == (4, 6, 0.6)
    assert renumber(decision.folded, merged) == evolve(base, merged)


def test_lone_decision_is_the_dataclass_decision() -> None:
    """The directly built decision of one event equals (and hashes as) the dataclass one."""
    event = pb.LifecycleProgress(slot=SLOT, seq=1)
    built, plain = lone_decision(event, "state"), Decision(events=(event,), folded="state")
    assert built == plain and built.lone and not built.empty
    assert (built.outgoing, built.rejected, built.detail, built.telemetry, built.outcomes) == (
        (),
        None,
        "",
        (),
        (),
    )


def test_a_shell_logic_decides_a_report_without_a_context_as_decide_does() -> None:
    """Through the shell's adapter (``PureLogic.handle``, which asks the fast path before it
    builds a Context), a run of reports gives the states the general path gives."""
    fast_logic, general = seed_logic(SLOT, CONFIG), seed_logic(SLOT, CONFIG)
    env = Envelope(2, kinds.STEP_REPORT, "m1", "t", "k", 1, "", "r", "trainer", b"", b"")
    meta = Meta(env, "1-0", "inbox")
    for step in range(1, 30):
        report = _report(step, 0.5 if step % 3 else 0.0, [(SLOT, step / 100)])
        decision = fast_logic.handle(kinds.STEP_REPORT, report, meta)
        expected = decide_general(general.state, report, _ctx(step))
        assert decision == expected
        fast_logic.apply(decision)
        general.apply(expected)
    assert fast_logic.state == general.state and fast_logic.state.last_step == 29
