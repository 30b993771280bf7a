"""Every limit of the v2 envelope at 0, at the limit and one past it; long secrets; the batch and
twin verifiers. The limits are docs/wire.md's, written out here as numbers, never read from code."""

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
from contracts.nonce import Claim

NOW = 1_800_000_000 * 10**9
SECOND = 10**9
FIELD_LIMIT = 256  # UTF-8 bytes of kind, id, sender, key id, causation id, to (wire.md §2)
RUN_LIMIT = 64  # characters of [A-Za-z0-9_.-]
SIG_BYTES = 32
MAX_FRAME = 1 << 20  # bytes, the default frame limit
TS_LIMIT = 2**63  # ts_ns must be below it
KIND = "seed.command"
RUN, TO = "r1", "inbox:gate"
STREAM = "kasmina:{r1}:inbox:gate"


def clock() -> int:
    return NOW


def _ring(secret: bytes = bytes(range(32)), key_id: str = "k-test") -> KeyRing:
    return KeyRing([Key(id=key_id, secret=secret)], key_id)


RING = _ring()


def _items(**override: object) -> list[object]:
    """A well-formed 11-element frame (structure only; the MAC is not valid)."""
    fields: dict[str, object] = {
        "v": 2,
        "kind": KIND,
        "id": "m-1",
        "sender": "tamiyo",
        "key_id": "k-test",
        "ts_ns": NOW,
        "causation": "",
        "run": RUN,
        "to": TO,
        "body": b"",
        "sig": b"\x00" * SIG_BYTES,
    }
    fields.update(override)
    return list(fields.values())


def _pack(items: object) -> bytes:
    packed: bytes = msgpack.packb(items, use_bin_type=True)
    return packed


def _bad_frame(frame: bytes, *, code: Reason = Reason.BAD_FRAME) -> str:
    with pytest.raises(ContractError) as info:
        unpack(frame)
    assert info.value.code == code
    return str(info.value)


def _independent_mac(secret: bytes, items: Sequence[object]) -> bytes:
    """HMAC-SHA256 (Python's hmac) over docs/wire.md §3's length-prefixed layout."""
    v, kind, mid, sender, key_id, ts_ns, cause, run, to, body, _ = items
    fields = [
        str(v).encode(),
        str(kind).encode(),
        str(mid).encode(),
        str(sender).encode(),
        str(key_id).encode(),
        struct.pack(">Q", ts_ns),
        str(cause).encode(),
        str(run).encode(),
        str(to).encode(),
        hashlib.sha256(body).digest(),  # type: ignore[arg-type]
    ]
    data = b"kasmina.leyline.v2\x00" + struct.pack(">10I", *map(len, fields)) + b"".join(fields)
    return hmac.new(secret, data, hashlib.sha256).digest()


def _reason(verifier: Verifier, frame: bytes) -> Reason:
    with pytest.raises(ContractError) as info:
        verifier.open(frame, stream=STREAM)
    return info.value.code


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("field", ["kind", "id", "sender", "key_id", "to"])
def test_header_strings_take_1_to_256_bytes(field: str) -> None:
    """kind, id, sender, key id and to: 1 and 256 bytes parse; empty, 257 bytes, a non-string
    are bad frames."""
    for n in (1, FIELD_LIMIT):
        assert getattr(unpack(_pack(_items(**{field: "x" * n}))), field) == "x" * n
    assert f"bad {field}" in _bad_frame(_pack(_items(**{field: ""})))
    _bad_frame(_pack(_items(**{field: "x" * (FIELD_LIMIT + 1)})))
    assert f"bad {field}" in _bad_frame(_pack(_items(**{field: b"kind"})))
    assert f"bad {field}" in _bad_frame(_pack(_items(**{field: 7})))


def test_the_string_limit_counts_utf8_bytes() -> None:
    """128 two-byte characters (256 bytes) are within the limit; 129 (258 bytes) are not."""
    assert unpack(_pack(_items(sender="é" * 128))).sender == "é" * 128
    _bad_frame(_pack(_items(sender="é" * 129)))


