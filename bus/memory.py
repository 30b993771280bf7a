"""MemoryBus: an in-process bus with the same semantics as RedisStreamBus.

Groups, pending entries lists, delivery counts, idle time from an injectable clock, dead-letters,
dedupe markers, fenced commits and registry sets. Blocking reads wait on an anyio event with a
timeout. Several MemoryBus objects may share one :class:`MemoryStore` (``memory://name``)."""

from __future__ import annotations

import bisect
import fnmatch
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio

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
    format_id,
    parse_id,
    select_range,
)
from .errors import BusClosed, BusProtocolError, Fenced
from .memory_commit import commit_items
from .retention import clamp_trim_id, safe_trim_id

__all__ = ["MemoryBus", "MemoryStore"]

Id = tuple[int, int]
Clock = Callable[[], int]


def wall_clock_ms() -> int:
    """Milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


@dataclass
class _Pending:
    consumer: str
    delivered_ms: int
    count: int


@dataclass
class _Group:
    last_delivered: Id
    pel: dict[Id, _Pending] = field(default_factory=dict)
    consumers: set[str] = field(default_factory=set)


@dataclass
class _Stream:
    ids: list[Id] = field(default_factory=list)
    data: dict[Id, dict[str, bytes]] = field(default_factory=dict)
    last_id: Id = (0, 0)
    groups: dict[str, _Group] = field(default_factory=dict)


class MemoryStore:
    """The shared state behind one or more MemoryBus objects."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or wall_clock_ms
        self.streams: dict[str, _Stream] = {}
        self.values: dict[str, tuple[bytes, int | None]] = {}
        self.sets: dict[str, set[str]] = {}
        self.waiters: list[anyio.Event] = []

    # -- values -------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        item = self.values.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and expires <= self.clock():
            del self.values[key]
            return None
        return value

    def set(self, key: str, value: bytes, ttl_ms: int | None) -> None:
        self.values[key] = (value, None if ttl_ms is None else self.clock() + ttl_ms)

    # -- streams ------------------------------------------------------------------------------
    def stream(self, name: str) -> _Stream:
        if name in self.values and self.get(name) is not None:
            raise BusProtocolError(f"WRONGTYPE {name!r} holds a value, not a stream")
        return self.streams.setdefault(name, _Stream())

    def new_id(self, s: _Stream) -> Id:
        now = self.clock()
        ms, seq = s.last_id
        return (ms, seq + 1) if now <= ms else (now, 0)

    def add(self, name: str, fields: Fields, maxlen: int | None) -> str:
        s = self.stream(name)
        entry_id = self.new_id(s)
        s.ids.append(entry_id)
        s.data[entry_id] = dict(fields)
        s.last_id = entry_id
        if maxlen is not None and len(s.ids) > maxlen:
            for old in s.ids[: len(s.ids) - maxlen]:
                del s.data[old]
            del s.ids[: len(s.ids) - maxlen]
        for event in self.waiters:
            event.set()
        self.waiters.clear()
        return format_id(entry_id)

    def pending(self, name: str, group: str, entry_id: str) -> bool:
        """Whether ``entry_id`` is in the group's PEL."""
        s = self.streams.get(name)
        g = s.groups.get(group) if s is not None else None
        return g is not None and parse_id(entry_id) in g.pel

    def ack(self, name: str, group: str, entry_id: str) -> bool:
        """Remove ``entry_id`` from the group's PEL; whether it was pending (as XACK's reply)."""
        s = self.streams.get(name)
        g = s.groups.get(group) if s is not None else None
        return g is not None and g.pel.pop(parse_id(entry_id), None) is not None


