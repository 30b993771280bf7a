"""Encoding and decoding for the Redis adapter: a faster command packer, stream field values,
XADD arguments, raw XREADGROUP replies, group lag, and which errors mean a command never ran."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis
import redis.exceptions as rex

from .api import Append, Entry, Fields, check_append, parse_id
from .errors import BusProtocolError

_PLAIN = frozenset((str, bytes, int))
_PLAIN = frozenset((str, bytes, int))


def _fast_packing(cls: type[Any]) -> type[Any]:
    """``cls`` (an asyncio connection class) packing commands with hiredis when it can.

    redis-py's asyncio connections pack every argument in Python; hiredis packs the whole command
    in C. Anything but str/bytes/int arguments (floats, bools, memoryviews) takes the original
    path, so the bytes on the wire and the errors raised stay the same.
    """
    if getattr(cls, "_kasmina_fast", False):
        return cls

    def pack_command(self: Any, *args: Any) -> list[bytes]:
        if _PLAIN.issuperset(map(type, args)):
            head = args[0]
            if " " in head if type(head) is str else b" " in head:
                args = (*head.split(), *args[1:])
            return [hiredis.pack_command(args)]
        packed: list[bytes] = slow(self, *args)
        return packed

    slow = cls.pack_command
    return type(cls.__name__, (cls,), {"pack_command": pack_command, "_kasmina_fast": True})


# Errors meaning the server did not run the command (a redirection or a refusal while the
# topology changes): safe to send again even when the command is not idempotent.
_REFUSALS = ("TRYAGAIN", "CLUSTERDOWN", "MOVED", "ASK", "READONLY", "NOREPLICAS", "MASTERDOWN",
             "LOADING")  # fmt: skip


def _not_applied(exc: BaseException) -> bool:
    # ClusterError includes CLUSTERDOWN/MASTERDOWN and "TTL exhausted" (redirected until redis-py
    # gave up); AskError includes MOVED. Errors raised inside a script keep their code as text.
    refusals = (rex.ClusterError, rex.SlotNotCoveredError, rex.AskError, rex.TryAgainError,
                rex.ReadOnlyError)  # fmt: skip
    if isinstance(exc, refusals):
        return True
    return isinstance(exc, rex.ResponseError) and str(exc).startswith(_REFUSALS)


def _s(value: Any) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def _nonce_claim(reply: Any) -> str | bool | None:
    """One item of ``CLAIM_NONCES``'s reply: 0 (late) -> False, nil (set now) -> None, else the
    value held."""
    if reply is None:
        return None
    return False if isinstance(reply, int) else _s(reply)


def _b(value: Any) -> bytes:
    """A field value as bytes (what redis-py's encoder would send)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, bool):
        raise BusProtocolError(f"invalid field value of type bool: {value!r}")
    if isinstance(value, int | float):
        return repr(value).encode()
    if isinstance(value, str):
        return value.encode()
    raise BusProtocolError(f"invalid field value of type {type(value).__name__}")


def _xadd(stream: str, fields: Fields, maxlen: int | None) -> list[Any]:
    """The XADD command for one entry (``MAXLEN ~`` when capped)."""
    command: list[Any] = ["XADD", stream]
    if maxlen is not None:
        command += ["MAXLEN", "~", maxlen]
    command.append("*")
    for name, value in fields.items():
        command += (name, value if type(value) is bytes else _b(value))
    return command


def _encode_append(args: list[Any], key_index: int, append: Append) -> None:
    """Add ``append`` to a script's ``args`` (see bus/_scripts.py): key index, maxlen, fields."""
    args += (key_index, "" if append.maxlen is None else append.maxlen, len(append.fields))
    for name, value in append.fields.items():
        args += (name, value if type(value) is bytes else _b(value))


def _encode_runs(appends: Sequence[Append]) -> tuple[list[str], list[Any]]:
    """PUBLISH_MANY's keys and arguments: ``appends`` as runs that share the stream, the cap and
    the field names (layout: see bus/_scripts.py). Each run's first append is checked
    (``check_append``); the others have its names and cap, so they pass too."""
    keys: dict[str, int] = {}
    args: list[Any] = []
    stream, maxlen = "", None  # the open run's
    names: tuple[str, ...] = ()
    at = -1  # where the open run's count is
    for a in appends:
        fields = a.fields
        if at < 0 or a.stream != stream or a.maxlen != maxlen or tuple(fields) != names:
            check_append(a)
            stream, maxlen, names = a.stream, a.maxlen, tuple(fields)
            key_index = keys.get(stream) or keys.setdefault(stream, len(keys) + 1)
            args += (key_index, "" if maxlen is None else maxlen, len(names), *names, 0)
            at = len(args) - 1
        args[at] += 1
        for value in fields.values():
            args.append(value if type(value) is bytes else _b(value))
    return list(keys), args


def _raw_reply(response: Any, **_: Any) -> Any:
    """Response callback that keeps a reply as the server sent it (see :func:`_fields`)."""
    return response


def _fields(raw: Any) -> dict[str, bytes]:
    """An entry's fields as ``{name: bytes}``, from redis-py's parsed dict or, for XREADGROUP on a
    client of our own, the flat ``[name1, value1, ...]`` list the server sent."""
    if type(raw) is list:  # one field (a frame) or two (an inbox's frame and kind): no loops
        if len(raw) == 2:
            name, value = raw
            if type(name) is bytes and type(value) is bytes:
                return {name.decode("utf-8", "backslashreplace"): value}
        elif len(raw) == 4:
            name, value, name2, value2 = raw
            if type(name) is type(value) is type(name2) is type(value2) is bytes:
                return {  # a name given twice keeps its last value, as in ``_any_fields``
                    name.decode("utf-8", "backslashreplace"): value,
                    name2.decode("utf-8", "backslashreplace"): value2,
                }
    return _any_fields(raw)


_SET_STREAM, _SET_ID, _SET_FIELDS, _SET_DELIVERIES = (
    getattr(Entry, name).__set__ for name in ("stream", "id", "fields", "deliveries")
)
_new = object.__new__


def _new_entries(stream: str, rows: Any) -> list[Entry]:
    """Entries delivered for the first time, from ``(id, raw fields)`` rows: each built without
    the frozen dataclass's four ``object.__setattr__`` calls (equal to ``Entry(stream, id,
    _fields(raw), 1)``)."""
    out: list[Entry] = []
    add = out.append
    for entry_id, raw in rows:
        entry = _new(Entry)
        _SET_STREAM(entry, stream)
        _SET_ID(entry, entry_id)
        _SET_FIELDS(entry, _fields(raw))
        _SET_DELIVERIES(entry, 1)
        add(entry)
    return out


def _any_fields(raw: Any) -> dict[str, bytes]:
    """``_fields`` of any reply shape and value type."""
    if not raw:
        return {}
    if type(raw) is list:
        it = iter(raw)
        out = {_name(k): v for k, v in zip(it, it, strict=True)}
    else:
        out = {_name(k): v for k, v in raw.items()}
    for name, value in out.items():  # bytes unless the client decodes responses
        if type(value) is not bytes:
            out[name] = value.encode() if isinstance(value, str) else str(value).encode()
    return out


def _name(raw: Any) -> str:
    """A field name as text: bytes that are not UTF-8 are kept as backslash escapes (a writer
    may name a field anything; no name of ours is lost or confused by this)."""
    return raw.decode("utf-8", "backslashreplace") if type(raw) is bytes else str(raw)


def _stream_entries(reply: Any) -> list[tuple[str, Any]]:
    """XREADGROUP reply (RESP2 list or RESP3 dict) -> [(id, fields or None)]."""
    if not reply:
        return []
    groups = reply.items() if isinstance(reply, dict) else reply
    out: list[tuple[str, Any]] = []
    for _, entries in groups:
        out += [(i.decode() if type(i) is bytes else str(i), f) for i, f in entries]
    return out


def group_lag(
    reported: Any, last_delivered: str, last_id: str, *, counted: bool = True
) -> int | None:
    """A group's lag (entries not delivered yet), checked against the ids the server reports.

    ``XINFO GROUPS`` derives lag from the group's entries-read counter, which a replica does not
    keep: right after a promotion it is unknown (lag nil), and after failovers and restarts on
    Redis 7.0.15 a group was seen reporting lag 25 with its last-delivered id equal to the
    stream's last id. The ids decide: nothing after the last-delivered id is lag 0; something
    after it is at least 1 (the reported figure when there is one). ``counted`` is False for a
    server that has no lag field at all (before 7.0): then None, unless the ids say 0. (The
    stream and its groups are two reads, so a group can look ahead of the stream by the entries
    added between them: that is lag 0 too. A group really moved past the end is the serving
    actor's to find and move back: :mod:`actors.hosting.groupwatch`.)
    """
    if parse_id(last_delivered) >= parse_id(last_id):
        return 0
    if not counted:
        return None
    return max(1, int(reported or 0))


def sorted_ids(ids: list[str]) -> list[str]:
    """Stream ids in numeric order."""
    return sorted(ids, key=lambda i: tuple(int(p) for p in i.split("-")))
