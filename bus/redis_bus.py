"""RedisStreamBus: the Bus protocol over redis.asyncio (a real server or fakeredis).

- Blocking reads use ``BLOCK`` on a real server (keep it well under ``socket_timeout``); fakeredis
  answers a BLOCK at once, so there the read polls without BLOCK and sleeps ``poll_interval_s``
  between tries until the block time is spent (never a busy spin).
- redis-py's own retries are switched off (a retried XADD would duplicate); idempotent calls are
  retried here with exponential backoff and jitter, the others raise :class:`BusUnavailable`.
- ``NOGROUP`` (stream deleted, group destroyed) is healed by recreating the group.
- Features are detected once from the server version (INFO; fakeredis: its emulated version).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
import redis.asyncio as aioredis
import redis.exceptions as rex
from redis.asyncio.cluster import RedisCluster

from ._scripts import (
    CLAIM_KEY,
    CLAIM_KEYS,
    CLAIM_NONCES,
    COMMIT,
    DEAD_LETTER,
    PUBLISH_MANY,
    RELEASE_KEY,
    RENEW_KEY,
)
from .api import (
    DEAD_MAXLEN,
    Append,
    Entry,
    Fence,
    Fields,
    GroupInfo,
    Handled,
    StreamInfo,
    check_append,
    dead_copy,
    processed_key,
)
from .backoff import backoff_s
from .connect import Closer, open_client, parse_bus_url
from .errors import BusClosed, BusError, BusProtocolError, BusUnavailable, Fenced
from .redis_codec import (
    _encode_append,
    _fast_packing,
    _fields,
    _not_applied,
    _raw_reply,
    _s,
    _stream_entries,
    _xadd,
    group_lag,
    sorted_ids,
)
from .retention import clamp_trim_id, safe_trim_id

__all__ = ["RedisStreamBus"]

T = TypeVar("T")
DAY_MS = 24 * 3600 * 1000
_SCAN_COUNT = 5_000
_GONE = ("NOGROUP", "UNBLOCKED", "The XGROUP subcommand requires the key to exist")


class RedisStreamBus:
    """Bus over a ``redis.asyncio.Redis`` or ``fakeredis.FakeAsyncRedis`` client."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        processed_ttl_ms: int = DAY_MS,
        server_version: tuple[int, ...] | None = None,
        poll_interval_s: float = 0.02,
        retries: int = 3,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 2.0,
        close_client: bool = True,
        max_block_ms: int | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        closers: Sequence[Closer] = (),
    ) -> None:
        self.client: Any = client  # redis-py's stubs disagree with its runtime types
        self.is_cluster = isinstance(client, RedisCluster)
        if wait_replicas < 0 or wait_timeout_ms < 1:
            raise ValueError("wait_replicas must be >= 0 and wait_timeout_ms >= 1")
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._closers = list(closers)
        self.max_block_ms = max_block_ms
        self.processed_ttl_ms = processed_ttl_ms
        self.server_version = server_version
        self.poll_interval_s = poll_interval_s
        self.retries = retries
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.is_fake = type(client).__module__.startswith("fakeredis")
        self._close_client = close_client
        self._closed = False
        self._commit = client.register_script(COMMIT)
        self._dead = client.register_script(DEAD_LETTER)
        self._claim = client.register_script(CLAIM_KEY)
        self._claim_many = client.register_script(CLAIM_KEYS)
        self._claim_nonces = client.register_script(CLAIM_NONCES)
        self._publish_many = client.register_script(PUBLISH_MANY)
        self._renew = client.register_script(RENEW_KEY)
        self._release = client.register_script(RELEASE_KEY)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        socket_timeout: float = 10.0,
        socket_connect_timeout: float = 5.0,
        **opts: Any,
    ) -> RedisStreamBus:
        """Connect lazily to ``url`` (one server, ``redis+cluster://`` or ``redis+sentinel://``,
        see :mod:`bus.connect`); ``opts`` go to the constructor.

        Reads block at most ``socket_timeout / 2`` (see :meth:`read`), so a BLOCK never trips the
        socket timeout.
        """
        target = parse_bus_url(url)
        client, closers = open_client(
            target,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            connection_class=_fast_packing,
        )
        # our own client: entries arrive as flat lists, turned into dicts once (in _fields)
        client.set_response_callback("XREADGROUP", _raw_reply)
        opts.setdefault("max_block_ms", int(socket_timeout * 500))
        opts.setdefault("wait_replicas", target.wait)
        opts.setdefault("wait_timeout_ms", target.wait_timeout_ms)
        return cls(client, closers=closers, **opts)

    # -- plumbing -----------------------------------------------------------------------------
    def _translate(self, exc: BaseException) -> BusError:
        if self._closed:
            return BusClosed("the bus is closed")
        if isinstance(exc, rex.ConnectionError | rex.TimeoutError | OSError) or _not_applied(exc):
            return BusUnavailable(f"redis unavailable: {exc}")
        return BusProtocolError(str(exc))

    async def _call(self, op: Callable[[], Awaitable[T]], *, idempotent: bool = True) -> T:
        if self._closed:
            raise BusClosed("the bus is closed")
        attempt = 0
        while True:
            try:
                return await op()
            except (rex.RedisError, OSError) as exc:
                err = self._translate(exc)
                if isinstance(err, BusUnavailable):
                    await self._drop_idle_connections()
                if not isinstance(err, BusUnavailable) or not (idempotent or _not_applied(exc)):
                    raise err from exc
                if attempt >= self.retries:
                    raise err from exc
            await anyio.sleep(
                backoff_s(attempt, base_s=self.backoff_base_s, cap_s=self.backoff_cap_s)
            )
            attempt += 1

    async def _drop_idle_connections(self) -> None:
        """After a connection-level failure the server may have restarted: the pool's idle
        connections are then dead too, and a write sent on one would fail with an unknown
        outcome. Drop them so that the next command opens a fresh connection."""
        pool = getattr(self.client, "connection_pool", None)  # a cluster client manages its own
        if pool is None:
            return
        with contextlib.suppress(Exception):
            await pool.disconnect(inuse_connections=False)

    async def _durable(self, command: list[Any], script: Any = None) -> Any:
        """Run one write ``command`` (EVALSHA of ``script`` when given: ``[keys, args]``).

        With ``wait_replicas`` the command is followed by ``WAIT`` on the same connection (one
        round trip); fewer replicas than asked within ``wait_timeout_ms`` raises BusUnavailable:
        the write may be on the primary only, so its outcome is unknown, like a lost reply.
        """
        if script is not None:
            keys, args = command
            if not self.wait_replicas:
                return await script(keys=keys, args=args)
            command = ["EVALSHA", script.sha, len(keys), *keys, *args]
        elif not self.wait_replicas:
            return await self.client.execute_command(*command)
        if self.is_cluster:
            return await self._durable_on_shard(command, script)
        for _ in range(2):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.execute_command(*command)
                pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
                reply, acked = await pipe.execute(raise_on_error=False)
            if isinstance(reply, rex.NoScriptError) and script is not None:
                await self.client.script_load(script.script)  # not run: load, then send again
                continue
            return self._confirmed(reply, acked)
        raise BusProtocolError("script could not be loaded")  # pragma: no cover

    async def _durable_on_shard(self, command: list[Any], script: Any) -> Any:
        """:meth:`_durable` on a cluster: the write and its WAIT go to the shard that owns the
        command's first key, on one connection of that node."""
        from redis.asyncio.cluster import PipelineCommand

        key_at = 3 if command[0] == "EVALSHA" else 1
        for _ in range(2):
            await self.client.initialize()  # a no-op unless the topology must be (re)discovered
            node = self.client.get_node_from_key(command[key_at])
            cmds = [PipelineCommand(0, *command),
                    PipelineCommand(1, "WAIT", self.wait_replicas, self.wait_timeout_ms)]  # fmt: skip
            try:
                await node.execute_pipeline(cmds)
            except (rex.ConnectionError, rex.TimeoutError, OSError):
                self.client._initialize = True  # rediscover the topology on the next command
                raise
            reply, acked = cmds[0].result, cmds[1].result
            if isinstance(reply, rex.NoScriptError) and script is not None:
                await node.execute_command("SCRIPT", "LOAD", script.script)
                continue
            if isinstance(reply, rex.AskError | rex.ClusterDownError):
                self.client._initialize = True  # the slot moved: refresh the slot map
            return self._confirmed(reply, acked)
        raise BusProtocolError("script could not be loaded")  # pragma: no cover

    def _confirmed(self, reply: Any, acked: Any) -> Any:
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(acked, BaseException) or int(acked) < self.wait_replicas:
            got = acked if not isinstance(acked, BaseException) else f"error: {acked}"
            raise BusUnavailable(
                f"write not confirmed by {self.wait_replicas} replica(s) within "
                f"{self.wait_timeout_ms} ms ({got}): its outcome is unknown"
            )
        return reply

    async def version(self) -> tuple[int, ...]:
        """The server version (detected once; fakeredis reports its emulated version)."""
        if self.server_version is None:
            if self.is_fake:
                self.server_version = (7, 0)
            else:
                info = await self._call(lambda: self.client.info("server"))
                text = str(info.get("redis_version", "0"))
                self.server_version = tuple(int(p) for p in text.split(".") if p.isdigit())
        return self.server_version

    # -- writes -------------------------------------------------------------------------------
    async def publish(self, stream: str, fields: Fields, *, maxlen: int | None = None) -> str:
        check_append(Append(stream, fields, maxlen))
        raw = await self._call(
            lambda: self._durable(_xadd(stream, fields, maxlen)),
            idempotent=False,
        )
        return _s(raw)

    async def publish_many(self, appends: Sequence[Append]) -> list[str]:
        """All ``appends`` in one script call: one round trip, all or nothing, ids in order."""
        if not appends:
            return []
        keys: dict[str, int] = {}
        args: list[Any] = []
        for a in appends:
            check_append(a)
            _encode_append(args, keys.get(a.stream) or keys.setdefault(a.stream, len(keys) + 1), a)
        names = list(keys)
        raw = await self._call(
            lambda: self._durable([names, args], self._publish_many), idempotent=False
        )
        return [_s(r) for r in raw]

    async def ensure_group(self, stream: str, group: str, *, start: str = "0") -> None:
        async def run() -> None:
            try:
                await self._durable(["XGROUP CREATE", stream, group, start, "MKSTREAM"])
            except rex.ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise

        await self._call(run)

    async def commit(self, handled: Sequence[Handled], *, fence: Fence | None = None) -> list[bool]:
        if not handled:
            return []
        keys: dict[str, int] = {}
        groups: dict[str, int] = {}
        items: list[Any] = []
        for h in handled:
            stream = h.entry.stream
            ki = keys.get(stream) or keys.setdefault(stream, len(keys) + 1)
            gi = groups.get(h.group) or groups.setdefault(h.group, len(groups) + 1)
            di = 0
            if h.dedupe_key is not None:
                di = keys.setdefault(processed_key(stream, h.group, h.dedupe_key), len(keys) + 1)
            items += (ki, gi, di, len(h.appends), h.entry.id)
            for a in h.appends:
                check_append(a)
                _encode_append(
                    items, keys.get(a.stream) or keys.setdefault(a.stream, len(keys) + 1), a
                )
        head: list[Any] = [self.processed_ttl_ms, 0, "", 0]
        if fence is not None:
            head = [self.processed_ttl_ms, keys.setdefault(fence.key, len(keys) + 1),
                    fence.token, fence.ttl_ms]  # fmt: skip
        args: list[Any] = [*head, len(groups), *groups, *items]
        names = list(keys)
        # Always safe to resend: a commit whose reply was lost acked its entries, so the resent
        # one finds them no longer pending and writes nothing (it reports duplicates).
        try:
            raw = await self._call(lambda: self._durable([names, args], self._commit))
        except BusProtocolError as exc:
            if str(exc).startswith("FENCED"):
                raise Fenced(str(exc)) from None
            raise
        if isinstance(raw, str):
            raw = raw.encode()
        return [c == 49 for c in raw]  # b"1"

    async def dead_letter(self, entry: Entry, group: str, *, dead_stream: str, reason: str) -> None:
        args: list[Any] = [group, entry.id, DEAD_MAXLEN]
        for name, value in dead_copy(entry, group, reason).items():
            args += [name, value]
        await self._call(lambda: self._durable([[dead_stream, entry.stream], args], self._dead))

    async def claim_key(self, key: str, value: str, ttl_ms: int) -> str | None:
        raw = await self._call(
            lambda: self._claim(keys=[key], args=[value, ttl_ms]), idempotent=False
        )
        return None if raw is None else _s(raw)

    async def claim_keys(self, items: Sequence[tuple[str, str]], ttl_ms: int) -> list[str | None]:
        if not items:
            return []
        keys = [k for k, _ in items]
        args: list[str | int] = [ttl_ms, *(v for _, v in items)]
        raw = await self._call(lambda: self._claim_many(keys=keys, args=args), idempotent=False)
        return [None if r is None else _s(r) for r in raw]

    async def claim_nonces(
        self, since_key: str, items: Sequence[tuple[str, str]], ttl_ms: int
    ) -> tuple[int, list[str | None]]:
        keys = [since_key, *(k for k, _ in items)]
        args: list[str | int] = [ttl_ms, *(v for _, v in items)]
        raw = await self._call(lambda: self._claim_nonces(keys=keys, args=args), idempotent=False)
        return int(_s(raw[0])), [None if r is None else _s(r) for r in raw[1:]]

    async def renew_key(self, key: str, value: str, ttl_ms: int) -> bool:
        return bool(await self._call(lambda: self._renew(keys=[key], args=[value, ttl_ms])))

    async def release_key(self, key: str, value: str) -> bool:
        return bool(await self._call(lambda: self._release(keys=[key], args=[value])))

    async def get_value(self, key: str) -> bytes | None:
        raw = await self._call(lambda: self.client.get(key))
        return None if raw is None else bytes(raw)

    async def set_value(self, key: str, value: bytes, *, ttl_ms: int | None = None) -> None:
        command: list[Any] = ["SET", key, value] + ([] if ttl_ms is None else ["PX", ttl_ms])
        await self._call(lambda: self._durable(command))

    # -- reads --------------------------------------------------------------------------------
    async def _deliveries(
        self, stream: str, group: str, consumer: str, ids: list[str]
    ) -> dict[str, int]:
        if not ids:
            return {}
        rows = await self._call(
            lambda: self.client.xpending_range(
                stream, group, min=ids[0], max=ids[-1], count=len(ids) + 10_000,
                consumername=consumer,
            )
        )  # fmt: skip
        return {_s(r["message_id"]): int(r["times_delivered"]) for r in rows}

    async def _xreadgroup(
        self, stream: str, group: str, consumer: str, start: str, count: int, block: int | None
    ) -> list[tuple[str, Any]] | None:
        """One XREADGROUP; None if the group/stream was gone (and has been recreated)."""
        try:
            # reading new entries (">") moves them into the consumer's pending list on the
            # server: a retry after a lost reply would skip them, so the caller (the Consumer)
            # sees the failure and re-reads its own pending entries instead
            reply = await self._call(
                lambda: self.client.xreadgroup(group, consumer, {stream: start}, count, block),
                idempotent=start != ">",
            )
        except BusProtocolError as exc:
            if not any(mark in str(exc) for mark in _GONE):
                raise
            await self.ensure_group(stream, group, start="0")
            return None
        return _stream_entries(reply)

    async def read(
        self,
        stream: str,
        group: str,
        consumer: str,
        *,
        count: int = 256,
        block_ms: int = 1000,
        pending_first: bool = False,
        pending_after: str = "0",
    ) -> list[Entry]:
        if pending_first:
            rows = await self._xreadgroup(stream, group, consumer, pending_after, count, None)
            if not rows:
                return []
            counts = await self._deliveries(stream, group, consumer, [r[0] for r in rows])
            return [Entry(stream, i, _fields(f), counts.get(i, 1)) for i, f in rows]
        if self.max_block_ms is not None:
            block_ms = min(block_ms, self.max_block_ms)
        if self.is_fake:
            deadline = anyio.current_time() + block_ms / 1000
            while True:
                rows = await self._xreadgroup(stream, group, consumer, ">", count, None)
                remaining = deadline - anyio.current_time()
                if rows is None or rows or remaining <= 0:
                    break
                await anyio.sleep(min(self.poll_interval_s, remaining))
        else:
            block = block_ms if block_ms > 0 else None
            rows = await self._xreadgroup(stream, group, consumer, ">", count, block)
        return [Entry(stream, i, _fields(f), 1) for i, f in rows or ()]

    async def claim_stale(
        self, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int = 256
    ) -> list[Entry]:
        if await self.version() < (6, 2):
            return await self._claim_stale_xclaim(stream, group, consumer, min_idle_ms, count)
        claimed: list[tuple[str, Any]] = []
        deleted: list[str] = []
        cursor = "0-0"
        while len(claimed) + len(deleted) < count:
            want = count - len(claimed) - len(deleted)
            try:
                reply = await self._call(
                    lambda c=cursor, n=want: self.client.xautoclaim(  # type: ignore[misc]
                        stream, group, consumer, min_idle_ms, c, count=n
                    )
                )
            except BusProtocolError as exc:
                if any(mark in str(exc) for mark in _GONE):
                    return []
                raise
            cursor = _s(reply[0])
            for item in reply[1]:
                if item is None:
                    continue
                claimed.append((_s(item[0]), item[1]))
            if len(reply) > 2:
                deleted += [_s(i) for i in reply[2]]
            if cursor == "0-0":
                break
        counts = await self._deliveries(
            stream, group, consumer, sorted_ids([i for i, _ in claimed])
        )
        out = [Entry(stream, i, _fields(f), counts.get(i, 1)) for i, f in claimed]
        return out + [Entry(stream, i, {}, 0) for i in deleted]

    async def _claim_stale_xclaim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int
    ) -> list[Entry]:
        """Pre-6.2 path: XPENDING then XCLAIM (no XAUTOCLAIM)."""
        rows = await self._call(lambda: self.client.xpending_range(stream, group, "-", "+", count))
        ids = [_s(r["message_id"]) for r in rows if int(r["time_since_delivered"]) >= min_idle_ms]
        if not ids:
            return []
        got = await self._call(
            lambda: self.client.xclaim(stream, group, consumer, min_idle_ms, ids)
        )
        claimed = [(_s(i), f) for i, f in got if i is not None]
        counts = await self._deliveries(
            stream, group, consumer, sorted_ids([i for i, _ in claimed])
        )
        return [Entry(stream, i, _fields(f), counts.get(i, 1)) for i, f in claimed]

    async def range(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[Entry]:
        rows = await self._call(lambda: self.client.xrange(stream, start, end, count))
        return [Entry(stream, _s(i), _fields(f)) for i, f in rows]

    async def streams(self, pattern: str) -> list[str]:
        async def run() -> list[str]:
            # SCAN's default COUNT (10) costs one round trip per 10 keys of the whole keyspace
            keys = self.client.scan_iter(match=pattern, _type="stream", count=_SCAN_COUNT)
            return [_s(k) async for k in keys]

        return sorted(set(await self._call(run)))

    async def register(self, key: str, *members: str) -> None:
        if members:
            await self._call(lambda: self._durable(["SADD", key, *members]))

    async def members(self, key: str) -> list[str]:
        return sorted(_s(m) for m in await self._call(lambda: self.client.smembers(key)))

    async def info(self, stream: str) -> StreamInfo:
        try:
            raw = await self._call(lambda: self.client.xinfo_stream(stream))
        except BusProtocolError as exc:
            if "no such key" in str(exc).lower():
                return StreamInfo(stream, 0, "0-0", ())
            raise
        rows = await self._call(lambda: self.client.xinfo_groups(stream))
        groups: list[GroupInfo] = []
        for g in rows:
            name = _s(g["name"])
            oldest: str | None = None
            if int(g["pending"]):
                summary = await self._call(lambda n=name: self.client.xpending(stream, n))  # type: ignore[misc]
                oldest = _s(summary["min"]) if summary.get("min") else None
            last_id, delivered = _s(raw["last-generated-id"]), _s(g["last-delivered-id"])
            groups.append(
                GroupInfo(
                    name=name,
                    consumers=int(g["consumers"]),
                    pending=int(g["pending"]),
                    lag=group_lag(g.get("lag"), delivered, last_id, counted="lag" in g),
                    last_delivered=delivered,
                    oldest_pending=oldest,
                )
            )
        return StreamInfo(stream, int(raw["length"]), _s(raw["last-generated-id"]), tuple(groups))

    async def trim(self, stream: str, *, min_id: str) -> int:
        bound = clamp_trim_id(min_id, await safe_trim_id(self, stream))
        removed = await self._call(
            lambda: self.client.xtrim(stream, minid=bound, approximate=False)
        )
        return int(removed)

    async def delete(self, *keys: str) -> None:
        if keys:
            await self._call(lambda: self.client.delete(*keys))

    async def ping(self) -> bool:
        try:
            return bool(await self._call(lambda: self.client.ping(), idempotent=False))
        except BusUnavailable:
            return False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._close_client:
            await self.client.aclose()
            for close in self._closers:
                await close()
