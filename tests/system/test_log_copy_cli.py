"""The CLI on a live log holding a copy of a genuine event (one XADD by a Redis writer without
keys): ``status`` and ``replay`` report it and exit in order, never with a traceback."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import anyio
import pytest

from bus import open_bus
from bus.testing import purge_prefix, real_redis_url
from contracts import KeyRing, streams
from kasmina.cli import main
from scenarios.cluster import running_cluster

SLOT = "l0.s0"
pytestmark = pytest.mark.redis


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as done:
        main(args)
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out + captured.err


async def _run_with_a_copied_event(run: str, ring: KeyRing) -> None:
    """A run on the real Redis whose slot refused two culls; the first refusal appended again."""
    bus = open_bus(real_redis_url())
    try:
        async with running_cluster(bus, run=run, slots=[SLOT], ring=ring) as cl:
            for _ in range(2):
                await cl.client.command(SLOT, "cull", wait=True, timeout_s=20)
            await cl.settle()
        log = await bus.range(streams.events(run))
        first = next(e for e in log if e.fields.get("kind") == b"lifecycle.refused")
        await bus.publish(streams.events(run), dict(first.fields))
    finally:
        await bus.close()


async def _purge(run: str) -> None:
    bus = open_bus(real_redis_url())
    try:
        await purge_prefix(bus, streams.prefix(run))
    finally:
        await bus.close()


def test_status_and_replay_report_a_copied_event_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``status --json`` counts the copy as quarantined and still shows the slot; ``replay``
    lists the log; ``replay --verify`` fails, naming the copy; none prints a traceback."""
    ring, run = KeyRing.generate(), f"copycli-{uuid.uuid4().hex[:8]}"
    keys = tmp_path / "keys.json"
    ring.save(keys)
    url = real_redis_url()
    try:
        anyio.run(_run_with_a_copied_event, run, ring)
        code, text = _cli(["status", "--redis", url, "--run", run, "--keys", str(keys),
                           "--json"], capsys)  # fmt: skip
        assert "Traceback" not in text
        status = json.loads(text)
        assert status["quarantined"] == 1 and status["unverified_events"] == 0
        assert SLOT in json.dumps(status)
        code, text = _cli(["replay", url, "--run", run, "--keys", str(keys)], capsys)
        assert code == 0 and "Traceback" not in text and "REFUSED cull" in text
        assert "1 entry failed verification" in text and "replayed: a copy" in text
        code, text = _cli(["replay", url, "--run", run, "--keys", str(keys), "--verify"], capsys)
        assert code != 0 and "Traceback" not in text
        assert "copy" in text or "replayed" in text
    finally:
        anyio.run(_purge, run)
