"""The /metrics listener against a network peer: connections held open cannot exhaust the
process's file descriptors, end the actors' task group, or lock a scraper out."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import urllib.request

import anyio
import pytest

from actors.telemetry.server import MAX_CONNECTIONS, MetricsServer

pytestmark = pytest.mark.anyio


def _scrape(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return int(response.status)


async def test_idle_connections_past_the_cap_do_not_lock_a_scraper_out() -> None:
    """Twice the cap of idle connections: the oldest are closed to make room, at most the cap
    stay open, and a scrape made after them is answered."""
    server = MetricsServer(lambda: b"ok 1\n", 0)
    held: list[socket.socket] = []
    try:
        async with anyio.create_task_group() as tg:
            port = await tg.start(server.serve)
            for _ in range(2 * MAX_CONNECTIONS):
                held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            with anyio.fail_after(20):
                while server.evicted < MAX_CONNECTIONS:  # every connection accepted
                    await anyio.sleep(0.01)
            assert server.open <= MAX_CONNECTIONS
            assert await anyio.to_thread.run_sync(_scrape, port) == 200
            tg.cancel_scope.cancel()
    finally:
        for s in held:
            s.close()


# A process with 128 file descriptors: its metrics server beside a task standing for the actors.
# It prints its port and, once told (a line on stdin), scrapes itself.
_CHILD = textwrap.dedent(
    """
    import json, resource, sys, urllib.request
    import anyio
    from actors.telemetry.server import MetricsServer

    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    async def main():
        server = MetricsServer(lambda: b"ok 1\\n", 0)
        ticks = 0
        async with anyio.create_task_group() as tg:
            port = await tg.start(server.serve)
            print(port, flush=True)
            await anyio.to_thread.run_sync(sys.stdin.readline)
            url = f"http://127.0.0.1:{port}/metrics"
            status = await anyio.to_thread.run_sync(
                lambda: urllib.request.urlopen(url, timeout=5).status
            )
            tg.cancel_scope.cancel()
        print(json.dumps({"status": status, "accept_errors": server.accept_errors}))

    anyio.run(main)
    """
)


def test_connections_past_the_file_descriptor_limit_do_not_end_the_task_group() -> None:
    """A peer holds more connections than the server's process has file descriptors: accepts
    that fail are retried, the process lives on, and a scrape made while they are held is
    answered."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    held: list[socket.socket] = []
    try:
        assert child.stdout is not None and child.stdin is not None
        port = int(child.stdout.readline())
        for _ in range(400):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        out, err = child.communicate("scrape\n", timeout=60)
    finally:
        for s in held:
            s.close()
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == 200
