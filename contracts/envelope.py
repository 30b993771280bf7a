"""The signed envelope v2 (``docs/wire.md`` is the normative spec; this module follows it).

Wire frame: a msgpack array of 11 scalars
``[v, kind, id, sender, key_id, ts_ns, causation_id, run, to, body, sig]`` with ``v == 2``.
MAC (HMAC-SHA256) input: ``DOMAIN``, then the 4-byte big-endian lengths of v, kind, id, sender,
key_id, ts_ns, causation_id, run, to and sha256(body), then those ten fields (v as decimal text,
ts_ns as 8 bytes big-endian, the strings as UTF-8). ``run`` and ``to`` bind the frame to the run and
the stream (``kasmina:{run}:<to>``) it is meant for: a frame found elsewhere is refused.

A frame is screened before it is parsed (size, then shape: exactly 11 scalar elements, msgpack
length limits), its MAC is checked before anything else about it is trusted, and the body is
never parsed here (the receiver parses it after ``open``).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import msgpack
from google.protobuf.message import Message

from contracts.errors import (
    BadFrame,
    TooLarge,
    UnsupportedVersion,
)
from contracts.ids import new_id
from contracts.keys import KeyRing
from contracts.streams import RUN_RE, address

VERSION = 2
DOMAIN = b"kasmina.leyline.v2\x00"
FIELDS = 11  # elements of a v2 frame
SIG_BYTES = 32
MAX_FIELD_BYTES = 256  # UTF-8 bytes of each header string (kind, id, sender, key_id, cause, to)
MAX_RUN_CHARS = 64
DEFAULT_MAX_BYTES = 1 << 20  # whole frame
WALK_ABOVE = 1024  # frames larger than this are shape-checked byte by byte before msgpack parses
_LENS = struct.Struct(">10I")
_TS = struct.Struct(">Q")
_TS_LIMIT = 2**63
_V2 = b"2"
_BEFORE_MEMORY = (
    "stamped before the nonce memory began (Redis restarted without persistence, or its"
    " nonce-since key was written?)"
)
_sha256 = hashlib.sha256
_unpackb = msgpack.unpackb
_compare_digest = hmac.compare_digest
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_PADS: dict[bytes, tuple[Any, Any]] = {}  # secret -> (inner, outer) sha256 states
_ADDRESSES: dict[str, tuple[str, str]] = {}  # stream key -> (run, to), bounded cache
_RUNS: set[str] = set()  # run ids already checked against RUN_RE, bounded
_TYPES = (int, str, str, str, str, int, str, str, str, bytes, bytes)  # of the 11 elements


def _valid_run(run: str) -> bool:
    """True if ``run`` is a valid run id (remembered, so the pattern runs once per run)."""
    if not RUN_RE.fullmatch(run):
        return False
    if len(_RUNS) >= 4096:
        _RUNS.clear()
    _RUNS.add(run)
    return True


def _hmac_sha256(secret: bytes, msg: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104), equal to ``hmac.digest(secret, msg, "sha256")``.

    The padded-key hash states of each secret are computed once and copied per message, which
    halves the cost of a MAC over a short message.
    """
    pads = _PADS.get(secret)
    if pads is None:
        block = (_sha256(secret).digest() if len(secret) > 64 else secret).ljust(64, b"\0")
        if len(_PADS) >= 256:  # a few keys live at a time; never grow without bound
            _PADS.clear()
        pads = _PADS[secret] = (_sha256(block.translate(_IPAD)), _sha256(block.translate(_OPAD)))
    inner, outer = pads
    i = inner.copy()
    i.update(msg)
    o = outer.copy()
    o.update(i.digest())
    mac: bytes = o.digest()
    return mac


class Envelope(NamedTuple):
    """A verified (or about-to-be-signed) message; ``body`` is opaque protobuf bytes.

    A named tuple: immutable, and built from a parsed frame's eleven elements in one step."""

    v: int
    kind: str
    id: str
    sender: str
    key_id: str
    ts_ns: int
    causation_id: str
    run: str
    to: str
    body: bytes
    sig: bytes


def mac_input(
    v: int,
    kind: str,
    msg_id: str,
    sender: str,
    key_id: str,
    ts_ns: int,
    causation: str,
    run: str,
    to: str,
    body: bytes,
) -> bytes:
    """The exact bytes the MAC covers: DOMAIN, ten 4-byte lengths, then the ten fields.

    Only the id, the stamp and the body's hash differ between the messages of one sender, kind
    and stream: the bytes around them are built once per header (and id length) and remembered.
    """
    ib = msg_id.encode()
    if v == 2 and type(v) is int:
        header = (kind, sender, key_id, causation, run, to, len(ib))
        parts = _MAC_PARTS.get(header) or _mac_parts(_V2, header)
    else:  # not a v2 frame's (refused before its MAC is checked): never remembered
        parts = _mac_parts(str(v).encode(), (kind, sender, key_id, causation, run, to, len(ib)))
    head, middle, tail = parts
    return b"".join((head, ib, middle, _TS.pack(ts_ns), tail, _sha256(body).digest()))


