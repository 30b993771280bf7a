"""Test helpers shipped with the bus: throwaway redis-server, back-dating, fault injection."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from .api import Append, Bus, Entry, Fence, Fields, Handled, StreamInfo
from .errors import BusError, BusUnavailable
from .memory import MemoryBus
from .nonce import Claim
from .redis_bus import RedisStreamBus

__all__ = [
    "FaultyBus",
    "RedisServer",
    "backdate",
    "drop_payload",
    "eventually",
    "purge_prefix",
    "real_redis_available",
    "real_redis_url",
    "redis_server",
    "shared_redis",
]

REDIS_SERVER = "/usr/bin/redis-server"
DEFAULT_TEST_REDIS = "redis://127.0.0.1:6379/0"


def real_redis_url() -> str:
    """URL of the shared test server: ``$KASMINA_TEST_REDIS`` or the local default."""
    return os.environ.get("KASMINA_TEST_REDIS", DEFAULT_TEST_REDIS)


def real_redis_available(url: str | None = None, timeout_s: float = 0.5) -> bool:
    """Whether a server answers PING at ``url`` (default :func:`real_redis_url`)."""
    import redis

    client = redis.Redis.from_url(url or real_redis_url(), socket_timeout=timeout_s,
                                  socket_connect_timeout=timeout_s)  # fmt: skip
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """A throwaway redis-server process (see :func:`redis_server`)."""

    port: int
    dir: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    log: list[Path] = field(default_factory=list)
    auth: str = ""  # "user:password@" when the server's default user is off

    @property
    def url(self) -> str:
        return f"redis://{self.auth}127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait until it answers PING (AOF loaded)."""
        log = self.dir / f"redis-{len(self.log)}.log"
        self.log.append(log)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not real_redis_available(self.url, timeout_s=0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the server (no shutdown, no final save)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> None:
        """Start again on the same port and directory (the AOF is reloaded)."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """Terminate the server and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def redis_server(
    aof: bool = True,
    appendfsync: str = "always",
    *,
    extra: Sequence[str] = (),
    auth: str = "",
) -> Iterator[RedisServer]:
    """A redis-server on a free port in a temporary directory, removed afterwards. ``extra``:
    more server arguments; ``auth``: ``user:password@`` for the URL when they require it."""
    tmp = Path(tempfile.mkdtemp(prefix="kasmina-redis-"))
    port = _free_port()
    args = [
        REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp),
        "--save", "", "--appendonly", "yes" if aof else "no", "--appendfsync", appendfsync,
        "--protected-mode", "no", "--daemonize", "no", "--maxmemory-policy", "noeviction",
        *extra,
    ]  # fmt: skip
    server = RedisServer(port=port, dir=tmp, args=args, auth=auth)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def shared_redis() -> Iterator[str]:
    """The shared test server's URL, or a throwaway server's when it is not reachable."""
    if real_redis_available():
        yield real_redis_url()
        return
    if not Path(REDIS_SERVER).exists():
        import pytest

        pytest.skip(f"no redis at {real_redis_url()} and no {REDIS_SERVER}")
    with redis_server(aof=False) as server:
        yield server.url


async def eventually(
    predicate: Callable[[], Awaitable[bool]], *, timeout_s: float = 10.0, interval_s: float = 0.01
) -> None:
    """Poll ``predicate`` until it holds; TimeoutError after ``timeout_s``."""
    with anyio.fail_after(timeout_s):
        while True:
            if await predicate():
                return
            await anyio.sleep(interval_s)


def _unwrap(bus: Bus) -> Bus:
    while isinstance(bus, FaultyBus):
        bus = bus.inner
    return bus


async def backdate(
    bus: Bus, stream: str, group: str, consumer: str, entry_id: str, idle_ms: int
) -> None:
    """Make a pending entry idle for ``idle_ms`` (owner ``consumer``, delivery count untouched)."""
    inner = _unwrap(bus)
    if isinstance(inner, MemoryBus):
        inner.backdate(stream, group, consumer, entry_id, idle_ms)
    elif isinstance(inner, RedisStreamBus):
        await inner.client.xclaim(stream, group, consumer, 0, [entry_id], idle=idle_ms, justid=True)
    else:
        raise TypeError(f"cannot backdate on {type(inner).__name__}")


