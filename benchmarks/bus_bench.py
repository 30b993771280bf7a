"""Bus benchmark: end-to-end signed message rate and latency against a raw redis-py loop.

Figures: ``{"bench", "value", "unit", "baseline", "ratio"}``; ``baseline`` is measured in the
same run: the warm raw loop (raw redis-py: pipelined XADD, XREADGROUP, XACK, no signing, no
dedupe). Every arm is warm: its producer process is started (and has imported everything) before
its clock starts, and one untimed round runs first. The arms are interleaved over ``ROUNDS``
rounds (their order rotating) and each figure is the median of its rounds, so a load change on a
shared machine hits every arm alike.
Usage: python -m benchmarks.bus_bench [URL] [N]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_process
import redis
import redis.asyncio as aioredis

from benchmarks import figure
from bus import Append, Consumer, Handled, RedisNonceGuard, RedisStreamBus
from contracts import KeyRing, Signer, Verifier
from contracts.registry import KINDS

BODY = bytes(range(200))
CHUNK = 512
BATCH = 1024
ROUNDS = 3


def _ready() -> None:
    """Run in the producer process before an arm's clock: the process is up, its imports done."""


async def warm_producer() -> None:
    """Start (or keep) the producer process, so no arm's clock pays for starting it."""
    await anyio.to_process.run_sync(_ready)


def _produce_signed(url: str, stream: str, n: int, ring_json: dict[str, Any]) -> None:
    """Producer process: seal and publish ``n`` frames through the bus (pipelined)."""

    async def run() -> None:
        signer = Signer(KeyRing.from_json(ring_json), sender="bench")
        kind = next(iter(KINDS))
        bus = RedisStreamBus.from_url(url)
        for start in range(0, n, CHUNK):
            frames = [signer.seal(kind, BODY, stream=stream) for _ in range(min(CHUNK, n - start))]
            await bus.publish_many([Append(stream, {"f": fr}) for fr in frames])
        await bus.close()

    anyio.run(run)


def _produce_raw(url: str, stream: str, n: int, payload: dict[str, bytes]) -> None:
    """Producer process: pipelined XADD of ``n`` unsigned entries."""
    client = redis.Redis.from_url(url)
    for start in range(0, n, CHUNK):
        pipe = client.pipeline(transaction=False)
        for _ in range(min(CHUNK, n - start)):
            pipe.xadd(stream, payload)  # type: ignore[arg-type]
        pipe.execute()
    client.close()


async def _signed_rate(url: str, n: int, prefix: str, *, guarded: bool = False) -> float:
    """publish (sealed) -> read -> verify -> dedupe -> commit -> ack, msg/s. ``guarded`` adds what
    an actor shell also does: the replay guard (one nonce script call per batch, a key per message).
    """
    ring = KeyRing.generate()
    bus = RedisStreamBus.from_url(url)
    guard = RedisNonceGuard(bus, prefix) if guarded else None
    verifier = Verifier(ring, nonce_guard=guard)
    stream, group = prefix + ("guarded" if guarded else "signed"), "g"
    await bus.ensure_group(stream, group)
    consumer = Consumer(bus, stream, group, "c", batch=BATCH, block_ms=100,
                        dead_stream=prefix + "dead")  # fmt: skip
    done = 0

    async def produce() -> None:
        await anyio.to_process.run_sync(_produce_signed, url, stream, n, ring.to_json())

    await warm_producer()
    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        async for batch in consumer.batches():
            if guard is not None:
                checked = await verifier.verify_many(
                    [(e.fields["f"], e.stream, f"{e.stream}/{e.id}") for e in batch], scope=group
                )
                assert not any(isinstance(c, Exception) for c in checked)
            else:
                for entry in batch:
                    verifier.open(entry.fields["f"], stream=entry.stream)
            # exactly once by the ack, as the actor shells commit
            await bus.commit([Handled(entry, group) for entry in batch])
            done += len(batch)
            if done >= n:
                await consumer.close()
    elapsed = time.perf_counter() - t0
    await bus.delete(stream, prefix + "dead")
    await _purge(bus.client, prefix)
    await bus.close()
    return n / elapsed


async def raw_rate(url: str, n: int, prefix: str) -> float:
    """Raw redis-py: pipelined XADD, XREADGROUP COUNT, one XACK per batch, msg/s."""
    client = aioredis.Redis.from_url(url)
    stream, group = prefix + "raw", "g"
    await client.xgroup_create(stream, group, id="0", mkstream=True)
    payload = {"f": bytes(120) + BODY}
    done = 0

    async def produce() -> None:
        await anyio.to_process.run_sync(_produce_raw, url, stream, n, payload)

    await warm_producer()
    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        while done < n:
            reply: Any = await client.xreadgroup(group, "c", {stream: ">"}, count=BATCH, block=100)
            if not reply:
                continue
            ids = [i for i, _ in reply[0][1]]
            await client.xack(stream, group, *ids)
            done += len(ids)
    elapsed = time.perf_counter() - t0
    await client.delete(stream)
    await client.aclose()
    return n / elapsed


async def _latency(
    url: str, prefix: str, seconds: float, rate: int, handle: Callable[..., Awaitable[list[float]]]
) -> list[float]:
    """Publish at a steady ``rate``; return publish-to-handled latencies in ms."""
    return await handle(url, prefix, int(seconds * rate), 1.0 / rate)


