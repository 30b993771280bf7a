"""One bus contract, every backend: memory, fakeredis, a real redis-server, a 3-primary Redis
Cluster, and a Sentinel-managed primary with writes waiting for one replica (``wait=1``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from bus import Bus, open_bus
from bus.servers import redis_cluster, redis_sentinel
from bus.testing import REDIS_SERVER, purge_prefix, shared_redis

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


@pytest.fixture(scope="session")
def cluster_url() -> Iterator[str]:
    """A throwaway 3-primary Redis Cluster for the session."""
    if not Path(REDIS_SERVER).exists():
        pytest.skip(f"no {REDIS_SERVER}")
    with redis_cluster(primaries=3) as cluster:
        yield cluster.url


@pytest.fixture(scope="session")
def sentinel_url() -> Iterator[str]:
    """A throwaway primary + replica + 3 sentinels; writes wait for the replica."""
    if not Path(REDIS_SERVER).exists():
        pytest.skip(f"no {REDIS_SERVER}")
    with redis_sentinel(replicas=1, aof=False) as setup:
        yield setup.url + "?wait=1"


URLS = {"redis": "redis_url", "cluster": "cluster_url", "sentinel": "sentinel_url"}


@pytest.fixture(
    params=[
        "memory",
        "fakeredis",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.redis),
        pytest.param("sentinel", marks=pytest.mark.redis),
    ]
)
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
    if backend in URLS:
        url = request.getfixturevalue(URLS[backend])
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
