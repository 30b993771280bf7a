"""The CLI on a real Redis: `kasmina run` in the background, `publish --wait`, `replay --json`, `status`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from actors.assemble import live_verifier
from actors.execution.actor import ExecutionActor
from bus import open_bus
from bus.testing import purge_prefix, real_redis_url
from contracts import KasminaConfig, KeyRing, Signer, streams
from leyline import pb
from scenarios.cluster import read_events, run_is_quiet
from scenarios.sim import SimRuntime

pytestmark = pytest.mark.redis

CONFIG = """
[lifecycle]
training_steps = 20
blend_steps = 20
shadowing_steps = 10
probationary_steps = 10
embargo_steps = 20

[barrier]
frequency = 5

[gates]
min_training_steps = 10
"""


def kasmina(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion."""
    return subprocess.run(
        [sys.executable, "-m", "kasmina", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cli_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment naming a fresh key file, config, run id and the real Redis."""
    keys = tmp_path / "keys.json"
    KeyRing.generate().save(keys)
    (tmp_path / "kasmina.toml").write_text(CONFIG)
    env = {
        **os.environ,
        "KASMINA_KEYS": str(keys),
        "KASMINA_REDIS": real_redis_url(),
        "KASMINA_RUN": f"cli-{uuid.uuid4().hex[:8]}",
        "KASMINA_CONFIG": str(tmp_path / "kasmina.toml"),
    }
    yield env
    bus = open_bus(real_redis_url())

    async def clean() -> None:
        await purge_prefix(bus, streams.prefix(env["KASMINA_RUN"]))
        await bus.close()

    anyio.run(clean)


async def _drive_until(
    actor: ExecutionActor,
    sim: SimRuntime,
    env: dict[str, str],
    ring: KeyRing,
    slot: str,
    stage: int,
    start: int,
) -> int:
    """Step the simulated trainer (settling on the run's inboxes) until ``slot`` reaches ``stage``."""
    run = env["KASMINA_RUN"]
    for step in range(start, start + 400):
        sim.on_step(step)
        await actor.flush()
        with anyio.fail_after(20):
            while not await run_is_quiet(actor.bus, run):
                await anyio.sleep(0.005)
        events = await read_events(actor.bus, run, ring)
        stages = [
            m.to_stage for _, k, m in events if k == "lifecycle.transition" and m.slot == slot
        ]
        if stages and stages[-1] == stage:
            return step + 1
    raise AssertionError(f"{slot} never reached {pb.SeedLifecycleStage.Name(stage)}")


async def _session(env: dict[str, str], ring: KeyRing) -> dict[str, object]:
    run = env["KASMINA_RUN"]
    bus = open_bus(env["KASMINA_REDIS"])
    config = KasminaConfig.load(env["KASMINA_CONFIG"], env={})
    sim = SimRuntime(["l1.s0", "l2.s0"], report_every=5, barrier_frequency=5, blend_steps=20)
    actor = ExecutionActor(
        sim,
        bus=bus,
        run=run,
        signer=Signer(ring, "trainer"),
        verifier=live_verifier(bus, run, ring, config),
        config=config,
    )
    out: dict[str, object] = {}
    async with anyio.create_task_group() as tg:
        await tg.start(actor.run)
        step = await _drive_until(
            actor, sim, env, ring, "l1.s0", pb.SEED_STAGE_DORMANT, 0
        )  # bootstrap

        def publish() -> subprocess.CompletedProcess[str]:
            args = (
                "publish",
                "germinate",
                "--slot",
                "l1.s0",
                "--blueprint",
                "residual_mlp",
                "--wait",
            )
            return kasmina(*args, env=env)

        async def waiter() -> None:
            out["publish"] = await anyio.to_thread.run_sync(publish)

        tg.start_soon(waiter)
        orders = streams.inbox(run, "execution", "0")
        with anyio.fail_after(
            60
        ):  # the CLI process starts, publishes and the seed actor orders a probe
            while (await bus.info(orders)).length == 0:
                await anyio.sleep(0.02)
        step = await _drive_until(actor, sim, env, ring, "l1.s0", pb.SEED_STAGE_FOSSILIZED, step)
        sim.fail_gates.add(pb.SEED_GATE_G3_INTERFACE)
        kasmina("publish", "germinate", "--slot", "l2.s0", "--blueprint", "lowrank", env=env)
        step = await _drive_until(actor, sim, env, ring, "l2.s0", pb.SEED_STAGE_EMBARGOED, step)
        sim.fail_gates.clear()
        await _drive_until(actor, sim, env, ring, "l2.s0", pb.SEED_STAGE_DORMANT, step)
        await actor.stop()
    await bus.close()
    return out


def test_run_publish_replay_status(cli_env: dict[str, str], tmp_path: Path) -> None:
    """A background `kasmina run` walks one slot to FOSSILIZED and one through cull and reset; replay shows why."""
    ring = KeyRing.load(cli_env["KASMINA_KEYS"])
    log = tmp_path / "run.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kasmina",
                "run",
                "--slots",
                "l1.s0,l2.s0",
                "--log-level",
                "WARNING",
            ],
            env=cli_env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        out = anyio.run(_session, cli_env, ring)
        published = out["publish"]
        assert isinstance(published, subprocess.CompletedProcess)
        assert published.returncode == 0, published.stderr
        outcome = json.loads(published.stdout)
        assert outcome["ok"] and outcome["to_stage"] == "SEED_STAGE_GERMINATED"

        replay = kasmina("replay", cli_env["KASMINA_REDIS"], "--json", "--verify", env=cli_env)
        assert replay.returncode == 0, replay.stderr
        rows = [json.loads(line) for line in replay.stdout.splitlines()]
        summary = rows.pop()
        assert summary["verified"] and summary["slots"] == {
            "l1.s0": "FOSSILIZED",
            "l2.s0": "DORMANT",
        }
        walks = {
            slot: [
                (r["from"], r["to"])
                for r in rows
                if r["kind"] == "lifecycle.transition" and r["slot"] == slot
            ]
            for slot in ("l1.s0", "l2.s0")
        }
        assert [to for _, to in walks["l1.s0"]] == [
            "DORMANT", "GERMINATED", "TRAINING", "BLENDING", "SHADOWING", "PROBATIONARY", "FOSSILIZED",
        ]  # fmt: skip
        assert walks["l2.s0"][-4:] == [
            ("SHADOWING", "CULLED"), ("CULLED", "EMBARGOED"), ("EMBARGOED", "RESETTING"), ("RESETTING", "DORMANT"),
        ]  # fmt: skip
        assert all(r["cause"] for r in rows if r["kind"] == "lifecycle.transition")
        failed = [r for r in rows if r["kind"] == "gate.result" and not r["passed"]]
        assert [r["gate"] for r in failed] == ["G3_INTERFACE"]
        assert any(not c["passed"] and c["name"] == "output_finite" for c in failed[0]["checks"])

        recording = tmp_path / "run.kasrec"
        recorded = kasmina("record", "-o", str(recording), env=cli_env)
        assert recorded.returncode == 0, recorded.stderr
        assert json.loads(recorded.stdout)["entries"] > len(rows)
        offline = kasmina("replay", str(recording), "--json", "--verify", env=cli_env)
        assert offline.returncode == 0, offline.stderr
        assert (
            offline.stdout.splitlines()[:-1] == replay.stdout.splitlines()[:-1]
        )  # same timeline offline

        status = kasmina("status", "--json", env=cli_env)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        alive = {a["name"] for a in report["actors"] if a["alive"]}
        assert {"seed:l1.s0", "seed:l2.s0", "gate", "safety", "telemetry", "barrier"} <= alive
        assert {s["slot"]: s["stage"] for s in report["slots"]} == {
            "l1.s0": "FOSSILIZED",
            "l2.s0": "DORMANT",
        }
        assert all(s["pending"] == 0 for s in report["streams"])
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()  # reaped: a Popen dropped while its process runs is a ResourceWarning
            raise
    assert code == 0, log.read_text()