async def _signed_latency(url: str, prefix: str, count: int, period: float) -> list[float]:
    ring = KeyRing.generate()
    signer, verifier = Signer(ring, sender="bench"), Verifier(ring)
    kind = next(iter(KINDS))
    bus = RedisStreamBus.from_url(url)
    stream, group = prefix + "lat", "g"
    await bus.ensure_group(stream, group)
    consumer = Consumer(bus, stream, group, "c", batch=BATCH, block_ms=100,
                        dead_stream=prefix + "dead", claim_every_s=60.0)  # fmt: skip
    sent: dict[str, int] = {}
    lat: list[float] = []

    async def produce() -> None:
        start = time.perf_counter()
        for i in range(count):
            await anyio.sleep(max(0.0, start + i * period - time.perf_counter()))
            frame = signer.seal(kind, BODY, stream=stream)
            sent[str(i)] = time.perf_counter_ns()
            await bus.publish(stream, {"f": frame, "i": str(i).encode()})

    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        async for batch in consumer.batches():
            handled = []
            for e in batch:
                verifier.open(e.fields["f"], stream=e.stream)
                handled.append(Handled(e, group))
            await bus.commit(handled)
            now = time.perf_counter_ns()
            lat += [(now - sent[e.fields["i"].decode()]) / 1e6 for e in batch]
            if len(lat) >= count:
                await consumer.close()
    await _purge(bus.client, prefix)
    await bus.close()
    return lat


async def _raw_latency(url: str, prefix: str, count: int, period: float) -> list[float]:
    client = aioredis.Redis.from_url(url)
    reader = aioredis.Redis.from_url(url)
    stream, group = prefix + "rawlat", "g"
    await client.xgroup_create(stream, group, id="0", mkstream=True)
    sent: dict[bytes, int] = {}
    lat: list[float] = []

    async def produce() -> None:
        start = time.perf_counter()
        for i in range(count):
            await anyio.sleep(max(0.0, start + i * period - time.perf_counter()))
            sent[str(i).encode()] = time.perf_counter_ns()
            await client.xadd(stream, {"f": bytes(120) + BODY, "i": str(i)})

    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        while len(lat) < count:
            reply: Any = await reader.xreadgroup(group, "c", {stream: ">"}, count=BATCH, block=100)
            if not reply:
                continue
            rows = reply[0][1]
            await reader.xack(stream, group, *[i for i, _ in rows])
            now = time.perf_counter_ns()
            lat += [(now - sent[f[b"i"]]) / 1e6 for _, f in rows]
    await client.delete(stream)
    await client.aclose()
    await reader.aclose()
    return lat


async def _purge(client: Any, prefix: str) -> None:
    keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
    for i in range(0, len(keys), 1000):
        await client.delete(*keys[i : i + 1000])


async def interleaved(
    arms: dict[str, Callable[[int], Awaitable[float]]], n: int, rounds: int = ROUNDS
) -> dict[str, float]:
    """Each arm's median rate over ``rounds`` interleaved rounds of ``n`` messages (the order
    rotating each round), after one untimed warm-up round of a tenth of that."""
    for arm in arms.values():
        await arm(max(1_000, n // 10))
    names = list(arms)
    seen: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seen[name].append(await arms[name](n))
    return {name: statistics.median(values) for name, values in seen.items()}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_bus_bench(
    url: str, n: int = 100_000, latency_s: float = 3.0, *, topologies: bool = True
) -> list[dict[str, Any]]:
    """Run every bus benchmark against ``url``, then (``topologies``) the e2e rate on a
    cluster and with ``WAIT 1`` against one server on throwaway local servers; the figures."""
    prefix = f"kasmina:{{bench-{uuid.uuid4().hex[:8]}}}:"  # a run's key space
    arms: dict[str, Callable[[int], Awaitable[float]]] = {
        "raw": lambda k: raw_rate(url, k, prefix),
        "signed": lambda k: _signed_rate(url, k, prefix),
        "guarded": lambda k: _signed_rate(url, k, prefix, guarded=True),
    }
    rates = await interleaved(arms, n)
    raw, signed, guarded = rates["raw"], rates["signed"], rates["guarded"]
    raw_lat = await _latency(url, prefix, latency_s, 1000, _raw_latency)
    lat = await _latency(url, prefix, latency_s, 1000, _signed_latency)
    extra: list[dict[str, Any]] = []
    if topologies:
        from benchmarks.topology_bench import run_topology_bench

        extra = await run_topology_bench(max(2_000, n // 5))
    return [
        figure("bus.signed_e2e_rate", signed, "msg/s", raw),
        figure("bus.signed_e2e_rate_replay_guarded", guarded, "msg/s", raw),
        figure("bus.latency_p50_at_1k", _pct(lat, 0.50), "ms", _pct(raw_lat, 0.50)),
        figure("bus.latency_p99_at_1k", _pct(lat, 0.99), "ms", _pct(raw_lat, 0.99)),
        *extra,
    ]


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    for fig in anyio.run(run_bus_bench, url, n):
        print(json.dumps(fig))


if __name__ == "__main__":
    main()
