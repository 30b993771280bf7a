"""Envelope signing and verification: every tampering gets its own reason code."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import REGISTRY, KeyRing, MemoryNonceGuard, Reason, Signer, Verifier, streams, unpack
from contracts.errors import ContractError
from leyline import pb

NOW = 1_800_000_000 * 10**9
INBOX = streams.inbox("r1", "seed", "layer1.s0")
BODY = pb.SeedCommand(slot="layer1.s0", germinate=pb.Germinate(blueprint="residual_mlp"))


def clock() -> int:
    return NOW


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.generate(now_ns=NOW)


def _frame(ring: KeyRing, **kw: object) -> bytes:
    kw.setdefault("stream", INBOX)
    return Signer(ring, "tamiyo", clock=clock).seal("seed.command", BODY, **kw)  # type: ignore[arg-type]


def _reason(verifier: Verifier, frame: bytes, stream: str = INBOX) -> Reason:
    with pytest.raises(ContractError) as info:
        verifier.open(frame, stream=stream)
    return info.value.code


def _mutate(frame: bytes, index: int, value: object) -> bytes:
    items = msgpack.unpackb(frame, raw=False)
    items[index] = value
    return msgpack.packb(items, use_bin_type=True)


def test_round_trip(ring: KeyRing) -> None:
    """A sealed message opens to the same header and body."""
    env = Verifier(ring, clock=clock).open(_frame(ring, causation_id="c-1"), stream=INBOX)
    assert (env.kind, env.sender, env.causation_id, env.ts_ns, env.run, env.to) == (
        "seed.command",
        "tamiyo",
        "c-1",
        NOW,
        "r1",
        "inbox:seed:layer1.s0",
    )
    assert REGISTRY.parse(env.kind, env.body) == BODY


@pytest.mark.parametrize(
    ("index", "value", "reason"),
    [
        (1, "gate.request", Reason.BAD_SIGNATURE),  # kind
        (2, "01890000-0000-7000-8000-000000000000", Reason.BAD_SIGNATURE),  # id
        (3, "mallory", Reason.BAD_SIGNATURE),  # sender
        (5, NOW + 1, Reason.BAD_SIGNATURE),  # ts_ns
        (6, "other-cause", Reason.BAD_SIGNATURE),  # causation_id
        (7, "r2", Reason.BAD_SIGNATURE),  # run: rewritten to match another run, the MAC fails
        (8, "inbox:seed:layer2.s0", Reason.BAD_SIGNATURE),  # destination rewritten
        (9, b"\x0a\x01x", Reason.BAD_SIGNATURE),  # body
        (10, b"\x00" * 32, Reason.BAD_SIGNATURE),  # signature
        (10, b"\x00" * 31, Reason.BAD_FRAME),  # truncated signature
        (4, "k-unknown", Reason.UNKNOWN_KEY),  # key id
        (0, 1, Reason.UNSUPPORTED_VERSION),  # version
        (0, 3, Reason.UNSUPPORTED_VERSION),
        (0, "2", Reason.BAD_FRAME),
        (7, "bad run!", Reason.BAD_FRAME),
        (8, "", Reason.BAD_FRAME),
    ],
)
def test_each_tampered_field_is_rejected(
    ring: KeyRing, index: int, value: object, reason: Reason
) -> None:
    """Changing any header field, the body or the signature is rejected with its specific code."""
    assert _reason(Verifier(ring, clock=clock), _mutate(_frame(ring), index, value)) == reason


def test_truncation_and_garbage_are_bad_frames(ring: KeyRing) -> None:
    """A truncated frame and random bytes are bad frames."""
    frame = _frame(ring)
    verifier = Verifier(ring, clock=clock)
    for cut in (0, 1, len(frame) // 2, len(frame) - 1):
        assert _reason(verifier, frame[:cut]) == Reason.BAD_FRAME
    assert _reason(verifier, b"\xc1\xff garbage") == Reason.BAD_FRAME


def test_wrong_key_is_bad_signature(ring: KeyRing) -> None:
    """A message signed by a different secret under the same key id fails the MAC."""
    other = KeyRing.from_json(
        {**ring.to_json(), "keys": [{**ring.to_json()["keys"][0], "secret": "A" * 44}]}
    )
    assert _reason(Verifier(ring, clock=clock), _frame(other)) == Reason.BAD_SIGNATURE


def test_unknown_key_id(ring: KeyRing) -> None:
    """A message from a ring the verifier does not know is unknown_key."""
    assert (
        _reason(Verifier(KeyRing.generate(now_ns=NOW), clock=clock), _frame(ring))
        == Reason.UNKNOWN_KEY
    )


def test_too_large(ring: KeyRing) -> None:
    """Frames over the size limit are refused before parsing."""
    assert _reason(Verifier(ring, clock=clock, max_bytes=64), _frame(ring)) == Reason.TOO_LARGE


def test_unknown_kind_after_valid_signature(ring: KeyRing) -> None:
    """A correctly signed message of an unregistered kind is unknown_kind."""
    frame = Signer(ring, "x", clock=clock).seal("no.such.kind", b"", stream=INBOX)
    assert _reason(Verifier(ring, clock=clock), frame) == Reason.UNKNOWN_KIND


def test_bad_body_is_detected_at_parse(ring: KeyRing) -> None:
    """A signed body that is not the kind's protobuf fails parsing with bad_body."""
    frame = Signer(ring, "x", clock=clock).seal("seed.command", b"\xff\xff\xff", stream=INBOX)
    env = Verifier(ring, clock=clock).open(frame, stream=INBOX)
    with pytest.raises(ContractError) as info:
        REGISTRY.parse(env.kind, env.body)
    assert info.value.code == Reason.BAD_BODY


