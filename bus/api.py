"""The Bus port: value types and the Protocol every adapter implements.

The bus transports opaque entries (a mapping of field names to bytes) over streams with
consumer groups. It knows nothing of what the bytes mean.
"""

from __future__ import annotations

import bisect
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

__all__ = [
    "DEAD_FIELDS",
    "DEAD_MAXLEN",
    "DEAD_MAX_FIELDS",
    "Append",
    "Bus",
    "Entry",
    "EntrySource",
    "Fence",
    "Fields",
    "GroupInfo",
    "Handled",
    "ShedRange",
    "Shedding",
    "StreamInfo",
    "aiter_entries",
    "check_append",
    "dead_copy",
    "format_id",
    "next_id",
    "parse_id",
    "processed_key",
    "select_range",
    "watermark_key",
]

Fields = Mapping[str, bytes]

#: Field names a dead-lettered copy carries besides the original fields.
DEAD_FIELDS = (
    "dead.stream",
    "dead.id",
    "dead.group",
    "dead.deliveries",
    "dead.reason",
    "dead.fields",
)
#: A dead-lettered copy keeps at most this many of the original fields and bytes (an entry
#: written by anyone may hold thousands of fields), and the dead-letter stream this many entries.
DEAD_MAX_FIELDS = 64
DEAD_MAX_BYTES = 2 << 20
DEAD_MAXLEN = 10_000


def dead_copy(entry: Entry, group: str, reason: str) -> dict[str, bytes]:
    """The fields of ``entry``'s dead-letter copy: its first fields within the bounds above,
    then the ``dead.*`` fields (``dead.fields`` = how many the original had)."""
    out: dict[str, bytes] = {}
    budget = DEAD_MAX_BYTES
    for name, value in entry.fields.items():
        if len(out) >= DEAD_MAX_FIELDS or len(name) + len(value) > budget:
            break
        if name.startswith("dead."):
            continue
        out[name] = value
        budget -= len(name) + len(value)
    meta = (entry.stream, entry.id, group, str(entry.deliveries), reason, str(len(entry.fields)))
    out.update({name: value.encode() for name, value in zip(DEAD_FIELDS, meta, strict=True)})
    return out


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry as delivered (or ranged)."""

    stream: str
    id: str
    fields: dict[str, bytes] = field(default_factory=dict)
    deliveries: int = 1


@dataclass(frozen=True, slots=True)
class Append:
    """An entry to add to a stream; ``maxlen`` is an approximate cap (telemetry only)."""

    stream: str
    fields: Mapping[str, bytes]
    maxlen: int | None = None


class Handled(NamedTuple):
    """One input entry finished by a consumer: its effects and its ack, committed atomically.

    A named tuple (one is built per entry on the hot path; immutable like the other values)."""

    entry: Entry
    group: str
    appends: Sequence[Append] = ()
    dedupe_key: str | None = None


@dataclass(frozen=True, slots=True)
class Fence:
    """An ownership lease a commit is conditional on: it writes only while ``key`` holds
    ``token`` (else :class:`~bus.errors.Fenced`, nothing written), and renews it for ``ttl_ms``."""

    key: str
    token: str
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A consumer group of a stream. ``oldest_pending`` is None when nothing is pending."""

    name: str
    consumers: int
    pending: int
    lag: int | None
    last_delivered: str
    oldest_pending: str | None = None


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A stream's length, last generated id and groups (length 0 / no groups if missing)."""

    name: str
    length: int
    last_id: str
    groups: tuple[GroupInfo, ...]


def check_append(append: Append) -> None:
    """Refuse an append that the server would reject half-way through an atomic commit."""
    if not append.fields:
        raise ValueError(f"an entry needs at least one field (stream {append.stream!r})")
    if append.maxlen is not None and append.maxlen < 0:
        raise ValueError(f"maxlen must be >= 0, got {append.maxlen}")


