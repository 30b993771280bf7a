"""Reading a stream of signed entries back: paged, verified, parsed, typed.

:func:`read_log` is the one reader of the run's streams (the event log, the rejected stream,
heartbeats, a client's outcomes): a shell's rebuild, replay, ``kasmina status``, the client and
the harnesses all use it. It is built on the bus's entry iterator (:func:`bus.aiter_entries`) and
yields a :class:`LogRecord` per entry that verifies and parses, a :class:`BadEntry` per entry
that does not (tampered, foreign, or no frame at all), in stream order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from actors.hosting.inbox import FRAME
from bus import EntrySource, aiter_entries
from contracts import REGISTRY, ContractError, Envelope, KeyRing, Reason, Verifier
from contracts.errors import Replayed

__all__ = ["PAGE", "BadEntry", "LogRecord", "read_log", "read_verified"]

PAGE = 2000  # entries per range call
_REVOKED = Reason.REVOKED_KEY  # a key the ring holds but no longer trusts at any time
PROGRESS_EVERY = 10_000  # entries between two calls of read_verified's ``on_read``


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One verified, parsed entry of a stream."""

    entry_id: str
    stream: str
    kind: str
    message: Message
    envelope: Envelope

    @property
    def event(self) -> tuple[str, str, Any]:
        """``(entry_id, kind, message)``: what :func:`actors.replay.fold_events` folds."""
        return (self.entry_id, self.kind, self.message)


@dataclass(frozen=True, slots=True)
class BadEntry:
    """An entry that failed verification or parsing, with the reason code; for a copy of a
    message read before (``replayed``), or a genuine entry out of its sender's time order
    (``stale``: stamped more than twice the clock tolerance before one of that sender's entries
    read earlier in the stream, e.g. an event of an earlier run of the same name appended to this
    one's log), the entry as it verified (``copy``: a rebuild sets it aside on the quarantine
    stream, as it does an event its core refuses to fold)."""

    entry_id: str
    stream: str
    reason: Reason
    detail: str
    copy: LogRecord | None = None
    #: refused for a revoked key yet with a valid MAC under it: a message of the run's past
    #: (or of whoever leaked the key) that this key ring no longer trusts
    signed: bool = False

    def as_dict(self) -> dict[str, str]:
        """JSON-able form (``kasmina replay --json``)."""
        return {
            "entry_id": self.entry_id,
            "stream": self.stream,
            "reason": self.reason.value,
            "detail": self.detail,
        }


async def read_log(
    source: EntrySource,
    stream: str,
    verifier: Verifier,
    *,
    start: str = "-",
    until: str = "+",
    page: int = PAGE,
) -> AsyncIterator[LogRecord | BadEntry]:
    """Every entry of ``stream`` from ``start`` to ``until`` (range ids, ``(id`` for "after id"),
    verified with ``verifier`` (in replay mode for a recorded log: MAC checked, freshness and
    nonces not) and parsed. An entry carrying a message id already read is a copy (someone with
    write access appended a genuine frame again): a :class:`BadEntry` (``replayed``), so no
    reader folds or counts one message twice. Each sender's entries must keep their time order
    within twice the verifier's clock tolerance (a sender writes its entries in the order it
    stamps them; several processes signing under one name may each be a tolerance off): one
    stamped earlier than that is refused as ``stale``, with the record as ``copy``."""
    seen: dict[str, str] = {}  # message id -> the entry that carried it first
    newest: dict[str, int] = {}  # sender -> the latest stamp of its entries read so far
    # twice the clock tolerance: processes signing under one name (a run's `kasmina run`
    # processes, an actor's host after a failover) may each be within it of their readers
    slack = int(2 * verifier.tolerance_s * 1e9)
    async for entry in aiter_entries(source, stream, page, start=start, end=until):
        frame = entry.fields.get(FRAME)
        try:
            if frame is None:
                raise ContractError("no frame field")
            env = verifier.open(frame, stream=entry.stream)
            message = REGISTRY.parse(env.kind, env.body)
        except ContractError as exc:
            signed = (
                frame is not None
                and exc.code is _REVOKED
                and verifier.signed_by_refused_key(frame, stream=stream)
            )
            yield BadEntry(entry.id, stream, exc.code, exc.detail, signed=signed)
            continue
        record = LogRecord(entry.id, stream, env.kind, message, env)
        first = seen.setdefault(env.id, entry.id)
        if first != entry.id:  # a copy: every genuine message has an id of its own
            detail = f"a copy of the message at entry {first}"
            yield BadEntry(entry.id, stream, Replayed.code, detail, record)
            continue
        behind = newest.get(env.sender, env.ts_ns) - env.ts_ns
        if behind > slack:  # appended long after its time: another run's entry under this name
            yield BadEntry(entry.id, stream, Reason.STALE, _out_of_order(env, behind), record)
            continue
        newest[env.sender] = max(env.ts_ns, newest.get(env.sender, env.ts_ns))
        yield record


def _out_of_order(env: Envelope, behind_ns: int) -> str:
    return (
        f"stamped {behind_ns / 1e9:.0f} s before an earlier entry of {env.sender} in this stream: "
        "out of its sender's time order (an entry of an earlier run of the same name?)"
    )


async def read_verified(
    source: EntrySource,
    stream: str,
    ring: KeyRing,
    *,
    until: str | None = None,
    on_read: Callable[[int], None] | None = None,
) -> tuple[list[tuple[str, str, Any]], list[dict[str, str]]]:
    """:func:`read_log` of a whole recorded stream collected: the ``(entry_id, kind, message)``
    events and the bad entries as dicts (with their reason code), in stream order.
    ``on_read(n)`` is told the entries read so far every ``PROGRESS_EVERY`` (progress of a long
    read)."""
    good: list[tuple[str, str, Any]] = []
    bad: list[dict[str, str]] = []
    n = 0
    async for record in read_log(source, stream, Verifier(ring, replay=True), until=until or "+"):
        if isinstance(record, BadEntry):
            bad.append(record.as_dict())
        else:
            good.append(record.event)
        n += 1
        if on_read is not None and n % PROGRESS_EVERY == 0:
            on_read(n)
    return good, bad
