"""Step-report bookkeeping merged: consecutive step reports of one batch fold as one event that
gives the state the separate events give (one ``seq`` per merged run), live and in a rebuild."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.core import Decision, Message, ReplayError, fold
from actors.hosting import Meta
from actors.logic import PureLogic, seed_logic
from actors.seed import state as seed_state
from actors.seed.state import merge_reports
from contracts import Envelope, KasminaConfig, kinds
from leyline import pb

SLOT = "l0.s0"


def _meta(n: int, kind: str) -> Meta:
    env = Envelope(2, kind, f"m{n:06d}", "t", "k", n, "", "r", "seed:" + SLOT, b"", b"")
    return Meta(env, f"{n}-0", "inbox")


def _report(step: int, alpha: float = 0.0, val: float = 0.5) -> pb.StepReport:
    report = pb.StepReport(step=step, val_accuracy=val)
    report.slots.add(slot=SLOT, alpha=alpha)
    return report


def _command(action: str) -> pb.SeedCommand:
    command = pb.SeedCommand(slot=SLOT)
    getattr(command, action).SetInParent()
    return command


def _drive(logic: PureLogic[Any], inputs: list[Message], *, merging: bool) -> list[Message]:
    """Decide ``inputs`` in order as one batch, as the shell does: a lone event merged into the
    open one where the logic merges them (``merging``), else applied. The event log written."""
    log: list[Message] = []
    open_event = False
    for n, message in enumerate(inputs):
        kind = kinds.STEP_REPORT if isinstance(message, pb.StepReport) else kinds.SEED_COMMAND
        decision: Decision = logic.handle(kind, message, _meta(n, kind))
        merged = logic.merge(decision) if merging and open_event and decision.lone else None
        if merged is not None:
            log[-1] = merged
            continue
        logic.apply(decision)
        log += decision.events
        if decision.events:
            open_event = decision.lone
    return log


def _step_events(log: list[Message]) -> list[tuple[int, int]]:
    return [(e.seq, e.step) for e in log if isinstance(e, pb.LifecycleProgress) and e.step_report]


def test_reports_of_one_batch_write_one_event_with_the_last_step() -> None:
    """Twelve reports: the first (with the bootstrap) and one merged event for the other eleven,
    carrying the last step and alpha; the folded log equals the live state."""
    config = KasminaConfig()
    logic = seed_logic(SLOT, config)
    log = _drive(logic, [_report(s, alpha=s / 100) for s in range(1, 13)], merging=True)
    assert _step_events(log) == [(2, 1), (3, 12)]
    assert logic.state.last_step == 12 and logic.state.alpha == 0.12 and logic.state.seq == 3
    assert fold(seed_state.evolve, seed_state.initial_state(SLOT), log) == logic.state


def test_a_command_between_reports_splits_the_merged_runs() -> None:
    """Reports, a pause, reports: the pause's event stays between the two merged events, each
    carrying the last step of its run, and the log folds to the live state."""
    logic = seed_logic(SLOT, KasminaConfig())
    inputs: list[Message] = [_report(s) for s in range(1, 6)]
    inputs += [_command("pause"), *(_report(s) for s in range(6, 10))]
    log = _drive(logic, inputs, merging=True)
    assert _step_events(log) == [(2, 1), (3, 5), (5, 9)]
    paused = [e for e in log if isinstance(e, pb.LifecycleProgress) and e.HasField("paused")]
    assert [e.seq for e in paused] == [4] and logic.state.paused
    assert fold(seed_state.evolve, seed_state.initial_state(SLOT), log) == logic.state


def test_the_merged_event_keeps_the_latest_positive_accuracy() -> None:
    """A report without an accuracy (0) does not clear the one an earlier report of the run set."""
    logic = seed_logic(SLOT, KasminaConfig())
    log = _drive(
        logic, [_report(1, val=0.5), _report(2, val=0.75), _report(3, val=0.0)], merging=True
    )
    last = log[-1]
    assert isinstance(last, pb.LifecycleProgress) and last.val_acc == 0.75
    assert logic.state.val_acc == 0.75


def test_only_bare_report_bookkeeping_merges() -> None:
    """An event with more than a report's bookkeeping (a wait, a command's chain, strikes), an
    event of another slot, an older step or a seq that does not follow never merges."""
    base = pb.LifecycleProgress(slot=SLOT, seq=4, step=10, step_report=True, alpha=0.5)
    later = pb.LifecycleProgress(slot=SLOT, seq=5, step=11, step_report=True, alpha=0.6)
    merged = merge_reports(base, later)
    assert merged is not None and (merged.seq, merged.step, merged.alpha) == (4, 11, 0.6)
    others = [
        pb.LifecycleProgress(slot=SLOT, seq=5, step=11, step_report=True, awaiting="gate:G1"),
        pb.LifecycleProgress(slot=SLOT, seq=5, step=11, step_report=True, command_id="c1"),
        pb.LifecycleProgress(slot=SLOT, seq=5, step=11, step_report=True, strikes=1),
        pb.LifecycleProgress(slot=SLOT, seq=5, step=11, acked_id="o1"),
        pb.LifecycleProgress(slot="other", seq=5, step=11, step_report=True),
        pb.LifecycleProgress(slot=SLOT, seq=5, step=9, step_report=True),
        pb.LifecycleProgress(slot=SLOT, seq=6, step=11, step_report=True),
        pb.LifecycleRefused(slot=SLOT, seq=5, step=11),
    ]
    for event in others:
        assert merge_reports(base, event) is None and merge_reports(event, base) is None


_inputs = st.lists(
    st.one_of(
        st.tuples(st.just("report"), st.integers(0, 40), st.floats(0, 1), st.floats(0, 1)),
        st.tuples(st.sampled_from(["pause", "resume", "germinate"])),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(_inputs)
def test_merging_changes_nothing_but_the_event_count(plan: list[tuple[object, ...]]) -> None:
    """Any mix of reports (stale, repeated, without accuracy) and commands: the merging host's
    state is the plain host's with fewer seqs, and its log folds to its live state."""
    config = KasminaConfig.load(env={}, overrides={"lifecycle.training_steps": 5})
    inputs: list[Message] = []
    for item in plan:
        if item[0] == "report":
            _, step, alpha, val = item
            assert isinstance(step, int) and isinstance(alpha, float) and isinstance(val, float)
            inputs.append(_report(step, alpha, val))
        elif item[0] == "germinate":
            inputs.append(pb.SeedCommand(slot=SLOT, germinate=pb.Germinate(blueprint="mlp")))
        else:
            inputs.append(_command(str(item[0])))
    plain, merging = seed_logic(SLOT, config), seed_logic(SLOT, config)
    plain_log = _drive(plain, inputs, merging=False)
    merged_log = _drive(merging, inputs, merging=True)
    assert replace(plain.state, seq=merging.state.seq) == merging.state
    assert merging.state.seq == plain.state.seq - (len(plain_log) - len(merged_log))
    assert fold(seed_state.evolve, seed_state.initial_state(SLOT), merged_log) == merging.state
    last_steps = [[step for _, step in _step_events(log)[-1:]] for log in (plain_log, merged_log)]
    assert last_steps[0] == last_steps[1]