class MemoryBus:
    """In-process implementation of the Bus protocol (see module docstring)."""

    def __init__(
        self,
        store: MemoryStore | None = None,
        *,
        clock: Clock | None = None,
        processed_ttl_ms: int = 24 * 3600 * 1000,
    ) -> None:
        self.store = store or MemoryStore(clock)
        self.processed_ttl_ms = processed_ttl_ms
        self._closed = False

    def _open(self) -> MemoryStore:
        if self._closed:
            raise BusClosed("the bus is closed")
        return self.store

    async def publish(self, stream: str, fields: Fields, *, maxlen: int | None = None) -> str:
        return self._open().add(stream, fields, maxlen)

    async def publish_many(self, appends: Sequence[Append]) -> list[str]:
        store = self._open()
        for a in appends:
            check_append(a)
            store.stream(a.stream)
        return [store.add(a.stream, a.fields, a.maxlen) for a in appends]

    async def ensure_group(self, stream: str, group: str, *, start: str = "0") -> None:
        s = self._open().stream(stream)
        if group not in s.groups:
            first = s.last_id if start == "$" else parse_id(start)
            s.groups[group] = _Group(last_delivered=first)

    async def set_group_id(self, stream: str, group: str, last_id: str) -> None:
        self._group(stream, group)[1].last_delivered = parse_id(last_id)

    def _group(self, stream: str, group: str) -> tuple[_Stream, _Group]:
        s = self._open().stream(stream)
        if group not in s.groups:  # self-heal, as RedisStreamBus does on NOGROUP
            s.groups[group] = _Group(last_delivered=(0, 0))
        return s, s.groups[group]

    def _read_now(
        self, stream: str, group: str, consumer: str, count: int, pending: bool, after: str
    ) -> list[Entry]:
        s, g = self._group(stream, group)
        g.consumers.add(consumer)
        now = self.store.clock()
        out: list[Entry] = []
        if pending:
            start = parse_id(after)
            for entry_id in sorted(g.pel):
                p = g.pel[entry_id]
                if entry_id <= start or p.consumer != consumer:
                    continue
                p.count += 1
                p.delivered_ms = now
                fields = dict(s.data.get(entry_id, {}))
                out.append(Entry(stream, format_id(entry_id), fields, p.count))
                if len(out) >= count:
                    break
            return out
        pos = bisect.bisect_right(s.ids, g.last_delivered)
        for entry_id in s.ids[pos : pos + count]:
            g.pel[entry_id] = _Pending(consumer, now, 1)
            g.last_delivered = entry_id
            out.append(Entry(stream, format_id(entry_id), dict(s.data[entry_id]), 1))
        return out

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
        deadline = anyio.current_time() + block_ms / 1000
        while True:
            out = self._read_now(stream, group, consumer, count, pending_first, pending_after)
            remaining = deadline - anyio.current_time()
            if out or pending_first or block_ms <= 0 or remaining <= 0:
                return out
            event = anyio.Event()
            self.store.waiters.append(event)
            with anyio.move_on_after(remaining):
                await event.wait()
            if event in self.store.waiters:
                self.store.waiters.remove(event)

    async def claim_stale(
        self, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int = 256
    ) -> list[Entry]:
        s, g = self._group(stream, group)
        g.consumers.add(consumer)
        now = self.store.clock()
        out: list[Entry] = []
        for entry_id in sorted(g.pel):
            p = g.pel[entry_id]
            if now - p.delivered_ms < min_idle_ms:
                continue
            if entry_id not in s.data:  # payload trimmed away: dropped from the PEL, as Redis 7
                del g.pel[entry_id]
                out.append(Entry(stream, format_id(entry_id), {}, 0))
            else:
                p.consumer, p.delivered_ms, p.count = consumer, now, p.count + 1
                out.append(Entry(stream, format_id(entry_id), dict(s.data[entry_id]), p.count))
            if len(out) >= count:
                break
        return out

    async def commit(self, handled: Sequence[Handled], *, fence: Fence | None = None) -> list[bool]:
        store = self._open()
        for h in handled:  # validate everything first: all or nothing
            for a in h.appends:
                check_append(a)
                store.stream(a.stream)
        if not handled:
            return []
        if fence is not None:
            if store.get(fence.key) != fence.token.encode():
                raise Fenced(f"FENCED {fence.key} is not held by this owner")
            store.set(fence.key, fence.token.encode(), fence.ttl_ms)
        return commit_items(store, handled, self.processed_ttl_ms)

    async def dead_letter(self, entry: Entry, group: str, *, dead_stream: str, reason: str) -> None:
        store = self._open()
        store.add(dead_stream, dead_copy(entry, group, reason), DEAD_MAXLEN)
        store.ack(entry.stream, group, entry.id)

    async def claim_key(self, key: str, value: str, ttl_ms: int) -> str | None:
        store = self._open()
        existing = store.get(key)
        if existing is not None:
            return existing.decode()
        store.set(key, value.encode(), ttl_ms)
        return None

    async def claim_keys(self, items: Sequence[tuple[str, str]], ttl_ms: int) -> list[str | None]:
        return [await self.claim_key(key, value, ttl_ms) for key, value in items]

    async def claim_nonces(
        self, since_key: str, items: Sequence[tuple[str, str, int]], *, prefix: str = ""
    ) -> tuple[int, list[str | bool | None]]:
        """In-process memory starts with the store: ``since`` is 0 (nothing to refuse)."""
        store = self._open()
        out: list[str | bool | None] = []
        for key, value, deadline_ms in items:
            held = store.get(prefix + key)
            if deadline_ms <= store.clock():
                out.append(False)
            elif held is not None:
                out.append(held.decode())
            else:  # expires at the deadline itself (a TTL re-read from the clock could drift)
                store.values[prefix + key] = (value.encode(), deadline_ms)
                out.append(None)
        return 0, out

    async def renew_key(self, key: str, value: str, ttl_ms: int, *, durable: bool = False) -> bool:
        store = self._open()
        if store.get(key) != value.encode():
            return False
        store.set(key, value.encode(), ttl_ms)
        return True

    async def release_key(self, key: str, value: str) -> bool:
        store = self._open()
        if store.get(key) != value.encode():
            return False
        del store.values[key]
        return True

    async def get_value(self, key: str) -> bytes | None:
        return self._open().get(key)

    async def get_values(self, keys: Sequence[str]) -> list[bytes | None]:
        store = self._open()
        return [store.get(key) for key in keys]

    async def set_value(self, key: str, value: bytes, *, ttl_ms: int | None = None) -> None:
        self._open().set(key, value, ttl_ms)

    async def range(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[Entry]:
        s = self._open().streams.get(stream)
        if s is None:
            return []
        ids = s.ids[select_range(s.ids, start, end, count)]
        return [Entry(stream, format_id(i), dict(s.data[i])) for i in ids]

    async def streams(self, pattern: str) -> list[str]:
        return sorted(n for n in self._open().streams if fnmatch.fnmatchcase(n, pattern))

    async def register(self, key: str, *members: str) -> None:
        store = self._open()
        if key in store.streams or store.get(key) is not None:
            raise BusProtocolError(f"WRONGTYPE {key!r} is not a set")
        store.sets.setdefault(key, set()).update(members)

    async def members(self, key: str) -> list[str]:
        return sorted(self._open().sets.get(key, ()))

    async def info(
        self, stream: str, *, oldest: bool = True, group: str | None = None
    ) -> StreamInfo:
        s = self._open().streams.get(stream)
        if s is None:
            return StreamInfo(stream, 0, "0-0", ())
        groups = tuple(
            GroupInfo(
                name=name,
                consumers=len(g.consumers),
                pending=len(g.pel),
                lag=len(s.ids) - bisect.bisect_right(s.ids, g.last_delivered),
                last_delivered=format_id(g.last_delivered),
                oldest_pending=format_id(min(g.pel)) if g.pel else None,
            )
            for name, g in s.groups.items()
            if group is None or name == group
        )
        return StreamInfo(stream, len(s.ids), format_id(s.last_id), groups)

    async def pending_of(self, stream: str, group: str, ids: Sequence[str]) -> set[str]:
        store = self._open()
        return {i for i in ids if store.pending(stream, group, i)}

    async def find_entry(self, stream: str, name: str, value: bytes, start: str) -> str | None:
        found = (e for e in await self.range(stream, start) if e.fields.get(name) == value)
        return next((e.id for e in found), None)

    async def trim(self, stream: str, *, min_id: str) -> int:
        store = self._open()
        bound = parse_id(clamp_trim_id(min_id, await safe_trim_id(self, stream)))
        s = store.streams.get(stream)
        if s is None:
            return 0
        cut = bisect.bisect_left(s.ids, bound)
        for old in s.ids[:cut]:
            del s.data[old]
        del s.ids[:cut]
        return cut

    async def delete(self, *keys: str) -> None:
        store = self._open()
        for key in keys:
            store.streams.pop(key, None)
            store.values.pop(key, None)
            store.sets.pop(key, None)

    async def ping(self) -> bool:
        self._open()
        return True

    async def close(self) -> None:
        self._closed = True

    def backdate(self, stream: str, group: str, consumer: str, entry_id: str, idle_ms: int) -> None:
        """Make a pending entry look idle for ``idle_ms`` and owned by ``consumer`` (no count)."""
        _, g = self._group(stream, group)
        p = g.pel.get(parse_id(entry_id))
        if p is not None:
            p.consumer = consumer
            p.delivered_ms = self.store.clock() - idle_ms
