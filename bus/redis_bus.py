"""RedisStreamBus: the Bus protocol over redis.asyncio (a real server or fakeredis).

The adapter is split by concern; this module composes it and holds connecting and inspection:
- ``bus/redis_core.py``: retries and backoff, durable writes (WAIT), feature detection, groups;
- ``bus/redis_writes.py``: publish, commit, dead letters and claimed keys (the Lua scripts of
  ``bus/_scripts.py``);
- ``bus/redis_reads.py``: group reads, claiming stale entries, ranges;
- ``bus/redis_codec.py``: encoding, reply parsing, group lag.
"""

from __future__ import annotations

import uuid
from typing import Any

import redis.exceptions as rex

from .api import GroupInfo, StreamInfo
from .connect import open_client, parse_bus_url
from .errors import BusProtocolError, BusUnavailable
from .redis_codec import _fast_packing, _raw_reply, _s, group_lag
from .redis_reads import RedisReads
from .redis_writes import RedisWrites
from .retention import clamp_trim_id, safe_trim_id

__all__ = ["RedisStreamBus"]

_SCAN_COUNT = 5_000
#: replies of a server that refuses the writes of ``info``'s script (its group made and dropped)
_WRITES_REFUSED = ("READONLY", "NOREPLICAS", "OOM", "MISCONF", "NOPERM")
_REFUSED = object()  # ``_state``: the script's writes were refused


class RedisStreamBus(RedisWrites, RedisReads):
    """Bus over a ``redis.asyncio.Redis`` or ``fakeredis.FakeAsyncRedis`` client."""

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

    # -- inspection and administration -------------------------------------------------------
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

    async def info(
        self, stream: str, *, oldest: bool = True, group: str | None = None
    ) -> StreamInfo:
        """The stream's length, last id and groups, without reading any entry (one script,
        :data:`~bus._read_scripts.STREAM_STATE`); where the server refuses the script's writes
        (a read-only replica, ``NOREPLICAS``, out of memory, an ACL without ``XGROUP``) or the key
        is of another type, with ``XINFO``."""
        probe = f"kasmina-info-{uuid.uuid4().hex}"
        try:
            raw = await self._call(lambda: self._state(stream, probe, oldest, group or ""))
        except BusProtocolError:
            return await self._xinfo(stream, oldest=oldest, group=group)
        if raw is _REFUSED:
            return await self._xinfo(stream, oldest=oldest, group=group)
        if not raw:
            return StreamInfo(stream, 0, "0-0", ())
        length, last, rows = raw
        last_id = _s(last)
        groups = tuple(
            GroupInfo(
                name=_s(name),
                consumers=int(consumers),
                pending=int(pending),
                lag=group_lag(lag, _s(delivered), last_id, counted=bool(has)),
                last_delivered=_s(delivered),
                oldest_pending=_s(first) if first else None,
            )
            for name, consumers, pending, delivered, lag, has, first in rows
        )
        return StreamInfo(stream, int(length), last_id, groups)

    async def _state(self, stream: str, probe: str, oldest: bool, group: str) -> Any:
        """The script's reply, or :data:`_REFUSED` when the server refuses its writes (before
        the bus would take the refusal for an outage to wait out)."""
        try:
            return await self._stream_state(keys=[stream], args=[probe, int(oldest), group])
        except rex.ResponseError as exc:
            if isinstance(exc, rex.ReadOnlyError) or str(exc).startswith(_WRITES_REFUSED):
                return _REFUSED
            raise

    async def _xinfo(
        self, stream: str, *, oldest: bool = True, group: str | None = None
    ) -> StreamInfo:
        """``info`` by ``XINFO STREAM`` and ``XINFO GROUPS`` (whose reply holds the stream's first
        and last entries)."""
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
            if group is not None and name != group:
                continue
            first: str | None = None
            if oldest and int(g["pending"]):
                summary = await self._call(lambda n=name: self.client.xpending(stream, n))  # type: ignore[misc]
                first = _s(summary["min"]) if summary.get("min") else None
            last_id, delivered = _s(raw["last-generated-id"]), _s(g["last-delivered-id"])
            groups.append(
                GroupInfo(
                    name=name,
                    consumers=int(g["consumers"]),
                    pending=int(g["pending"]),
                    lag=group_lag(g.get("lag"), delivered, last_id, counted="lag" in g),
                    last_delivered=delivered,
                    oldest_pending=first,
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
