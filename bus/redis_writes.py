"""RedisStreamBus's writes: XADD, the Lua scripts (publish_many, commit, dead letters, claimed
keys) and plain values. Every write goes through ``_durable`` (WAIT when asked)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .api import (
    DEAD_MAXLEN,
    SHED_BUDGET,
    Append,
    Entry,
    Fence,
    Fields,
    Handled,
    ShedRange,
    check_append,
    dead_copy,
    processed_key,
)
from .errors import BusProtocolError, Fenced
from .redis_codec import _encode_append, _encode_runs, _nonce_claim, _s, _xadd
from .redis_core import RedisCore

__all__ = ["RedisWrites"]


def _commit_args(
    handled: Sequence[Handled], fence: Fence | None, ttl_ms: int
) -> tuple[list[str], list[Any]]:
    """The COMMIT script's keys and arguments (layout: see bus/_scripts.py): consecutive acks
    only (no dedupe key, no appends) of one stream and group go as one run of entry ids."""
    keys: dict[str, int] = {}
    groups: dict[str, int] = {}
    items: list[Any] = []
    run: tuple[str, str] | None = None  # stream and group of the open run of acks
    at = 0  # where that run's count is
    for h in handled:
        stream, group = h.entry.stream, h.group
        if not h.appends and h.dedupe_key is None:
            if run is not None and run[0] == stream and run[1] == group:
                items[at] += 1
                items.append(h.entry.id)
                continue
            run = (stream, group)
        else:
            run = None
        ki = keys.get(stream) or keys.setdefault(stream, len(keys) + 1)
        gi = groups.get(group) or groups.setdefault(group, len(groups) + 1)
        if run is not None:
            items += (ki, gi, 0, 0, 1, h.entry.id)
            at = len(items) - 2
            continue
        _commit_item(items, keys, h, ki, gi)
    head: list[Any] = [ttl_ms, 0, "", 0]
    if fence is not None:
        head = [ttl_ms, keys.setdefault(fence.key, len(keys) + 1), fence.token, fence.ttl_ms]
    return list(keys), [*head, len(groups), *groups, *items]


def _commit_item(items: list[Any], keys: dict[str, int], h: Handled, ki: int, gi: int) -> None:
    """Add one item with a dedupe key or appends (a run of one) to the COMMIT arguments."""
    di = 0
    if h.dedupe_key is not None:
        di = keys.setdefault(processed_key(h.entry.stream, h.group, h.dedupe_key), len(keys) + 1)
    items += (ki, gi, di, len(h.appends), 1, h.entry.id)
    for a in h.appends:
        check_append(a)
        _encode_append(items, keys.get(a.stream) or keys.setdefault(a.stream, len(keys) + 1), a)


class RedisWrites(RedisCore):
    """The write commands of RedisStreamBus."""

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
        names, args = _encode_runs(appends)
        raw = await self._call(
            lambda: self._durable([names, args], self._publish_many), idempotent=False
        )
        return [_s(r) for r in raw]

    async def commit(self, handled: Sequence[Handled], *, fence: Fence | None = None) -> list[bool]:
        if not handled:
            return []
        names, args = _commit_args(handled, fence, self.processed_ttl_ms)
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

    async def shed(
        self, stream: str, group: str, *, keep: int, limit: int,
        claims: int, needle: bytes, max_bytes: int, field: str, budget: int = SHED_BUDGET,
    ) -> ShedRange:  # fmt: skip
        """The entries after the group's last-delivered id but the newest ``keep`` (at most
        ``limit``, oldest first, and fewer once about ``budget`` bytes of them have been read),
        read inside Redis (script SHED): their count and bounds, and the first ``claims`` whose
        ``field`` holds ``needle``. Changes nothing."""
        args: list[Any] = [group, keep, limit, claims, max_bytes, needle, field, budget]
        raw = await self._call(lambda: self._shed(keys=[stream], args=args))
        n = int(raw[0])
        if not n:
            return ShedRange(stream, 0)
        rest = raw[4:]
        found = tuple(
            Entry(stream, _s(rest[i]), {field: bytes(rest[i + 1])}) for i in range(0, len(rest), 2)
        )
        return ShedRange(stream, n, _s(raw[1]), _s(raw[2]), _s(raw[3]), found)

    async def skip(
        self, shed: ShedRange, group: str, appends: Sequence[Append], *, fence: Fence | None = None
    ) -> int:
        """The group moved past ``shed`` and ``appends`` written with it, if its last-delivered
        id is still ``shed.after`` (script SHED_SKIP); the number skipped (0: nothing written).
        Safe to resend: under ``fence``, a resend after a lost reply finds the group at
        ``shed.last`` and answers ``shed.count`` (written once, by the first try)."""
        keys: dict[str, int] = {shed.stream: 1}
        args: list[Any] = [group, shed.after, shed.last, shed.count, "", 0]
        for a in appends:
            check_append(a)
            _encode_append(args, keys.get(a.stream) or keys.setdefault(a.stream, len(keys) + 1), a)
        names = list(keys)
        if fence is not None:
            names.append(fence.key)
            args[4:6] = [fence.token, fence.ttl_ms]
        try:
            raw = await self._call(lambda: self._durable([names, args], self._shed_skip))
        except BusProtocolError as exc:
            if str(exc).startswith("FENCED"):
                raise Fenced(str(exc)) from None
            raise
        return int(raw)

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
        self, since_key: str, items: Sequence[tuple[str, str, int]], *, prefix: str = ""
    ) -> tuple[int, list[str | bool | None]]:
        # columns, built in C
        names, values, deadlines = zip(*items, strict=True) if items else ((), (), ())
        args: list[str | int] = [0] * (2 * len(items))
        args[0::2] = values
        args[1::2] = deadlines
        keys = [since_key, *names] if not prefix else [since_key, *[prefix + n for n in names]]
        raw = await self._call(lambda: self._claim_nonces(keys=keys, args=args), idempotent=False)
        found = raw[1:]
        if found.count(None) == len(found):  # all set now: the common case, no loop
            return int(_s(raw[0])), found
        return int(_s(raw[0])), [_nonce_claim(r) for r in found]

    async def renew_key(self, key: str, value: str, ttl_ms: int, *, durable: bool = False) -> bool:
        if durable:  # WAIT after it: the replicas hold every write before it too
            write = [[key], [value, ttl_ms]]
            return bool(await self._call(lambda: self._durable(write, self._renew)))
        return bool(await self._call(lambda: self._renew(keys=[key], args=[value, ttl_ms])))

    async def release_key(self, key: str, value: str) -> bool:
        return bool(await self._call(lambda: self._release(keys=[key], args=[value])))

    async def get_value(self, key: str) -> bytes | None:
        raw = await self._call(lambda: self.client.get(key))
        return None if raw is None else bytes(raw)

    async def get_values(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        raw = await self._call(lambda: self.client.mget(list(keys)))
        return [None if r is None else bytes(r) for r in raw]

    async def set_value(self, key: str, value: bytes, *, ttl_ms: int | None = None) -> None:
        command: list[Any] = ["SET", key, value] + ([] if ttl_ms is None else ["PX", ttl_ms])
        await self._call(lambda: self._durable(command))
