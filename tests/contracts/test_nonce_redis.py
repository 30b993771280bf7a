"""The Redis nonce guard: shared by verifiers in different processes, kept by the server."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from bus import open_bus
from bus.nonce import RedisNonceGuard
from bus.testing import real_redis_url, redis_server
from contracts import KeyRing, Reason, Signer, Verifier, streams
from contracts.errors import ContractError
from leyline import pb

BODY = pb.SeedCommand(slot="s", cull=pb.Cull())
INBOX = streams.inbox("nonce", "seed", "s")


@pytest.mark.redis
async def test_message_replayed_to_a_second_verifier_is_rejected() -> None:
    """Two verifiers with their own connections to one Redis: the second sighting is `replayed`."""
    ring = KeyRing.generate()
    prefix = f"kasmina:{{nonce-{uuid.uuid4().hex[:8]}}}:"
    first, second = open_bus(real_redis_url()), open_bus(real_redis_url())
    try:
        frame = Signer(ring, "tamiyo").seal("seed.command", BODY, stream=INBOX)
        a = Verifier(ring, nonce_guard=RedisNonceGuard(first, prefix))
        b = Verifier(ring, nonce_guard=RedisNonceGuard(second, prefix))
        assert (await a.verify(frame, stream=INBOX, token="inbox/1-0")).kind == "seed.command"
        assert (
            await a.verify(frame, stream=INBOX, token="inbox/1-0")
        ).kind == "seed.command"  # a redelivery
        with pytest.raises(ContractError) as info:
            await b.verify(frame, stream=INBOX, token="inbox/2-0")
        assert info.value.code == Reason.REPLAYED
        # another receiver (scope) may see the same fanned-out message once
        assert (
            await b.verify(frame, stream=INBOX, token="other/1-0", scope="actor:seed:t")
        ).kind == "seed.command"
    finally:
        from bus.testing import purge_prefix

        await purge_prefix(first, prefix)
        await first.close()
        await second.close()


@pytest.mark.redis
async def test_nonces_survive_a_server_restart() -> None:
    """With AOF (appendfsync always) the nonce store survives a kill -9 and restart of redis-server."""
    ring = KeyRing.generate()
    frame = Signer(ring, "tamiyo").seal("seed.command", BODY, stream=INBOX)
    with redis_server(aof=True, appendfsync="always") as server:
        bus = open_bus(server.url)
        guard = RedisNonceGuard(bus, "kasmina:{restart}:")
        assert (
            await Verifier(ring, nonce_guard=guard).verify(frame, stream=INBOX, token="t1")
        ).kind == "seed.command"
        await bus.close()
        server.kill()
        server.restart()
        bus = open_bus(server.url)
        try:
            with pytest.raises(ContractError) as info:
                await Verifier(ring, nonce_guard=RedisNonceGuard(bus, "kasmina:{restart}:")).verify(
                    frame, stream=INBOX, token="t2"
                )
            assert info.value.code == Reason.REPLAYED
        finally:
            await bus.close()


@pytest.mark.redis
async def test_a_restart_without_persistence_refuses_what_was_stamped_before() -> None:
    """Redis restarted without AOF forgets every nonce: a message captured 3 s before the restart
    is refused (stamped before the memory began); one stamped after it is accepted."""
    ring = KeyRing.generate()
    signer = Signer(ring, "tamiyo", clock=lambda: time.time_ns() - 3 * 10**9)
    captured = signer.seal("seed.command", BODY, stream=INBOX)
    prefix = "kasmina:{volatile}:"
    with redis_server(aof=False) as server:
        bus = open_bus(server.url)
        try:
            guard = RedisNonceGuard(bus, prefix)
            await bus.set_value(guard.since_key, b"0")  # memory complete for as long as it matters
            assert (
                await Verifier(ring, nonce_guard=guard).verify(captured, stream=INBOX, token="t1")
            ).kind
        finally:
            await bus.close()
        server.restart()
        bus = open_bus(server.url)
        try:
            verifier = Verifier(ring, nonce_guard=RedisNonceGuard(bus, prefix))
            with pytest.raises(ContractError) as info:
                await verifier.verify(captured, stream=INBOX, token="t1")
            assert info.value.code == Reason.REPLAYED and "before" in info.value.detail
            fresh = Signer(ring, "tamiyo").seal("seed.command", BODY, stream=INBOX)
            assert (await verifier.verify(fresh, stream=INBOX, token="t3")).kind == "seed.command"
            (result,) = await verifier.verify_many([(captured, INBOX, "t4")])
            assert isinstance(result, ContractError) and result.code == Reason.REPLAYED
        finally:
            await bus.close()


@pytest.mark.parametrize("url", ["fakeredis://", pytest.param("real", marks=pytest.mark.redis)])
async def test_nonce_keys_of_another_type_are_replaced_not_fatal(url: str) -> None:
    """A writer who puts a hash at the nonce store's ``nonce-since`` key, or at a message's nonce
    key, breaks no verification: the foreign value is replaced as a missing one would be set, the
    message is admitted once, and its replay is still refused."""
    async with _guarded(url) as (client, guard, ring, verifier):
        signer = Signer(ring, "tamiyo")
        await client.hset(guard.since_key, "a", "b")
        frame = signer.seal("seed.command", BODY, stream=INBOX)
        assert (await verifier.verify(frame, stream=INBOX, token="i/1-0")).kind == "seed.command"
        assert await client.type(guard.since_key) in (b"string", "string")
        second = signer.seal("seed.command", BODY, stream=INBOX)
        held = guard.key(Verifier(ring).open(second, stream=INBOX).id)
        await client.hset(held, "x", "y")
        assert (await verifier.verify(second, stream=INBOX, token="i/2-0")).kind == "seed.command"
        assert await client.type(held) in (b"string", "string")
        with pytest.raises(ContractError) as info:
            await verifier.verify(second, stream=INBOX, token="i/3-0")
        assert info.value.code == Reason.REPLAYED


@pytest.mark.parametrize("url", ["fakeredis://", pytest.param("real", marks=pytest.mark.redis)])
@pytest.mark.parametrize("value", ["notanumber", "-5", "1.5", ""])
async def test_a_nonce_since_that_is_no_integer_is_reset_not_fatal(url: str, value: str) -> None:
    """A writer's text at ``nonce-since`` is taken as a missing key (reset from the server's
    start), never parsed into a crash: a fresh message is admitted and its replay refused."""
    async with _guarded(url) as (client, guard, ring, verifier):
        await client.set(guard.since_key, value)
        frame = Signer(ring, "tamiyo").seal("seed.command", BODY, stream=INBOX)
        assert (await verifier.verify(frame, stream=INBOX, token="i/1-0")).kind == "seed.command"
        assert (await client.get(guard.since_key)).isdigit()
        with pytest.raises(ContractError) as info:
            await verifier.verify(frame, stream=INBOX, token="i/2-0")
        assert info.value.code == Reason.REPLAYED


@pytest.mark.parametrize("url", ["fakeredis://", pytest.param("real", marks=pytest.mark.redis)])
async def test_a_nonce_since_in_the_future_is_reset_not_obeyed(url: str) -> None:
    """A writer's ``nonce-since`` after the server's clock (memory cannot begin in the future)
    is reset from the server's start instead of refusing every message as stamped before it: a
    fresh message is admitted, its replay refused, and the key holds a time not after now."""
    async with _guarded(url) as (client, guard, ring, verifier):
        await client.set(guard.since_key, "99999999999999")
        frame = Signer(ring, "tamiyo").seal("seed.command", BODY, stream=INBOX)
        assert (await verifier.verify(frame, stream=INBOX, token="i/1-0")).kind == "seed.command"
        assert int(await client.get(guard.since_key)) <= time.time_ns() // 1_000_000 + 1_000
        with pytest.raises(ContractError) as info:
            await verifier.verify(frame, stream=INBOX, token="i/2-0")
        assert info.value.code == Reason.REPLAYED


@asynccontextmanager
async def _guarded(url: str) -> AsyncIterator[tuple[Any, RedisNonceGuard, KeyRing, Verifier]]:
    """A Redis-backed nonce guard under a fresh prefix ("real": the shared server), its raw client,
    a ring and a verifier using the guard; the prefix's keys removed afterwards."""
    from bus.testing import purge_prefix

    bus = open_bus(real_redis_url() if url == "real" else url)
    prefix = f"kasmina:{{nonce-{uuid.uuid4().hex[:8]}}}:"
    ring = KeyRing.generate()
    guard = RedisNonceGuard(bus, prefix)
    try:
        yield bus.client, guard, ring, Verifier(ring, nonce_guard=guard)  # type: ignore[attr-defined]
    finally:
        await purge_prefix(bus, prefix)
        await bus.close()
