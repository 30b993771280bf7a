"""CPU of one SeedActor shell's process per inbox entry: step reports, and rejected entries.

The arms of ``kasmina bench --only actors`` (:mod:`benchmarks.actor_bench`: the same frames, the
same shell, the admission bound above the backlog), with ``time.process_time`` taken around the
timed part only (from the rebuilt shell's first batch to its last entry), so the figure is the
actor's own CPU and moves less with the machine's load than a rate does. One untimed round runs
first; then the two arms alternate for ``rounds`` rounds. Prints one JSON line:
``{"report_us": [...], "reject_us": [...]}`` (per round, µs per entry).

Old against new, interleaved, in one sitting (each tree on ``PYTHONPATH``; the script is run by
its path so that ``benchmarks`` and ``actors`` are imported from that tree)::

    for i in 1 2 3 4 5 6; do for tree in /path/old /path/new; do
      PYTHONPATH=$tree python /path/new/benchmarks/actor_cpu.py redis://127.0.0.1:6379/10 5000 2
    done; done

Usage: python benchmarks/actor_cpu.py [URL] [N] [ROUNDS]
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid

import anyio

from benchmarks import actor_bench as ab
from bus import Bus, open_bus
from bus.testing import purge_prefix
from contracts import KeyRing, Signer, streams


async def _shell_cpu(bus: Bus, run: str, ring: KeyRing, frames: list[bytes]) -> float:
    """µs of this process's CPU per entry while one shell works through ``frames``."""
    return await ab.shell_time(bus, run, ring, frames, time.process_time) / len(frames) * 1e6


async def measure(url: str, n: int, rounds: int) -> dict[str, list[float]]:
    """Per round, µs of CPU per step report and per rejected entry (one untimed round first)."""
    bus = open_bus(url)
    ring, forger = KeyRing.generate(), Signer(KeyRing.generate(), "bench.forger")
    signer = Signer(ring, "bench.trainer")
    out: dict[str, list[float]] = {"report_us": [], "reject_us": []}
    runs: list[str] = []
    try:
        for round_ in range(rounds + 1):
            for arm in ("report_us", "reject_us"):
                runs.append(f"bench-actor-{uuid.uuid4().hex[:8]}")
                inbox = streams.inbox(runs[-1], "seed", ab.SLOT)
                frames = (
                    ab._reports(signer, n, inbox)
                    if arm == "report_us"
                    else ab._garbage(forger, n, inbox)
                )
                used = await _shell_cpu(bus, runs[-1], ring, frames)
                if round_:
                    out[arm].append(round(used, 2))
    finally:
        for run in runs:
            await purge_prefix(bus, streams.prefix(run))
        await bus.close()
    return out


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 5_000
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    logging.getLogger("kasmina.actors").setLevel(logging.ERROR)  # the rejection storms
    print(json.dumps(anyio.run(measure, url, n, rounds)))


if __name__ == "__main__":
    main()
