"""Bus e2e rate on other Redis topologies, against one server, measured in one sitting.

Arms (each on throwaway local servers without AOF, so only the topology differs): one server
(the baseline), a 3-primary Redis Cluster, a primary with one replica (asynchronous replication,
no WAIT) and the same pair with ``wait=1`` (every write confirmed by the replica). Every arm is
warmed up first, then the arms run interleaved ``rounds`` times; each figure is the median.
One more figure isolates the cost of WAIT: the round trip of one publish on the pair with
``wait=1`` against the same without it, in alternating blocks.
Usage: python -m benchmarks.topology_bench [N]
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
import uuid
from typing import Any

import anyio

from benchmarks import figure
from benchmarks.bus_bench import _signed_rate
from bus import RedisStreamBus
from bus.servers import redis_cluster, redis_sentinel
from bus.testing import REDIS_SERVER, redis_server

__all__ = ["run_topology_bench"]


async def run_topology_bench(n: int = 20_000, rounds: int = 3) -> list[dict[str, Any]]:
    """The figures (empty without a local ``redis-server``)."""
    if not await anyio.Path(REDIS_SERVER).exists():
        return []
    with contextlib.ExitStack() as stack:
        single = stack.enter_context(redis_server(aof=False))
        cluster = stack.enter_context(redis_cluster(primaries=3))
        pair = stack.enter_context(redis_sentinel(replicas=1, sentinels=1, aof=False))
        arms = {
            "single": single.url,
            "cluster3": cluster.url,
            "replica_nowait": pair.url,
            "replica_wait1": pair.url + "?wait=1",
        }
        rates: dict[str, list[float]] = {arm: [] for arm in arms}
        for url in arms.values():  # warm-up: connections, scripts, the producer process
            await _signed_rate(
                url, max(1_000, n // 10), f"kasmina:{{bench-{uuid.uuid4().hex[:8]}}}:"
            )
        for _ in range(rounds):
            for arm, url in arms.items():
                prefix = f"kasmina:{{bench-{uuid.uuid4().hex[:8]}}}:"
                rates[arm].append(await _signed_rate(url, n, prefix))
        nowait, wait1 = await _publish_round_trips(pair.url, rounds=max(3, rounds * 2))
    base = statistics.median(rates["single"])
    return [
        figure("bus.topology.single_e2e_rate", base, "msg/s", base),
        *(
            figure(f"bus.topology.{arm}_e2e_rate", statistics.median(values), "msg/s", base)
            for arm, values in rates.items()
            if arm != "single"
        ),
        figure("bus.topology.wait1_publish_round_trip", wait1, "ms", nowait),
    ]


async def _publish_round_trips(url: str, rounds: int, block: int = 200) -> tuple[float, float]:
    """Median ms of one publish without and with ``wait=1``, measured in alternating blocks."""
    stream = f"kasmina:{{bench-{uuid.uuid4().hex[:8]}}}:rt"
    buses = [RedisStreamBus.from_url(url), RedisStreamBus.from_url(url + "?wait=1")]
    times: list[list[float]] = [[], []]
    try:
        for bus in buses:  # warm: connection and script cache
            await bus.publish(stream, {"f": b"w"})
        for _ in range(rounds):
            for arm, bus in enumerate(buses):
                t0 = time.perf_counter()
                for _ in range(block):
                    await bus.publish(stream, {"f": b"x" * 300})
                times[arm].append((time.perf_counter() - t0) * 1000 / block)
        await buses[0].delete(stream)
    finally:
        for bus in buses:
            await bus.close()
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    for fig in anyio.run(run_topology_bench, n):
        print(json.dumps(fig))


if __name__ == "__main__":
    main()