def test_causation_id_may_be_empty_and_takes_at_most_256_bytes() -> None:
    """causation_id: 0, 1 and 256 bytes parse; 257 bytes or a non-string is a bad frame."""
    for n in (0, 1, FIELD_LIMIT):
        assert unpack(_pack(_items(causation="c" * n))).causation_id == "c" * n
    _bad_frame(_pack(_items(causation="c" * (FIELD_LIMIT + 1))))
    assert "bad causation_id" in _bad_frame(_pack(_items(causation=3)))


@pytest.mark.parametrize("run", ["a", "r" * RUN_LIMIT, "A-z_0.9"])
def test_run_ids_of_1_to_64_allowed_characters_parse(run: str) -> None:
    """A run id of 1 to 64 characters of [A-Za-z0-9_.-] is well-formed."""
    assert unpack(_pack(_items(run=run))).run == run


@pytest.mark.parametrize("run", ["", "r" * (RUN_LIMIT + 1), "a b", "a:b", "a{b}", "é", 5])
def test_other_run_ids_are_bad_frames(run: object) -> None:
    """An empty run id, 65 characters, a character outside [A-Za-z0-9_.-], a non-string: bad run."""
    assert "bad run" in _bad_frame(_pack(_items(run=run)))


@pytest.mark.parametrize("ts", [0, 1, TS_LIMIT - 1])
def test_timestamps_inside_the_range_parse(ts: int) -> None:
    """ts_ns from 0 to 2**63 - 1 is well-formed."""
    assert unpack(_pack(_items(ts_ns=ts))).ts_ns == ts


@pytest.mark.parametrize("ts", [-1, TS_LIMIT, 2**64 - 1, "1"])
def test_timestamps_outside_the_range_are_bad_frames(ts: object) -> None:
    """A negative ts_ns, one of 2**63 or more, or a non-integer is a bad frame."""
    assert "bad ts_ns" in _bad_frame(_pack(_items(ts_ns=ts)))


@pytest.mark.parametrize("n", [0, SIG_BYTES - 1, SIG_BYTES + 1, 64])
def test_signature_must_be_exactly_32_bytes(n: int) -> None:
    """A signature of any length but 32 is a bad frame (32 parses)."""
    assert unpack(_pack(_items(sig=b"s" * SIG_BYTES))).sig == b"s" * SIG_BYTES
    assert "bad body or signature field" in _bad_frame(_pack(_items(sig=b"s" * n)))


@pytest.mark.parametrize("override", [{"body": "text"}, {"body": 0}, {"sig": "s" * SIG_BYTES}])
def test_body_and_signature_must_be_bytes(override: dict[str, object]) -> None:
    """A text or integer body, or a text signature, is a bad frame."""
    assert "bad body or signature field" in _bad_frame(_pack(_items(**override)))


@pytest.mark.parametrize("v", [0, 1, 3, 2**32])
def test_another_integer_version_is_unsupported(v: int) -> None:
    """Element 0 an integer other than 2: unsupported_version, naming both versions."""
    text = _bad_frame(_pack(_items(v=v)), code=Reason.UNSUPPORTED_VERSION)
    assert f"envelope v{v} " in text and "v2" in text


@pytest.mark.parametrize("v", ["2", b"2"])
def test_a_version_that_is_not_an_integer_is_a_bad_frame(v: object) -> None:
    """Element 0 must be the integer 2 (not its text or bytes)."""
    _bad_frame(_pack(_items(v=v)))


@pytest.mark.parametrize("n", [0, 1, 10, 12])
def test_a_frame_is_an_11_element_array(n: int) -> None:
    """Arrays of another length, maps and scalars are bad frames."""
    items = (_items() * 2)[:n]
    _bad_frame(_pack(items))
    _bad_frame(_pack({"v": 2}))
    _bad_frame(_pack(2))


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


def _sized(size: int) -> bytes:
    """A well-formed (unsigned) frame of exactly ``size`` bytes."""
    body = b""
    for _ in range(3):
        body = b"b" * (len(body) + size - len(_pack(_items(body=body))))
    frame = _pack(_items(body=body))
    assert len(frame) == size
    return frame


@pytest.mark.parametrize("size", [200, 1023, 1024, 1025, 1026, 5000])
def test_frames_around_the_header_walk_threshold_parse(size: int) -> None:
    """Well-formed frames under, at and over 1 KiB (where the header walk starts) parse."""
    assert len(unpack(_sized(size)).body) > 100