def test_stale_and_future_rejected_live_accepted_in_replay(ring: KeyRing) -> None:
    """Timestamps outside ±60 s are stale/from_future live; replay mode accepts them, MAC still checked."""
    old = _frame(ring, ts_ns=NOW - 61 * 10**9)
    ahead = _frame(ring, ts_ns=NOW + 61 * 10**9)
    live = Verifier(ring, clock=clock)
    assert _reason(live, old) == Reason.STALE
    assert _reason(live, ahead) == Reason.FROM_FUTURE
    assert Verifier(ring, clock=clock).open(_frame(ring, ts_ns=NOW - 59 * 10**9), stream=INBOX)
    replay = Verifier(ring, clock=clock, replay=True)
    assert replay.open(old, stream=INBOX).ts_ns == NOW - 61 * 10**9
    assert replay.open(ahead, stream=INBOX).ts_ns == NOW + 61 * 10**9
    assert _reason(replay, _mutate(old, 3, "mallory")) == Reason.BAD_SIGNATURE


def test_rotation_grace_period(ring: KeyRing) -> None:
    """After rotation the previous key verifies during the grace period and not after."""
    old_frame = _frame(ring)
    rotated = ring.rotate(grace_s=10, now_ns=NOW)
    assert rotated.active.id != ring.active.id
    assert Verifier(rotated, clock=lambda: NOW + 9 * 10**9, tolerance_s=60).open(
        old_frame, stream=INBOX
    )
    late = Verifier(rotated, clock=lambda: NOW + 11 * 10**9, tolerance_s=60)
    assert _reason(late, old_frame) == Reason.EXPIRED_KEY
    new_frame = Signer(rotated, "tamiyo", clock=clock).seal("seed.command", BODY, stream=INBOX)
    assert Verifier(rotated, clock=clock).open(new_frame, stream=INBOX).key_id == rotated.active.id
    assert _reason(Verifier(ring, clock=clock), new_frame) == Reason.UNKNOWN_KEY


