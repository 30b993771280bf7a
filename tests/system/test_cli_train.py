"""The production shape on a real Redis: `kasmina run` processes serve the actors, `kasmina train`
attaches a real training loop (spirals), `kasmina publish --wait` grows a seed to FOSSILIZED."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

from actors.hosting import FRAME
from bus import open_bus
from bus.testing import purge_prefix, real_redis_url
from contracts import REGISTRY, KeyRing, Verifier, streams
from leyline import pb
from scenarios.cluster import read_events

pytestmark = pytest.mark.redis

CONFIG = """
[lifecycle]
training_steps = 100
blend_steps = 20
shadowing_steps = 10
probationary_steps = 10
embargo_steps = 20

[barrier]
frequency = 5
world_size = {world}

[gates]
min_training_steps = 15
loss_spike_sigma = 6.0
max_latency_overhead = 50.0  # timing on a shared machine is noisy
"""

GERMINATE = (
    "publish", "germinate", "--slot", "hidden", "--blueprint", "residual_mlp",
    "--param", "hidden=16", "--param", "lr=0.01", "--wait", "--timeout", "120",
)  # fmt: skip


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kasmina(
    *args: str, env: dict[str, str], timeout: float = 150
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion."""
    return subprocess.run(
        [sys.executable, "-m", "kasmina", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Procs:
    """Background CLI processes, each with its own log; SIGTERM in order, exit codes collected."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (
            (self.tmp / f"{name}.out").open("wb") as out,
            (self.tmp / f"{name}.log").open("wb") as err,
        ):
            proc = subprocess.Popen(
                [sys.executable, "-m", "kasmina", *args], env=env, stdout=out, stderr=err
            )
        self.procs.append((name, proc))
        return proc

    def stop(self, name: str) -> int:
        """SIGTERM ``name`` and wait for its exit code."""
        proc = dict(self.procs)[name]
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def out(self, name: str) -> str:
        return (self.tmp / f"{name}.out").read_text(errors="replace")

    def kill_all(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _env(tmp: Path, world: int) -> dict[str, str]:
    keys = tmp / "keys.json"
    KeyRing.generate().save(keys)
    (tmp / "kasmina.toml").write_text(CONFIG.format(world=world))
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("KASMINA")},
        "KASMINA_KEYS": str(keys),
        "KASMINA_REDIS": real_redis_url(),
        "KASMINA_RUN": f"train-{uuid.uuid4().hex[:8]}",
        "KASMINA_CONFIG": str(tmp / "kasmina.toml"),
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """Background processes, killed if a test leaves any running."""
    p = Procs(tmp_path)
    yield p
    p.kill_all()


def _purge(env: dict[str, str]) -> None:
    async def clean() -> None:
        bus = open_bus(env["KASMINA_REDIS"])
        await purge_prefix(bus, streams.prefix(env["KASMINA_RUN"]))
        await bus.close()

    anyio.run(clean)


async def _inbox_messages(url: str, stream: str, ring: KeyRing) -> list[object]:
    """Every verified message on ``stream`` (replay mode: no freshness)."""
    bus = open_bus(url)
    verifier = Verifier(ring, replay=True)
    out = []
    try:
        for entry in await bus.range(stream):
            env = verifier.open(entry.fields[FRAME], stream=entry.stream)
            out.append(REGISTRY.parse(env.kind, env.body))
    finally:
        await bus.close()
    return out


async def _events(url: str, run: str, ring: KeyRing) -> list[tuple[str, Any]]:
    """The run's verified events as ``(kind, message)``."""
    bus = open_bus(url)
    try:
        return [(k, m) for _, k, m in await read_events(bus, run, ring)]
    finally:
        await bus.close()


async def _wait_stage(
    env: dict[str, str], ring: KeyRing, slot: str, stage: int
) -> tuple[list[int], list[str]]:
    """The slot's transitions (stages, causes) once it reached ``stage`` or was culled (fails
    after a deadline)."""
    bus = open_bus(env["KASMINA_REDIS"])
    try:
        with anyio.fail_after(240):
            while True:
                events = await read_events(bus, env["KASMINA_RUN"], ring)
                moves = [m for _, k, m in events if k == "lifecycle.transition" and m.slot == slot]
                walk = [int(m.to_stage) for m in moves]
                if stage in walk or pb.SEED_STAGE_CULLED in walk:
                    return walk, [m.cause for m in moves]
                await anyio.sleep(0.5)
    finally:
        await bus.close()


async def _pending(env: dict[str, str]) -> dict[str, int]:
    """Inboxes of the run with entries delivered but not acked."""
    bus = open_bus(env["KASMINA_REDIS"])
    try:
        names = await bus.streams(streams.prefix(env["KASMINA_RUN"]) + "inbox:*")
        found = {name: sum(g.pending for g in (await bus.info(name)).groups) for name in names}
    finally:
        await bus.close()
    return {name: n for name, n in found.items() if n}


async def _wait_ranks(env: dict[str, str], world: int) -> None:
    """Until ``world`` ranks registered their order inboxes."""
    bus = open_bus(env["KASMINA_REDIS"])
    try:
        with anyio.fail_after(120):
            registry = streams.registry(env["KASMINA_RUN"], "execution")
            while len(await bus.members(registry)) < world:
                await anyio.sleep(0.1)
    finally:
        await bus.close()


def _scrape(port: int, slot: str) -> dict[str, float]:
    """``kasmina_slot_*{slot=...}`` samples of one scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("kasmina_slot_") and f'slot="{slot}"' in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _walk_to_fossil(procs: Procs, env: dict[str, str], ring: KeyRing, world: int) -> None:
    port = free_port()
    procs.start(
        "actors",
        "run",
        "--actors",
        "gate,safety,telemetry,barrier",
        "--prometheus-port",
        str(port),
        env=env,
    )
    procs.start("seeds", "run", "--actors", "seed", "--slots", "hidden,units", env=env)
    if world == 1:
        procs.start("train", "train", "--task", "spirals", "--json", env=env)
    else:
        master = str(free_port())
        for rank in range(world):
            ddp = {"RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1"}
            procs.start(
                f"train{rank}",
                "train",
                "--task",
                "spirals",
                "--json",
                env={**env, **ddp, "MASTER_PORT": master},
            )

    # commands fan out to the ranks registered when they are sent: wait for every rank
    anyio.run(_wait_ranks, env, world)
    published = kasmina(*GERMINATE, env=env)
    assert published.returncode == 0, published.stderr + procs.log("seeds")
    outcome = json.loads(published.stdout)
    assert outcome["ok"] and outcome["to_stage"] == "SEED_STAGE_GERMINATED", outcome

    walk, causes = anyio.run(_wait_stage, env, ring, "hidden", pb.SEED_STAGE_FOSSILIZED)
    assert walk == [
        pb.SEED_STAGE_DORMANT, pb.SEED_STAGE_GERMINATED, pb.SEED_STAGE_TRAINING,
        pb.SEED_STAGE_BLENDING, pb.SEED_STAGE_SHADOWING, pb.SEED_STAGE_PROBATIONARY,
        pb.SEED_STAGE_FOSSILIZED,
    ], causes  # fmt: skip

    # the slot's own gauges (a global summary needs 1,024 raw items); the execution's next report
    # after the transition carries the new stage
    key = 'kasmina_slot_stage{slot="hidden"}'
    deadline = time.monotonic() + 60
    while (seen := _scrape(port, "hidden")).get(key) != pb.SEED_STAGE_FOSSILIZED:
        assert time.monotonic() < deadline, seen
        time.sleep(0.2)
    assert seen['kasmina_slot_stage{slot="hidden"}'] == pb.SEED_STAGE_FOSSILIZED
    assert seen['kasmina_slot_alpha{slot="hidden"}'] == 1.0
    assert seen['kasmina_slot_stage_info{slot="hidden",stage="FOSSILIZED"}'] == 1.0

    trainers = [n for n, _ in procs.procs if n.startswith("train")]
    for name in trainers:  # SIGTERM: every rank stops at one agreed step, flushes, exits 0
        assert procs.stop(name) == 0, procs.log(name)
    results = [json.loads(procs.out(n).splitlines()[-1]) for n in trainers]
    assert all(r["stopped"] and r["stages"]["hidden"] == "FOSSILIZED" for r in results)
    assert len({r["steps"] for r in results}) == 1, results
    last = results[0]["steps"] - 1
    reports = [
        m
        for m in anyio.run(
            _inbox_messages,
            env["KASMINA_REDIS"],
            streams.inbox(env["KASMINA_RUN"], "seed", "hidden"),
            ring,
        )
        if isinstance(m, pb.StepReport)
    ]
    for rank in range(world):  # the last report of each rank was flushed before it exited
        assert max(r.step for r in reports if r.rank == rank) == last - last % 5

    acks = [
        m
        for m in anyio.run(
            _inbox_messages,
            env["KASMINA_REDIS"],
            streams.inbox(env["KASMINA_RUN"], "seed", "hidden"),
            ring,
        )
        if isinstance(m, pb.ExecutionAck)
    ]
    by_order: dict[str, set[tuple[int, int]]] = {}
    for ack in acks:
        by_order.setdefault(ack.order_id, set()).add((ack.rank, ack.applied_at_step))
    assert len(by_order) >= 5  # probe/germinate, TRAINING, BLENDING, SHADOWING, ...
    for order, applied in by_order.items():  # every rank applied every order at the same step
        assert {rank for rank, _ in applied} == set(range(world)), (order, applied)
        assert len({step for _, step in applied}) == 1, (order, applied)
    assert all(ack.ok and "late" not in ack.error for ack in acks)
    _check_confirmations(env, ring, results, acks)

    for name in ("seeds", "actors"):
        assert procs.stop(name) == 0, procs.log(name)
    assert anyio.run(_pending, env) == {}  # every entry they took was handled and acked
    replay = kasmina("replay", env["KASMINA_REDIS"], "--verify", "--json", env=env)
    assert replay.returncode == 0, replay.stderr + replay.stdout[-4000:]
    assert json.loads(replay.stdout.splitlines()[-1])["slots"]["hidden"] == "FOSSILIZED"


def _check_confirmations(
    env: dict[str, str], ring: KeyRing, results: list[dict[str, Any]], acks: list[pb.ExecutionAck]
) -> None:
    """Every rank's trainer received a step confirmation of every order it applied; the
    controller sees the same ones (the confirmations stream, `kasmina status`); the orders that
    change the forward applied only after the commit of the barrier they waited for."""
    url, run = env["KASMINA_REDIS"], env["KASMINA_RUN"]
    for result in results:
        mine = {(a.order_id, a.applied_at_step) for a in acks if a.rank == result["rank"]}
        assert {(c["order_id"], c["step"]) for c in result["confirmed"]} == mine
    orders = {
        m.order_id: m
        for m in anyio.run(_inbox_messages, url, streams.inbox(run, "execution", "0"), ring)
        if isinstance(m, pb.ExecutionOrder)
    }
    commits = {
        m.barrier_step for k, m in anyio.run(_events, url, run, ring) if k == "barrier.commit"
    }
    gated = [c for c in results[0]["confirmed"] if orders[c["order_id"]].barrier_gated]
    assert {c["stage"] for c in gated} >= {"BLENDING", "SHADOWING", "PROBATIONARY", "FOSSILIZED"}
    for c in gated:
        order = orders[c["order_id"]]
        assert c["barrier"] >= order.after_barrier and c["barrier"] in commits, (c, order)
        assert c["step"] >= order.apply_at_step
    status = kasmina("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    seen = {t["rank"]: t["confirmations"] for t in json.loads(status.stdout)["trainers"]}
    for result in results:
        assert seen[str(result["rank"])]["confirmed"] == len(result["confirmed"])
        assert seen[str(result["rank"])]["last"]["order_id"] == result["confirmed"][-1]["order_id"]


@pytest.mark.timeout(600)
def test_run_processes_and_a_trainer_grow_a_seed(procs: Procs, tmp_path: Path) -> None:
    """Two `kasmina run` processes and one `kasmina train`: publish --wait, FOSSILIZED, per-slot
    Prometheus gauges, SIGTERM exits 0 after flushing, replay --verify passes."""
    env = _env(tmp_path, world=1)
    try:
        _walk_to_fossil(procs, env, KeyRing.load(env["KASMINA_KEYS"]), world=1)
    finally:
        _purge(env)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_rank_gloo_trainer(procs: Procs, tmp_path: Path) -> None:
    """A two-rank gloo `kasmina train`: both ranks attach and apply every order at the same step."""
    env = _env(tmp_path, world=2)
    try:
        _walk_to_fossil(procs, env, KeyRing.load(env["KASMINA_KEYS"]), world=2)
    finally:
        _purge(env)


@pytest.mark.timeout(300)
def test_train_rejects_a_mismatched_world_size(tmp_path: Path) -> None:
    """A trainer whose world size differs from the run's barrier.world_size exits 2 with a reason."""
    env = _env(tmp_path, world=2)
    done = kasmina("train", "--task", "digits", "--steps", "5", env=env, timeout=120)
    assert done.returncode == 2
    assert "KASMINA__BARRIER__WORLD_SIZE=1" in done.stderr


def test_status_watch_redraws_until_its_count(tmp_path: Path) -> None:
    """`kasmina status --watch --count 3 --json` prints three views of the run, then exits 0."""
    env = _env(tmp_path, world=1)
    done = kasmina(
        "status", "--watch", "--count", "3", "--interval", "0.05", "--json", env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    views = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(views) == 3 and all(v["run"] == env["KASMINA_RUN"] for v in views)
    assert all({"actors", "slots", "streams", "rejected"} <= set(v) for v in views)


def test_status_watch_ends_at_its_count_while_redis_is_away(tmp_path: Path) -> None:
    """`--watch --count 2` against a port nobody listens on says twice that Redis is away and
    exits 0, instead of waiting for a view that never comes."""
    import socket

    with socket.socket() as s:  # free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _env(tmp_path, world=1) | {"KASMINA_REDIS": f"redis://127.0.0.1:{port}/0"}
    done = kasmina("status", "--watch", "--count", "2", "--interval", "0.05", env=env, timeout=120)
    assert done.returncode == 0 and done.stdout == "", done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and all("Redis unavailable" in line for line in lines)


FAST = ("--no-lockstep", "--json")
FACTORY = """
import torch
from torch import nn

from kasmina.training import TrainSpec


def factory(*, seed, rank, world_size):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    return TrainSpec(
        model=model,
        slots={"mid": "1"},
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        batch=lambda step: (x, y),
        probe_batch=(x, y),
    )
"""


@pytest.mark.timeout(300)
def test_train_runs_a_users_factory_from_the_current_directory(tmp_path: Path) -> None:
    """`kasmina train --model module:factory` imports the factory from the working directory,
    trains its model for --steps and reports the slots it inserted."""
    env = _env(tmp_path, world=1)
    (tmp_path / "mygrowth.py").write_text(FACTORY)
    script = str(Path(sys.executable).parent / "kasmina")  # a console script: cwd not on its path
    try:
        done = subprocess.run(
            [script, "train", "--model", "mygrowth:factory", "--steps", "12", *FAST],
            env={k: v for k, v in env.items() if k != "PYTHONPATH"},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout.splitlines()[-1])
        assert result["steps"] == 12 and not result["stopped"]
        assert result["stages"] == {"mid": "DORMANT"} and result["run"] == env["KASMINA_RUN"]
        reports = [
            m
            for m in anyio.run(
                _inbox_messages,
                env["KASMINA_REDIS"],
                streams.inbox(env["KASMINA_RUN"], "seed", "mid"),
                KeyRing.load(env["KASMINA_KEYS"]),
            )
            if isinstance(m, pb.StepReport)
        ]
        assert [r.step for r in reports] == [0, 5, 10]  # every report flushed before the exit
        missing = kasmina("train", "--model", "nosuchmodule:factory", env=env, timeout=120)
        assert missing.returncode == 2 and "nosuchmodule" in missing.stderr
    finally:
        _purge(env)


async def _order_queued(env: dict[str, str]) -> float:
    """Wait until an order is in rank 0's execution inbox; the time it was added (epoch s)."""
    bus = open_bus(env["KASMINA_REDIS"])
    try:
        with anyio.fail_after(120):
            inbox = streams.inbox(env["KASMINA_RUN"], "execution", "0")
            while not (entries := await bus.range(inbox)):
                await anyio.sleep(0.1)
    finally:
        await bus.close()
    return int(entries[0].id.split("-")[0]) / 1000


async def _rejections(env: dict[str, str], ring: KeyRing) -> list[pb.Rejection]:
    bus = open_bus(env["KASMINA_REDIS"])
    verifier = Verifier(ring, replay=True)
    out = []
    try:
        for entry in await bus.range(streams.rejected(env["KASMINA_RUN"])):
            env_ = verifier.open(entry.fields[FRAME], stream=entry.stream)
            message = REGISTRY.parse(env_.kind, env_.body)
            assert isinstance(message, pb.Rejection)
            out.append(message)
    finally:
        await bus.close()
    return out


@pytest.mark.timeout(600)
def test_a_germination_sent_before_any_trainer_attached_goes_through_once_one_does(
    procs: Procs, tmp_path: Path
) -> None:
    """A germinate published while no trainer reads the run, older than the freshness window
    when the trainer attaches: the trainer refuses that copy as stale, the SeedActor sends the
    order again once reports pass its step, and the slot germinates and trains."""
    env = _env(tmp_path, world=1)
    config = Path(env["KASMINA_CONFIG"])
    config.write_text(config.read_text() + "\n[security]\nclock_tolerance_s = 1.0\n")
    ring = KeyRing.load(env["KASMINA_KEYS"])
    try:
        procs.start("actors", "run", "--actors", "seed,gate,safety,telemetry,barrier",
                    "--slots", "hidden,units", env=env)  # fmt: skip
        published = kasmina(*GERMINATE[:-3], env=env)  # no --wait: nobody trains yet
        assert published.returncode == 0, published.stderr + procs.log("actors")
        queued = anyio.run(_order_queued, env)
        while time.time() < queued + 2.5:  # let the queued order age past the window
            time.sleep(0.1)
        procs.start("train", "train", "--task", "spirals", "--json", env=env)
        walk, causes = anyio.run(_wait_stage, env, ring, "hidden", pb.SEED_STAGE_TRAINING)
        assert walk[-2:] == [pb.SEED_STAGE_GERMINATED, pb.SEED_STAGE_TRAINING], causes
        stale = [r for r in anyio.run(_rejections, env, ring) if r.reason_code == "stale"]
        assert any(r.stream.endswith(":inbox:execution:0") for r in stale), stale
    finally:
        _purge(env)


@pytest.mark.parametrize("retyped", ["events", "dead"])
def test_status_of_a_run_whose_streams_were_retyped_says_why_and_shows_the_rest(
    tmp_path: Path, retyped: str
) -> None:
    """`kasmina status` when a Redis writer replaced one of the run's streams (the event log, the
    dead-letter stream) with a hash: the rest of the view is shown, the part names Redis's
    refusal in one line, exit 1, no traceback."""
    env = _env(tmp_path, world=1)
    client = redis.Redis.from_url(env["KASMINA_REDIS"])
    run = env["KASMINA_RUN"]
    key = streams.events(run) if retyped == "events" else streams.dead_letter(run)
    client.hset(key, "a", "b")
    try:
        done = kasmina("status", env=env, timeout=120)
        as_json = kasmina("status", "--json", env=env, timeout=120)
    finally:
        client.delete(key)
    assert done.returncode == as_json.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr + as_json.stderr
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("UNREADABLE")]
    assert line.startswith(f"UNREADABLE {retyped}:") and "WRONGTYPE" in line
    assert "actors:" in done.stdout and "slots:" in done.stdout
    status = json.loads(as_json.stdout)
    assert [b["part"] for b in status["unreadable"]] == [retyped]
    assert status["run"] == run and "actors" in status and "rejected" in status