@pytest.mark.parametrize("pad", [0, 2000])
@pytest.mark.parametrize("inner", [[1, 2], {"a": 1}, None, True])
def test_nested_or_non_scalar_elements_are_refused_at_any_size(pad: int, inner: object) -> None:
    """A nested array or map, a nil or a bool inside a frame is refused, small or over 1 KiB."""
    _bad_frame(_pack(_items(body=b"b" * pad, sig=inner)))
    _bad_frame(_pack(_items(body=b"b" * pad, causation=inner)))


def _frame_of_size(size: int) -> bytes:
    """A signed frame of exactly ``size`` bytes (the body is padded to fit)."""
    signer = Signer(RING, "tamiyo", clock=clock)
    body = b""
    for _ in range(3):
        frame = signer.seal(KIND, stream=STREAM, body=body, msg_id="m-1")
        body = b"b" * (len(body) + size - len(frame))
    frame = signer.seal(KIND, stream=STREAM, body=body, msg_id="m-1")
    assert len(frame) == size
    return frame


@pytest.mark.parametrize("limit", [200, MAX_FRAME])
def test_frame_size_limit_is_inclusive(limit: int) -> None:
    """A frame of exactly the limit is read; one byte more is too_large (default limit 1 MiB)."""
    verifier = Verifier(RING, clock=clock, max_bytes=limit)
    assert verifier.open(_frame_of_size(limit), stream=STREAM).kind == KIND
    assert _reason(verifier, _frame_of_size(limit + 1)) == Reason.TOO_LARGE
    if limit == MAX_FRAME:
        default = Verifier(RING, clock=clock)
        assert default.open(_frame_of_size(limit), stream=STREAM).kind == KIND
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
    frame = Signer(ring, "tamiyo", clock=clock).seal(
        KIND, stream=STREAM, body=b"body", causation_id="c", msg_id="m-9"
    )
    items = msgpack.unpackb(frame, raw=False)
    assert items[10] == _independent_mac(secret, items)
    assert Verifier(ring, clock=clock).open(frame, stream=STREAM).body == b"body"


def test_secrets_sharing_a_prefix_give_different_macs() -> None:
    """Two long secrets that differ only past the 64th byte sign differently (no truncation)."""
    a, b = b"s" * 100, b"s" * 99 + b"t"
    fa = Signer(_ring(a), "x", clock=clock).seal(KIND, stream=STREAM, body=b"", msg_id="m")
    fb = Signer(_ring(b), "x", clock=clock).seal(KIND, stream=STREAM, body=b"", msg_id="m")
    assert unpack(fa).sig != unpack(fb).sig
    assert _reason(Verifier(_ring(a), clock=clock), fb) == Reason.BAD_SIGNATURE


def test_many_keys_in_turn_all_sign_correctly_and_the_pad_cache_stays_bounded() -> None:
    """300 different secrets each give the standard HMAC; the per-secret cache never passes 256."""
    for i in range(300):
        secret = i.to_bytes(2, "big") * 20
        frame = Signer(_ring(secret), "x", clock=clock).seal(
            KIND, stream=STREAM, body=b"", msg_id=f"m{i}"
        )
        items = msgpack.unpackb(frame, raw=False)
        assert items[10] == _independent_mac(secret, items)
        assert len(envelope_module._PADS) <= 256


def test_seal_defaults_take_the_clock_and_a_fresh_id() -> None:
    """Without ts_ns/msg_id a frame is stamped by the signer's clock with a new id per seal."""
    signer = Signer(RING, "tamiyo", clock=clock)
    a, b = (
        unpack(signer.seal(KIND, stream=STREAM, body=b"")),
        unpack(signer.seal(KIND, stream=STREAM, body=b"")),
    )
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
    assert (
        verifier.open(
            stream=STREAM, frame=signer.seal(KIND, stream=STREAM, body=b"", ts_ns=NOW - tol)
        ).ts_ns
        == NOW - tol
    )
    assert (
        verifier.open(
            stream=STREAM, frame=signer.seal(KIND, stream=STREAM, body=b"", ts_ns=NOW + tol)
        ).ts_ns
        == NOW + tol
    )
    assert (
        _reason(verifier, signer.seal(KIND, stream=STREAM, body=b"", ts_ns=NOW - tol - 1))
        == Reason.STALE
    )
    assert (
        _reason(verifier, signer.seal(KIND, stream=STREAM, body=b"", ts_ns=NOW + tol + 1))
        == Reason.FROM_FUTURE
    )


