"""A run without an event log is never recorded or verified as complete: ``record`` refuses a
missing or overwritten log (a wrong run name, a Redis writer's ``SET`` over it), and ``replay
--verify`` fails a signed recording that holds no events."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import anyio
import pytest
import redis

from bus import SealKey, open_bus, record
from bus.testing import real_redis_url
from contracts import KeyRing, streams
from kasmina.cli import main
from scenarios.cluster import running_cluster

SLOT = "l0.s0"


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as done:
        main(args)
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out + captured.err


@pytest.mark.redis
@pytest.mark.parametrize("event_log", ["missing", "a string"])
def test_record_refuses_a_run_without_an_event_log(
    event_log: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`record` of a run whose event log is absent or not a stream exits 2 and writes nothing."""
    ring, run = KeyRing.generate(), f"nolog-{uuid.uuid4().hex[:8]}"
    ring.save(tmp_path / "keys.json")
    client = redis.Redis.from_url(real_redis_url())
    client.xadd(streams.heartbeats(run), {"x": b"1"})  # the run has other streams
    if event_log == "a string":
        client.set(streams.events(run), b"overwritten")
    out = tmp_path / "run.kasrec"
    try:
        code, text = _cli(["record", "--redis", real_redis_url(), "--run", run,
                           "--keys", str(tmp_path / "keys.json"), "-o", str(out)], capsys)  # fmt: skip
    finally:
        client.delete(streams.events(run), streams.heartbeats(run))
        client.close()
    assert code == 2 and "no event log" in text and "Traceback" not in text
    assert not out.exists()


async def _record_without_events(path: Path, ring: KeyRing, run: str) -> None:
    """A real run on fakeredis, recorded and signed with every stream but its event log."""
    bus = open_bus(f"fakeredis://{run}")
    try:
        async with running_cluster(bus, run=run, slots=[SLOT], ring=ring) as cl:
            await cl.client.command(SLOT, "cull", wait=True, timeout_s=20)
            await cl.settle()
            names = await bus.streams(streams.prefix(run) + "*")
            kept = [n for n in names if n != streams.events(run)]
            assert len(kept) < len(names)
            seal = SealKey(ring.active.id, ring.active.secret)
            await record(bus, kept, path, {"run": run}, seal=seal)
    finally:
        await bus.close()


def test_verify_fails_a_signed_recording_without_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A signed, intact recording that holds no event log does not verify, and says why."""
    ring = KeyRing.generate()
    ring.save(tmp_path / "keys.json")
    path = tmp_path / "no-events.kasrec"
    anyio.run(_record_without_events, path, ring, "nolog-rec")
    code, text = _cli(["replay", str(path), "--verify", "--json",
                       "--keys", str(tmp_path / "keys.json")], capsys)  # fmt: skip
    assert code != 0
    summary = json.loads(next(line for line in text.splitlines() if '"summary"' in line))
    assert summary["verified"] is False and summary["events"] == 0
    code, text = _cli(["replay", str(path), "--verify", "--keys", str(tmp_path / "keys.json")],
                      capsys)  # fmt: skip
    assert code != 0 and "verify: FAILED no events" in text and "verify: OK" not in text
