"""The chaos harness: real redis-server (AOF), ``kasmina run`` processes, a trainer process.

``run_plan`` executes one plan on a run id of a throwaway server: it starts the actor processes
and the trainer, fires the plan's kills (SIGKILL, restart after a pause), Redis restarts and
failovers at the steps they are anchored to, optionally lets a :class:`Hostile` client flood the
inboxes for a window of steps, and returns what the run left behind. ``chaos_seed`` runs a plan
and its fault-free twin and compares them.

A plan with failovers runs on a Sentinel-managed primary with two replicas, every process
connected through ``redis+sentinel://…?wait=1``: a failover SIGKILLs the primary, the sentinels
promote a replica, and the old primary is started again (the sentinels make it a replica).
The faults themselves are in :mod:`scenarios.chaos.faults`; reading a run back from Redis is in
:mod:`scenarios.chaos.readout` (``read_log`` and the others are re-exported here).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import anyio
from anyio.streams.text import TextReceiveStream

from bus import Bus, BusUnavailable, open_bus
from bus.servers import redis_sentinel
from bus.testing import redis_server
from contracts import KeyRing, streams
from leyline import pb
from scenarios.chaos.check import RunRecord, compare, record_of
from scenarios.chaos.faults import Faults, Servers, bus_url
from scenarios.chaos.hostile import Hostile
from scenarios.chaos.plan import ChaosPlan, make_plan
from scenarios.chaos.procs import ActorProcess, config_toml
from scenarios.chaos.readout import commit_gaps, read_log, read_rejections, stream_table
from scenarios.pacing import wait_drained

ATTACK_ON, ATTACK_OFF, END = -1, -2, -3  # marks besides steps

__all__ = [
    "ChaosResult",
    "RunOutput",
    "bus_url",
    "chaos_seed",
    "commit_gaps",
    "read_log",
    "read_rejections",
    "run_plan",
]


@dataclass
class RunOutput:
    """What one executed plan left behind, and what happened to it."""

    run: str
    record: RunRecord
    kills: int = 0
    redis_restarts: int = 0
    redeliveries: int = 0
    command_retries: int = 0  # the trainer's tries that Redis refused (each resent at most once)
    dead_letters: int = 0
    rejects: dict[str, int] = field(default_factory=dict)
    reject_examples: dict[str, str] = field(default_factory=dict)  # reason -> "actor: kind detail"
    pace_timeouts: list[int] = field(default_factory=list)
    step_durations: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    peak_rss_kib: dict[str, int] = field(default_factory=dict)
    streams: dict[str, dict[str, int]] = field(default_factory=dict)
    marks: dict[int, tuple[float, int]] = field(default_factory=dict)  # mark -> (time, events)
    hostile: dict[str, Any] = field(default_factory=dict)
    exit_codes: list[int | None] = field(default_factory=list)
    failovers: int = 0
    promotion_s: list[float] = field(default_factory=list)  # SIGKILL -> sentinels name a new one
    kill_to_commit_s: list[float] = field(default_factory=list)  # SIGKILL -> next event committed


@dataclass
class ChaosResult:
    """A chaos run compared with its fault-free twin."""

    seed: int
    commands: int
    reference: RunOutput
    chaos: RunOutput
    problems: list[str]

    @property
    def passed(self) -> bool:
        return not self.problems

    def summary(self) -> dict[str, Any]:
        """The numbers, JSON-ready."""
        c = self.chaos
        outcomes = Counter(o.split(" ")[0] for o in c.record.outcomes.values())
        return {
            "seed": self.seed,
            "passed": self.passed,
            "commands": self.commands,
            "command_outcomes": dict(outcomes),
            "transitions": c.record.transitions,
            "events": c.record.events,
            "kills": c.kills,
            "redis_restarts": c.redis_restarts,
            "failovers": c.failovers,
            "promotion_s": [round(x, 2) for x in c.promotion_s],
            "kill_to_commit_s": [round(x, 2) for x in c.kill_to_commit_s],
            "redeliveries": c.redeliveries,
            "command_retries": c.command_retries,
            "dead_letters": c.dead_letters,
            "rejects": c.rejects,
            "pace_timeouts": len(c.pace_timeouts),
            "final": c.record.final,
            "digest_mismatches": len(c.record.digest_mismatches),
            "elapsed_s": round(c.elapsed_s, 1),
            "reference_elapsed_s": round(self.reference.elapsed_s, 1),
            "problems": self.problems,
        }


def _write_inputs(plan: ChaosPlan, workdir: Path, ring: KeyRing) -> tuple[Path, Path]:
    """The keys, config and plan files the processes of the run read; (keys, config)."""
    keys, config = workdir / "keys.json", workdir / "config.toml"
    ring.save(keys)
    config.write_text(config_toml(plan.config))
    (workdir / "plan.json").write_text(plan.to_json())
    return keys, config


class _Drive:
    """One plan's run in progress: the trainer's step lines fire the faults and the attack."""

    def __init__(
        self,
        bus: Bus,
        run: str,
        procs: list[ActorProcess],
        faults: Faults,
        attacker: Hostile,
        hostile_steps: tuple[int, int] | None,
    ):
        self.bus, self.run, self.procs, self.faults = bus, run, procs, faults
        self.attacker, self.hostile_steps = attacker, hostile_steps
        self.stop_hostile = anyio.Event()
        self.out = RunOutput(run=run, record=RunRecord())

    async def mark(self, step: int) -> None:
        with contextlib.suppress(BusUnavailable):
            length = (await self.bus.info(streams.events(self.run))).length
            self.out.marks[step] = (time.monotonic(), length)

    async def attack(self) -> None:
        await self.mark(ATTACK_ON)
        await self.attacker.run(self.stop_hostile)
        await self.mark(ATTACK_OFF)

    async def sample(self) -> None:
        while True:
            for proc in self.procs:
                proc.sample_rss()
            await anyio.sleep(0.5)

    async def on_step(self, done: int, tg: Any) -> None:
        """The trainer finished step ``done``: fire what is anchored to the next one."""
        if done == 0:
            await self.mark(0)
        window = self.hostile_steps
        if window is not None and done + 1 == window[0]:
            await self.attacker.capture()
            tg.start_soon(self.attack)
        elif window is not None and done + 1 == window[1]:
            self.stop_hostile.set()
        self.faults.due(done + 1, tg)

    async def follow(self, argv: list[str], trainer_log: BinaryIO, tg: Any) -> int | None:
        """Run the trainer to its end, reading its ``step N`` lines; its exit code."""
        async with await anyio.open_process(argv, stderr=trainer_log) as trainer:
            assert trainer.stdout is not None
            self.faults.due(0, tg)
            buffer = ""
            async for chunk in TextReceiveStream(trainer.stdout):
                buffer += chunk
                *lines, buffer = buffer.split("\n")
                for line in lines:
                    await self.on_step(int(line.split()[1]), tg)
            await trainer.wait()
        return trainer.returncode

    async def drive(self, argv: list[str], workdir: Path) -> None:
        """Run the trainer with the faults, then wait for the actors to drain the run."""
        started = time.monotonic()
        trainer_log = (workdir / "trainer.log").open("wb")
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.sample)
                returncode = await self.follow(argv, trainer_log, tg)
                trainer_log.close()
                self.out.elapsed_s = time.monotonic() - started
                self.stop_hostile.set()
                if returncode != 0:
                    tg.cancel_scope.cancel()
                    for proc in self.procs:
                        proc.stop()
                    raise RuntimeError(
                        f"trainer failed: {(workdir / 'trainer.log').read_text()[-3000:]}"
                    )
                await self.mark(END)
                await wait_drained(self.bus, self.run, timeout_s=90.0)  # may be retaking leases
                tg.cancel_scope.cancel()
        except BaseException:
            with anyio.CancelScope(shield=True):  # never leave actor processes or connections
                for proc in self.procs:
                    proc.stop()
                await self.bus.close()
            raise
        finally:
            trainer_log.close()  # closed on every path (a cancelled or timed-out run included)

    async def read_back(self, ring: KeyRing, summary: dict[str, Any]) -> RunOutput:
        """Fill the output from the run's streams and the trainer's summary; stop the actors."""
        bus, run, out, faults = self.bus, self.run, self.out, self.faults
        ids = {int(k): v for k, v in summary["command_ids"].items()}
        rejections = await read_rejections(bus, run, ring)
        out.record = record_of(await read_log(bus, run, ring), rejections, ids)
        _count_rejections(out, rejections)
        out.streams = await stream_table(bus, run)
        out.dead_letters = out.streams.get("dead", {}).get("length", 0)
        out.kills, out.redis_restarts, out.redeliveries = (
            faults.out_kills, faults.out_restarts, faults.redeliveries,
        )  # fmt: skip
        out.failovers = len(faults.promotion_s)
        out.promotion_s = faults.promotion_s
        out.kill_to_commit_s = await commit_gaps(bus, run, faults.killed_ms)
        out.pace_timeouts = summary["pace_timeouts"]
        out.command_retries = summary.get("command_retries", 0)
        out.step_durations = summary["step_durations"]
        out.peak_rss_kib = {
            f"proc{p.index}:{'+'.join(p.spec.actors)}": p.peak_rss_kib for p in self.procs
        }
        out.exit_codes = [p.stop() for p in self.procs]
        if self.hostile_steps is not None:
            out.hostile = {"sent": dict(self.attacker.sent), "seconds": self.attacker.seconds}
        await bus.close()
        return out


def _count_rejections(out: RunOutput, rejections: list[pb.Rejection]) -> None:
    counts: Counter[str] = Counter()
    for r in rejections:  # a flood's record stands for `count` entries (0 means 1)
        counts[r.reason_code] += max(1, r.count)
    out.rejects = dict(counts)
    for r in rejections:
        out.reject_examples.setdefault(r.reason_code, f"{r.actor}: {r.kind} {r.detail[:80]}")


async def run_plan(
    plan: ChaosPlan,
    server: Servers,
    workdir: Path,
    run: str,
    ring: KeyRing,
    *,
    hostile_steps: tuple[int, int] | None = None,
    hostile_rate: float = 5000.0,
    hostile_seconds: float = 15.0,
) -> RunOutput:
    """Execute ``plan`` on ``run`` (see module docstring)."""
    await anyio.Path(workdir).mkdir(parents=True, exist_ok=True)
    keys, config = _write_inputs(plan, workdir, ring)
    url = bus_url(server)
    bus = open_bus(url)
    procs = [
        ActorProcess(spec, url, run, keys, config, workdir, i)
        for i, spec in enumerate(plan.processes)
    ]
    for proc in procs:
        proc.start()
    faults = Faults(plan, procs, server, bus, run)
    attacker = Hostile(
        bus, run, plan.slots, rate_per_s=hostile_rate, max_seconds=hostile_seconds, seed=plan.seed
    )
    summary_path = workdir / "trainer.json"
    argv = [
        sys.executable, "-m", "scenarios.chaos.trainer", "--redis", url, "--run", run,
        "--keys", str(keys), "--plan", str(workdir / "plan.json"), "--out", str(summary_path),
    ]  # fmt: skip
    drive = _Drive(bus, run, procs, faults, attacker, hostile_steps)
    await drive.drive(argv, workdir)
    return await drive.read_back(ring, json.loads(summary_path.read_text()))


def phase_rates(out: RunOutput) -> dict[str, float]:
    """Legitimate throughput (event-log entries per second) before, during and after the attack."""

    def rate(a: int, b: int) -> float:
        (t0, e0), (t1, e1) = out.marks[a], out.marks[b]
        return (e1 - e0) / max(1e-9, t1 - t0)

    before, during = rate(0, ATTACK_ON), rate(ATTACK_ON, ATTACK_OFF)
    return {
        "events_per_s_without": before,
        "events_per_s_with": during,
        "ratio": during / before if before else 0.0,
        "events_per_s_after": rate(ATTACK_OFF, END),
        "attack_s": out.marks[ATTACK_OFF][0] - out.marks[ATTACK_ON][0],
        "step_p50_ms": 1000 * statistics.median(out.step_durations),
        "step_max_ms": 1000 * max(out.step_durations),
    }


async def chaos_seed(
    seed: int,
    *,
    workdir: Path | None = None,
    aof_fsync: str = "always",
    aof: bool = True,
    replicas: int = 2,
    **plan_kw: Any,
) -> ChaosResult:
    """Run the plan of ``seed`` fault-free, then with its faults; compare. A plan with failovers
    runs on a Sentinel-managed primary with ``replicas`` replicas (with one, writes wait after a
    failover until the killed server is back as a replica)."""
    plan = make_plan(seed, **plan_kw)
    ring = KeyRing.generate()
    base = workdir or Path(tempfile.mkdtemp(prefix="kasmina-chaos-"))
    servers: contextlib.AbstractContextManager[Servers] = (
        redis_sentinel(replicas=replicas, aof=aof)
        if plan.failovers
        else redis_server(aof=aof, appendfsync=aof_fsync)
    )
    with servers as server:
        reference = await run_plan(plan.fault_free(), server, base / "ref", f"ref-{seed}", ring)
        chaos = await run_plan(plan, server, base / "chaos", f"chaos-{seed}", ring)
    problems = compare(reference.record, chaos.record)
    if chaos.pace_timeouts:
        problems.append(f"pacing deadline passed at steps {chaos.pace_timeouts}")
    return ChaosResult(seed, len(plan.commands), reference, chaos, problems)


async def hostile_run(
    seed: int,
    *,
    window: tuple[int, int] = (60, 150),
    rate_per_s: float = 1500.0,
    seconds: float = 15.0,
    workdir: Path | None = None,
    **plan_kw: Any,
) -> dict[str, Any]:
    """A fault-free plan with a hostile client flooding steps ``window``; compared with the same
    plan without it. Returns the rejects by reason, the throughput figures and the problems."""
    plan_kw.setdefault("steps", 180)
    plan_kw.setdefault("kills", 0)
    plan_kw.setdefault("redis_restarts", 0)
    plan = make_plan(seed, **plan_kw)
    plan = ChaosPlan(
        plan.seed, plan.steps, plan.slots, plan.processes, plan.commands,
        leak_slots=plan.leak_slots, report_every=1, config=plan.config,
    )  # fmt: skip
    ring = KeyRing.generate()
    base = workdir or Path(tempfile.mkdtemp(prefix="kasmina-hostile-"))
    with redis_server(aof=True, appendfsync="always") as server:
        reference = await run_plan(plan, server, base / "ref", f"ref-{seed}", ring)
        attacked = await run_plan(
            plan, server, base / "hostile", f"hostile-{seed}", ring,
            hostile_steps=window, hostile_rate=rate_per_s, hostile_seconds=seconds,
        )  # fmt: skip
    problems = compare(reference.record, attacked.record)
    sent = attacked.hostile["sent"]
    legit = Counter(reference.rejects)
    extra = {k: v - legit.get(k, 0) for k, v in attacked.rejects.items() if v != legit.get(k, 0)}
    return {
        "seed": seed,
        "passed": not problems,
        "problems": problems,
        "hostile_sent": sent,
        "hostile_seconds": round(attacked.hostile["seconds"], 1),
        "hostile_rate_per_s": round(sum(sent.values()) / max(1e-9, attacked.hostile["seconds"])),
        "rejects": attacked.rejects,
        "rejects_added_by_attack": extra,
        "throughput": {k: round(v, 2) for k, v in phase_rates(attacked).items()},
        "final": attacked.record.final,
    }
