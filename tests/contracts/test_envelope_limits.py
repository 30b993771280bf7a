"""Every limit of the envelope at 0, at the limit and one past it; long secrets; the batch and
twin verifiers. The v1 wire limits are written out here as numbers, never read from the code."""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence

import msgpack
import pytest

from contracts import Key, KeyRing, MemoryNonceGuard, Reason, Signer, Verifier, unpack
from contracts import envelope as envelope_module
from contracts.envelope import Envelope
from contracts.errors import ContractError, Overloaded

NOW = 1_800_000_000 * 10**9
SECOND = 10**9
FIELD_LIMIT = 256  # characters of kind, id, sender, key id, causation id
SIG_BYTES = 32
MAX_FRAME = 1 << 20  # bytes, the default frame limit
TS_LIMIT = 2**63  # ts_ns must be below it
KIND = "seed.command"


def clock() -> int:
    return NOW


def _ring(secret: bytes = bytes(range(32)), key_id: str = "k-test") -> KeyRing:
    return KeyRing([Key(id=key_id, secret=secret)], key_id)


RING = _ring()


def _items(**override: object) -> list[object]:
    """A well-formed 9-element frame (structure only; the MAC is not valid)."""
    fields: dict[str, object] = {
        "v": 1,
        "kind": KIND,
        "id": "m-1",
        "sender": "tamiyo",
        "key_id": "k-test",
        "ts_ns": NOW,
        "causation": "",
        "body": b"",
        "sig": b"\x00" * SIG_BYTES,
    }
    fields.update(override)
    return list(fields.values())


def _pack(items: object) -> bytes:
    packed: bytes = msgpack.packb(items, use_bin_type=True)
    return packed


def _bad_frame(frame: bytes, *, max_bytes: int = MAX_FRAME) -> str:
    with pytest.raises(ContractError) as info:
        unpack(frame, max_bytes=max_bytes)
    assert info.value.code == Reason.BAD_FRAME
    return str(info.value)


def _independent_mac(secret: bytes, items: Sequence[object]) -> bytes:
    """HMAC-SHA256 (Python's hmac) over DESIGN §5's length-prefixed layout."""
    v, kind, mid, sender, key_id, ts_ns, cause, body, _ = items
    fields = [
        str(v).encode(),
        str(kind).encode(),
        str(mid).encode(),
        str(sender).encode(),
        str(key_id).encode(),
        struct.pack(">Q", ts_ns),
        str(cause).encode(),
        hashlib.sha256(body).digest(),  # type: ignore[arg-type]
    ]
    data = b"kasmina.leyline.v1\x00" + struct.pack(">8I", *map(len, fields)) + b"".join(fields)
    return hmac.new(secret, data, hashlib.sha256).digest()


def _reason(verifier: Verifier, frame: bytes) -> Reason:
    with pytest.raises(ContractError) as info:
        verifier.open(frame)
    return info.value.code


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize(
    ("field", "label"), [("kind", "kind"), ("id", "id"), ("sender", "sender"), ("key_id", "key_id")]
)
def test_header_text_fields_take_1_to_256_characters(field: str, label: str) -> None:
    """kind, id, sender and key id: empty and 257 characters are bad frames; 1 and 256 parse."""
    for n in (1, FIELD_LIMIT):
        env = unpack(_pack(_items(**{field: "x" * n})))
        assert isinstance(env, Envelope)
    for n in (0, FIELD_LIMIT + 1):
        assert f"bad {label}" in _bad_frame(_pack(_items(**{field: "x" * n})))
    assert f"bad {label}" in _bad_frame(_pack(_items(**{field: b"kind"})))
    assert f"bad {label}" in _bad_frame(_pack(_items(**{field: 7})))


def test_the_limit_counts_characters_not_bytes() -> None:
    """256 two-byte characters are within the limit; 257 are not."""
    assert unpack(_pack(_items(sender="é" * FIELD_LIMIT))).sender == "é" * FIELD_LIMIT
    assert "bad sender" in _bad_frame(_pack(_items(sender="é" * (FIELD_LIMIT + 1))))


def test_causation_id_may_be_empty_and_takes_at_most_256_characters() -> None:
    """causation_id: 0 and 256 characters parse; 257 or a non-string is a bad frame."""
    for n in (0, 1, FIELD_LIMIT):
        assert unpack(_pack(_items(causation="c" * n))).causation_id == "c" * n
    assert "bad causation_id" in _bad_frame(_pack(_items(causation="c" * (FIELD_LIMIT + 1))))
    assert "bad causation_id" in _bad_frame(_pack(_items(causation=None)))


