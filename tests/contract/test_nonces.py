"""Nonce contract, every backend: each nonce expires at its own message's deadline, a deadline
already passed by the store's clock records nothing, and a receiver whose clock lags the store
is told stale instead of being let through."""

from __future__ import annotations

import time

import pytest

from bus import Bus, RedisNonceGuard
from bus.memory import MemoryBus
from contracts import KeyRing, Reason, Signer, Verifier, streams
from contracts.errors import ContractError
from leyline import pb

BODY = pb.SeedCommand(slot="s", cull=pb.Cull())
SECOND_NS = 10**9


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _expiry_ms(bus: Bus, key: str) -> int | None:
    """When the store will drop ``key`` (Unix ms), read from the store itself."""
    if isinstance(bus, MemoryBus):
        item = bus.store.values.get(key)
        return None if item is None else item[1]
    expires = int(await bus.client.pexpiretime(key))  # type: ignore[attr-defined]
    return None if expires < 0 else expires


async def test_each_nonce_expires_at_its_own_deadline(bus: Bus, prefix: str) -> None:
    """Two nonces claimed together keep their own deadlines (not one TTL); a second claim reports
    the token held, whichever token it brings."""
    now = _now_ms()
    early, late = now + 60_000, now + 120_000
    items = [(f"{prefix}nonce:a", "1-0", late), (f"{prefix}nonce:b", "2-0", early)]
    since, found = await bus.claim_nonces(f"{prefix}nonce-since", items)
    assert found == [None, None]
    assert since <= now
    assert await _expiry_ms(bus, f"{prefix}nonce:a") == late
    assert await _expiry_ms(bus, f"{prefix}nonce:b") == early
    again = [(f"{prefix}nonce:a", "9-0", late), (f"{prefix}nonce:b", "2-0", early)]
    assert (await bus.claim_nonces(f"{prefix}nonce-since", again))[1] == ["1-0", "2-0"]
    assert await _expiry_ms(bus, f"{prefix}nonce:b") == early  # a second claim moves nothing


async def test_a_deadline_already_passed_records_nothing(bus: Bus, prefix: str) -> None:
    """A nonce whose deadline the store's clock has passed is reported late (False) and not set;
    the others of the batch are claimed as usual."""
    now = _now_ms()
    items = [(f"{prefix}nonce:old", "1-0", now - 1), (f"{prefix}nonce:new", "2-0", now + 60_000)]
    _, found = await bus.claim_nonces(f"{prefix}nonce-since", items)
    assert found == [False, None]
    assert await bus.get_value(f"{prefix}nonce:old") is None
    assert await bus.get_value(f"{prefix}nonce:new") == b"2-0"


async def test_a_lagging_receiver_cannot_reopen_a_replay_window(bus: Bus, prefix: str) -> None:
    """A receiver whose clock is 30 s behind the store (tolerance 60 s): a message stamped 70 s
    ago by the store's clock is fresh to it, but its nonce could have expired, so the store says
    late and the message is stale; a message 50 s old is admitted once, then replayed."""
    ring = KeyRing.generate()
    run = prefix.split("{")[1].split("}")[0]
    inbox = streams.inbox(run, "seed", "s")
    guard = RedisNonceGuard(bus, prefix)
    await bus.set_value(guard.since_key, b"0")  # a throwaway server may have started 50 s ago
    lagging = Verifier(
        ring, nonce_guard=guard, tolerance_s=60, clock=lambda: time.time_ns() - 30 * SECOND_NS
    )

    def stamped(seconds_ago: int) -> bytes:
        signer = Signer(ring, "tamiyo", clock=lambda: time.time_ns() - seconds_ago * SECOND_NS)
        return signer.seal("seed.command", BODY, stream=inbox)

    old, recent = stamped(70), stamped(50)
    assert lagging.open(old, stream=inbox).kind == "seed.command"  # fresh by its own clock
    out = await lagging.verify_many([(old, inbox, "1-0"), (recent, inbox, "2-0")], scope="g")
    assert isinstance(out[0], ContractError) and out[0].code == Reason.STALE
    assert not isinstance(out[1], ContractError)
    assert await bus.get_value(guard.key(f"g|{lagging.open(old, stream=inbox).id}")) is None
    with pytest.raises(ContractError) as info:
        await lagging.verify(recent, stream=inbox, token="3-0", scope="g")
    assert info.value.code == Reason.REPLAYED


async def test_a_guard_batch_tells_each_claim_apart(bus: Bus, prefix: str) -> None:
    """One batch mixing new, redelivered, replayed and late ids gets each its own claim, in order;
    an all-new batch and an empty one too."""
    guard = RedisNonceGuard(bus, prefix)
    now = _now_ms()
    assert await guard.admit_many([]) == []
    first = [("g|a", "s/1-0", now + 60_000), ("g|b", "s/2-0", now + 60_000)]
    assert await guard.admit_many(first) == ["new", "new"]
    batch = [
        ("g|c", "s/3-0", now + 60_000),  # new
        ("g|a", "s/1-0", now + 60_000),  # the same entry again
        ("g|b", "s/9-0", now + 60_000),  # another entry with a held id
        ("g|d", "s/4-0", now - 1),  # past its deadline
        ("g|e", "s/5-0", now + 60_000),  # new
    ]
    assert await guard.admit_many(batch) == ["new", "redelivered", "replayed", "late", "new"]
    assert await guard.admit_many([("h|a", "s/1-0", now + 60_000)]) == ["new"]  # another group
    assert await bus.get_value(guard.key("g|b")) == b"s/2-0"
    assert await bus.get_value(guard.key("g|d")) is None


async def test_claims_under_a_prefix_set_the_prefixed_keys(bus: Bus, prefix: str) -> None:
    """``prefix`` names the keys: the prefixed key is set and judged, the bare one is untouched."""
    now = _now_ms()
    items = [("a", "1-0", now + 60_000)]
    since_key = f"{prefix}nonce-since"
    assert (await bus.claim_nonces(since_key, items, prefix=f"{prefix}nonce:"))[1] == [None]
    assert await bus.get_value(f"{prefix}nonce:a") == b"1-0"
    assert await bus.get_value("a") is None
    again = [("a", "2-0", now + 60_000)]
    assert (await bus.claim_nonces(since_key, again, prefix=f"{prefix}nonce:"))[1] == ["1-0"]
