"""`publish --wait` never waits silently, and `status` says what each slot awaits and who is
attached: a background `kasmina run` on the real Redis, with and without a trainer."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from test_cli_run import cli_env, kasmina  # noqa: F401  (the fixture is used by name)

from actors.assemble import live_verifier
from actors.execution.actor import ExecutionActor
from bus import open_bus
from contracts import KasminaConfig, KeyRing, Signer
from scenarios.sim import SimRuntime

pytestmark = pytest.mark.redis
SLOT = "l1.s0"


async def _attach_trainer(env: dict[str, str], step: int) -> None:
    """An ExecutionActor at ``step`` beats on the run until a status sees it attached."""
    run, ring = env["KASMINA_RUN"], KeyRing.load(env["KASMINA_KEYS"])
    bus = open_bus(env["KASMINA_REDIS"])
    config = KasminaConfig.load(env["KASMINA_CONFIG"], env={})
    sim = SimRuntime([SLOT], report_every=5, barrier_frequency=5)
    sim.step = step
    actor = ExecutionActor(
        sim,
        bus=bus,
        run=run,
        signer=Signer(ring, "trainer"),
        verifier=live_verifier(bus, run, ring, config),
        config=config,
        heartbeat_s=0.1,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(actor.run)
        with anyio.fail_after(30):
            while True:
                status = await anyio.to_thread.run_sync(lambda: kasmina("status", "--json",
                                                                        env=env))  # fmt: skip
                trainers = json.loads(status.stdout)["trainers"]
                if trainers:
                    break
                await anyio.sleep(0.1)
        await actor.stop()
    await bus.close()
    (trainer,) = trainers
    assert (trainer["rank"], trainer["alive"], trainer["last_step"]) == ("0", True, step)
    assert trainer["last_heartbeat_s"] >= 0 and trainer["process"]


def test_publish_wait_says_what_it_awaits_and_exits_with_its_code(
    cli_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    """pause/resume of a dormant slot exit 0 (accepted), cull of it exits 1 (refused); germinate
    with no trainer prints accepted, awaiting execution evidence and "no trainer attached", and
    exits 4 within its timeout; status --json carries the awaiting fields and, once one beats,
    the trainer with its step."""
    log = tmp_path / "run.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "kasmina", "run", "--slots", SLOT, "--log-level", "WARNING"],
            env=cli_env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        for action, code, result in (
            ("pause", 0, "accepted"),
            ("resume", 0, "accepted"),
            ("cull", 1, "refused"),
        ):
            done = kasmina("publish", action, "--slot", SLOT, "--wait", env=cli_env)
            assert done.returncode == code, (action, done.stdout, done.stderr)
            assert json.loads(done.stdout)["result"] == result
        germ = kasmina(
            "publish", "germinate", "--slot", SLOT, "--blueprint", "residual_mlp", "--wait",
            "--timeout", "4", env=cli_env, timeout=30,
        )  # fmt: skip
        assert germ.returncode == 4, (germ.stdout, germ.stderr)
        out = json.loads(germ.stdout)
        assert (out["result"], out["awaiting"]) == ("timed_out", "g0_evidence")
        assert "accepted" in germ.stderr and "awaiting execution evidence" in germ.stderr
        assert f"no trainer attached to run {cli_env['KASMINA_RUN']}" in germ.stderr
        assert "no outcome within 4 s" in germ.stderr

        status = kasmina("status", "--json", env=cli_env)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        (slot,) = report["slots"]
        assert slot["stage"] == "DORMANT" and slot["awaiting"] == "g0_evidence"
        assert slot["awaiting_command"] == out["command_id"]
        assert slot["awaiting_since_step"] == 0 and slot["awaiting_for_s"] >= 0
        assert "execution evidence" in slot["awaiting_text"]
        assert report["trainers"] == []
        text = kasmina("status", env=cli_env)
        assert "awaiting execution evidence" in text.stdout and "none attached" in text.stdout
        anyio.run(_attach_trainer, cli_env, 7)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