@settings(max_examples=60, deadline=None)
@given(_inputs)
def test_every_merged_state_is_the_full_refold_of_the_log(plan: list[tuple[object, ...]]) -> None:
    """After every decision, merged or applied, the live state (taken from the decision's fold,
    renumbered, without folding the merged event again) equals the whole log so far folded from
    the initial state; a state taken after one input, and every event written but the open one,
    are never changed by a later input."""
    config = KasminaConfig.load(env={}, overrides={"lifecycle.training_steps": 5})
    logic = seed_logic(SLOT, config)
    log: list[Message] = []
    merges = 0
    kept: list[tuple[object, dict[str, Any], list[bytes]]] = []  # snapshots, as they were
    for n, item in enumerate(plan):
        message: Message
        if item[0] == "report":
            _, step, alpha, val = item
            assert isinstance(step, int) and isinstance(alpha, float) and isinstance(val, float)
            message = _report(step, alpha, val)
        elif item[0] == "germinate":
            message = pb.SeedCommand(slot=SLOT, germinate=pb.Germinate(blueprint="mlp"))
        else:
            message = _command(str(item[0]))
        kind = kinds.STEP_REPORT if isinstance(message, pb.StepReport) else kinds.SEED_COMMAND
        decision = logic.handle(kind, message, _meta(n, kind))
        merged = logic.merge(decision)
        if merged is not None:
            log[-1] = merged
            merges += 1
        else:
            logic.apply(decision)
            log += decision.events
        assert fold(seed_state.evolve, seed_state.initial_state(SLOT), log) == logic.state
        state = logic.snapshot()[0]  # type: ignore[index]
        kept.append((state, seed_state.to_plain(state), [e.SerializeToString() for e in log]))
    runs = sum(1 for a, b in pairwise(plan) if a[0] == b[0] == "report")
    assert merges <= runs
    for n, (state, plain, _) in enumerate(kept):  # no later decision changed an earlier state
        assert seed_state.to_plain(state) == plain, f"the state after input {n} changed"
    for n, (_, _, written) in enumerate(kept[:-1]):  # nor an event written before the last
        assert [e.SerializeToString() for e in log[: len(written) - 1]] == written[:-1], n