_MAC_PARTS: dict[tuple[str, str, str, str, str, str, int], tuple[bytes, bytes, bytes]] = {}


def _mac_parts(
    vb: bytes, header: tuple[str, str, str, str, str, str, int]
) -> tuple[bytes, bytes, bytes]:
    """The MAC input around the id, the stamp and the body hash: (DOMAIN, the lengths, v and
    kind), (sender and key id), (causation, run and to); remembered for v2 (bounded)."""
    kind, sender, key_id, causation, run, to, id_len = header
    kb, sb, keyb = kind.encode(), sender.encode(), key_id.encode()
    cb, rb, tb = causation.encode(), run.encode(), to.encode()
    lens = _LENS.pack(
        len(vb), len(kb), id_len, len(sb), len(keyb), 8, len(cb), len(rb), len(tb), 32
    )
    parts = (DOMAIN + lens + vb + kb, sb + keyb, cb + rb + tb)
    if vb == _V2:
        if len(_MAC_PARTS) >= 4096:  # a process signs and reads a few hundred headers at most
            _MAC_PARTS.clear()
        _MAC_PARTS[header] = parts
    return parts


def stream_address(stream: str) -> tuple[str, str]:
    """``(run, to)`` of a stream key, cached (a process writes to a few hundred streams at most)."""
    found = _ADDRESSES.get(stream)
    if found is None:
        found = address(stream)
        if len(_ADDRESSES) >= 4096:
            _ADDRESSES.clear()
        _ADDRESSES[stream] = found
    return found


class Signer:
    """Signs and frames messages with the ring's active key."""

    __slots__ = ("_clock", "_ring", "_sender")

    def __init__(
        self, ring: KeyRing, sender: str, *, clock: Callable[[], int] = time.time_ns
    ) -> None:
        if not sender:
            raise ValueError("sender must not be empty")
        self._ring = ring
        self._sender = sender
        self._clock = clock

    @property
    def sender(self) -> str:
        """Who signs."""
        return self._sender

    def as_sender(self, sender: str) -> Signer:
        """A signer with the same keys and clock that signs as ``sender``."""
        return Signer(self._ring, sender, clock=self._clock)

    def seal(
        self,
        kind: str,
        body: bytes | Message,
        *,
        stream: str,
        causation_id: str = "",
        msg_id: str | None = None,
        ts_ns: int | None = None,
    ) -> bytes:
        """Return the signed wire frame for the stream key ``stream`` (which fixes run and to)."""
        raw = body.SerializeToString() if isinstance(body, Message) else body
        run, to = stream_address(stream)
        now = self._clock() if ts_ns is None else ts_ns
        mid = new_id(now) if msg_id is None else msg_id
        key = self._ring.active
        mac = _hmac_sha256(
            key.secret,
            mac_input(VERSION, kind, mid, self._sender, key.id, now, causation_id, run, to, raw),
        )
        packed: bytes = msgpack.packb(
            [VERSION, kind, mid, self._sender, key.id, now, causation_id, run, to, raw, mac],
            use_bin_type=True,
        )
        return packed


# msgpack header byte -> bytes a scalar element of a frame takes when its size is in the header
# byte itself (fixints, fixstr, uint 8..64, int 8..64: any encoding of an integer is valid, §2);
# None for a header that announces a length.
_FIXED: list[int | None] = [None] * 256
for _b in (*range(0x80), *range(0xE0, 0x100)):
    _FIXED[_b] = 1
for _b in range(0xA0, 0xC0):
    _FIXED[_b] = 1 + (_b & 0x1F)
for _b, _n in ((0xCC, 2), (0xCD, 3), (0xCE, 5), (0xCF, 9), (0xD0, 2), (0xD1, 3), (0xD2, 5)):
    _FIXED[_b] = _n
_FIXED[0xD3] = 9
_ARRAY_HEAD = {0xDC: 2, 0xDD: 4}  # array 16 / array 32: bytes of the count after the header
_WIDTH = [0] * 256  # str 8/16/32 and bin 8/16/32: bytes of the length that follows the header
for _b, _n in ((0xD9, 1), (0xDA, 2), (0xDB, 4), (0xC4, 1), (0xC5, 2), (0xC6, 4)):
    _WIDTH[_b] = _n
_from_bytes = int.from_bytes


def _flat(frame: bytes) -> bool:
    """True if ``frame`` is one array of at most 15 scalars (ints, str, bin) and nothing else.

    Walks the element headers only (never the payload bytes), so a frame built to make a parser
    allocate (nested arrays, maps, ext) costs a few steps to refuse whatever its size.
    """
    size = len(frame)
    head = frame[0]
    if 0x90 <= head <= 0x9F:
        count, pos = head & 0x0F, 1
    elif head in _ARRAY_HEAD:  # a longer header for a short array is still one array
        pos = 1 + _ARRAY_HEAD[head]
        count = _from_bytes(frame[1:pos], "big")
        if count > 0x0F:
            return False
    else:
        return False
    for _ in range(count):
        if pos >= size:
            return False
        b = frame[pos]
        step = _FIXED[b]
        if step is None:
            width = _WIDTH[b]
            if not width:
                return False
            step = 1 + width + _from_bytes(frame[pos + 1 : pos + 1 + width], "big")
        pos += step
    return pos == size


