"""The envelope v1 codec as it was before v2, kept only as the benchmark's reference arm.

Receivers refuse v1 frames (docs/wire.md §10); ``benchmarks.envelope_bench`` measures v2 beside
this code in one run. v1 framed ``[v, kind, id, sender, key_id, ts_ns, causation_id, body, sig]``
and signed DOMAIN, eight lengths and those eight fields (sha256 of the body last).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
from google.protobuf.message import Message

from contracts.errors import (
    BadFrame,
    BadSignature,
    ExpiredKey,
    FromFuture,
    Stale,
    TooLarge,
    UnknownKey,
    UnknownKind,
)
from contracts.ids import new_id
from contracts.keys import KeyRing
from contracts.registry import REGISTRY, Registry

VERSION = 1
DOMAIN = b"kasmina.leyline.v1\x00"
SIG_BYTES = 32
DEFAULT_MAX_BYTES = 1 << 20
_LENS = struct.Struct(">8I")
_TS = struct.Struct(">Q")
_TS_LIMIT = 2**63
_V1 = b"1"
_sha256 = hashlib.sha256
_unpackb = msgpack.unpackb
_compare_digest = hmac.compare_digest
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_PADS: dict[bytes, tuple[Any, Any]] = {}  # secret -> (inner, outer) sha256 states


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


@dataclass(frozen=True, slots=True)
class Envelope:
    """A verified (or about-to-be-signed) message; ``body`` is opaque protobuf bytes."""

    v: int
    kind: str
    id: str
    sender: str
    key_id: str
    ts_ns: int
    causation_id: str
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
    body: bytes,
) -> bytes:
    """The exact bytes the MAC covers: DOMAIN, eight 4-byte lengths, then the eight fields."""
    vb = _V1 if v == 1 and type(v) is int else str(v).encode()
    kb = kind.encode()
    ib = msg_id.encode()
    sb = sender.encode()
    keyb = key_id.encode()
    cb = causation.encode()
    return b"".join(
        (
            DOMAIN,
            _LENS.pack(len(vb), len(kb), len(ib), len(sb), len(keyb), 8, len(cb), 32),
            vb,
            kb,
            ib,
            sb,
            keyb,
            _TS.pack(ts_ns),
            cb,
            _sha256(body).digest(),
        )
    )


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

    def seal(
        self,
        kind: str,
        body: bytes | Message,
        *,
        causation_id: str = "",
        msg_id: str | None = None,
        ts_ns: int | None = None,
    ) -> bytes:
        """Return the signed wire frame."""
        raw = body.SerializeToString() if isinstance(body, Message) else body
        now = self._clock() if ts_ns is None else ts_ns
        mid = new_id(now) if msg_id is None else msg_id
        key = self._ring.active
        mac = _hmac_sha256(
            key.secret, mac_input(VERSION, kind, mid, self._sender, key.id, now, causation_id, raw)
        )
        packed: bytes = msgpack.packb(
            [VERSION, kind, mid, self._sender, key.id, now, causation_id, raw, mac],
            use_bin_type=True,
        )
        return packed


def unpack(frame: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Envelope:
    """Parse the frame structure only (no signature check); raises TooLarge/BadFrame."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise BadFrame("frame is not bytes")
    if len(frame) > max_bytes:
        raise TooLarge(f"{len(frame)} bytes > limit {max_bytes}")
    try:
        items = _unpackb(frame, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        raise BadFrame(f"not msgpack: {type(exc).__name__}") from None
    if type(items) is not list or len(items) != 9:
        raise BadFrame("expected a 9-element array")
    v, kind, mid, sender, key_id, ts_ns, causation, body, sig = items
    if not (  # fast path: every field well-formed (msgpack gives exact str/bytes/int types)
        type(v) is int
        and v == VERSION
        and type(kind) is str
        and 0 < len(kind) <= 256
        and type(mid) is str
        and 0 < len(mid) <= 256
        and type(sender) is str
        and 0 < len(sender) <= 256
        and type(key_id) is str
        and 0 < len(key_id) <= 256
        and type(causation) is str
        and len(causation) <= 256
        and type(ts_ns) is int
        and 0 <= ts_ns < _TS_LIMIT
        and type(body) is bytes
        and type(sig) is bytes
        and len(sig) == SIG_BYTES
    ):
        _refuse(v, kind, mid, sender, key_id, ts_ns, causation, body, sig)
    return _envelope(v, kind, mid, sender, key_id, ts_ns, causation, body, sig)


_SET = [getattr(Envelope, name).__set__ for name in Envelope.__slots__]
assert len(_SET) == 9
_S0, _S1, _S2, _S3, _S4, _S5, _S6, _S7, _S8 = _SET
_new = object.__new__


def _envelope(
    v: int,
    kind: str,
    mid: str,
    sender: str,
    key_id: str,
    ts: int,
    cause: str,
    body: bytes,
    sig: bytes,
) -> Envelope:
    """``Envelope(...)`` without the frozen dataclass's nine ``object.__setattr__`` calls."""
    env: Envelope = _new(Envelope)
    _S0(env, v)
    _S1(env, kind)
    _S2(env, mid)
    _S3(env, sender)
    _S4(env, key_id)
    _S5(env, ts)
    _S6(env, cause)
    _S7(env, body)
    _S8(env, sig)
    return env


def _refuse(*items: object) -> None:
    """Raise the BadFrame naming the first malformed field of a 9-element frame."""
    v, kind, mid, sender, key_id, ts_ns, causation, body, sig = items
    if type(v) is not int or v != VERSION:
        raise BadFrame(f"unsupported envelope version {v!r}")
    for name, value in (("kind", kind), ("id", mid), ("sender", sender), ("key_id", key_id)):
        if not isinstance(value, str) or not value or len(value) > 256:
            raise BadFrame(f"bad {name}")
    if not isinstance(causation, str) or len(causation) > 256:
        raise BadFrame("bad causation_id")
    if type(ts_ns) is not int or not 0 <= ts_ns < _TS_LIMIT:
        raise BadFrame("bad ts_ns")
    if not isinstance(body, bytes) or not isinstance(sig, bytes) or len(sig) != SIG_BYTES:
        raise BadFrame("bad body or signature field")
    raise BadFrame("malformed frame")  # unreachable: the fast path accepted nothing less


class Verifier:
    """Verifies frames: size, structure, key, MAC (before any parse), freshness, kind, nonce."""

    __slots__ = (
        "_clock",
        "_max_bytes",
        "_nonce",
        "_nonce_ttl_ms",
        "_registry",
        "_replay",
        "_ring",
        "_tolerance_ns",
    )

    def __init__(
        self,
        ring: KeyRing,
        *,
        clock: Callable[[], int] = time.time_ns,
        tolerance_s: float = 60.0,
        nonce_ttl_s: float = 300.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        replay: bool = False,
        registry: Registry = REGISTRY,
    ) -> None:
        self._ring = ring
        self._nonce = None
        self._clock = clock
        self._tolerance_ns = int(tolerance_s * 1e9)
        self._nonce_ttl_ms = int(nonce_ttl_s * 1000)
        self._max_bytes = max_bytes
        self._replay = replay
        self._registry = registry

    @property
    def ring(self) -> KeyRing:
        """The key ring in use."""
        return self._ring

    @property
    def tolerance_s(self) -> float:
        """How far a live message's timestamp may be from this clock."""
        return self._tolerance_ns / 1e9

    def with_ring(self, ring: KeyRing) -> Verifier:
        """The same verifier over another key ring (after a rotation)."""
        twin = Verifier.__new__(Verifier)
        for name in Verifier.__slots__:
            setattr(twin, name, getattr(self, name))
        twin._ring = ring
        return twin

    def with_replay(self, replay: bool = True) -> Verifier:
        """The same verifier in replay mode: MAC checked, freshness, expiry and nonces skipped."""
        twin = self.with_ring(self._ring)
        twin._replay = replay
        return twin

    def open(self, frame: bytes) -> Envelope:
        """Check everything but the nonce; return the envelope or raise a ContractError."""
        env = unpack(frame, max_bytes=self._max_bytes)
        key = self._ring.get(env.key_id)
        if key is None:
            raise UnknownKey(f"key id {env.key_id!r}")
        now = self._clock()
        if not self._replay and not key.valid_at(now):
            raise ExpiredKey(f"key id {env.key_id!r} retired")
        expected = _hmac_sha256(
            key.secret,
            mac_input(
                env.v,
                env.kind,
                env.id,
                env.sender,
                env.key_id,
                env.ts_ns,
                env.causation_id,
                env.body,
            ),
        )
        if not _compare_digest(expected, env.sig):
            raise BadSignature(f"message {env.id}")
        if not self._replay:
            if env.ts_ns < now - self._tolerance_ns:
                raise Stale(f"{(now - env.ts_ns) / 1e9:.1f} s old")
            if env.ts_ns > now + self._tolerance_ns:
                raise FromFuture(f"{(env.ts_ns - now) / 1e9:.1f} s ahead")
        if env.kind not in self._registry:
            raise UnknownKind(env.kind)
        return env