def test_default_tolerance_is_60_seconds() -> None:
    """docs/design.md §5: live messages are accepted within ±60 s."""
    verifier = Verifier(RING, clock=clock)
    assert verifier.tolerance_s == 60.0
    signer = Signer(RING, "tamiyo", clock=clock)
    assert (
        verifier.open(
            stream=STREAM, frame=signer.seal(KIND, stream=STREAM, body=b"", ts_ns=NOW - 60 * SECOND)
        ).kind
        == KIND
    )
    assert (
        _reason(verifier, signer.seal(KIND, stream=STREAM, body=b"", ts_ns=NOW - 60 * SECOND - 1))
        == Reason.STALE
    )


def test_stale_reason_says_how_old() -> None:
    """The stale / from_future detail gives the age in seconds."""
    verifier = Verifier(RING, clock=clock)
    signer = Signer(RING, "tamiyo", clock=clock)
    with pytest.raises(ContractError, match=r"90\.0 s old"):
        verifier.open(
            stream=STREAM, frame=signer.seal(KIND, stream=STREAM, body=b"", ts_ns=NOW - 90 * SECOND)
        )
    with pytest.raises(ContractError, match=r"75\.5 s ahead"):
        verifier.open(
            stream=STREAM,
            frame=signer.seal(KIND, stream=STREAM, body=b"", ts_ns=NOW + 75_500_000_000),
        )


def test_key_expiry_is_checked_live_and_at_the_stamp_in_replay() -> None:
    """A key past its expiry is expired_key live; replay verifies what it signed before its
    expiry and nothing stamped at or after it."""
    old = Key(id="k-old", secret=b"o" * 32, expires_ns=NOW)
    ring = KeyRing([old, Key(id="k-new", secret=b"n" * 32)], "k-new")
    signer = Signer(KeyRing([Key(id="k-old", secret=b"o" * 32)], "k-old"), "x", clock=clock)
    before = signer.seal(KIND, b"", stream=STREAM, ts_ns=NOW - 1)
    at = signer.seal(KIND, b"", stream=STREAM, ts_ns=NOW)
    assert Verifier(ring, clock=lambda: NOW - 1).open(before, stream=STREAM).key_id == "k-old"
    assert _reason(Verifier(ring, clock=clock), before) == Reason.EXPIRED_KEY
    assert Verifier(ring, clock=clock, replay=True).open(before, stream=STREAM).key_id == "k-old"
    assert _reason(Verifier(ring, clock=clock, replay=True), at) == Reason.EXPIRED_KEY


# --------------------------------------------------------------------------- twins


def test_with_ring_keeps_every_setting_but_the_ring() -> None:
    """with_ring: same clock, tolerance, size limit, mode and nonce guard over another ring."""
    other = _ring(b"o" * 32, "k-other")
    base = Verifier(RING, clock=clock, tolerance_s=0.5, max_bytes=300)
    twin = base.with_ring(other)
    assert twin.ring is other and base.ring is RING
    assert twin.tolerance_s == 0.5
    signer = Signer(other, "x", clock=clock)
    assert (
        twin.open(stream=STREAM, frame=signer.seal(KIND, stream=STREAM, body=b"")).key_id
        == "k-other"
    )
    assert _reason(base, signer.seal(KIND, stream=STREAM, body=b"")) == Reason.UNKNOWN_KEY
    assert (
        _reason(twin, signer.seal(KIND, stream=STREAM, body=b"", ts_ns=NOW - SECOND))
        == Reason.STALE
    )
    assert _reason(twin, signer.seal(KIND, stream=STREAM, body=b"x" * 300)) == Reason.TOO_LARGE


