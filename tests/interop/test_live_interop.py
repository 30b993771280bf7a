"""A stand-alone client (standalone_client.py) drives a live ``kasmina run`` and a trainer.

Everything runs as separate processes on a real redis-server: ``kasmina run`` (every actor, one
slot), the chaos trainer (an ExecutionActor stepping a simulated runtime), and the client, which
imports no project package. The test only starts them and reads the client's verdicts.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SLOT = "layer1.s0"
CONFIG = {  # short budgets, a seed that stays in TRAINING while it is paused and resumed
    "barrier.frequency": 2,
    "lifecycle.training_steps": 100_000,
    "bus.owner_ttl_s": 2.0,
}


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """``$KASMINA_TEST_REDIS`` when it answers, else a redis-server of this test's own."""
    url = os.environ.get("KASMINA_TEST_REDIS", "redis://127.0.0.1:6379/0")
    if _answers(url):
        yield url
        return
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("the interop test needs a real Redis (redis-server or $KASMINA_TEST_REDIS)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while not _answers(url):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KASMINA__")}
    for key, value in CONFIG.items():
        section, name = key.split(".")
        env[f"KASMINA__{section.upper()}__{name.upper()}"] = str(value)
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.redis
def test_standalone_client_drives_a_live_run(redis_url: str, tmp_path: Path) -> None:
    """germinate reaches TRAINING, pause and resume are accepted and applied, a forged cull is
    rejected (claimed id, unverified), cull culls: each outcome read and its MAC checked by a
    client written from the spec and the proto alone."""
    run = f"interop-{uuid.uuid4().hex[:8]}"
    keys = tmp_path / "keys.json"
    py = sys.executable
    subprocess.run([py, "-m", "kasmina", "keys", "generate", "-o", str(keys)], check=True,
                   cwd=ROOT, capture_output=True)  # fmt: skip
    plan = {
        "seed": 0, "steps": 100_000, "slots": [SLOT], "processes": [], "commands": [],
        "kills": [], "redis_restarts": [], "leak_slots": [], "report_every": 2,
        "config": CONFIG,
    }  # fmt: skip
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    logs = [open(tmp_path / name, "wb") for name in ("run.log", "trainer.log")]  # noqa: SIM115
    server = subprocess.Popen(
        [py, "-m", "kasmina", "run", "--redis", redis_url, "--run", run, "--slots", SLOT,
         "--keys", str(keys)],
        cwd=ROOT, env=_env(), stdout=logs[0], stderr=subprocess.STDOUT,
    )  # fmt: skip
    trainer = subprocess.Popen(
        [py, "-m", "scenarios.chaos.trainer", "--redis", redis_url, "--run", run, "--keys",
         str(keys), "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "out.json")],
        cwd=ROOT, env=_env(), stdout=logs[1], stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        client = subprocess.run(
            [py, str(HERE / "standalone_client.py"), "--redis", redis_url, "--run", run,
             "--keys", str(keys), "--slot", SLOT, "--proto-out", str(tmp_path / "proto"),
             "--timeout", "60"],
            cwd=tmp_path, capture_output=True, text=True, timeout=100, check=False,
        )  # fmt: skip
    finally:
        _stop(trainer)
        _stop(server)
        for log in logs:
            log.close()
        r = redis.Redis.from_url(redis_url)
        keys_left = list(r.scan_iter(match=f"kasmina:{{{run}}}:*", count=1000))
        if keys_left:
            r.delete(*keys_left)
        r.close()
    lines = [json.loads(line) for line in client.stdout.splitlines() if line.startswith("{")]
    detail = f"{client.stdout}\n{client.stderr}\n{(tmp_path / 'run.log').read_text()[-3000:]}"
    assert client.returncode == 0, detail
    by_action = {line["action"]: line for line in lines}
    assert list(by_action) == ["germinate", "pause", "resume", "forged cull", "cull"], detail
    germ = by_action["germinate"]
    assert germ["results"][0] == "OUTCOME_ACCEPTED" and germ["awaiting"][0] == "g0_evidence"
    assert germ["to_stage"] == "SEED_STAGE_TRAINING"
    assert by_action["forged cull"]["results"] == ["OUTCOME_REJECTED"]
    assert by_action["forged cull"]["verified"] is False
    assert by_action["cull"]["to_stage"] == "SEED_STAGE_CULLED"
    assert all(line["ok"] for line in lines), detail