def test_renumber_takes_the_state_of_the_two_events_one_seq_lower() -> None:
    """The merged state equals the merged event folded where the first event was; a merged event
    not numbered just before the state is refused."""
    start = seed_state.initial_state(SLOT)
    boot = pb.LifecycleTransition(
        slot=SLOT, seq=1, from_stage=pb.SEED_STAGE_UNKNOWN, to_stage=pb.SEED_STAGE_DORMANT
    )
    base = seed_state.evolve(start, boot)
    first = pb.LifecycleProgress(slot=SLOT, seq=2, step=3, step_report=True, alpha=0.2, val_acc=0.4)
    second = pb.LifecycleProgress(slot=SLOT, seq=3, step=5, step_report=True, alpha=0.3)
    both = seed_state.evolve(seed_state.evolve(base, first), second)
    merged = merge_reports(first, second)
    assert merged is not None
    taken = seed_state.renumber(both, merged)
    assert taken == seed_state.evolve(base, merged) and taken.seq == 2 and taken.val_acc == 0.4
    assert taken is not both and both.seq == 3
    for wrong in (second, boot):
        try:
            seed_state.renumber(both, wrong)
        except ReplayError:
            continue
        raise AssertionError(f"renumbered with {wrong}")


def test_a_merged_event_is_merged_again_only_with_bare_reports() -> None:
    """The event a merge returned merges with the next report, but never with an event that
    carries more than a report's bookkeeping, whichever side it is on."""
    first = pb.LifecycleProgress(slot=SLOT, seq=2, step=3, step_report=True, alpha=0.2)
    second = pb.LifecycleProgress(slot=SLOT, seq=3, step=4, step_report=True, alpha=0.3)
    merged = merge_reports(first, second)
    assert merged is not None
    waiting = pb.LifecycleProgress(slot=SLOT, seq=3, step=5, step_report=True, strikes=2)
    assert merge_reports(merged, waiting) is None and merge_reports(waiting, merged) is None
    again = merge_reports(
        merged, pb.LifecycleProgress(slot=SLOT, seq=3, step=6, step_report=True, alpha=0.4)
    )
    assert again is not None and (again.seq, again.step, again.alpha) == (2, 6, 0.4)


def test_a_merged_event_kept_out_of_the_log_is_reissued_unless_stale() -> None:
    """An owed merged event is renumbered after the state it is reissued on (the same step
    counts: its accuracy may be news), and refused when the state holds a newer step, has not
    started, or the event is not a bare report of this slot."""
    merged = pb.LifecycleProgress(slot=SLOT, seq=3, step=7, step_report=True, alpha=0.3,
                                  val_acc=0.75)  # fmt: skip
    state = seed_state.SeedState(slot=SLOT, stage=pb.SEED_STAGE_TRAINING, seq=5, last_step=7,
                                 alpha=0.3, val_acc=0.5)  # fmt: skip
    again = seed_state.reissue_report(state, merged)
    assert again is not None and (again.seq, again.step, again.val_acc) == (6, 7, 0.75)
    assert merged.seq == 3 and seed_state.evolve(state, again).val_acc == 0.75
    assert seed_state.reissue_report(replace(state, last_step=8), merged) is None
    assert seed_state.reissue_report(seed_state.initial_state(SLOT), merged) is None
    waiting = pb.LifecycleProgress(slot=SLOT, seq=3, step=7, step_report=True, strikes=1)
    assert seed_state.reissue_report(state, waiting) is None
    assert seed_state.reissue_report(replace(state, slot="other"), merged) is None