async def drop_payload(bus: Bus, stream: str, entry_id: str) -> None:
    """Delete an entry's payload while its id stays pending (as a trim would)."""
    inner = _unwrap(bus)
    if isinstance(inner, MemoryBus):
        from .api import parse_id

        s = inner.store.streams[stream]
        key = parse_id(entry_id)
        s.ids.remove(key)
        del s.data[key]
    elif isinstance(inner, RedisStreamBus):
        await inner.client.xdel(stream, entry_id)
    else:
        raise TypeError(f"cannot drop payloads on {type(inner).__name__}")


async def purge_prefix(bus: Bus, prefix: str) -> None:
    """Delete every key starting with ``prefix`` (clean-up after a test on a shared server)."""
    inner = _unwrap(bus)
    if isinstance(inner, MemoryBus):
        for name in [*inner.store.streams, *inner.store.values, *inner.store.sets]:
            if name.startswith(prefix):
                await inner.delete(name)
    elif isinstance(inner, RedisStreamBus):
        keys = [k async for k in inner.client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await inner.client.delete(*keys)


class FaultyBus:
    """Wraps a bus; raises ``error`` (BusUnavailable unless told) at chosen operations or steps.

    ``fail_on`` holds operation names (``"read"``, ``"commit"``...), optionally with a step:
    ``"op:before"`` (the default: nothing happened) or ``"op:after"`` (the inner call happened,
    its reply is lost). ``times`` bounds how many failures are injected (None = every call).
    ``calls`` counts every operation (a counting wrapper for busy-loop checks).
    """

    def __init__(
        self,
        inner: Bus,
        fail_on: set[str] | None = None,
        *,
        times: int | None = None,
        error: type[BusError] = BusUnavailable,
    ):
        self.inner = inner
        self.error = error
        self.fail_on = set(fail_on or ())
        self.times = times
        self.failures = 0
        self.calls: Counter[str] = Counter()

    def heal(self) -> None:
        """Stop injecting failures."""
        self.fail_on.clear()

    def _due(self, op: str, step: str) -> bool:
        wanted = f"{op}:{step}" in self.fail_on or (step == "before" and op in self.fail_on)
        if not wanted or (self.times is not None and self.failures >= self.times):
            return False
        self.failures += 1
        return True

    async def _run(self, op: str, call: Any) -> Any:
        self.calls[op] += 1
        if self._due(op, "before"):
            call.close()
            raise self.error(f"injected failure before {op}")
        result = await call
        if self._due(op, "after"):
            raise self.error(f"injected failure after {op} (reply lost)")
        return result

    async def publish(self, stream: str, fields: Fields, *, maxlen: int | None = None) -> str:
        return str(await self._run("publish", self.inner.publish(stream, fields, maxlen=maxlen)))

    async def publish_many(self, appends: Sequence[Append]) -> list[str]:
        out: list[str] = await self._run("publish_many", self.inner.publish_many(appends))
        return out

    async def ensure_group(self, stream: str, group: str, *, start: str = "0") -> None:
        await self._run("ensure_group", self.inner.ensure_group(stream, group, start=start))

    async def set_group_id(self, stream: str, group: str, last_id: str) -> None:
        await self._run("set_group_id", self.inner.set_group_id(stream, group, last_id))

    async def read(self, stream: str, group: str, consumer: str, *, count: int = 256,
                   block_ms: int = 1000, pending_first: bool = False,
                   pending_after: str = "0") -> list[Entry]:  # fmt: skip
        call = self.inner.read(stream, group, consumer, count=count, block_ms=block_ms,
                               pending_first=pending_first, pending_after=pending_after)  # fmt: skip
        out: list[Entry] = await self._run("read", call)
        return out

    async def claim_stale(self, stream: str, group: str, consumer: str, *, min_idle_ms: int,
                          count: int = 256) -> list[Entry]:  # fmt: skip
        call = self.inner.claim_stale(stream, group, consumer, min_idle_ms=min_idle_ms, count=count)
        out: list[Entry] = await self._run("claim_stale", call)
        return out

    async def commit(self, handled: Sequence[Handled], *, fence: Fence | None = None) -> list[bool]:
        out: list[bool] = await self._run("commit", self.inner.commit(handled, fence=fence))
        return out

    async def renew_key(self, key: str, value: str, ttl_ms: int, *, durable: bool = False) -> bool:
        call = self.inner.renew_key(key, value, ttl_ms, durable=durable)
        return bool(await self._run("renew_key", call))

    async def release_key(self, key: str, value: str) -> bool:
        return bool(await self._run("release_key", self.inner.release_key(key, value)))

    async def dead_letter(self, entry: Entry, group: str, *, dead_stream: str, reason: str) -> None:
        call = self.inner.dead_letter(entry, group, dead_stream=dead_stream, reason=reason)
        await self._run("dead_letter", call)

    async def claim_key(self, key: str, value: str, ttl_ms: int) -> str | None:
        out: str | None = await self._run("claim_key", self.inner.claim_key(key, value, ttl_ms))
        return out

    async def claim_keys(self, items: Sequence[tuple[str, str]], ttl_ms: int) -> list[str | None]:
        out: list[str | None] = await self._run("claim_keys", self.inner.claim_keys(items, ttl_ms))
        return out

    async def claim_nonces(
        self, since_key: str, items: Sequence[tuple[str, str, int]], *, prefix: str = ""
    ) -> tuple[int, list[str | bool | None]]:
        out: tuple[int, list[str | bool | None]] = await self._run(
            "claim_nonces", self.inner.claim_nonces(since_key, items, prefix=prefix)
        )
        return out

    async def get_value(self, key: str) -> bytes | None:
        out: bytes | None = await self._run("get_value", self.inner.get_value(key))
        return out

    async def get_values(self, keys: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = await self._run("get_values", self.inner.get_values(keys))
        return out

    async def set_value(self, key: str, value: bytes, *, ttl_ms: int | None = None) -> None:
        await self._run("set_value", self.inner.set_value(key, value, ttl_ms=ttl_ms))

    async def range(self, stream: str, start: str = "-", end: str = "+",
                    count: int | None = None) -> list[Entry]:  # fmt: skip
        out: list[Entry] = await self._run("range", self.inner.range(stream, start, end, count))
        return out

    async def streams(self, pattern: str) -> list[str]:
        out: list[str] = await self._run("streams", self.inner.streams(pattern))
        return out

    async def register(self, key: str, *members: str) -> None:
        await self._run("register", self.inner.register(key, *members))

    async def members(self, key: str) -> list[str]:
        out: list[str] = await self._run("members", self.inner.members(key))
        return out

    async def info(
        self, stream: str, *, oldest: bool = True, group: str | None = None
    ) -> StreamInfo:
        out: StreamInfo = await self._run(
            "info", self.inner.info(stream, oldest=oldest, group=group)
        )
        return out

    async def pending_of(self, stream: str, group: str, ids: Sequence[str]) -> set[str]:
        out: set[str] = await self._run("pending_of", self.inner.pending_of(stream, group, ids))
        return out

    async def find_entry(self, stream: str, name: str, value: bytes, start: str) -> str | None:
        found: str | None = await self._run(
            "find_entry", self.inner.find_entry(stream, name, value, start)
        )
        return found

    async def trim(self, stream: str, *, min_id: str) -> int:
        return int(await self._run("trim", self.inner.trim(stream, min_id=min_id)))

    async def delete(self, *keys: str) -> None:
        await self._run("delete", self.inner.delete(*keys))

    async def ping(self) -> bool:
        return bool(await self._run("ping", self.inner.ping()))

    async def close(self) -> None:
        await self.inner.close()


class RecordingNonceGuard:
    """A nonce guard that admits every message and keeps what it was asked (``items``: nonce,
    token, deadline in Unix ms): what a receiver asks its nonce store, as the wire vectors pin."""

    since_ns = 0

    def __init__(self) -> None:
        self.items: list[tuple[str, str, int]] = []

    async def admit(self, message_id: str, token: str, deadline_ms: int) -> Claim:
        return (await self.admit_many([(message_id, token, deadline_ms)]))[0]

    async def admit_many(self, items: Sequence[tuple[str, str, int]]) -> list[Claim]:
        self.items += items
        return ["new"] * len(items)
