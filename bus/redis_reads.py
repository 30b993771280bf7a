"""RedisStreamBus's reads: group reads (new or pending entries), claiming stale entries, ranges.

Blocking reads use ``BLOCK`` on a real server (keep it well under ``socket_timeout``); fakeredis
answers a BLOCK at once, so there the read polls without BLOCK and sleeps ``poll_interval_s``
between tries until the block time is spent (never a busy spin).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio

from .api import Entry
from .errors import BusProtocolError
from .redis_codec import _fields, _new_entries, _s, _stream_entries, sorted_ids
from .redis_core import RedisCore, gone

__all__ = ["RedisReads"]

#: an exclusive start after the largest possible entry id: no entry can follow it
_AFTER_LAST = "(18446744073709551615-18446744073709551615"
FIND_PAGE = 16  # entries a look for a lost append's entry reads per XRANGE (inside one script)
FIND_PAGES = 300  # XRANGE pages per script call: 4,800 entries at most, a few ms of the server,
FIND_BYTES = 4 << 20  # or fields of about 4 MiB (a page more at most): then the next call

Rows = list[tuple[str, Any]]  # (entry id, fields as the reply holds them)


class RedisReads(RedisCore):
    """The read commands of RedisStreamBus."""

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

    async def find_entry(self, stream: str, name: str, value: bytes, start: str) -> str | None:
        """The script :data:`~bus._read_scripts.FIND_ENTRY`, a bounded part of the search a call, and
        with ``wait=N`` its WAIT on the same connection: a found entry counts only when the
        replicas hold it (the script then writes a key beside the stream, ``STREAM|found``: no
        stream name holds a ``|``, and the hash tag is the stream's)."""
        keys = [stream, f"{stream}|found"] if self.wait_replicas else [stream]
        while True:
            command = [keys, [name, value, start, FIND_PAGE, FIND_PAGES, FIND_BYTES]]
            found, more = await self._call(lambda c=command: self._durable(c, self._find_entry))  # type: ignore[misc]
            if found:
                return _s(found)
            if not more:
                return None
            start = _s(more)

    async def pending_of(self, stream: str, group: str, ids: Sequence[str]) -> set[str]:
        """One ``XPENDING stream group id id 1`` per id (a writer's own pending entries in
        between, however many, are not read)."""
        out: set[str] = set()
        for entry_id in ids:
            rows = await self._call(
                lambda i=entry_id: self.client.xpending_range(stream, group, min=i, max=i, count=1)  # type: ignore[misc]
            )
            out.update(_s(r["message_id"]) for r in rows)
        return out

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
            if not gone(exc):
                raise
            await self.ensure_group(stream, group, start="0")
            return None
        return _stream_entries(reply)

    async def _with_deliveries(
        self, stream: str, group: str, consumer: str, rows: Rows
    ) -> list[Entry]:
        """``rows`` as entries carrying their delivery counts (ids in any order)."""
        counts = await self._deliveries(stream, group, consumer, sorted_ids([i for i, _ in rows]))
        return [Entry(stream, i, _fields(f), counts.get(i, 1)) for i, f in rows]

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
            return await self._read_pending(stream, group, consumer, pending_after, count)
        if self.max_block_ms is not None:
            block_ms = min(block_ms, self.max_block_ms)
        if self.is_fake:
            rows = await self._poll_new(stream, group, consumer, count, block_ms)
        else:
            block = block_ms if block_ms > 0 else None
            rows = await self._xreadgroup(stream, group, consumer, ">", count, block)
        return _new_entries(stream, rows or ())

    async def _read_pending(
        self, stream: str, group: str, consumer: str, after: str, count: int
    ) -> list[Entry]:
        """The consumer's own pending entries after ``after``, with their delivery counts."""
        rows = await self._xreadgroup(stream, group, consumer, after, count, None)
        if not rows:
            return []
        counts = await self._deliveries(stream, group, consumer, [r[0] for r in rows])
        return [Entry(stream, i, _fields(f), counts.get(i, 1)) for i, f in rows]

    async def _poll_new(
        self, stream: str, group: str, consumer: str, count: int, block_ms: int
    ) -> Rows | None:
        """New entries on fakeredis (no real BLOCK): try every ``poll_interval_s`` until some
        arrive or ``block_ms`` is spent; None if the group was gone (and has been recreated)."""
        deadline = anyio.current_time() + block_ms / 1000
        while True:
            rows = await self._xreadgroup(stream, group, consumer, ">", count, None)
            remaining = deadline - anyio.current_time()
            if rows is None or rows or remaining <= 0:
                return rows
            await anyio.sleep(min(self.poll_interval_s, remaining))

    async def claim_stale(
        self, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int = 256
    ) -> list[Entry]:
        if await self.version() < (6, 2):
            return await self._claim_stale_xclaim(stream, group, consumer, min_idle_ms, count)
        page = await self._autoclaim(stream, group, consumer, min_idle_ms, count)
        if page is None:
            return []
        claimed, deleted = page
        out = await self._with_deliveries(stream, group, consumer, claimed)
        return out + [Entry(stream, i, {}, 0) for i in deleted]

    async def _autoclaim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int
    ) -> tuple[Rows, list[str]] | None:
        """XAUTOCLAIM page by page until ``count`` entries (claimed, or deleted while pending)
        or the end of the pending list: (claimed rows, deleted ids); None if the group is gone."""
        claimed: Rows = []
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
                if gone(exc):
                    return None
                raise
            cursor = _s(reply[0])
            claimed += [(_s(item[0]), item[1]) for item in reply[1] if item is not None]
            if len(reply) > 2:
                deleted += [_s(i) for i in reply[2]]
            if cursor == "0-0":
                break
        return claimed, deleted

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
        return await self._with_deliveries(stream, group, consumer, claimed)

    async def range(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[Entry]:
        if start == _AFTER_LAST:  # nothing can follow the largest id (Redis calls it an error)
            return []
        rows = await self._call(lambda: self.client.xrange(stream, start, end, count))
        return [Entry(stream, _s(i), _fields(f)) for i, f in rows]