@pytest.mark.parametrize("ts", [0, 1, TS_LIMIT - 1])
def test_timestamps_inside_the_range_parse(ts: int) -> None:
    """ts_ns from 0 to 2**63 - 1 is well-formed."""
    assert unpack(_pack(_items(ts_ns=ts))).ts_ns == ts


@pytest.mark.parametrize("ts", [-1, TS_LIMIT, 2**64 - 1, 1.5, "1"])
def test_timestamps_outside_the_range_are_bad_frames(ts: object) -> None:
    """A negative ts_ns, one of 2**63 or more, or a non-integer is a bad frame."""
    assert "bad ts_ns" in _bad_frame(_pack(_items(ts_ns=ts)))


@pytest.mark.parametrize("n", [0, SIG_BYTES - 1, SIG_BYTES + 1, 64])
def test_signature_must_be_exactly_32_bytes(n: int) -> None:
    """A signature of any length but 32 is a bad frame (32 parses)."""
    assert unpack(_pack(_items(sig=b"s" * SIG_BYTES))).sig == b"s" * SIG_BYTES
    assert "bad body or signature field" in _bad_frame(_pack(_items(sig=b"s" * n)))


@pytest.mark.parametrize("override", [{"body": "text"}, {"body": None}, {"sig": "s" * SIG_BYTES}])
def test_body_and_signature_must_be_bytes(override: dict[str, object]) -> None:
    """A text or nil body, or a text signature, is a bad frame."""
    assert "bad body or signature field" in _bad_frame(_pack(_items(**override)))


@pytest.mark.parametrize("v", [0, 2, True, 1.0, "1", None])
def test_only_version_1_is_accepted(v: object) -> None:
    """Any version but the integer 1 is refused, naming the version."""
    assert f"unsupported envelope version {v!r}" in _bad_frame(_pack(_items(v=v)))


@pytest.mark.parametrize("n", [0, 8, 10])
def test_a_frame_is_a_9_element_array(n: int) -> None:
    """Arrays of another length, maps and scalars are bad frames."""
    items = (_items() * 2)[:n]
    assert "expected a 9-element array" in _bad_frame(_pack(items))
    assert "expected a 9-element array" in _bad_frame(_pack({"v": 1}))
    assert "expected a 9-element array" in _bad_frame(_pack(1))


def test_a_frame_must_be_bytes_like() -> None:
    """str frames are refused; bytes, bytearray and memoryview are read."""
    frame = _pack(_items())
    assert unpack(bytearray(frame)).kind == KIND
    assert unpack(memoryview(frame)).kind == KIND
    assert "frame is not bytes" in _bad_frame(frame.decode("latin-1"))  # type: ignore[arg-type]


def test_garbage_is_named_not_msgpack() -> None:
    """Bytes that are not msgpack are a bad frame that says so (trailing bytes included)."""
    assert "not msgpack" in _bad_frame(b"\xc1")
    assert "not msgpack" in _bad_frame(_pack(_items()) + b"\x00")


def _frame_of_size(size: int) -> bytes:
    """A signed frame of exactly ``size`` bytes (the body is padded to fit)."""
    signer = Signer(RING, "tamiyo", clock=clock)
    body = b""
    for _ in range(3):
        frame = signer.seal(KIND, body, msg_id="m-1")
        body = b"b" * (len(body) + size - len(frame))
    frame = signer.seal(KIND, body, msg_id="m-1")
    assert len(frame) == size
    return frame


@pytest.mark.parametrize("limit", [200, MAX_FRAME])
def test_frame_size_limit_is_inclusive(limit: int) -> None:
    """A frame of exactly the limit is read; one byte more is too_large (default limit 1 MiB)."""
    verifier = Verifier(RING, clock=clock, max_bytes=limit)
    assert verifier.open(_frame_of_size(limit)).kind == KIND
    assert _reason(verifier, _frame_of_size(limit + 1)) == Reason.TOO_LARGE
    if limit == MAX_FRAME:
        default = Verifier(RING, clock=clock)
        assert default.open(_frame_of_size(limit)).kind == KIND
        assert _reason(default, _frame_of_size(limit + 1)) == Reason.TOO_LARGE
        assert unpack(_frame_of_size(limit)).kind == KIND
        with pytest.raises(ContractError) as info:
            unpack(_frame_of_size(limit + 1))
        assert info.value.code == Reason.TOO_LARGE and str(MAX_FRAME) in str(info.value)


