"""A shell serves only a state its replicas hold: behind `WAIT`, a rebuild may read a write that
is on the primary alone (a commit whose WAIT failed); it is not served until the replicas have
it, so a failover to one of them never leaves the log behind what the shell decided on."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest

from actors.assemble import build_shells, live_verifier
from bus import BusUnavailable, open_bus
from bus.servers import redis_sentinel
from bus.testing import REDIS_SERVER
from contracts import KasminaConfig, KeyRing, Signer

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.redis,
    pytest.mark.skipif(not Path(REDIS_SERVER).exists(), reason="needs redis-server"),
]


async def test_a_rebuild_waits_for_the_replicas_before_its_state_is_served() -> None:
    """With the replica stopped (SIGSTOP), a SeedActor's rebuild raises BusUnavailable instead
    of returning a state its replica may lack (the serving loop rebuilds again after a backoff);
    once the replica answers, the same rebuild completes."""
    run = f"dur-{uuid.uuid4().hex[:8]}"
    ring, config = KeyRing.generate(), KasminaConfig()
    with redis_sentinel(replicas=1, aof=False) as setup:
        bus = open_bus(setup.url + "?wait=1&wait_timeout_ms=300")
        (shell,) = build_shells(
            bus=bus, run=run, config=config, signer=Signer(ring, "seed"),
            verifier=live_verifier(bus, run, ring, config), actors=["seed"], slots=["l0.s0"],
        )  # fmt: skip
        assert await shell.lease.take()
        await shell.rebuild()  # the replica answers: served
        replica = next(s for s in setup.servers if s.port != setup.primary_port())
        assert replica.proc is not None
        os.kill(replica.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(BusUnavailable, match="not confirmed by 1 replica"):
                await shell.rebuild()
            assert shell.rebuilds == 1  # the second never completed
        finally:
            os.kill(replica.proc.pid, signal.SIGCONT)
        await shell.rebuild()
        assert shell.rebuilds == 2
        await bus.close()
