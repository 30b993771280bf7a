"""Many runs on one Redis Cluster: each run on its shard, all walking at once, the CLI on each."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from actors.replay import verify_digests
from bus import open_bus
from bus.servers import LocalCluster, redis_cluster
from bus.testing import REDIS_SERVER
from contracts import KasminaConfig, KeyRing, streams
from kasmina.cli import main
from leyline import pb
from scenarios.cluster import running_cluster
from scenarios.sim import SimRuntime

S = pb.SeedLifecycleStage
SLOT = "l1.s0"
HAPPY = [
    S.SEED_STAGE_DORMANT,
    S.SEED_STAGE_GERMINATED,
    S.SEED_STAGE_TRAINING,
    S.SEED_STAGE_BLENDING,
    S.SEED_STAGE_SHADOWING,
    S.SEED_STAGE_PROBATIONARY,
    S.SEED_STAGE_FOSSILIZED,
]

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not Path(REDIS_SERVER).exists(), reason="needs redis-server"),
]


def quick_config() -> KasminaConfig:
    """Stage budgets short enough for a walk of a few dozen steps."""
    return KasminaConfig.load(
        env={},
        overrides={
            "lifecycle.training_steps": 6,
            "lifecycle.blend_steps": 6,
            "lifecycle.shadowing_steps": 3,
            "lifecycle.probationary_steps": 3,
            "barrier.frequency": 2,
            "gates.min_training_steps": 3,
        },
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A 3-primary cluster for this module."""
    with redis_cluster(primaries=3) as local:
        yield local


def runs_on_every_shard(cluster: LocalCluster, count: int) -> list[str]:
    """``count`` run ids spread round-robin over the primaries (by the hash slot of their tag)."""
    by_shard: dict[int, list[str]] = {p.port: [] for p in cluster.primaries}
    i = 0
    while min(len(runs) for runs in by_shard.values()) < count:
        run = f"multi-{i}"
        i += 1
        by_shard[cluster.owner(cluster.keyslot(streams.events(run))).port].append(run)
    spread = [run for group in zip(*by_shard.values(), strict=False) for run in group]
    return spread[:count]


async def walk(url: str, run: str, ring: KeyRing) -> list[int]:
    """Germinate the run's slot and step until FOSSILIZED; the stages it went through."""
    bus = open_bus(url)
    try:
        sim = SimRuntime([SLOT], report_every=2, barrier_frequency=2, blend_steps=6)
        async with running_cluster(
            bus, run=run, slots=[SLOT], runtimes=[sim], ring=ring, config=quick_config()
        ) as cl:
            await cl.step(0)
            await cl.settle()
            await cl.client.command(SLOT, "germinate", blueprint="residual_mlp")
            for step in range(1, 200):
                await cl.step(step)
                await cl.settle()
                if await cl.stage(SLOT) == S.SEED_STAGE_FOSSILIZED:
                    break
            events = await cl.events()
            assert verify_digests(events) == []
            return [int(m.to_stage) for _, kind, m in events if kind == "lifecycle.transition"]
    finally:
        await bus.close()


def cli(*argv: str) -> tuple[int, list[dict[str, object]]]:
    """Run the ``kasmina`` CLI in this process: (exit code, JSON lines printed)."""
    out = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out):
        try:
            main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, [json.loads(line) for line in out.getvalue().splitlines() if line]


async def test_eight_runs_walk_at_once_on_three_shards(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """8 runs spread over the 3 primaries each walk a slot to FOSSILIZED concurrently; every
    run's keys live on one shard; ``kasmina status`` and ``replay --verify`` work for each."""
    ring = KeyRing.generate()
    keys = tmp_path / "keys.json"
    ring.save(keys)
    runs = runs_on_every_shard(cluster, 8)
    paths: dict[str, list[int]] = {}

    async def one(run: str) -> None:
        paths[run] = await walk(cluster.url, run, ring)

    async with anyio.create_task_group() as tg:
        for run in runs:
            tg.start_soon(one, run)
    assert paths == {run: HAPPY for run in runs}

    bus = open_bus(cluster.url)
    try:
        for run in runs:  # a run's keys (found across every shard) share one hash slot
            names = await bus.streams(streams.prefix(run) + "*")
            assert streams.events(run) in names and len(names) > 4
            assert {cluster.keyslot(n) for n in names} == {cluster.keyslot(streams.events(run))}
        everything = await bus.streams("kasmina:*")  # a cross-run scan covers every shard
        assert {n.split(":")[1] for n in everything} >= {"{" + run + "}" for run in runs}
    finally:
        await bus.close()

    for run in runs:
        code, (status,) = await anyio.to_thread.run_sync(
            cli, "status", "--redis", cluster.url, "--run", run, "--keys", str(keys), "--json"
        )
        assert code == 0
        (slot,) = status["slots"]
        assert {k: slot[k] for k in ("slot", "stage", "alpha", "paused", "strikes")} == {
            "slot": SLOT, "stage": "FOSSILIZED", "alpha": 1.0, "paused": False, "strikes": 0,
        }  # fmt: skip
        code, lines = await anyio.to_thread.run_sync(
            cli, "replay", cluster.url, "--run", run, "--keys", str(keys), "--verify", "--json"
        )
        assert code == 0 and lines[-1]["verified"] is True
        assert lines[-1]["slots"] == {SLOT: "FOSSILIZED"}
