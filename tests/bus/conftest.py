"""Fixtures of the bus package tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from bus.testing import shared_redis


@pytest.fixture
def anyio_backend() -> str:
    """Run the async tests on asyncio."""
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The real server (shared one, or a throwaway one when it is not reachable)."""
    with shared_redis() as url:
        yield url


@pytest.fixture
def prefix() -> str:
    """A unique key prefix (with a cluster hash tag) for this test."""
    return f"test:{{{uuid.uuid4().hex[:12]}}}:"
