"""Replay: the run's event stream re-folds into every actor's live state."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cores_harness import PASSING, SeedSim, command, germinate
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import barrier, safety
from actors.core import Context, Message, ReplayError, SeqGap, fold, kind_of
from actors.replay import RunState, fold_events, timeline, verify_digests
from actors.telemetry import TelemetryAggregator
from contracts.config import KasminaConfig, TelemetryConfig
from leyline import pb

G = pb.SeedLifecycleGate


def _ids() -> Iterator[str]:
    n = 0
    while True:
        n += 1
        yield f"{1700000000000 + n}-0"


def _run() -> tuple[list[tuple[str, str, Message]], dict[str, object]]:
    """A small run: two slots (one fossilizes, one fails G1), safety, barrier and telemetry."""
    ids = _ids()
    stream: list[tuple[str, str, Message]] = []

    def record(events: tuple[Message, ...] | list[Message]) -> None:
        stream.extend((next(ids), kind_of(e), e) for e in events)

    good, bad = SeedSim(slot="a"), SeedSim(slot="b")
    for sim in (good, bad):
        sim.report(1)
        sim.send(germinate(sim.slot))
    bad_g1 = dict(PASSING[G.SEED_GATE_G1_GRADIENT_HEALTH], grad_finite=0.0)
    for i in range(4):
        good.advance(400)
        if i == 0:
            bad.report(bad.step + 400, bad_g1)
    bad.send(command("b", "pause"))
    record(good.events)
    # the gate results each slot received are events of the gate actor
    record([*good.results, *bad.results])
    record(bad.events)

    sstate = safety.initial_state()
    for step in (5, 6, 7):
        d = safety.decide(
            sstate,
            pb.SafetySignal(slot="b", kind=pb.SAFETY_SIGNAL_ISOLATION_VIOLATION, step=step),
            Context(),
        )
        sstate = fold(safety.evolve, sstate, d.events)
        record(d.events)
    cfg = KasminaConfig.load(env={}, overrides={"barrier.world_size": 2})
    bstate = barrier.initial_state()
    for step in (10, 20):
        for rank in (0, 1):
            vote = pb.BarrierVote(barrier_step=step, rank=rank, digest=bytes([rank]))
            d = barrier.decide(bstate, vote, Context(config=cfg))
            bstate = fold(barrier.evolve, bstate, d.events)
            record(d.events)
    agg = TelemetryAggregator(TelemetryConfig(region_ratio=32, global_ratio=2))
    for i in range(70):
        record(agg.ingest(pb.TelemetryRaw(region="r", step=i, metrics={"loss": 1.0}), 0.0))
    record([pb.GateRequest(slot="a"), pb.ExecutionOrder(slot="a")])  # not folded
    return stream, {"a": good.state, "b": bad.state, "safety": sstate, "barrier": bstate}


STREAM, LIVE = _run()


def test_full_fold_equals_live_states() -> None:
    """Folding the run's stream reproduces every actor's live state."""
    state = fold_events(STREAM)
    assert state.seeds["a"] == LIVE["a"] and state.seeds["b"] == LIVE["b"]
    assert state.safety == LIVE["safety"] and state.barrier == LIVE["barrier"]
    assert state.telemetry.region_summaries == 2 and state.telemetry.global_summaries == 1
    assert state.gates.evaluated == len(state.gate_results) == 7
    assert state.unfolded == 2 and state.events == len(STREAM)
    assert state.last_entry_id == STREAM[-1][0]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, len(STREAM)))
def test_snapshot_plus_tail_equals_full_fold(cut: int) -> None:
    """A serialised snapshot at any entry plus the tail equals the full fold, digests included."""
    full = fold_events(STREAM)
    snapshot = RunState.from_bytes(fold_events(STREAM[:cut]).to_bytes())
    resumed = fold_events(STREAM[cut:], start=snapshot)
    assert resumed == full
    assert resumed.digests() == full.digests()


def test_snapshot_format_checked() -> None:
    """A snapshot of another format or version is refused with ReplayError."""
    with pytest.raises(ReplayError):
        RunState.from_bytes(b'{"format": "other"}')
    with pytest.raises(ReplayError):
        RunState.from_bytes(b'{"format": "kasmina-runstate", "version": 99}')


def test_gap_in_stream_raises_with_entry_id() -> None:
    """A missing lifecycle event makes replay raise SeqGap naming the entry."""
    i = next(n for n, (_, kind, _) in enumerate(STREAM) if kind == "lifecycle.progress")
    with pytest.raises(SeqGap, match=STREAM[i + 1][0]):
        fold_events(STREAM[:i] + STREAM[i + 1 :])


def test_verify_digests_detects_mismatch() -> None:
    """Recorded state digests that match the re-fold verify; a wrong one is reported."""
    half = len(STREAM) // 2
    state = fold_events(STREAM[:half])
    good = pb.StateDigest(actor="seed", key="a", digest=state.digests()[("seed", "a")])
    bad = pb.StateDigest(actor="safety", key="", digest=b"\x00" * 32)
    entries = [
        *STREAM[:half],
        ("d-1", "state.digest", good),
        ("d-2", "state.digest", bad),
        *STREAM[half:],
    ]
    mismatches = verify_digests(entries)
    assert [m["entry_id"] for m in mismatches] == ["d-2"]


def test_timeline_fields() -> None:
    """Timeline rows carry entry_id/kind/slot/step, from/to/cause and failing gate checks."""
    rows = list(timeline(STREAM, stream="kasmina:{r}:events"))
    assert len(rows) == len(STREAM)
    assert all({"entry_id", "stream", "kind", "slot", "step"} <= set(r) for r in rows)
    fossil = next(r for r in rows if r.get("to") == "FOSSILIZED")
    assert fossil["from"] == "PROBATIONARY" and fossil["gate"] == "G4_SYSTEM_IMPACT"
    failed = next(r for r in rows if r["kind"] == "gate.result" and not r["passed"])
    assert failed["gate"] == "G1_GRADIENT_HEALTH" and failed["slot"] == "b"
    assert all("passed" in c for c in failed["checks"])
    assert [c for c in failed["checks"] if not c["passed"]] == [
        {
            "name": "grad_finite",
            "passed": False,
            "value": 0.0,
            "threshold": 1.0,
            "comparator": "==",
            "missing": False,
            "detail": "1 if no seed gradient was non-finite; n unknown",
        }
    ]
    cull = next(r for r in rows if r.get("to") == "CULLED")
    assert "grad_finite=0" in cull["cause"]


def test_timeline_lifecycle_rows_carry_command_id() -> None:
    """Lifecycle rows carry command_id: "" for the bootstrap, the germinate's id for G0's result."""
    rows = [r for r in timeline(STREAM) if r["kind"].startswith("lifecycle.")]
    assert rows and all("command_id" in r for r in rows)
    boot = next(r for r in rows if r.get("to") == "DORMANT")
    germinated = next(r for r in rows if r.get("to") == "GERMINATED")
    assert boot["command_id"] == "" and germinated["command_id"]
    assert any(r.get("awaiting") == "g0_evidence" for r in rows)
