"""Run a scenario: start a cluster on a bus, drive it in lockstep, check the expectations.

``await run_scenario(spec, bus_url)`` opens the bus (``fakeredis`` / ``memory``: a fresh private
one; ``redis://…``: a real server, whose keys of this run are deleted afterwards), starts every
actor plus one simulated execution rank per ``driver.world_size`` under a unique run id, and for
each step: performs the timeline entries due (then settles), closes the step on every rank, settles
again (every inbox drained: lockstep, reproducible). It stops after ``driver.steps`` steps, or
earlier once the timeline is done, no actor is down and every ``driver.until`` slot has entered its
stage after the last timeline entry.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from actors.eventlog import LogRecord, read_log
from actors.replay import RunState, fold_events
from bus import Bus, is_redis_url, open_bus
from bus.testing import purge_prefix
from contracts import KeyRing, Verifier, streams
from scenarios.cluster import read_events, running_cluster
from scenarios.expect import check, observe, stage_of
from scenarios.faults import Harness, ScenarioFault
from scenarios.model import ScenarioSpec, gate_number
from scenarios.sim import SimRuntime

__all__ = ["ScenarioResult", "open_scenario_bus", "run_scenario"]


@dataclass
class ScenarioResult:
    """The verdict on one scenario run."""

    name: str
    passed: bool
    failures: dict[str, str] = field(default_factory=dict)  # expectation -> what happened
    steps: int = 0
    seconds: float = 0.0
    run: str = ""

    def to_json(self) -> dict[str, Any]:
        """``scenario run --json`` (docs/design.md §7): scenario, passed, failures (+ steps, seconds)."""
        return {
            "scenario": self.name,
            "passed": self.passed,
            "failures": dict(self.failures),
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
        }


def open_scenario_bus(url: str) -> tuple[Bus, bool]:
    """The bus for ``url`` and whether it is a shared server (its keys must be cleaned)."""
    if url in ("fakeredis", "memory"):
        url = f"{url}://"
    shared = is_redis_url(url)
    return open_bus(url), shared


class _Sim(SimRuntime):
    """A simulated rank that counts what its execution actor drained from it."""

    drained = 0

    def drain_outbox(self) -> list[tuple[str, object]]:
        out = super().drain_outbox()
        self.drained += len(out)
        return out


def _sims(spec: ScenarioSpec, frequency: int, blend_steps: int) -> list[_Sim]:
    d = spec.driver
    return [
        _Sim(
            spec.slots,
            rank=rank,
            world_size=d.world_size,
            fail_gates=[gate_number(g) for g in d.fail_gates],
            leak_slots=d.leak_slots,
            report_every=d.report_every,
            barrier_frequency=frequency,
            blend_steps=blend_steps,
            byzantine=rank == d.byzantine_rank,
        )
        for rank in range(d.world_size)
    ]


class _Tail:
    """The run's event log, read incrementally and folded as it grows."""

    def __init__(self, bus: Bus, run: str) -> None:
        self.bus = bus
        self.run = run
        self.events: list[tuple[str, str, Any]] = []
        self.state = RunState()
        self.cursor = ""

    async def refresh(self, ring: KeyRing) -> RunState:
        """Read and fold the entries appended since the last call."""
        verifier = Verifier(ring, replay=True)
        start = f"({self.cursor}" if self.cursor else "-"
        tail: list[tuple[str, str, Any]] = []
        async for record in read_log(self.bus, streams.events(self.run), verifier, start=start):
            self.cursor = record.entry_id
            if isinstance(record, LogRecord):
                tail.append(record.event)
        self.events += tail
        self.state = fold_events(tail, start=self.state)
        return self.state


