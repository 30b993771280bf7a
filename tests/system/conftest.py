"""Fixtures of the system tests: a run id per test and a fresh bus of each backend."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from bus import Bus, open_bus
from bus.testing import purge_prefix, real_redis_url
from contracts import streams


@pytest.fixture
def run_id() -> str:
    """A run id of this test alone (its keys are removed from the shared server afterwards)."""
    return f"sys-{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["memory", "fakeredis", pytest.param("redis", marks=pytest.mark.redis)])
async def bus(request: pytest.FixtureRequest, run_id: str) -> AsyncIterator[Bus]:
    """A fresh bus of each backend (the real one on the shared server, cleaned afterwards)."""
    url = real_redis_url() if request.param == "redis" else f"{request.param}://{run_id}"
    bus = open_bus(url)
    yield bus
    if request.param == "redis":
        await purge_prefix(bus, streams.prefix(run_id))
    await bus.close()