# --------------------------------------------------------------------------- signing


def test_an_empty_sender_cannot_sign() -> None:
    """Signer refuses an empty sender name."""
    with pytest.raises(ValueError, match="sender"):
        Signer(RING, "")


@pytest.mark.parametrize("length", [32, 63, 64, 65, 100, 200])
def test_mac_is_standard_hmac_for_any_secret_length(length: int) -> None:
    """Secrets shorter than, equal to and longer than SHA-256's 64-byte block all give RFC 2104
    HMAC (long secrets are hashed first)."""
    secret = bytes((7 * i + length) % 256 for i in range(length))
    ring = _ring(secret)
    frame = Signer(ring, "tamiyo", clock=clock).seal(KIND, b"body", causation_id="c", msg_id="m-9")
    items = msgpack.unpackb(frame, raw=False)
    assert items[8] == _independent_mac(secret, items)
    assert Verifier(ring, clock=clock).open(frame).body == b"body"


def test_secrets_sharing_a_prefix_give_different_macs() -> None:
    """Two long secrets that differ only past the 64th byte sign differently (no truncation)."""
    a, b = b"s" * 100, b"s" * 99 + b"t"
    fa = Signer(_ring(a), "x", clock=clock).seal(KIND, b"", msg_id="m")
    fb = Signer(_ring(b), "x", clock=clock).seal(KIND, b"", msg_id="m")
    assert unpack(fa).sig != unpack(fb).sig
    assert _reason(Verifier(_ring(a), clock=clock), fb) == Reason.BAD_SIGNATURE


def test_many_keys_in_turn_all_sign_correctly_and_the_pad_cache_stays_bounded() -> None:
    """300 different secrets each give the standard HMAC; the per-secret cache never passes 256."""
    for i in range(300):
        secret = i.to_bytes(2, "big") * 20
        frame = Signer(_ring(secret), "x", clock=clock).seal(KIND, b"", msg_id=f"m{i}")
        items = msgpack.unpackb(frame, raw=False)
        assert items[8] == _independent_mac(secret, items)
        assert len(envelope_module._PADS) <= 256


def test_seal_defaults_take_the_clock_and_a_fresh_id() -> None:
    """Without ts_ns/msg_id a frame is stamped by the signer's clock with a new id per seal."""
    signer = Signer(RING, "tamiyo", clock=clock)
    a, b = unpack(signer.seal(KIND, b"")), unpack(signer.seal(KIND, b""))
    assert a.ts_ns == NOW and b.ts_ns == NOW and a.id and a.id != b.id
    assert signer.sender == "tamiyo"


# --------------------------------------------------------------------------- freshness


@pytest.mark.parametrize("tolerance_s", [60.0, 0.5])
def test_staleness_limit_is_exact(tolerance_s: float) -> None:
    """Exactly tolerance old or ahead is accepted; 1 ns more is stale / from_future."""
    tol = int(tolerance_s * SECOND)
    verifier = Verifier(RING, clock=clock, tolerance_s=tolerance_s)
    assert verifier.tolerance_s == tolerance_s
    signer = Signer(RING, "tamiyo", clock=clock)
    assert verifier.open(signer.seal(KIND, b"", ts_ns=NOW - tol)).ts_ns == NOW - tol
    assert verifier.open(signer.seal(KIND, b"", ts_ns=NOW + tol)).ts_ns == NOW + tol
    assert _reason(verifier, signer.seal(KIND, b"", ts_ns=NOW - tol - 1)) == Reason.STALE
    assert _reason(verifier, signer.seal(KIND, b"", ts_ns=NOW + tol + 1)) == Reason.FROM_FUTURE


def test_default_tolerance_is_60_seconds() -> None:
    """DESIGN §5: live messages are accepted within ±60 s."""
    verifier = Verifier(RING, clock=clock)
    assert verifier.tolerance_s == 60.0
    signer = Signer(RING, "tamiyo", clock=clock)
    assert verifier.open(signer.seal(KIND, b"", ts_ns=NOW - 60 * SECOND)).kind == KIND
    assert _reason(verifier, signer.seal(KIND, b"", ts_ns=NOW - 60 * SECOND - 1)) == Reason.STALE


def test_stale_reason_says_how_old() -> None:
    """The stale / from_future detail gives the age in seconds."""
    verifier = Verifier(RING, clock=clock)
    signer = Signer(RING, "tamiyo", clock=clock)
    with pytest.raises(ContractError, match=r"90\.0 s old"):
        verifier.open(signer.seal(KIND, b"", ts_ns=NOW - 90 * SECOND))
    with pytest.raises(ContractError, match=r"75\.5 s ahead"):
        verifier.open(signer.seal(KIND, b"", ts_ns=NOW + 75_500_000_000))


