"""One bus contract, every backend: memory, fakeredis and a real redis-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from bus import Bus, open_bus
from bus.testing import purge_prefix, shared_redis

BusFactory = Callable[[], Awaitable[Bus]]


@pytest.fixture
def anyio_backend() -> str:
    """Run the async tests on asyncio."""
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The real server (shared one, or a throwaway one when it is not reachable)."""
    with shared_redis() as url:
        yield url


@pytest.fixture(params=["memory", "fakeredis", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test."""
    return str(request.param)


@pytest.fixture
def prefix() -> str:
    """A unique key prefix (with a cluster hash tag) for this test."""
    return f"test:{{{uuid.uuid4().hex[:12]}}}:"


@pytest.fixture
async def make_bus(
    backend: str, prefix: str, request: pytest.FixtureRequest, anyio_backend: str
) -> AsyncIterator[BusFactory]:
    """Opens bus objects that share one server (or store) for this test; cleans up after."""
    if backend == "redis":
        url = request.getfixturevalue("redis_url")
    else:
        url = f"{backend}://{prefix.replace('{', '').replace('}', '').replace(':', '-')}"
    opened: list[Bus] = []

    async def factory() -> Bus:
        bus = open_bus(url)
        opened.append(bus)
        return bus

    yield factory
    cleaner = open_bus(url)
    await purge_prefix(cleaner, prefix)
    await cleaner.close()
    for bus in opened:
        await bus.close()


@pytest.fixture
async def bus(make_bus: BusFactory) -> Bus:
    """A bus on the backend under test."""
    return await make_bus()
