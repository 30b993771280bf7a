"""Shared pytest configuration: the slow marker is opt-in, anyio runs async tests on asyncio,
and the session always ends (see :func:`pytest_unconfigure`)."""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time

import pytest

_EXIT_STATUS = [0]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS[0] = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    """A test that failed half way may leave a child process or a non-daemon thread running
    (a hung collective, a trainer thread); Python would wait for it at exit, forever. Kill the
    children, give the threads 15 s, then name what is left and exit with the session's status."""
    for child in multiprocessing.active_children():
        child.kill()
        child.join(5)
    deadline = time.monotonic() + 15
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    left = [t.name for t in threading.enumerate() if t.is_alive() and not t.daemon]
    left = [n for n in left if n != threading.main_thread().name]
    if left:
        sys.stdout.flush()
        sys.stderr.write(f"\nthreads still running after the session, not waited for: {left}\n")
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[0])