def test_key_expiry_is_checked_live_and_ignored_in_replay() -> None:
    """A key past its expiry is expired_key live; replay mode still verifies its frames."""
    old = Key(id="k-old", secret=b"o" * 32, expires_ns=NOW)
    ring = KeyRing([old, Key(id="k-new", secret=b"n" * 32)], "k-new")
    frame = Signer(KeyRing([Key(id="k-old", secret=b"o" * 32)], "k-old"), "x", clock=clock).seal(
        KIND, b"", ts_ns=NOW
    )
    assert Verifier(ring, clock=lambda: NOW - 1).open(frame).key_id == "k-old"
    assert _reason(Verifier(ring, clock=clock), frame) == Reason.EXPIRED_KEY
    assert Verifier(ring, clock=clock, replay=True).open(frame).key_id == "k-old"


# --------------------------------------------------------------------------- twins


def test_with_ring_keeps_every_setting_but_the_ring() -> None:
    """with_ring: same clock, tolerance, size limit, mode and nonce guard over another ring."""
    other = _ring(b"o" * 32, "k-other")
    base = Verifier(RING, clock=clock, tolerance_s=0.5, max_bytes=300)
    twin = base.with_ring(other)
    assert twin.ring is other and base.ring is RING
    assert twin.tolerance_s == 0.5
    signer = Signer(other, "x", clock=clock)
    assert twin.open(signer.seal(KIND, b"")).key_id == "k-other"
    assert _reason(base, signer.seal(KIND, b"")) == Reason.UNKNOWN_KEY
    assert _reason(twin, signer.seal(KIND, b"", ts_ns=NOW - SECOND)) == Reason.STALE
    assert _reason(twin, signer.seal(KIND, b"x" * 300)) == Reason.TOO_LARGE


def test_with_replay_skips_freshness_and_leaves_the_original_live() -> None:
    """with_replay(): a replay twin accepts old frames; the original still refuses them."""
    base = Verifier(RING, clock=clock)
    old = Signer(RING, "x", clock=clock).seal(KIND, b"", ts_ns=NOW - 3600 * SECOND)
    replay = base.with_replay()
    assert replay.open(old).ts_ns == NOW - 3600 * SECOND
    assert _reason(base, old) == Reason.STALE
    assert _reason(replay.with_replay(False), old) == Reason.STALE


async def test_replay_twin_skips_the_nonce_guard() -> None:
    """In replay mode the same id under two tokens is not a replay (the log is re-read)."""
    guard = MemoryNonceGuard()
    live = Verifier(RING, clock=clock, nonce_guard=guard)
    frame = Signer(RING, "x", clock=clock).seal(KIND, b"")
    replay = live.with_replay()
    assert (await replay.verify(frame, token="a")).kind == KIND
    assert (await replay.verify(frame, token="b")).kind == KIND
    assert len(guard) == 0
    assert (await live.verify(frame, token="a")).kind == KIND
    with pytest.raises(ContractError) as info:
        await live.verify(frame, token="b")
    assert info.value.code == Reason.REPLAYED


# --------------------------------------------------------------------------- nonces