def parse_id(entry_id: str) -> tuple[int, int]:
    """``"1700000000000-3"`` -> ``(1700000000000, 3)``; a bare ``"5"`` means ``(5, 0)``."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _bound(bound: str, *, low: bool) -> tuple[tuple[int, int], bool]:
    """An XRANGE bound (``-``, ``+``, ``id``, ``ms``, ``(id``) -> (id, exclusive)."""
    if bound == "-":
        return (0, 0), False
    if bound == "+":
        return (2**64, 0), False
    exclusive = bound.startswith("(")
    text = bound[1:] if exclusive else bound
    if "-" not in text:
        return ((int(text), 0) if low else (int(text), 2**64)), exclusive
    return parse_id(text), exclusive


def select_range(ids: Sequence[tuple[int, int]], start: str, end: str, count: int | None) -> slice:
    """The slice of sorted ``ids`` that ``XRANGE start end COUNT count`` would return."""
    low, low_ex = _bound(start, low=True)
    high, high_ex = _bound(end, low=False)
    lo = (bisect.bisect_right if low_ex else bisect.bisect_left)(ids, low)
    hi = (bisect.bisect_left if high_ex else bisect.bisect_right)(ids, high)
    if count is not None:
        hi = min(hi, lo + count)
    return slice(lo, max(lo, hi))


def format_id(parts: tuple[int, int]) -> str:
    """Inverse of :func:`parse_id`."""
    return f"{parts[0]}-{parts[1]}"


def next_id(entry_id: str) -> str:
    """The smallest id strictly greater than ``entry_id``."""
    ms, seq = parse_id(entry_id)
    return format_id((ms, seq + 1))


def processed_key(stream: str, group: str, dedupe_key: str) -> str:
    """Key marking ``dedupe_key`` as processed by ``group`` on ``stream`` (same hash tag)."""
    return f"{stream}:processed:{group}:{dedupe_key}"


def watermark_key(stream: str) -> str:
    """Key holding a stream's retention watermark (entries at or after it are kept)."""
    return f"{stream}:watermark"


@runtime_checkable
class EntrySource(Protocol):
    """Something entries can be ranged from: a live bus or a recording file."""

    async def streams(self, pattern: str) -> list[str]: ...

    async def range(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[Entry]: ...


class Bus(Protocol):
    """Streams with consumer groups, atomic commit (effects + ack), dedupe and dead-lettering."""

    async def publish(self, stream: str, fields: Fields, *, maxlen: int | None = None) -> str: ...

    async def publish_many(self, appends: Sequence[Append]) -> list[str]: ...

    async def ensure_group(self, stream: str, group: str, *, start: str = "0") -> None: ...

    async def set_group_id(self, stream: str, group: str, last_id: str) -> None:
        """Move ``group``'s last-delivered id to ``last_id`` (``XGROUP SETID``)."""
        ...

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
    ) -> list[Entry]: ...

    async def claim_stale(
        self, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int = 256
    ) -> list[Entry]: ...

    async def commit(
        self, handled: Sequence[Handled], *, fence: Fence | None = None
    ) -> list[bool]: ...

    async def dead_letter(
        self, entry: Entry, group: str, *, dead_stream: str, reason: str
    ) -> None: ...

    async def claim_key(self, key: str, value: str, ttl_ms: int) -> str | None: ...

    async def claim_keys(
        self, items: Sequence[tuple[str, str]], ttl_ms: int
    ) -> list[str | None]: ...

    async def claim_nonces(
        self, since_key: str, items: Sequence[tuple[str, str, int]], *, prefix: str = ""
    ) -> tuple[int, list[str | bool | None]]:
        """For each ``(key, value, deadline_ms)`` (the key ``prefix + key``, so a caller need
        not build the full keys): ``False`` if the deadline (Unix ms) has passed
        by the server's clock (nothing set), else ``None`` if the key is set now (expiring at the
        deadline), else the value it holds. First: the time (ms) since which the server's memory
        of such keys is complete (``since_key``'s value, set to the server's start when missing;
        0: unknown)."""
        ...

    async def renew_key(
        self, key: str, value: str, ttl_ms: int, *, durable: bool = False
    ) -> bool: ...

    async def release_key(self, key: str, value: str) -> bool: ...

    async def get_value(self, key: str) -> bytes | None: ...

    async def get_values(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys`` in one round trip (None for a missing key); the keys share one
        run's hash tag."""
        ...

    async def set_value(self, key: str, value: bytes, *, ttl_ms: int | None = None) -> None: ...

    async def range(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[Entry]: ...

    async def streams(self, pattern: str) -> list[str]: ...

    async def register(self, key: str, *members: str) -> None: ...

    async def members(self, key: str) -> list[str]: ...

    async def info(
        self, stream: str, *, oldest: bool = True, group: str | None = None
    ) -> StreamInfo:
        """The stream's length, last id and groups, with each group's oldest pending id (a look
        per group holding pending entries); ``oldest=False``: without it (``oldest_pending``
        may be None), for the frequent looks that need no more than counts and positions;
        ``group``: that group alone (none when it does not exist)."""
        ...

    async def pending_of(self, stream: str, group: str, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` in ``group``'s pending entries list (delivered, not acked)."""
        ...

    async def find_entry(self, stream: str, name: str, value: bytes, start: str) -> str | None:
        """The id of the first entry of ``stream`` at or after id ``start`` whose field ``name``
        holds ``value`` (None: none): whether an append whose reply was lost was written. With
        ``wait=N`` a found entry is confirmed on N replicas of the server that holds it, else
        BusUnavailable (that server may be a primary about to be demoted, losing it)."""
        ...

    async def trim(self, stream: str, *, min_id: str) -> int: ...

    async def delete(self, *keys: str) -> None: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


SHED_BUDGET = 4 << 20  # bytes of entries one shed call reads inside the store, about at most


@dataclass(frozen=True, slots=True)
class ShedRange:
    """Entries of ``stream`` a group may skip: ``count`` of them, ``first`` to ``last``, the
    next ones after ``after`` (its last-delivered id); ``claims``: those that may be commands."""

    stream: str
    count: int
    after: str = ""
    first: str = ""
    last: str = ""
    claims: tuple[Entry, ...] = ()


@runtime_checkable
class Shedding(Protocol):
    """A bus that sheds a flooded inbox's excess without transferring it (Redis: two scripts)."""

    async def shed(
        self, stream: str, group: str, *, keep: int, limit: int,
        claims: int, needle: bytes, max_bytes: int, field: str, budget: int = SHED_BUDGET,
    ) -> ShedRange: ...  # fmt: skip

    async def skip(
        self, shed: ShedRange, group: str, appends: Sequence[Append], *, fence: Fence | None = None
    ) -> int: ...


async def aiter_entries(
    source: EntrySource, stream: str, page: int = 1000, *, start: str = "-", end: str = "+"
) -> AsyncIterator[Entry]:
    """Iterate a stream of ``source`` from ``start`` to ``end`` (range ids: ``-``, ``+``, an id,
    or ``(id`` for after it) in pages of ``page`` entries."""
    while True:
        batch = await source.range(stream, start, end, page)
        for entry in batch:
            yield entry
        if len(batch) < page:
            return
        start = "(" + batch[-1].id
