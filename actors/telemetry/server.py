"""The Prometheus endpoint: ``GET /metrics`` over plain HTTP/1.0, as a task of its host's task group.

It runs in the supervisor's task group (:class:`actors.supervisor.Supervisor` ``services``), so
it starts with the actors and stops with them; nothing runs on a thread of its own. What a peer
can make it hold is bounded: at most :data:`MAX_CONNECTIONS` connections are open at once (a new
one closes the oldest, so connections held idle cannot lock a scraper out: a scraper's request is
answered within milliseconds), each for at most :data:`READ_TIMEOUT_S` before its request is
complete, and an accept that fails (out of file descriptors or memory) is retried after
:data:`ACCEPT_BACKOFF_S`, never raised into the actors' task group.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskGroup, TaskStatus

from actors.telemetry.prometheus import CONTENT_TYPE

__all__ = ["MetricsServer"]

log = logging.getLogger("kasmina.telemetry")

MAX_REQUEST = 8192  # bytes of request head read before the answer
READ_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 64  # answered at once; a scraper needs one
ACCEPT_BACKOFF_S = 0.1


def _response(status: str, body: bytes, content_type: str = "text/plain") -> bytes:
    head = (
        f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class MetricsServer:
    """Serves ``render()`` at ``GET /metrics`` on ``host:port`` (port 0: any free port)."""

    def __init__(self, render: Callable[[], bytes], port: int, host: str = "127.0.0.1") -> None:
        self.render = render
        self.host = host
        self.port = port
        self._open: dict[int, anyio.CancelScope] = {}  # connections being answered, oldest first
        self.evicted = 0  # connections closed to make room for a newer one
        self.accept_errors = 0  # accepts the system refused (no file descriptor, no memory)

    @property
    def open(self) -> int:
        """Connections being answered now."""
        return len(self._open)

    async def _read_head(self, stream: SocketStream) -> bytes:
        head = b""
        with anyio.move_on_after(READ_TIMEOUT_S):
            while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < MAX_REQUEST:
                try:
                    head += await stream.receive(MAX_REQUEST)
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
        return head

    async def _answer(self, stream: SocketStream) -> None:
        async with stream:
            line = (await self._read_head(stream)).split(b"\r\n", 1)[0].split(b"\n", 1)[0]
            parts = line.decode("latin-1").split()
            if len(parts) < 2 or parts[0] != "GET":
                reply = _response("405 Method Not Allowed", b"GET only\n")
            elif parts[1].split("?")[0] != "/metrics":
                reply = _response("404 Not Found", b"not found\n")
            else:
                reply = _response("200 OK", self.render(), CONTENT_TYPE)
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await stream.send(reply)  # unless the scraper went away

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; ``task_status.started(port)`` once bound."""
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        async with listener, anyio.create_task_group() as tg:
            port = int(listener.extra(SocketAttribute.local_port))
            log.info("serving /metrics on %s:%d", self.host, port)
            task_status.started(port)
            for one in listener.listeners:  # one per address the host name resolves to
                assert isinstance(one, SocketListener)
                tg.start_soon(self._accept, one, tg)

    async def _accept(self, listener: SocketListener, tg: TaskGroup) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: wait for some to close
                self.accept_errors += 1
                if self.accept_errors == 1 or self.accept_errors % 1000 == 0:
                    log.warning("/metrics: accept refused (%s), %d so far", exc, self.accept_errors)
                await anyio.sleep(ACCEPT_BACKOFF_S)
                continue
            if len(self._open) >= MAX_CONNECTIONS:  # the oldest is closed as its task ends
                self._open.pop(next(iter(self._open))).cancel()
                self.evicted += 1
            scope = anyio.CancelScope()
            self._open[id(scope)] = scope
            tg.start_soon(self._answer_within, stream, scope)

    async def _answer_within(self, stream: SocketStream, scope: anyio.CancelScope) -> None:
        try:
            with scope:
                await self._answer(stream)
        finally:
            self._open.pop(id(scope), None)
            with anyio.CancelScope(shield=True):
                await stream.aclose()  # (already closed unless cancelled before its answer began)