async def _rejected(bus: Bus, run: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for entry in await bus.range(streams.rejected(run)):
        counts[entry.fields.get("reason", b"?").decode()] += 1
    return counts


def _entered(events: list[tuple[str, str, Any]]) -> Counter[str]:
    """Transitions recorded per slot."""
    return Counter(m.slot for _, kind, m in events if kind == "lifecycle.transition")


async def _drive(spec: ScenarioSpec, h: Harness, tail: _Tail, failures: dict[str, str]) -> int:
    """The lockstep loop; returns the number of steps run."""
    due: dict[int, list[tuple[int, Any]]] = {}
    for i, item in enumerate(spec.timeline):
        due.setdefault(item.at, []).append((i, item))
    last_action = max(due, default=-1)
    sims = [sim for sim in h.sims if isinstance(sim, _Sim)]
    until = spec.driver.until
    marks: Counter[str] = Counter()  # transitions per slot before the last timeline entry
    for step in range(spec.driver.steps):
        if until and step == max(last_action, 0):
            await tail.refresh(h.reading_ring())
            marks = _entered(tail.events)
        await _step(h, sims, step, due.get(step, []), failures)
        if until and step >= last_action and not h.down and await _arrived(until, h, tail, marks):
            return step + 1
    return spec.driver.steps


async def _step(
    h: Harness, sims: list[_Sim], step: int, items: list[tuple[int, Any]], failures: dict[str, str]
) -> None:
    """One step: restarts and timeline items due, then the cluster's step; settled around it
    when anything was sent."""
    acted = bool(items) or any(d.restart_at <= step for d in h.down.values())
    await h.restart_due(step)
    for i, item in items:
        try:
            await h.perform(item)
        except ScenarioFault as exc:
            failures[f"timeline[{i}]"] = f"{item.do} at step {step}: {exc}"
    if acted:
        await h.settle()
    before = sum(sim.drained for sim in sims)
    await h.cluster.step(step)
    if acted or sum(sim.drained for sim in sims) != before:
        await h.settle()  # a step that sent nothing leaves the settled run as it was


async def _arrived(until: Mapping[str, str], h: Harness, tail: _Tail, marks: Counter[str]) -> bool:
    """Every ``until`` slot is in its stage, entered after the last timeline entry."""
    state = await tail.refresh(h.reading_ring())
    entered = _entered(tail.events)
    return all(
        stage_of(state, slot) == stage and entered[slot] > marks[slot]
        for slot, stage in until.items()
    )


@dataclass
class _Progress:
    """What a run produced so far (kept when the cluster itself breaks)."""

    ring: KeyRing
    failures: dict[str, str] = field(default_factory=dict)
    steps: int = 0


async def _run(spec: ScenarioSpec, bus: Bus, run: str, out: _Progress) -> None:
    config = spec.kasmina_config()
    sims = _sims(spec, config.barrier.frequency, config.lifecycle.blend_steps)
    async with (
        running_cluster(
            bus, run=run, slots=spec.slots, runtimes=sims, config=config, ring=out.ring
        ) as cluster,
        anyio.create_task_group() as tg,
    ):
        h = Harness(cluster, list(spec.slots), list(sims), tg, spec.driver.settle_timeout_s)
        try:
            out.steps = await _drive(spec, h, _Tail(bus, run), out.failures)
            await h.restart_due()
            await h.settle()
        except Exception as exc:  # the run itself broke: report it as a failure
            out.failures["run"] = f"{type(exc).__name__}: {exc}"
        finally:
            out.ring = h.reading_ring()
            await h.stop_started()


async def run_scenario(spec: ScenarioSpec, bus_url: str = "fakeredis") -> ScenarioResult:
    """Run ``spec`` on a fresh run of the bus at ``bus_url``; a broken run is a failure, not a raise."""
    started = time.perf_counter()
    bus, shared = open_scenario_bus(bus_url)
    run = f"scn-{spec.name[:40]}-{uuid.uuid4().hex[:8]}"
    out = _Progress(KeyRing.generate())
    try:
        try:
            await _run(spec, bus, run, out)
        except Exception as exc:  # an actor task crashed the cluster
            out.failures.setdefault("run", f"{type(exc).__name__}: {exc}")
        events = await read_events(bus, run, out.ring)
        seen = observe(events, await _rejected(bus, run))
        out.failures.update(check(spec.expect, seen))
    finally:
        if shared:
            with anyio.CancelScope(shield=True):
                await purge_prefix(bus, streams.prefix(run))
        await bus.close()
    return ScenarioResult(
        name=spec.name,
        passed=not out.failures,
        failures=out.failures,
        steps=out.steps,
        seconds=time.perf_counter() - started,
        run=run,
    )
