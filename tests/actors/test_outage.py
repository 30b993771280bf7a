"""While Redis does not answer, a process says so: one warning when its hosts first find it
away, one a minute while that lasts, a line when it answers again; and a stop before it ever
answered ends the process cleanly."""

from __future__ import annotations

import logging

import anyio
import pytest

from actors.assemble import build_shells, live_verifier
from actors.hosting import Lifecycle
from actors.hosting.outage import Outage, outage_of
from actors.supervisor import Supervisor
from bus import BusUnavailable, open_bus
from bus.testing import FaultyBus, _free_port, eventually
from contracts import KasminaConfig, KeyRing, Signer

pytestmark = pytest.mark.anyio


def test_an_outage_is_said_once_then_each_minute_then_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Failures of many hosts within a minute give one warning; a later one gives another with
    the outage's length; the first answer after it says how long it lasted, once."""
    now = [100.0]
    outage = Outage(clock=lambda: now[0])
    caplog.set_level(logging.INFO, "kasmina.actors")
    for who in ("seed:a", "gate", "seed:a"):
        outage.failed(who, BusUnavailable("connection refused"))
        now[0] += 10
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "does not answer" in caplog.records[0].getMessage()
    now[0] += 45  # 75 s after the first
    outage.failed("gate", BusUnavailable("connection refused"))
    assert "still does not answer after 75 s" in caplog.records[-1].getMessage()
    outage.answered("seed:a")
    outage.answered("gate")
    ends = [r for r in caplog.records if "answers again" in r.getMessage()]
    assert len(ends) == 1 and "after 75.0 s" in ends[0].getMessage()
    outage.failed("gate", BusUnavailable("again"))  # a new outage is news again
    assert caplog.records[-1].levelname == "WARNING" and outage.since == now[0]


def test_the_hosts_of_one_bus_share_their_outage() -> None:
    """One record per bus: the actors of a process say it once between them."""
    one, two = open_bus("memory://"), open_bus("memory://")
    assert outage_of(one) is outage_of(one) and outage_of(one) is not outage_of(two)


async def test_a_process_whose_redis_never_answers_says_so_and_stops_cleanly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Actors pointed at a port nobody listens on: the wait is logged, and a stop while they
    have never started ends the supervisor without an error."""
    caplog.set_level(logging.INFO, "kasmina.actors")
    bus = open_bus(f"redis://127.0.0.1:{_free_port()}/0")
    ring, config = KeyRing.generate(), KasminaConfig()
    shells = build_shells(
        bus=bus, run="outage", config=config, signer=Signer(ring, "kasmina-run:outage"),
        verifier=live_verifier(bus, "outage", ring, config), actors=["seed", "gate"],
        slots=["l0.s0"],
    )  # fmt: skip
    supervisor = Supervisor(shells)
    ended = anyio.Event()

    async def serve() -> None:
        await supervisor.run(handle_signals=False)
        ended.set()

    async def said() -> bool:
        return any("does not answer" in r.getMessage() for r in caplog.records)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            await eventually(said, timeout_s=15)
            await supervisor.stop()
            with anyio.fail_after(15):
                await ended.wait()
    finally:
        await bus.close()


async def test_an_outage_seen_while_rebuilding_is_closed_once_the_host_serves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis away only while a host registers its inbox (after it took its lease): the wait is
    logged, and so is its end once the host serves; the record is closed, so a later outage is
    news again."""
    caplog.set_level(logging.INFO, "kasmina.actors")
    bus = FaultyBus(open_bus("memory://"), {"register"}, times=1)
    ring, config = KeyRing.generate(), KasminaConfig()
    shells = build_shells(
        bus=bus, run="rebuilt", config=config, signer=Signer(ring, "kasmina-run:rebuilt"),
        verifier=live_verifier(bus, "rebuilt", ring, config), actors=["seed"], slots=["l0.s0"],
    )  # fmt: skip
    supervisor = Supervisor(shells)

    async def serving() -> bool:
        return all(s.lifecycle is Lifecycle.SERVING for s in shells)

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: supervisor.run(handle_signals=False))
        await eventually(serving, timeout_s=15)
        await supervisor.stop()
    said = [r.getMessage() for r in caplog.records]
    assert bus.failures == 1 and any("does not answer" in m for m in said)
    assert any("answers again" in m for m in said) and outage_of(bus).since is None