def _claimed(items: object) -> tuple[str, str, str]:
    """(id, kind, sender) a malformed frame claims, where it can be read (else "")."""
    if type(items) is tuple and len(items) >= 4:
        mid, kind, sender = items[2], items[1], items[3]
        return (
            mid if type(mid) is str else "",
            kind if type(kind) is str else "",
            sender if type(sender) is str else "",
        )
    return "", "", ""


def _items(frame: bytes, max_bytes: int) -> tuple[Any, ...]:
    """The 11 elements of a v2 frame as msgpack parses them, within the limits.

    Raises TooLarge or BadFrame for anything too large, not flat (frames over ``WALK_ABOVE``
    bytes) or not msgpack, and BadFrame or UnsupportedVersion for any other shape or version.
    """
    if type(frame) is not bytes and not isinstance(frame, (bytes, bytearray, memoryview)):
        raise BadFrame("frame is not bytes")
    size = len(frame)
    if size > max_bytes:
        raise TooLarge(f"{size} bytes > limit {max_bytes}")
    if size > WALK_ABOVE and not _flat(bytes(frame)):
        raise BadFrame("not an array of scalar fields")
    try:
        items = _unpackb(
            frame,
            raw=False,
            use_list=False,
            max_str_len=MAX_FIELD_BYTES,
            max_bin_len=max_bytes,
            max_array_len=FIELDS,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        raise BadFrame(f"not msgpack within limits: {type(exc).__name__}") from None
    if type(items) is not tuple or len(items) != FIELDS or items[0] != VERSION:
        _refuse_shape(items)
    return items  # type: ignore[no-any-return]


_as_envelope = tuple.__new__


def unpack(frame: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Envelope:
    """Parse the frame structure only (no signature check), within the limits of docs/wire.md.

    Raises TooLarge, BadFrame or UnsupportedVersion (carrying the claimed id where readable)."""
    items = _items(frame, max_bytes)
    _, kind, mid, sender, key_id, ts_ns, _, run, to, _, sig = items
    if not (  # fast path: the types in one comparison (msgpack gives exact str/bytes/int types)
        tuple(map(type, items)) == _TYPES
        and kind
        and mid
        and sender
        and key_id
        and to
        and 0 <= ts_ns < _TS_LIMIT
        and len(sig) == SIG_BYTES
        and (run in _RUNS or _valid_run(run))
    ):
        _refuse(items)
    env: Envelope = _as_envelope(Envelope, items)  # the checked elements, as they are
    return env


def _refuse_shape(items: object) -> None:
    """Raise for a frame that is not an 11-element v2 array."""
    claim = _claimed(items)
    if type(items) is tuple and items and type(items[0]) is int and items[0] != VERSION:
        raise UnsupportedVersion(
            f"envelope v{items[0]} is not accepted (this receiver speaks v{VERSION})"
        ).claim(*claim, verified=False)
    if type(items) is tuple and len(items) == FIELDS:  # 11 fields, but v is no integer
        raise BadFrame("bad v").claim(*claim, verified=False)
    raise BadFrame(f"expected an array of {FIELDS} fields").claim(*claim, verified=False)


def _nonempty_str(value: object) -> bool:
    return type(value) is str and value != ""


# What each field of an 11-element frame must be, in the order a refusal names the first one
# that is not: (index, check, problem). Body and signature are checked together, last.
_FIELD_RULES: tuple[tuple[int, Callable[[Any], bool], str], ...] = (
    (0, lambda v: type(v) is int, "bad v"),
    (1, _nonempty_str, "bad kind"),
    (2, _nonempty_str, "bad id"),
    (3, _nonempty_str, "bad sender"),
    (4, _nonempty_str, "bad key_id"),
    (6, lambda c: type(c) is str, "bad causation_id"),
    (5, lambda t: type(t) is int and 0 <= t < _TS_LIMIT, "bad ts_ns"),
    (7, lambda r: type(r) is str and RUN_RE.fullmatch(r) is not None, "bad run"),
    (8, _nonempty_str, "bad to"),
)


def _problem(items: tuple[Any, ...]) -> str:
    """The first malformed field of an 11-element frame, as a refusal names it."""
    for index, ok, problem in _FIELD_RULES:
        if not ok(items[index]):
            return problem
    body, sig = items[9], items[10]
    if type(body) is not bytes or type(sig) is not bytes or len(sig) != SIG_BYTES:
        return "bad body or signature field"
    return "malformed frame"


def _refuse(items: tuple[Any, ...]) -> None:
    """Raise the BadFrame naming the first malformed field of an 11-element frame."""
    raise BadFrame(_problem(items)).claim(*_claimed(items), verified=False)
