"""Bus e2e rate on other Redis topologies, against one server, measured in one sitting.

Arms (each on throwaway local servers without AOF, so only the topology differs): one server
(the baseline), a 3-primary Redis Cluster, a primary with one replica (asynchronous replication,
no WAIT) and the same pair with ``wait=1`` (every write confirmed by the replica). Every arm is
warmed up first, then the arms run interleaved ``rounds`` times; each figure is the median.
Usage: python -m benchmarks.topology_bench [N]
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import uuid
from typing import Any

import anyio

from benchmarks import figure
from benchmarks.bus_bench import _signed_rate
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
            await _signed_rate(url, max(1_000, n // 10), f"bench:{{{uuid.uuid4().hex[:8]}}}:")
        for _ in range(rounds):
            for arm, url in arms.items():
                prefix = f"bench:{{{uuid.uuid4().hex[:8]}}}:"
                rates[arm].append(await _signed_rate(url, n, prefix))
    base = statistics.median(rates["single"])
    return [
        figure("bus.topology.single_e2e_rate", base, "msg/s", base),
        *(
            figure(f"bus.topology.{arm}_e2e_rate", statistics.median(values), "msg/s", base)
            for arm, values in rates.items()
            if arm != "single"
        ),
    ]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    for fig in anyio.run(run_topology_bench, n):
        print(json.dumps(fig))


if __name__ == "__main__":
    main()
