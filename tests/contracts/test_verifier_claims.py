"""What a rejection says about the frame it refused (docs/wire.md §5): the id, kind and sender the
frame claims, marked unverified before the MAC checked out and verified from the run binding on,
and a detail that names the offending value; and the nonce memory's start (docs/security.md: a
message stamped before it is refused as replayed), for one frame and for a batch."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from contracts import Key, KeyRing, MemoryNonceGuard, Reason, Signer, Verifier
from contracts.envelope import Envelope
from contracts.errors import ContractError
from contracts.nonce import Claim

NOW = 1_800_000_000 * 10**9
SECOND = 10**9
STREAM = "kasmina:{r1}:inbox:gate"
KIND = "gate.request"
SENDER = "seed:layer1.s0"
MSG_ID = "m-claimed"


def clock() -> int:
    return NOW


def _key(key_id: str = "k-a", **kw: object) -> Key:
    return Key(id=key_id, secret=key_id.encode() * 16, **kw)  # type: ignore[arg-type]


def _seal(key: Key, *, kind: str = KIND, stream: str = STREAM, ts_ns: int = NOW) -> bytes:
    ring = KeyRing([Key(id=key.id, secret=key.secret)], key.id)
    return Signer(ring, SENDER, clock=clock).seal(
        kind, b"", stream=stream, msg_id=MSG_ID, ts_ns=ts_ns
    )


def _refusal(verifier: Verifier, frame: bytes, stream: str = STREAM) -> ContractError:
    with pytest.raises(ContractError) as info:
        verifier.open(frame, stream=stream)
    return info.value


GOOD = _key()
RING = KeyRing([GOOD], GOOD.id)

# (case, frame, stream, verifier ring, code, verified, words the detail must contain)
CASES: list[tuple[str, bytes, str, KeyRing, Reason, bool, list[str]]] = [
    (
        "unknown key",
        _seal(_key("k-stranger")),
        STREAM,
        RING,
        Reason.UNKNOWN_KEY,
        False,
        ["k-stranger"],
    ),
    (
        "revoked key",
        _seal(_key("k-leaked")),
        STREAM,
        KeyRing([GOOD, _key("k-leaked", revoked_ns=NOW - SECOND)], GOOD.id),
        Reason.REVOKED_KEY,
        False,
        ["k-leaked"],
    ),
    (
        "expired key",
        _seal(_key("k-old")),
        STREAM,
        KeyRing([GOOD, _key("k-old", expires_ns=NOW - SECOND)], GOOD.id),
        Reason.EXPIRED_KEY,
        False,
        ["k-old"],
    ),
    (
        "bad signature",
        _seal(Key(id=GOOD.id, secret=b"not the secret" * 4)),
        STREAM,
        RING,
        Reason.BAD_SIGNATURE,
        False,
        [MSG_ID],
    ),
    (
        "wrong run",
        _seal(GOOD, stream="kasmina:{r2}:inbox:gate"),
        STREAM,
        RING,
        Reason.WRONG_RUN,
        True,
        ["r2", "r1"],
    ),
    (
        "wrong destination",
        _seal(GOOD, stream="kasmina:{r1}:inbox:safety"),
        STREAM,
        RING,
        Reason.WRONG_DESTINATION,
        True,
        ["inbox:safety", "inbox:gate"],
    ),
    ("stale", _seal(GOOD, ts_ns=NOW - 61 * SECOND), STREAM, RING, Reason.STALE, True, ["s old"]),
    (
        "from the future",
        _seal(GOOD, ts_ns=NOW + 61 * SECOND),
        STREAM,
        RING,
        Reason.FROM_FUTURE,
        True,
        ["s ahead"],
    ),
    (
        "unknown kind",
        _seal(GOOD, kind="no.such.kind"),
        STREAM,
        RING,
        Reason.UNKNOWN_KIND,
        True,
        ["no.such.kind"],
    ),
    (
        "forbidden kind",
        _seal(GOOD, kind=KIND),
        STREAM,
        KeyRing([_key("k-a", roles=frozenset({"trainer", "operator"}))], "k-a"),
        Reason.FORBIDDEN_KIND,
        True,
        ["k-a", "operator,trainer", KIND],
    ),
]


@pytest.mark.parametrize(
    ("frame", "stream", "ring", "code", "verified", "words"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_every_refusal_names_the_claimed_id_kind_and_sender(
    frame: bytes, stream: str, ring: KeyRing, code: Reason, verified: bool, words: list[str]
) -> None:
    """Key, MAC, binding, freshness, kind and role refusals carry the frame's id, kind and sender
    (unverified up to the MAC, verified after it) and a detail naming what was wrong."""
    error = _refusal(Verifier(ring, clock=clock), frame, stream)
    kind = "no.such.kind" if code == Reason.UNKNOWN_KIND else KIND
    assert (error.code, error.message_id, error.kind, error.sender) == (code, MSG_ID, kind, SENDER)
    assert error.verified is verified
    for word in words:
        assert word in error.detail, (word, error.detail)


@pytest.mark.parametrize(("offset", "detail"), [(-1, "61.1 s old"), (1, "61.1 s ahead")])
def test_the_freshness_detail_is_the_distance_in_seconds_to_a_tenth(
    offset: int, detail: str
) -> None:
    """61.05 s and 1 ns off the clock reads 61.1 s (the distance itself, rounded to a tenth)."""
    frame = _seal(GOOD, ts_ns=NOW + offset * 61_050_000_001)
    assert _refusal(Verifier(RING, clock=clock), frame).detail == detail


def test_a_revoked_key_is_refused_even_for_what_it_signed_before_revocation() -> None:
    """A revoked key verifies nothing, in live mode and in replay, whatever the stamp."""
    ring = KeyRing([GOOD, _key("k-leaked", revoked_ns=NOW)], GOOD.id)
    frame = _seal(_key("k-leaked"), ts_ns=NOW - 10 * SECOND)
    for verifier in (Verifier(ring, clock=lambda: NOW - 5 * SECOND), Verifier(ring, replay=True)):
        assert _refusal(verifier, frame).code == Reason.REVOKED_KEY


# --------------------------------------------------------------------------- nonce memory


def _guard(since_ns: int) -> MemoryNonceGuard:
    guard = MemoryNonceGuard()
    guard.since_ns = since_ns
    return guard


async def test_a_message_stamped_before_the_nonce_memory_began_is_replayed() -> None:
    """verify: stamped at the memory's start is judged (admitted); 1 ns earlier is replayed,
    verified, with the claimed id, kind and sender, saying the memory began after it."""
    verifier = Verifier(RING, clock=clock, nonce_guard=_guard(NOW - SECOND))
    at = _seal(GOOD, ts_ns=NOW - SECOND)
    assert (await verifier.verify(at, stream=STREAM, token="1-0")).ts_ns == NOW - SECOND
    before = Signer(RING, SENDER, clock=clock).seal(
        KIND, b"", stream=STREAM, msg_id="m-early", ts_ns=NOW - SECOND - 1
    )
    with pytest.raises(ContractError) as info:
        await verifier.verify(before, stream=STREAM, token="2-0")
    error = info.value
    assert (error.code, error.message_id, error.kind, error.sender, error.verified) == (
        Reason.REPLAYED,
        "m-early",
        KIND,
        SENDER,
        True,
    )
    assert "nonce memory" in error.detail


async def test_a_replay_names_the_message_it_refused() -> None:
    """verify: a second delivery under another token is replayed, verified, with the claimed id,
    kind and sender, and the detail names the id."""
    verifier = Verifier(RING, clock=clock, nonce_guard=MemoryNonceGuard())
    frame = _seal(GOOD)
    await verifier.verify(frame, stream=STREAM, token="1-0")
    with pytest.raises(ContractError) as info:
        await verifier.verify(frame, stream=STREAM, token="2-0")
    error = info.value
    assert (error.code, error.message_id, error.kind, error.sender, error.verified) == (
        Reason.REPLAYED,
        MSG_ID,
        KIND,
        SENDER,
        True,
    )
    assert MSG_ID in error.detail


async def test_a_batch_refuses_what_was_stamped_before_the_nonce_memory_began() -> None:
    """verify_many: stamped at the memory's start is admitted; 1 ns earlier is replayed, verified,
    with the claimed id, kind and sender; a replay in the batch carries the same claims."""
    verifier = Verifier(RING, clock=clock, nonce_guard=_guard(NOW - SECOND))
    signer = Signer(RING, SENDER, clock=clock)
    at = signer.seal(KIND, b"", stream=STREAM, msg_id="m-at", ts_ns=NOW - SECOND)
    before = signer.seal(KIND, b"", stream=STREAM, msg_id="m-early", ts_ns=NOW - SECOND - 1)
    out = await verifier.verify_many(
        [(at, STREAM, "1-0"), (before, STREAM, "2-0"), (at, STREAM, "3-0")]
    )
    assert isinstance(out[0], Envelope) and out[0].id == "m-at"
    for error, mid in ((out[1], "m-early"), (out[2], "m-at")):
        assert isinstance(error, ContractError)
        assert (error.code, error.message_id, error.kind, error.sender, error.verified) == (
            Reason.REPLAYED,
            mid,
            KIND,
            SENDER,
            True,
        )
    assert isinstance(out[1], ContractError) and "nonce memory" in out[1].detail
    assert isinstance(out[2], ContractError) and "m-at" in out[2].detail


class ShortGuard(MemoryNonceGuard):
    """A broken nonce store that answers fewer verdicts than it was asked for."""

    async def admit_many(self, items: Sequence[tuple[str, str, int]]) -> list[Claim]:
        return (await super().admit_many(items))[:1]


async def test_a_batch_never_lets_through_a_frame_the_nonce_store_did_not_judge() -> None:
    """verify_many fails the whole batch when the store answers fewer verdicts than frames."""
    verifier = Verifier(RING, clock=clock, nonce_guard=ShortGuard())
    signer = Signer(RING, SENDER, clock=clock)
    frames = [(signer.seal(KIND, b"", stream=STREAM), STREAM, f"{i}-0") for i in range(2)]
    with pytest.raises(ValueError):
        await verifier.verify_many(frames)


async def test_a_message_late_by_the_nonce_stores_clock_is_stale_and_verified() -> None:
    """A store whose clock is past the message's deadline (stamp + tolerance) refuses it as
    stale, verified, with the claimed id, kind and sender; one batch does the same."""
    store_clock = NOW + 61 * SECOND  # the verifier's clock says NOW: fresh to it
    frame = _seal(GOOD)
    for batch in (False, True):
        guard = MemoryNonceGuard(clock=lambda: store_clock)
        verifier = Verifier(RING, clock=clock, nonce_guard=guard)
        if batch:
            (error,) = await verifier.verify_many([(frame, STREAM, "1-0")])
            assert isinstance(error, ContractError)
        else:
            with pytest.raises(ContractError) as info:
                await verifier.verify(frame, stream=STREAM, token="1-0")
            error = info.value
        assert (error.code, error.message_id, error.kind, error.sender, error.verified) == (
            Reason.STALE,
            MSG_ID,
            KIND,
            SENDER,
            True,
        )
        assert len(guard) == 0