def test_with_replay_skips_freshness_and_leaves_the_original_live() -> None:
    """with_replay(): a replay twin accepts old frames; the original still refuses them."""
    base = Verifier(RING, clock=clock)
    old = Signer(RING, "x", clock=clock).seal(
        KIND, stream=STREAM, body=b"", ts_ns=NOW - 3600 * SECOND
    )
    replay = base.with_replay()
    assert replay.open(old, stream=STREAM).ts_ns == NOW - 3600 * SECOND
    assert _reason(base, old) == Reason.STALE
    assert _reason(replay.with_replay(False), old) == Reason.STALE


async def test_replay_twin_skips_the_nonce_guard() -> None:
    """In replay mode the same id under two tokens is not a replay (the log is re-read)."""
    guard = MemoryNonceGuard(clock=clock)
    live = Verifier(RING, clock=clock, nonce_guard=guard)
    frame = Signer(RING, "x", clock=clock).seal(KIND, stream=STREAM, body=b"")
    replay = live.with_replay()
    assert (await replay.verify(frame, stream=STREAM, token="a")).kind == KIND
    assert (await replay.verify(frame, stream=STREAM, token="b")).kind == KIND
    assert len(guard) == 0
    assert (await live.verify(frame, stream=STREAM, token="a")).kind == KIND
    with pytest.raises(ContractError) as info:
        await live.verify(frame, stream=STREAM, token="b")
    assert info.value.code == Reason.REPLAYED


# --------------------------------------------------------------------------- nonces


class RecordingGuard(MemoryNonceGuard):
    """The memory guard (on the tests' clock), recording the (id, token, deadline) triples it is
    asked about, one list per round trip."""

    def __init__(self) -> None:
        super().__init__(clock=clock)
        self.asked: list[list[tuple[str, str, int]]] = []

    async def admit(self, message_id: str, token: str, deadline_ms: int) -> Claim:
        self.asked.append([(message_id, token, deadline_ms)])
        return await super().admit(message_id, token, deadline_ms)

    async def admit_many(self, items: Sequence[tuple[str, str, int]]) -> list[Claim]:
        self.asked.append(list(items))
        return await super().admit_many(items)


NOW_MS = NOW // 1_000_000
DEADLINE = NOW_MS + 60_000  # a message stamped NOW, with the default tolerance of 60 s


async def test_nonce_is_scoped_per_receiver_and_kept_until_the_message_deadline() -> None:
    """The nonce key is 'scope|id' (just the id without a scope), the token defaults to the id,
    and the nonce is kept until the message's own stamp plus the clock tolerance (in ms)."""
    guard = RecordingGuard()
    signer = Signer(RING, "x", clock=clock)
    frame = signer.seal(KIND, stream=STREAM, body=b"", msg_id="m-1")
    older = signer.seal(KIND, stream=STREAM, body=b"", msg_id="m-2", ts_ns=NOW - 1_500_001)
    await Verifier(RING, clock=clock, nonce_guard=guard).verify(
        frame, stream=STREAM, token="t", scope="seed"
    )
    await Verifier(RING, clock=clock, nonce_guard=guard, tolerance_s=2.5).verify(
        frame, stream=STREAM
    )
    await Verifier(RING, clock=clock, nonce_guard=guard).verify(older, stream=STREAM)
    assert guard.asked == [
        [("seed|m-1", "t", DEADLINE)],
        [("m-1", "m-1", NOW_MS + 2_500)],
        [("m-2", "m-2", DEADLINE - 1)],  # 1.500001 ms earlier: the deadline is rounded up
    ]


async def test_one_message_fanned_out_is_admitted_once_per_receiver() -> None:
    """The same frame delivered to two receivers (scopes) under two tokens is no replay."""
    verifier = Verifier(RING, clock=clock, nonce_guard=MemoryNonceGuard(clock=clock))
    frame = Signer(RING, "x", clock=clock).seal(KIND, stream=STREAM, body=b"")
    assert (await verifier.verify(frame, stream=STREAM, token="1-0", scope="a")).kind == KIND
    assert (await verifier.verify(frame, stream=STREAM, token="2-0", scope="b")).kind == KIND
    with pytest.raises(ContractError):
        await verifier.verify(frame, stream=STREAM, token="3-0", scope="a")


