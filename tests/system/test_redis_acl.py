"""Redis as compose.yaml runs it: an ACL with the default user off and a password from a secret
file; kasmina reads the password file, every command works, and no output carries the password."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from bus import BusError, open_bus, redact_url
from bus.testing import redis_server
from contracts import KeyRing, streams
from kasmina.commands.status import collect
from kasmina.common import ENV_PASSWORD_FILE, with_password
from scenarios.cluster import running_cluster

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-Pa55word-for-tests"
RULE = "user kasmina on >%s ~* &* +@all -@dangerous +info"


def test_compose_documents_this_acl() -> None:
    """compose.yaml's setup writes the ACL rule this test runs under, and turns the default user off."""
    text = (ROOT / "compose.yaml").read_text(encoding="utf-8")
    assert f"user default off\\n{RULE}\\n" in text
    assert "--aclfile" in text and "KASMINA_REDIS_PASSWORD_FILE" in text


def test_redact_url_hides_every_password() -> None:
    """URLs printed anywhere lose their password (user info or query parameter)."""
    assert (
        redact_url(f"redis://kasmina:{PASSWORD}@redis:6379/0") == "redis://kasmina:***@redis:6379/0"
    )
    assert PASSWORD not in redact_url(f"redis://:{PASSWORD}@h/0")
    assert PASSWORD not in redact_url(f"redis://h/0?password={PASSWORD}")
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


async def _serve(url: str, run: str) -> dict[str, object]:
    bus = open_bus(url)
    try:
        ring = KeyRing.generate()
        async with running_cluster(bus, run=run, slots=["l0.s0"], ring=ring) as cl:
            outcome = await cl.client.command("l0.s0", "cull", wait=True, timeout_s=20)
            assert outcome is not None and outcome.kind == "lifecycle.refused"
            return await collect(bus, run, ring)
    finally:
        await bus.close()


async def _refused(url: str) -> bool:
    bus = open_bus(url)
    try:
        await bus.publish(streams.events("x"), {"m": b"1"})
    except BusError:
        return True
    finally:
        await bus.close()
    return False


@pytest.mark.redis
def test_actors_work_under_the_acl_and_strangers_are_refused(tmp_path: Path) -> None:
    """Without the password nothing is written; with it (from the file) a run serves commands."""
    acl = tmp_path / "redis.acl"
    acl.write_text("user default off\n" + RULE % PASSWORD + "\n")
    secret = tmp_path / "redis_password"
    secret.write_text(PASSWORD + "\n")
    with redis_server(aof=False, extra=["--aclfile", str(acl)], auth=f"kasmina:{PASSWORD}@") as srv:
        bare = f"redis://127.0.0.1:{srv.port}/0"
        assert anyio.run(_refused, bare)
        url = with_password(
            f"redis://kasmina@127.0.0.1:{srv.port}/0", {ENV_PASSWORD_FILE: str(secret)}
        )
        assert PASSWORD in url
        status = anyio.run(_serve, url, "acl-run")
        assert status["slots"] and PASSWORD not in json.dumps(status)


@pytest.mark.redis
@pytest.mark.timeout(360)  # a 400-step demo in a subprocess: minutes on a loaded 2-core machine
def test_demo_report_never_carries_the_password(tmp_path: Path) -> None:
    """`kasmina demo --bus redis://user@…` with the password file: report and JSON are redacted."""
    acl = tmp_path / "redis.acl"
    acl.write_text("user default off\n" + RULE % PASSWORD + "\n")
    secret = tmp_path / "redis_password"
    secret.write_text(PASSWORD)
    with redis_server(aof=False, extra=["--aclfile", str(acl)], auth=f"kasmina:{PASSWORD}@") as srv:
        out = tmp_path / "out"
        env = {"PATH": "/usr/bin:/bin", ENV_PASSWORD_FILE: str(secret), "HOME": str(tmp_path)}
        done = subprocess.run(
            [sys.executable, "-m", "kasmina", "demo", "--bus",
             f"redis://kasmina@127.0.0.1:{srv.port}/0", "--steps", "400", "--out", str(out),
             "--json"],
            capture_output=True, text=True, env=env, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert PASSWORD not in done.stdout + done.stderr
        for path in out.iterdir():
            if path.suffix in (".md", ".json"):
                assert PASSWORD not in path.read_text(encoding="utf-8"), path
        assert "kasmina:***@" in json.loads(done.stdout.splitlines()[-1])["bus"]
