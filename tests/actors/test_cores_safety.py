"""SafetyActor core: breakers, emergency stop, reject storms."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import safety
from actors.core import Context, Decision, Message, fold
from actors.safety import SafetyState
from contracts.config import KasminaConfig
from leyline import pb

B = pb.BreakerState
V = pb.VerdictAction
K = pb.SafetySignalKind
CFG = KasminaConfig()


class Driver:
    """Feeds a SafetyActor core and keeps its events."""

    def __init__(self, config: KasminaConfig = CFG) -> None:
        self.state: SafetyState = safety.initial_state()
        self.events: list[Message] = []
        self.config = config

    def send(self, msg: Message) -> Decision:
        d = safety.decide(self.state, msg, Context(message_id="m", config=self.config))
        self.state = fold(safety.evolve, self.state, d.events)
        self.events.extend(d.events)
        return d

    def signal(
        self,
        slot: str,
        step: int,
        kind: pb.SafetySignalKind.ValueType = K.SAFETY_SIGNAL_NON_FINITE_GRAD,
    ) -> Decision:
        return self.send(pb.SafetySignal(slot=slot, kind=kind, step=step))

    def tick(self, step: int, slots: tuple[str, ...] = ()) -> Decision:
        return self.send(pb.StepReport(step=step, slots=[pb.SlotReport(slot=s) for s in slots]))


def _actions(d: Decision) -> list[int]:
    return [e.action for e in d.events if isinstance(e, pb.SafetyVerdict)]


def test_every_signal_kind_is_a_strike() -> None:
    """Isolation violations, non-finite loss/grad/output and spikes each yield a STRIKE verdict."""
    drv = Driver()
    drv.tick(0, tuple(f"s{i}" for i in range(5)))  # the run's slots, as step reports name them
    kinds = [
        K.SAFETY_SIGNAL_ISOLATION_VIOLATION,
        K.SAFETY_SIGNAL_NON_FINITE_LOSS,
        K.SAFETY_SIGNAL_NON_FINITE_GRAD,
        K.SAFETY_SIGNAL_LOSS_SPIKE,
        K.SAFETY_SIGNAL_NON_FINITE_OUTPUT,
    ]
    for i, kind in enumerate(kinds):
        d = drv.signal(f"s{i}", 10, kind)
        assert V.VERDICT_STRIKE in _actions(d)
        strike = next(
            o.message
            for o in d.outgoing
            if isinstance(o.message, pb.SafetyVerdict) and o.message.action == V.VERDICT_STRIKE
        )
        assert isinstance(strike, pb.SafetyVerdict)
        assert strike.strikes == 1 and pb.SafetySignalKind.Name(kind) in strike.reason


def test_three_strikes_in_window_open_the_breaker() -> None:
    """strikes_to_open strikes inside the window: CULL verdict, breaker OPEN."""
    drv = Driver()
    drv.tick(0, ("a", "b", "c"))  # one open breaker of three: no emergency stop
    assert _actions(drv.signal("a", 1))[-1] == V.VERDICT_STRIKE
    assert _actions(drv.signal("a", 2)) == [V.VERDICT_STRIKE]
    d = drv.signal("a", 3)
    assert _actions(d) == [V.VERDICT_STRIKE, V.VERDICT_CULL]
    cull = d.outgoing[-1]
    assert cull.to == "seed" and cull.key == "a"
    assert drv.state.breakers["a"].state == B.BREAKER_OPEN


def test_strikes_outside_window_do_not_open() -> None:
    """Strikes spread wider than strike_window_steps never reach the threshold."""
    drv = Driver()
    drv.tick(0, ("a",))
    w = CFG.safety.strike_window_steps
    for i in range(6):
        d = drv.signal("a", 1 + i * w)
        assert V.VERDICT_CULL not in _actions(d)
    assert drv.state.breakers["a"].state == B.BREAKER_CLOSED


def test_cooldown_half_open_clean_window_closes() -> None:
    """OPEN -> HALF_OPEN after cooldown_steps -> CLOSED after a clean window."""
    drv = Driver()
    drv.tick(0, ("a",))
    for s in (1, 2, 3):
        drv.signal("a", s)
    cool, win = CFG.safety.cooldown_steps, CFG.safety.strike_window_steps
    assert _actions(drv.tick(3 + cool - 1)) == []
    assert _actions(drv.tick(3 + cool)) == [V.VERDICT_HALF_OPEN]
    assert drv.state.breakers["a"].state == B.BREAKER_HALF_OPEN
    assert _actions(drv.tick(3 + cool + win)) == [V.VERDICT_CLOSE]
    assert drv.state.breakers["a"].state == B.BREAKER_CLOSED
    assert drv.state.breakers["a"].strike_steps == ()


def test_strike_in_half_open_reopens() -> None:
    """A single strike while HALF_OPEN reopens the breaker (CULL)."""
    drv = Driver()
    drv.tick(0, ("a",))
    for s in (1, 2, 3):
        drv.signal("a", s)
    drv.tick(3 + CFG.safety.cooldown_steps)
    d = drv.signal("a", 4 + CFG.safety.cooldown_steps)
    assert _actions(d) == [V.VERDICT_STRIKE, V.VERDICT_CULL]
    assert drv.state.breakers["a"].state == B.BREAKER_OPEN


def test_emergency_stop_when_enough_breakers_open() -> None:
    """Open breakers >= max(min_open, fraction * known) -> EMERGENCY_STOP + CheckpointRequest, once."""
    drv = Driver()
    drv.tick(1, ("a", "b", "c", "d"))
    for s in (1, 2, 3):
        drv.signal("a", s)
    assert not drv.state.emergency
    d = None
    for s in (1, 2, 3):
        d = drv.signal("b", s)
    assert d is not None
    assert V.VERDICT_EMERGENCY_STOP in _actions(d)
    stop = next(
        o for o in d.outgoing if o.message.DESCRIPTOR.name == "SafetyVerdict" and o.key is None
    )
    assert stop.to == "seed"
    ckpt = next(e for e in d.events if isinstance(e, pb.CheckpointRequest))
    assert list(ckpt.slots) == ["a", "b"] and "emergency stop" in ckpt.reason
    assert drv.state.emergency
    for s in (1, 2, 3):
        assert V.VERDICT_EMERGENCY_STOP not in _actions(drv.signal("c", s))


def test_emergency_threshold_scales_with_known_slots() -> None:
    """With 10 known slots and fraction 0.5, two open breakers do not stop the run."""
    drv = Driver()
    drv.tick(1, tuple(f"s{i}" for i in range(10)))
    for slot in ("s0", "s1"):
        for s in (1, 2, 3):
            drv.signal(slot, s)
    assert not drv.state.emergency


def test_fold_of_events_equals_live_state_and_roundtrips() -> None:
    """Replaying the verdict events rebuilds the state; plain form round-trips; digest stable."""
    drv = Driver()
    drv.tick(1, ("a", "b"))
    for s in (1, 2, 3, 250, 400):
        drv.signal("a", s)
    drv.signal("", 5, K.SAFETY_SIGNAL_REJECT_STORM)
    assert fold(safety.evolve, safety.initial_state(), drv.events) == drv.state
    from actors.safety.core import from_plain, to_plain

    assert from_plain(to_plain(drv.state)) == drv.state
    assert safety.digest(from_plain(to_plain(drv.state))) == safety.digest(drv.state)
    assert drv.state.run_strikes == 1


def test_reject_storm_signal_once_per_window() -> None:
    """More than reject_storm_count rejects inside the window raise one REJECT_STORM signal."""
    cfg = KasminaConfig.load(
        env={}, overrides={"safety.reject_storm_count": 3, "safety.reject_storm_quiet_s": 0.0}
    ).safety
    tracker = safety.RejectStorm()
    signals = []
    for i in range(8):
        tracker, sig = safety.note_reject(tracker, 100.0 + i * 0.1, cfg)
        signals.append(sig)
    fired = [s for s in signals if s is not None]
    assert len(fired) == 2 and fired[0].kind == K.SAFETY_SIGNAL_REJECT_STORM
    assert signals.index(fired[0]) == 3
    tracker = safety.RejectStorm()
    for i in range(20):  # one every 5 s: never more than 2 inside a 10 s window
        tracker, sig = safety.note_reject(tracker, i * 5.0, cfg)
        assert sig is None


def test_a_long_storm_raises_one_signal_per_quiet_period() -> None:
    """A flood of rejections raises one signal, then none for reject_storm_quiet_s: the event
    log gains one verdict per quiet period, not one per hundred rejections."""
    cfg = KasminaConfig.load(
        env={}, overrides={"safety.reject_storm_count": 100, "safety.reject_storm_quiet_s": 60.0}
    ).safety
    tracker = safety.RejectStorm()
    fired = []
    for i in range(100_000):  # 100 000 rejections in 100 s
        tracker, sig = safety.note_reject(tracker, i * 0.001, cfg)
        if sig is not None:
            fired.append(i * 0.001)
    assert len(fired) == 2 and fired[1] - fired[0] >= 60.0


def test_rejections_noted_together_count_as_many() -> None:
    """``count`` rejections noted at once weigh as much as that many single ones: a run of 3
    stays quiet at a limit of 3, one more raises the signal with the total; a run of 10 000 is
    one step of the tracker."""
    cfg = KasminaConfig.load(
        env={}, overrides={"safety.reject_storm_count": 3, "safety.reject_storm_quiet_s": 60.0}
    ).safety
    tracker, sig = safety.note_reject(safety.RejectStorm(), 100.0, cfg, count=3)
    assert sig is None
    tracker, sig = safety.note_reject(tracker, 100.5, cfg)
    assert sig is not None and sig.value == 4.0 and tracker.storms == 1
    tracker, sig = safety.note_reject(safety.RejectStorm(), 0.0, cfg, count=10_000)
    assert sig is not None and sig.value == 10_000.0 and tracker.times == ()
    assert safety.note_reject(tracker, 1.0, cfg, count=10_000) == (tracker, None)  # quiet


_signals = st.lists(
    st.tuples(
        st.sampled_from(["", "a", "b", "c"]),
        st.integers(0, 40),
        st.sampled_from(list(K.values())),
        st.booleans(),
    ),
    max_size=60,
)


@settings(max_examples=100, deadline=None)
@given(_signals)
def test_random_signals_fold_to_live_state(items: list[tuple[str, int, int, bool]]) -> None:
    """Random signals and ticks: the fold of the verdicts equals the live state, breakers legal."""
    drv = Driver(KasminaConfig.load(env={}, overrides={"safety.cooldown_steps": 30}))
    step = 0
    for slot, delta, kind, tick in items:
        step += delta
        if tick:
            drv.tick(step, ("a", "b", "c"))
        else:
            drv.signal(slot, step, pb.SafetySignalKind.ValueType(kind))
    assert fold(safety.evolve, safety.initial_state(), drv.events) == drv.state
    for br in drv.state.breakers.values():
        assert len(br.strike_steps) <= 100
    if drv.state.emergency:
        emergency = [
            e for e in drv.events if isinstance(e, pb.CheckpointRequest) and not e.rollback
        ]
        assert len(emergency) == 1


def test_one_slot_run_stops_when_its_only_breaker_opens() -> None:
    """With one known slot, its breaker opening is all the open breakers there can be: the run
    stops (emergency_stop_min_open is capped at the number of known slots)."""
    drv = Driver()
    drv.tick(0, ("only",))
    d = None
    for s in (1, 2, 3):
        d = drv.signal("only", s)
    assert d is not None and V.VERDICT_EMERGENCY_STOP in _actions(d)
    assert drv.state.emergency


def test_a_breaker_opened_by_a_leak_asks_for_a_rollback() -> None:
    """Isolation strikes that open a breaker also send execution a rollback request for the slot;
    other signal kinds do not."""
    drv = Driver()
    drv.tick(0, ("a", "b", "c"))
    iso = K.SAFETY_SIGNAL_ISOLATION_VIOLATION
    d = None
    for s in (1, 2, 3):
        d = drv.signal("a", s, iso)
    assert d is not None
    (req,) = [o for o in d.outgoing if isinstance(o.message, pb.CheckpointRequest)]
    assert req.to == "execution" and req.message.rollback and list(req.message.slots) == ["a"]
    for s in (1, 2, 3):
        d = drv.signal("b", s)
    assert not any(
        isinstance(o.message, pb.CheckpointRequest) and o.message.rollback for o in d.outgoing
    )


@pytest.mark.parametrize("kind", [K.SAFETY_SIGNAL_OUT_OF_MEMORY, K.SAFETY_SIGNAL_SEED_FAILED])
def test_a_seed_that_left_the_forward_opens_the_breaker_at_once(
    kind: pb.SafetySignalKind.ValueType,
) -> None:
    """One out-of-memory or seed-failed signal strikes and culls (breaker open); a non-finite
    gradient does not."""
    drv = Driver()
    drv.tick(4, tuple("abcdefgh"))
    d = drv.signal("a", 5, kind)
    assert _actions(d) == [V.VERDICT_STRIKE, V.VERDICT_CULL]
    assert drv.state.breakers["a"].state == B.BREAKER_OPEN
    d = drv.signal("b", 5)
    assert V.VERDICT_CULL not in _actions(d)


def test_a_signal_for_a_slot_no_report_named_is_refused() -> None:
    """A trainer key cannot make up slots: a signal naming a slot no step report has named is
    refused (unknown_slot) with no verdict and no breaker, so made-up slots never open breakers
    towards an emergency stop; a run-wide signal (no slot) still strikes."""
    drv = Driver()
    drv.tick(0, ("a", "b"))
    for ghost in ("ghost.a", "ghost.b", "ghost.c"):
        d = drv.signal(ghost, 1, K.SAFETY_SIGNAL_OUT_OF_MEMORY)
        assert d.rejected is not None and d.rejected.value == "unknown_slot" and not d.events
    assert set(drv.state.breakers) == {"a", "b"} and not drv.state.emergency
    assert _actions(drv.signal("", 2)) == [V.VERDICT_STRIKE]


def test_rejections_taken_back_no_longer_count_towards_a_storm() -> None:
    """``unnote_reject`` takes rejections back from the newest notes: 2 + 3 noted, 4 taken back,
    leave 1, so 9 more stay quiet at a limit of 10 and one more raises the signal."""
    cfg = KasminaConfig.load(env={}, overrides={"safety.reject_storm_count": 10}).safety
    tracker, _ = safety.note_reject(safety.RejectStorm(), 1.0, cfg, count=2)
    tracker, _ = safety.note_reject(tracker, 2.0, cfg, count=3)
    tracker = safety.unnote_reject(tracker, 4)
    assert tracker.times == ((1.0, 1),)
    tracker, quiet = safety.note_reject(tracker, 3.0, cfg, count=9)
    assert quiet is None
    assert safety.note_reject(tracker, 4.0, cfg)[1] is not None
    assert safety.unnote_reject(tracker, 99).times == ()