async def test_verify_many_judges_each_frame_with_one_nonce_round_trip() -> None:
    """verify_many: per frame the envelope or its error, in order; one admit_many for the batch."""
    guard = RecordingGuard()
    verifier = Verifier(RING, clock=clock, nonce_guard=guard)
    signer = Signer(RING, "x", clock=clock)
    good, again = (
        signer.seal(KIND, stream=STREAM, body=b"", msg_id="m-1"),
        signer.seal(KIND, stream=STREAM, body=b"", msg_id="m-2"),
    )
    stale = signer.seal(KIND, stream=STREAM, body=b"", msg_id="m-3", ts_ns=NOW - 61 * SECOND)
    await verifier.verify(again, stream=STREAM, token="old", scope="s")
    guard.asked.clear()
    out = await verifier.verify_many(
        [
            (good, STREAM, "1-0"),
            (stale, STREAM, "2-0"),
            (b"junk", STREAM, "3-0"),
            (again, STREAM, "4-0"),
            (good, STREAM, "1-0"),
            (again, STREAM, ""),
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
        [
            ("s|m-1", "1-0", DEADLINE),
            ("s|m-2", "4-0", DEADLINE),
            ("s|m-1", "1-0", DEADLINE),
            ("s|m-2", "m-2", DEADLINE),
        ]
    ]


async def test_verify_many_without_a_scope_uses_the_bare_id() -> None:
    """Without a scope the batch admits bare message ids."""
    guard = RecordingGuard()
    frame = Signer(RING, "x", clock=clock).seal(KIND, stream=STREAM, body=b"", msg_id="m-7")
    out = await Verifier(RING, clock=clock, nonce_guard=guard).verify_many([(frame, STREAM, "")])
    assert isinstance(out[0], Envelope)
    assert guard.asked == [[("m-7", "m-7", DEADLINE)]]


async def test_verify_many_with_no_guard_or_in_replay_admits_no_nonce() -> None:
    """No nonce guard, or replay mode: every good frame is returned, nothing is admitted."""
    guard = RecordingGuard()
    frame = Signer(RING, "x", clock=clock).seal(KIND, stream=STREAM, body=b"")
    for verifier in (
        Verifier(RING, clock=clock),
        Verifier(RING, clock=clock, nonce_guard=guard, replay=True),
    ):
        out = await verifier.verify_many([(frame, STREAM, "a"), (frame, STREAM, "b")])
        assert all(isinstance(o, Envelope) for o in out)
    assert guard.asked == []
    assert (
        await Verifier(RING, clock=clock, nonce_guard=guard).verify_many([(b"x", STREAM, "a")])
        != []
    )
    assert guard.asked == []  # nothing verified: no round trip at all


class FailingGuard(MemoryNonceGuard):
    """A nonce store that is unreachable: every admission raises Overloaded."""

    async def admit_many(self, items: Sequence[tuple[str, str, int]]) -> list[Claim]:
        raise Overloaded("nonce store unavailable")


async def test_verify_many_fails_closed_when_the_nonce_store_fails() -> None:
    """If the nonce store fails, every frame that needed it gets that error (none is let through);
    frames rejected earlier keep their own reason."""
    verifier = Verifier(RING, clock=clock, nonce_guard=FailingGuard())
    frame = Signer(RING, "x", clock=clock).seal(KIND, stream=STREAM, body=b"")
    out = await verifier.verify_many(
        [(frame, STREAM, "a"), (b"junk", STREAM, "b"), (frame, STREAM, "c")]
    )
    assert [o.code if isinstance(o, ContractError) else "ok" for o in out] == [
        Reason.OVERLOADED,
        Reason.BAD_FRAME,
        Reason.OVERLOADED,
    ]


@pytest.mark.parametrize("bomb", [b"\x9b" + b"\x90" * 2000, b"\xdc\xff\xff" + b"\x91" * 70_000])
def test_a_shape_bomb_over_1_kib_is_refused_by_the_header_walk(bomb: bytes) -> None:
    """A frame over 1 KiB that is not one flat array of scalars is refused before msgpack reads it
    (wire.md §2: a few steps whatever its size)."""
    assert "not an array of scalar fields" in _bad_frame(bomb)
