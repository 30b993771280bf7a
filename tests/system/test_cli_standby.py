"""Two `kasmina run` processes for one slot on a real Redis: one serves, the other stands by and
takes over when the first is SIGKILLed; every command is decided once and replay verifies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
import redis

from bus import open_bus
from bus.testing import purge_prefix, real_redis_url
from contracts import KeyRing, streams

pytestmark = pytest.mark.redis
SLOT = "l0.s0"


def _until(what: str, check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A fresh key file and run id on the real Redis; leases of 1 s."""
    keys = tmp_path / "keys.json"
    KeyRing.generate().save(keys)
    run = f"standby-{uuid.uuid4().hex[:8]}"
    yield {
        **os.environ,
        "KASMINA_KEYS": str(keys),
        "KASMINA_REDIS": real_redis_url(),
        "KASMINA_RUN": run,
        "KASMINA__BUS__OWNER_TTL_S": "1.0",
    }
    bus = open_bus(real_redis_url())

    async def clean() -> None:
        await purge_prefix(bus, streams.prefix(run))
        await bus.close()

    anyio.run(clean)


def _serve(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "kasmina", "run", "--actors", "seed", "--slots", SLOT,
             "--log-level", "WARNING"],
            env=env, stdout=subprocess.DEVNULL, stderr=sink,
        )  # fmt: skip


def _kasmina(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kasmina", *args], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def _cull(env: dict[str, str]) -> dict[str, object]:
    done = _kasmina(env, "publish", "cull", "--slot", SLOT, "--wait", "--timeout", "30")
    assert done.returncode == 1, done.stderr  # an outcome that is not a transition exits 1
    outcome: dict[str, object] = json.loads(done.stdout)
    return outcome


def test_a_standby_process_takes_over_a_killed_one(env: dict[str, str], tmp_path: Path) -> None:
    """B stands by while A serves; after A's SIGKILL, B serves once A's lease expires."""
    lease = streams.lease(env["KASMINA_RUN"], f"actor:seed:{SLOT}")
    bus_url = env["KASMINA_REDIS"]
    r = redis.Redis.from_url(bus_url)  # reads the lease's holder directly
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    a = _serve(env, a_log)
    b: subprocess.Popen[bytes] | None = None
    try:
        _until("A to take the lease", lambda: (r.get(lease) or b"").split(b":")[1:2] == [
            str(a.pid).encode()])  # fmt: skip
        b = _serve(env, b_log)
        _until("B to stand by", lambda: b"standing by" in b_log.read_bytes())
        assert _cull(env)["kind"] == "lifecycle.refused"
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=10)
        _until("B to take over", lambda: b"took over" in b_log.read_bytes(), timeout_s=30)
        assert (r.get(lease) or b"").split(b":")[1] == str(b.pid).encode()
        assert _cull(env)["kind"] == "lifecycle.refused"
        replay = _kasmina(env, "replay", bus_url, "--json", "--verify")
        assert replay.returncode == 0, replay.stderr
        rows = [json.loads(line) for line in replay.stdout.splitlines()]
        assert rows[-1]["verified"]
        refusals = [x for x in rows if x.get("kind") == "lifecycle.refused"]
        assert len(refusals) == 2
        b.send_signal(signal.SIGTERM)
        assert b.wait(timeout=30) == 0
        assert r.get(lease) is None  # released on the way out
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        r.close()
