"""Property tests: random inputs never leave the table; fold and snapshots reproduce live state."""

from __future__ import annotations

from typing import Any

import pytest
from cores_harness import PASSING, SeedSim, command, germinate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors import gates, seed
from actors.core import Context, Message, SeqDuplicate, SeqGap, fold
from actors.seed import is_allowed
from leyline import pb

V = pb.VerdictAction
ACTIONS = [
    "germinate",
    "cull",
    "pause",
    "resume",
    "terminate",
    "emergency_stop",
    "adjust_optimizer",
]

_pump = st.tuples(st.just("pump"))
_germ = st.tuples(st.just("cmd"), st.just("germinate"))
_report = st.tuples(st.just("report"), st.integers(0, 450), st.booleans())
_grow = st.tuples(st.just("grow"))
step_action = st.one_of(
    _grow,
    _grow,
    _grow,
    _pump,
    _pump,
    _germ,
    _report,
    _report,
    st.tuples(st.just("cmd"), st.sampled_from(ACTIONS)),
    st.tuples(st.just("report"), st.integers(0, 450), st.booleans()),
    st.tuples(st.just("deliver"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("drop"), st.integers(0, 5)),
    st.tuples(st.just("again"), st.integers(0, 20)),
    st.tuples(st.just("verdict"), st.sampled_from(list(V.values())), st.integers(0, 4)),
    st.tuples(st.just("foreign"), st.sampled_from(ACTIONS)),
)
programs = st.lists(step_action, min_size=1, max_size=80)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _run(program: list[tuple[Any, ...]]) -> SeedSim:
    sim = SeedSim(auto=False)
    queue: list[Message] = []
    delivered: list[Message] = []

    def send(msg: Message) -> None:
        before = sim.state
        decision = sim.send(msg)
        for e in decision.events:
            if isinstance(e, pb.LifecycleTransition):
                assert is_allowed(e.from_stage, e.to_stage)
        assert sim.state.seq == before.seq + len(decision.events)
        queue.extend(out.message for out in decision.outgoing)

    def deliver(msg: Message, ok: bool) -> None:
        if isinstance(msg, pb.GateRequest):
            if not ok:
                msg.evidence.metrics.clear()
            reply: Message = gates.decide(gates.initial_state(), msg, Context()).events[0]
        elif isinstance(msg, pb.ExecutionOrder):
            reply = sim.ack_for(msg, ok=ok)
        else:
            return
        delivered.append(reply)
        send(reply)

    for item in program:
        kind = item[0]
        if kind == "grow":  # a passing report past any budget, then every reply delivered
            sim.step += 450
            queue_len = len(sim.outbox)
            gate = {3: 1, 4: 2, 5: 3, 6: 4}.get(sim.state.stage, 0)
            sim.report(sim.step, dict(PASSING[gate]))
            queue.extend(sim.outbox[queue_len:])
            kind = "pump"
        if kind == "pump":
            for _ in range(10):
                if not queue:
                    break
                deliver(queue.pop(0), True)
        elif kind == "cmd":
            send(germinate(sim.slot) if item[1] == "germinate" else command(sim.slot, item[1]))
        elif kind == "foreign":
            send(command("elsewhere", item[1]))
        elif kind == "report":
            good = item[2]
            gate = {3: 1, 4: 2, 5: 3, 6: 4}.get(sim.state.stage, 0)
            metrics = dict(PASSING[gate]) if good else {"alpha": 0.1}
            sim.step += item[1]
            queue_len = len(sim.outbox)
            sim.report(sim.step, metrics)
            queue.extend(sim.outbox[queue_len:])
        elif kind == "deliver" and queue:
            deliver(queue.pop(item[1] % len(queue)), item[2])
        elif kind == "drop" and queue:
            queue.pop(item[1] % len(queue))
        elif kind == "again" and delivered:
            send(delivered[item[1] % len(delivered)])
        elif kind == "verdict":
            send(pb.SafetyVerdict(slot=sim.slot, action=item[1], strikes=item[2]))
    return sim


@SETTINGS
@given(programs)
def test_random_inputs_stay_in_table_and_fold_equals_live(program: list[tuple[Any, ...]]) -> None:
    """Random commands, reports, results, acks and verdicts: table kept, fold == live state."""
    sim = _run(program)
    folded = fold(seed.evolve, seed.initial_state(sim.slot), sim.events)
    assert folded == sim.state
    assert seed.digest(folded) == seed.digest(sim.state)
    assert [e.seq for e in sim.events] == list(range(1, len(sim.events) + 1))  # type: ignore[attr-defined]


@SETTINGS
@given(programs, st.integers(0, 10_000))
def test_snapshot_plus_tail_equals_full_fold(program: list[tuple[Any, ...]], cut: int) -> None:
    """Folding from a serialised snapshot at any event, then the tail, equals the full fold."""
    sim = _run(program)
    cut = cut % (len(sim.events) + 1)
    head = fold(seed.evolve, seed.initial_state(sim.slot), sim.events[:cut])
    snapshot = seed.from_plain(seed.to_plain(head))
    assert fold(seed.evolve, snapshot, sim.events[cut:]) == sim.state


@SETTINGS
@given(programs, st.integers(0, 10_000))
def test_gap_or_duplicate_seq_raises(program: list[tuple[Any, ...]], at: int) -> None:
    """Dropping or repeating one event makes the fold raise SeqGap / SeqDuplicate."""
    sim = _run(program)
    events = sim.events
    if len(events) < 2:
        return
    i = at % (len(events) - 1)
    with pytest.raises(SeqGap):
        fold(seed.evolve, seed.initial_state(sim.slot), events[:i] + events[i + 1 :])
    with pytest.raises(SeqDuplicate):
        fold(seed.evolve, seed.initial_state(sim.slot), events[: i + 1] + events[i:])


@SETTINGS
@given(programs)
def test_command_ids_follow_chains_and_no_reserved_keys(program: list[tuple[Any, ...]]) -> None:
    """Random inputs: command_id is "", the command's own id, or the awaited chain's; no "@" keys."""
    sim = _run(program)
    commands: set[str] = set()
    state = seed.initial_state(sim.slot)
    for message_id, msg, decision in sim.log:
        chain = state.command_id
        for event in decision.events:
            cid = event.command_id  # type: ignore[attr-defined]
            bootstrap = isinstance(event, pb.LifecycleTransition) and event.from_stage == 0
            if bootstrap or not isinstance(msg, pb.SeedCommand | pb.GateResult | pb.ExecutionAck):
                assert cid == ""
            elif isinstance(msg, pb.SeedCommand):
                assert cid == message_id
            else:
                assert cid in ("", chain) and (cid == "" or cid in commands)
            if isinstance(event, pb.LifecycleProgress):
                assert not any(key.startswith("@") for key in event.metrics)
            state = seed.evolve(state, event)
            assert state.command_id == "" or state.awaiting is not None
        if isinstance(msg, pb.SeedCommand):
            commands.add(message_id)