class RecordingGuard(MemoryNonceGuard):
    """The memory guard, recording the (id, token) pairs and TTLs it is asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[list[tuple[str, str]], int]] = []

    async def admit(self, message_id: str, token: str, ttl_ms: int) -> bool:
        self.asked.append(([(message_id, token)], ttl_ms))
        return await super().admit(message_id, token, ttl_ms)

    async def admit_many(self, items: Sequence[tuple[str, str]], ttl_ms: int) -> list[bool]:
        self.asked.append((list(items), ttl_ms))
        return await super().admit_many(items, ttl_ms)


async def test_nonce_is_scoped_per_receiver_and_kept_for_its_ttl() -> None:
    """The nonce key is 'scope|id' (just the id without a scope), the token defaults to the id,
    and the TTL is nonce_ttl_s in milliseconds (300 s by default)."""
    guard = RecordingGuard()
    frame = Signer(RING, "x", clock=clock).seal(KIND, b"", msg_id="m-1")
    await Verifier(RING, clock=clock, nonce_guard=guard).verify(frame, token="t", scope="seed")
    await Verifier(RING, clock=clock, nonce_guard=guard, nonce_ttl_s=2.5).verify(frame)
    assert guard.asked == [([("seed|m-1", "t")], 300_000), ([("m-1", "m-1")], 2_500)]


async def test_one_message_fanned_out_is_admitted_once_per_receiver() -> None:
    """The same frame delivered to two receivers (scopes) under two tokens is no replay."""
    verifier = Verifier(RING, clock=clock, nonce_guard=MemoryNonceGuard())
    frame = Signer(RING, "x", clock=clock).seal(KIND, b"")
    assert (await verifier.verify(frame, token="1-0", scope="a")).kind == KIND
    assert (await verifier.verify(frame, token="2-0", scope="b")).kind == KIND
    with pytest.raises(ContractError):
        await verifier.verify(frame, token="3-0", scope="a")


async def test_verify_many_judges_each_frame_with_one_nonce_round_trip() -> None:
    """verify_many: per frame the envelope or its error, in order; one admit_many for the batch."""
    guard = RecordingGuard()
    verifier = Verifier(RING, clock=clock, nonce_guard=guard)
    signer = Signer(RING, "x", clock=clock)
    good, again = signer.seal(KIND, b"", msg_id="m-1"), signer.seal(KIND, b"", msg_id="m-2")
    stale = signer.seal(KIND, b"", msg_id="m-3", ts_ns=NOW - 61 * SECOND)
    await verifier.verify(again, token="old", scope="s")
    guard.asked.clear()
    out = await verifier.verify_many(
        [
            (good, "1-0"),
            (stale, "2-0"),
            (b"junk", "3-0"),
            (again, "4-0"),
            (good, "1-0"),
            (again, ""),
        ],
        scope="s",
    )
    assert [o.id if isinstance(o, Envelope) else o.code for o in out] == [
        "m-1",
        Reason.STALE,
        Reason.BAD_FRAME,
        Reason.REPLAYED,
        "m-1",  # the same delivery again: a redelivery, not a replay
        Reason.REPLAYED,  # no token: the id is the token, which differs from "old"
    ]
    assert "m-2 already seen" in str(out[3])
    assert guard.asked == [
        ([("s|m-1", "1-0"), ("s|m-2", "4-0"), ("s|m-1", "1-0"), ("s|m-2", "m-2")], 300_000)
    ]


async def test_verify_many_without_a_scope_uses_the_bare_id() -> None:
    """Without a scope the batch admits bare message ids."""
    guard = RecordingGuard()
    frame = Signer(RING, "x", clock=clock).seal(KIND, b"", msg_id="m-7")
    out = await Verifier(RING, clock=clock, nonce_guard=guard).verify_many([(frame, "")])
    assert isinstance(out[0], Envelope)
    assert guard.asked == [([("m-7", "m-7")], 300_000)]


async def test_verify_many_with_no_guard_or_in_replay_admits_no_nonce() -> None:
    """No nonce guard, or replay mode: every good frame is returned, nothing is admitted."""
    guard = RecordingGuard()
    frame = Signer(RING, "x", clock=clock).seal(KIND, b"")
    for verifier in (
        Verifier(RING, clock=clock),
        Verifier(RING, clock=clock, nonce_guard=guard, replay=True),
    ):
        out = await verifier.verify_many([(frame, "a"), (frame, "b")])
        assert all(isinstance(o, Envelope) for o in out)
    assert guard.asked == []
    assert await Verifier(RING, clock=clock, nonce_guard=guard).verify_many([(b"x", "a")]) != []
    assert guard.asked == []  # nothing verified: no round trip at all


class FailingGuard(MemoryNonceGuard):
    """A nonce store that is unreachable: every admission raises Overloaded."""

    async def admit_many(self, items: Sequence[tuple[str, str]], ttl_ms: int) -> list[bool]:
        raise Overloaded("nonce store unavailable")


async def test_verify_many_fails_closed_when_the_nonce_store_fails() -> None:
    """If the nonce store fails, every frame that needed it gets that error (none is let through);
    frames rejected earlier keep their own reason."""
    verifier = Verifier(RING, clock=clock, nonce_guard=FailingGuard())
    frame = Signer(RING, "x", clock=clock).seal(KIND, b"")
    out = await verifier.verify_many([(frame, "a"), (b"junk", "b"), (frame, "c")])
    assert [o.code if isinstance(o, ContractError) else "ok" for o in out] == [
        Reason.OVERLOADED,
        Reason.BAD_FRAME,
        Reason.OVERLOADED,
    ]
