"""Chaos harness: plans are reproducible, the comparison catches faults, a small chaos run passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.testing import REDIS_SERVER
from leyline import pb
from scenarios.chaos import ChaosPlan, chaos_seed, compare, make_plan, record_of

S = pb.SeedLifecycleStage


def test_plan_is_reproducible_and_round_trips() -> None:
    """The same seed draws the same plan; a plan survives its JSON form; the twin has no faults."""
    plan = make_plan(7, steps=100, kills=3, redis_restarts=1)
    assert plan == make_plan(7, steps=100, kills=3, redis_restarts=1)
    assert plan != make_plan(8, steps=100, kills=3, redis_restarts=1)
    assert ChaosPlan.from_json(plan.to_json()) == plan
    twin = plan.fault_free()
    assert twin.commands == plan.commands and not twin.kills and not twin.redis_restarts
    assert all(1 <= c.step < 100 for c in plan.commands)


def _walk(slot: str, command_id: str, *, twice: bool = False) -> list[tuple[str, str, object, str]]:
    """A bootstrap and one germinate decision (optionally applied twice)."""
    log: list[tuple[str, str, object, str]] = []
    seq = 0

    def add(kind: str, msg: object, cause: str) -> None:
        nonlocal seq
        seq += 1
        msg.seq = seq  # type: ignore[attr-defined]
        log.append((f"1-{seq}", kind, msg, cause))

    add("lifecycle.transition", pb.LifecycleTransition(
        slot=slot, from_stage=S.SEED_STAGE_UNKNOWN, to_stage=S.SEED_STAGE_DORMANT), "r0")  # fmt: skip
    for _ in range(2 if twice else 1):
        add("lifecycle.refused", pb.LifecycleRefused(
            slot=slot, stage=S.SEED_STAGE_DORMANT, request="cull", command_id=command_id),
            command_id)  # fmt: skip
    return log


def test_compare_flags_duplicates_and_missing_outcomes() -> None:
    """A command applied twice, or with no outcome at all, is reported; an equal run is not."""
    reference = record_of(_walk("a", "c1"), [], {0: "c1"})
    assert compare(reference, record_of(_walk("a", "x9"), [], {0: "x9"})) == []
    doubled = compare(reference, record_of(_walk("a", "x9", twice=True), [], {0: "x9"}))
    assert any("lifecycle differs" in p for p in doubled)
    missing = compare(reference, record_of(_walk("a", "x9"), [], {0: "nope"}))
    assert any("no outcome" in p for p in missing)


def test_compare_flags_a_broken_log() -> None:
    """An illegal transition in the log fails the replay and is reported."""
    log = _walk("a", "c1")
    log.append(("1-9", "lifecycle.transition", pb.LifecycleTransition(
        slot="a", seq=3, from_stage=S.SEED_STAGE_DORMANT, to_stage=S.SEED_STAGE_FOSSILIZED), "r"))  # fmt: skip
    problems = compare(record_of(_walk("a", "c1"), [], {0: "c1"}), record_of(log, [], {0: "c1"}))
    assert any("illegal transition" in p for p in problems)
    assert any("replay failed" in p for p in problems)


@pytest.mark.redis
@pytest.mark.timeout(360)  # two runs of 5 processes each: minutes on a loaded 2-core machine
@pytest.mark.skipif(not Path(REDIS_SERVER).exists(), reason="needs redis-server")
async def test_small_chaos_run_matches_the_fault_free_run(tmp_path: Path) -> None:
    """One SIGKILL of an actor process and one Redis restart: same lifecycle, replay verifies."""
    result = await chaos_seed(
        3, workdir=tmp_path, steps=60, slots=4, seed_processes=2, commands=12,
        kills=1, redis_restarts=1,
    )  # fmt: skip
    summary = result.summary()
    assert result.problems == [], summary
    assert summary["kills"] == 1 and summary["redis_restarts"] == 1
    assert summary["digest_mismatches"] == 0 and summary["pace_timeouts"] == 0
    assert sum(summary["command_outcomes"].values()) == summary["commands"]
    assert "missing" not in summary["command_outcomes"]


@pytest.mark.redis
@pytest.mark.timeout(600)  # two runs of 6 processes each; 27-71 s at load averages of 4-14
@pytest.mark.skipif(not Path(REDIS_SERVER).exists(), reason="needs redis-server")
async def test_failover_mid_run_matches_the_fault_free_run(tmp_path: Path) -> None:
    """The primary of a Sentinel-managed pair is SIGKILLed mid-run and its replica promoted
    (writes wait for the killed server to return as a replica, ``wait=1``): the ``kasmina run``
    processes and the trainer carry on without a restart; every command has exactly one
    outcome, no transition is lost or doubled, the log re-folds and verifies."""
    result = await chaos_seed(
        5, workdir=tmp_path, steps=40, slots=4, seed_processes=2, commands=10,
        kills=0, redis_restarts=0, failovers=1, aof=False, replicas=1,
    )  # fmt: skip
    summary = result.summary()
    assert result.problems == [], summary
    assert summary["failovers"] == 1 and len(summary["kill_to_commit_s"]) == 1
    assert summary["kills"] == 0  # no process was restarted: each reconnected on its own
    assert summary["kill_to_commit_s"][0] >= summary["promotion_s"][0] > 0
    assert summary["digest_mismatches"] == 0 and summary["pace_timeouts"] == 0
    assert sum(summary["command_outcomes"].values()) == summary["commands"]
    assert "missing" not in summary["command_outcomes"]


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not Path(REDIS_SERVER).exists(), reason="needs redis-server")
async def test_failovers_kills_and_restarts_together_match_the_fault_free_run(
    tmp_path: Path,
) -> None:
    """Two failovers among SIGKILLs of actor processes and restarts of the primary: the run still
    ends exactly like its fault-free twin."""
    result = await chaos_seed(
        11, workdir=tmp_path, steps=150, kills=3, redis_restarts=1, failovers=2, commands=30
    )
    summary = result.summary()
    assert result.problems == [], summary
    assert summary["failovers"] == 2 and len(summary["kill_to_commit_s"]) == 2
    assert summary["digest_mismatches"] == 0 and summary["pace_timeouts"] == 0