async def test_replayed_message_is_rejected_by_nonce_guard(ring: KeyRing) -> None:
    """The same message id under a second delivery token is replayed; the same token is a redelivery."""
    guard = MemoryNonceGuard(clock=clock)
    verifier = Verifier(ring, clock=clock, nonce_guard=guard)
    frame = _frame(ring)
    assert (await verifier.verify(frame, stream=INBOX, token="s:1-0")).kind == "seed.command"
    assert (await verifier.verify(frame, stream=INBOX, token="s:1-0")).kind == "seed.command"
    with pytest.raises(ContractError) as info:
        await verifier.verify(frame, stream=INBOX, token="s:2-0")
    assert info.value.code == Reason.REPLAYED
    assert (info.value.message_id, info.value.verified) == (unpack(frame).id, True)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_raise_contract_errors(data: bytes) -> None:
    """Any byte string either verifies or raises ContractError: never another exception."""
    ring = KeyRing.generate(now_ns=NOW)
    try:
        env = Verifier(ring, clock=clock).open(data, stream=INBOX)
        REGISTRY.parse(env.kind, env.body)
    except ContractError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_valid_envelopes_never_crash_or_half_parse(data: st.DataObject) -> None:
    """Flipping, inserting or deleting bytes of a valid frame yields a ContractError or an equal message."""
    ring = KeyRing.generate(now_ns=NOW)
    frame = bytearray(_frame(ring))
    op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
    pos = data.draw(st.integers(0, len(frame) - 1))
    if op == "flip":
        frame[pos] ^= data.draw(st.integers(1, 255))
    elif op == "insert":
        frame[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    elif op == "delete":
        del frame[pos]
    else:
        frame = frame[:pos]
    try:
        env = Verifier(ring, clock=clock).open(bytes(frame), stream=INBOX)
    except ContractError:
        return
    # only a mutation that leaves the signed content intact may verify
    assert REGISTRY.parse(env.kind, env.body) == BODY
    assert env == unpack(_frame(ring, msg_id=env.id))


def test_memory_nonce_guard_is_bounded_and_fails_closed() -> None:
    """The in-memory guard never forgets an unexpired id: when full it raises overloaded."""
    now = [0]
    guard = MemoryNonceGuard(capacity=3, clock=lambda: now[0])
    for i in range(3):
        assert guard.check(f"m{i}", "t", deadline_ms=1000) == "new"
    with pytest.raises(ContractError) as info:
        guard.check("m3", "t", deadline_ms=1000)
    assert info.value.code == Reason.OVERLOADED
    assert guard.check("m0", "other", deadline_ms=1000) == "replayed"
    assert guard.check("m0", "t", deadline_ms=1000) == "redelivered"
    now[0] = 999 * 1_000_000
    assert guard.check("m0", "other", deadline_ms=1000) == "replayed"  # held until its deadline
    now[0] = 1000 * 1_000_000
    assert guard.check("m3", "t", deadline_ms=2000) == "new"
    assert len(guard) == 1


def test_memory_nonce_guard_forgets_each_id_at_its_own_deadline() -> None:
    """Ids leave at their own deadlines, not in the order they came; a deadline already passed
    is late and records nothing."""
    now = [0]
    guard = MemoryNonceGuard(clock=lambda: now[0] * 1_000_000)
    assert guard.check("late-deadline", "t", deadline_ms=3000) == "new"
    assert guard.check("early-deadline", "t", deadline_ms=1000) == "new"
    assert guard.check("past", "t", deadline_ms=0) == "late"
    assert len(guard) == 2
    now[0] = 1000
    assert guard.check("x", "t", deadline_ms=1001) == "new"  # runs the expiry
    assert guard.check("early-deadline", "other", deadline_ms=5000) == "new"
    assert guard.check("late-deadline", "other", deadline_ms=3000) == "replayed"
    now[0] = 3000
    assert guard.check("late-deadline", "other", deadline_ms=3000) == "late"
    assert len(guard) == 1  # "early-deadline", recorded again until 5000


async def test_a_replay_is_refused_as_replayed_until_the_deadline_and_as_stale_from_it(
    ring: KeyRing,
) -> None:
    """The nonce lives until the message's stamp plus the tolerance; from that instant the same
    frame is stale, so there is no instant at which a replay is admitted."""
    now = [NOW]
    guard = MemoryNonceGuard(clock=lambda: now[0])
    verifier = Verifier(ring, clock=lambda: now[0], nonce_guard=guard, tolerance_s=60)
    frame = _frame(ring)
    assert (await verifier.verify(frame, stream=INBOX, token="s:1-0")).kind == "seed.command"
    for offset_ms, reason in (
        (0, Reason.REPLAYED),
        (59_999, Reason.REPLAYED),
        (60_000, Reason.STALE),
    ):
        now[0] = NOW + offset_ms * 1_000_000
        with pytest.raises(ContractError) as info:
            await verifier.verify(frame, stream=INBOX, token="s:2-0")
        assert info.value.code == reason, offset_ms
    assert len(guard) == 0  # the nonce left at the deadline, when the guard began to say late
    now[0] += 1
    assert _reason(verifier, frame) == Reason.STALE  # and the receiver's own clock agrees


async def test_a_receiver_whose_clock_lags_the_store_is_told_stale_not_admitted(
    ring: KeyRing,
) -> None:
    """A receiver 30 s behind the nonce store still finds a 70 s old message fresh; the store
    judges the deadline by its own clock and refuses it (stale), recording nothing."""
    store_now = [NOW]
    guard = MemoryNonceGuard(clock=lambda: store_now[0])
    lagging = Verifier(ring, clock=lambda: NOW - 30 * 10**9, nonce_guard=guard, tolerance_s=60)
    old = Signer(ring, "tamiyo", clock=lambda: NOW - 70 * 10**9).seal(
        "seed.command", BODY, stream=INBOX
    )
    assert lagging.open(old, stream=INBOX).kind == "seed.command"  # fresh by its own clock
    with pytest.raises(ContractError) as info:
        await lagging.verify(old, stream=INBOX, token="s:9-0")
    assert info.value.code == Reason.STALE and "deadline" in info.value.detail
    (result,) = await lagging.verify_many([(old, INBOX, "s:9-0")])
    assert isinstance(result, ContractError) and result.code == Reason.STALE
    assert len(guard) == 0


def test_frame_moved_to_another_run_or_inbox_is_refused_with_its_own_code(ring: KeyRing) -> None:
    """A genuine frame read from another run's stream is wrong_run, from another inbox wrong_destination."""
    frame = _frame(ring)
    verifier = Verifier(ring, clock=clock)
    assert verifier.open(frame, stream=INBOX).to == "inbox:seed:layer1.s0"
    other_run = streams.inbox("r2", "seed", "layer1.s0")
    assert _reason(verifier, frame, other_run) == Reason.WRONG_RUN
    assert _reason(verifier, frame, streams.inbox("r1", "seed", "layer2.s0")) == (
        Reason.WRONG_DESTINATION
    )
    assert _reason(verifier, frame, streams.events("r1")) == Reason.WRONG_DESTINATION
    replay = verifier.with_replay()  # replay mode checks the binding too
    assert _reason(replay, frame, other_run) == Reason.WRONG_RUN


@pytest.mark.parametrize(
    ("mutate", "reason", "verified"),
    [
        (lambda f: _mutate(f, 4, "k-unknown"), Reason.UNKNOWN_KEY, False),
        (lambda f: _mutate(f, 3, "mallory"), Reason.BAD_SIGNATURE, False),
        (lambda f: _mutate(f, 0, 1), Reason.UNSUPPORTED_VERSION, False),
        (lambda f: _mutate(f, 10, b"x"), Reason.BAD_FRAME, False),
    ],
)
def test_rejections_before_the_mac_carry_the_claimed_id_unverified(
    ring: KeyRing, mutate: object, reason: Reason, verified: bool
) -> None:
    """A frame refused before (or at) the MAC check still names the id it claims, marked unverified."""
    frame = _frame(ring)
    claimed = unpack(frame).id
    with pytest.raises(ContractError) as info:
        Verifier(ring, clock=clock).open(mutate(frame), stream=INBOX)  # type: ignore[operator]
    assert (info.value.code, info.value.message_id, info.value.verified) == (
        reason,
        claimed,
        verified,
    )
    assert info.value.kind == "seed.command"


def test_v1_frames_are_refused_as_unsupported_version(ring: KeyRing) -> None:
    """A 9-element v1 frame is refused with unsupported_version and its claimed id."""
    v1 = msgpack.packb(
        [1, "seed.command", "id-1", "tamiyo", ring.active.id, NOW, "", b"", b"\0" * 32],
        use_bin_type=True,
    )
    with pytest.raises(ContractError) as info:
        Verifier(ring, clock=clock).open(v1, stream=INBOX)
    assert (info.value.code, info.value.message_id) == (Reason.UNSUPPORTED_VERSION, "id-1")


@pytest.mark.parametrize(
    "bomb",
    [
        b"\xdc\xff\xff" + b"\x90" * 65535,  # one array of 65535 empty arrays
        b"\x9b" + b"\x9b" * 5000 + b"\x90" * 11,  # nested far past any parser stack
        b"\x9b\x02" + b"\x9a" + b"\x90" * 10 + b"\x90" * 9 + b"\xc4\x00" * 3000,  # nested field
        b"\x9b\x02" + b"\xdf\x00\x01\x00\x00" + b"\x00\x00" * 65536,  # a map where a field is
    ],
)
def test_shape_bombs_are_refused_before_any_allocation(ring: KeyRing, bomb: bytes) -> None:
    """Frames built to make msgpack allocate (nesting, huge arrays, maps) are bad frames."""
    assert _reason(Verifier(ring, clock=clock), bomb) == Reason.BAD_FRAME


def test_header_strings_longer_than_256_bytes_are_refused(ring: KeyRing) -> None:
    """Each header string is at most 256 UTF-8 bytes (multi-byte characters count as bytes)."""
    long_sender = "é" * 129  # 258 bytes
    frame = Signer(ring, long_sender, clock=clock).seal("seed.command", BODY, stream=INBOX)
    assert _reason(Verifier(ring, clock=clock), frame) == Reason.BAD_FRAME
