"""Routing: which inbox streams a message for another actor goes to (a keyed instance, a
singleton, a fan-out over the kind's registry, the ExecutionActor's outbox by kind)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anyio
import pytest

from actors.hosting import routing
from actors.hosting.routing import Router
from bus import Bus
from contracts import kinds
from leyline import pb
from scenarios.cluster import running_cluster
from scenarios.sim import SimRuntime

pytestmark = pytest.mark.anyio


def _key(run: str, rest: str) -> str:
    """A key of ``run``, spelled out (docs/wire.md: ``kasmina:{RUN}:...``)."""
    return f"kasmina:{{{run}}}:{rest}"


@dataclass
class CountingBus:
    """A bus that counts its ``register`` calls."""

    bus: Bus
    registers: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)

    async def register(self, key: str, *members: str) -> None:
        self.registers.append((key, members))
        await self.bus.register(key, *members)

    def __getattr__(self, name: str) -> object:
        return getattr(self.bus, name)


async def test_a_keyed_inbox_is_registered_once_and_a_singleton_never(
    bus: Bus, run_id: str
) -> None:
    """A slot's inbox joins the seed registry (once, however often it registers); a singleton's
    inbox joins none."""
    counting = CountingBus(bus)
    router = Router(counting, run_id)  # type: ignore[arg-type]
    seed = _key(run_id, "inbox:seed:l0.s0")
    await router.register(seed)
    await router.register(seed)
    await router.register(_key(run_id, "inbox:safety"))
    assert counting.registers == [(_key(run_id, "registry:seed"), (seed,))]
    assert await bus.members(_key(run_id, "registry:seed")) == [seed]


async def test_a_key_or_a_singleton_routes_to_one_inbox(bus: Bus, run_id: str) -> None:
    """A message for a slot goes to that slot's inbox, one for a singleton to its inbox, whatever
    the registry holds."""
    router = Router(bus, run_id)
    await bus.register(_key(run_id, "registry:seed"), _key(run_id, "inbox:seed:l9.s9"))
    assert await router.inboxes("seed", "l0.s1") == [_key(run_id, "inbox:seed:l0.s1")]
    assert await router.inboxes("execution", "3") == [_key(run_id, "inbox:execution:3")]
    assert await router.inboxes("safety", None) == [_key(run_id, "inbox:safety")]


async def test_fan_out_reaches_the_registered_instances_of_this_run_only(
    bus: Bus, run_id: str
) -> None:
    """A keyless seed message fans out to every registered slot inbox of this run, in name order;
    another run's inbox, another kind's and a name that is no inbox are dropped."""
    own = [_key(run_id, "inbox:seed:l1.s0"), _key(run_id, "inbox:seed:l0.s2")]
    foreign = [
        _key("other-run", "inbox:seed:l0.s0"),
        _key(run_id, "inbox:execution:0"),
        _key(run_id, "inbox:seed:bad slot"),
        "kasmina:{x}:not-an-inbox",
    ]
    await bus.register(_key(run_id, "registry:seed"), *own, *foreign)
    assert await Router(bus, run_id).inboxes("seed", None) == sorted(own)


async def test_without_a_registry_instances_are_found_by_their_inbox_streams(
    bus: Bus, run_id: str
) -> None:
    """Instances that never registered are found by their inbox streams' names."""
    for slot in ("l0.s1", "l0.s0"):
        await bus.publish(_key(run_id, f"inbox:seed:{slot}"), {"x": b"1"})
    assert await Router(bus, run_id).inboxes("seed", None) == [
        _key(run_id, "inbox:seed:l0.s0"),
        _key(run_id, "inbox:seed:l0.s1"),
    ]


async def test_with_no_instance_seeds_get_nothing_and_execution_gets_rank_zero(
    bus: Bus, run_id: str
) -> None:
    """With no instance known, a seed fan-out goes nowhere and an execution one goes to rank 0's
    inbox (the single-process trainer)."""
    router = Router(bus, run_id)
    assert await router.inboxes("seed", None) == []
    assert await router.inboxes("execution", None) == [_key(run_id, "inbox:execution:0")]


async def test_fan_out_targets_are_cached_for_two_seconds(
    bus: Bus, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fan-out's targets are kept for two seconds: an instance registered meanwhile is reached
    from then on; an empty answer is not kept."""
    clock = [100.0]
    monkeypatch.setattr(routing, "monotonic", lambda: clock[0])
    router = Router(bus, run_id)
    registry = _key(run_id, "registry:seed")
    first, second = _key(run_id, "inbox:seed:l0.s0"), _key(run_id, "inbox:seed:l0.s1")
    assert await router.inboxes("seed", None) == []
    await bus.register(registry, first)
    assert await router.inboxes("seed", None) == [first]  # nothing was cached
    await bus.register(registry, second)
    clock[0] = 101.999
    assert await router.inboxes("seed", None) == [first]
    clock[0] = 102.0
    assert await router.inboxes("seed", None) == [first, second]


def test_the_execution_outbox_routes_by_kind(run_id: str) -> None:
    """An ack goes to the seed inbox of the slot it names, a step report to every slot of the
    rank and the SafetyActor, telemetry, safety and barrier messages to those singletons, pruning messages to the
    run's pruning stream, and a kind with no route nowhere."""
    router = Router(None, run_id)  # type: ignore[arg-type]  # outbox routing reads no bus
    slots = ["l0.s0", "l1.s0"]
    seeds = [_key(run_id, "inbox:seed:l0.s0"), _key(run_id, "inbox:seed:l1.s0")]
    routes = {
        kinds.EXEC_ACK: (pb.ExecutionAck(slot="l1.s0"), [seeds[1]]),
        kinds.STEP_REPORT: (pb.StepReport(), [*seeds, _key(run_id, "inbox:safety")]),
        kinds.TELEMETRY_RAW: (pb.TelemetryRaw(), [_key(run_id, "inbox:telemetry")]),
        kinds.TELEMETRY_BATCH: (pb.TelemetryBatch(), [_key(run_id, "inbox:telemetry")]),
        kinds.SAFETY_SIGNAL: (pb.SafetySignal(), [_key(run_id, "inbox:safety")]),
        kinds.BARRIER_VOTE: (pb.BarrierVote(), [_key(run_id, "inbox:barrier")]),
        kinds.PRUNING_IMPORTANCE: (pb.ImportanceReport(), [_key(run_id, "pruning")]),
        kinds.PRUNING_ACK: (pb.PruningAck(), [_key(run_id, "pruning")]),
        kinds.HEARTBEAT: (pb.Heartbeat(), []),
    }
    for kind, (message, expected) in routes.items():
        assert router.outbox(kind, message, slots) == expected, kind


async def test_foreign_routes_are_logged_once_each_naming_five_at_most(
    bus: Bus, run_id: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Foreign registry members are logged when first seen (the actor kind, the run and the
    first five names in order), not again while the same ones come back; new ones are logged."""
    clock = [0.0]
    monkeypatch.setattr(routing, "monotonic", lambda: clock[0])
    registry = _key(run_id, "registry:seed")
    first = [_key("other", f"inbox:seed:s{i}") for i in range(7)]
    await bus.register(registry, _key(run_id, "inbox:seed:l0.s0"), *first)
    router = Router(bus, run_id)
    with caplog.at_level(logging.WARNING, logger="kasmina.actors"):
        for _ in range(2):
            await router.inboxes("seed", None)
            clock[0] += 5.0  # past the cache
        later = _key("other", "inbox:seed:a0")
        for members in ([later], first):  # a new name is logged, names seen before are not
            await bus.delete(registry)
            await bus.register(registry, _key(run_id, "inbox:seed:l0.s0"), *members)
            await router.inboxes("seed", None)
            clock[0] += 5.0
    lines = [r.getMessage() for r in caplog.records if r.name == "kasmina.actors"]
    assert len(lines) == 2
    assert lines[0].startswith(f"ignoring foreign seed routes of run {run_id}: ")
    assert all(name in lines[0] for name in first[:5]) and first[5] not in lines[0]
    assert later in lines[1]


def test_an_outbox_kind_with_no_route_is_logged_by_name(
    run_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A kind the outbox cannot route is dropped with a warning naming it."""
    router = Router(None, run_id)  # type: ignore[arg-type]  # outbox routing reads no bus
    with caplog.at_level(logging.WARNING, logger="kasmina.actors"):
        assert router.outbox(kinds.HEARTBEAT, pb.Heartbeat(), ["l0.s0"]) == []
    lines = [r.getMessage() for r in caplog.records if r.name == "kasmina.actors"]
    assert lines == ["execution outbox: no route for actor.heartbeat"]


async def test_registering_again_restores_an_emptied_registry(bus: Bus, run_id: str) -> None:
    """``again`` adds the inbox even after a first registration: a registry someone deleted is
    whole again at the instance's next renewal."""
    counting = CountingBus(bus)
    router = Router(counting, run_id)  # type: ignore[arg-type]
    rank = _key(run_id, "inbox:execution:0")
    registry = _key(run_id, "registry:execution")
    await router.register(rank)
    await bus.delete(registry)
    await router.register(rank)  # once: nothing sent
    assert await bus.members(registry) == []
    await router.register(rank, again=True)
    assert await bus.members(registry) == [rank]
    assert len(counting.registers) == 2


async def test_a_serving_rank_puts_its_inbox_back_into_a_deleted_registry(
    bus: Bus, run_id: str
) -> None:
    """With the execution registry deleted (by anyone with write access to Redis) while a
    rank serves, its inbox is back in the registry within a heartbeat."""
    registry = _key(run_id, "registry:execution")
    async with running_cluster(bus, run=run_id, slots=["l0.s0"], runtimes=[SimRuntime(["l0.s0"])]):
        with anyio.fail_after(20):
            while not await bus.members(registry):
                await anyio.sleep(0.05)
        await bus.delete(registry)  # (a heartbeat may put it back at once)
        with anyio.fail_after(20):
            while not await bus.members(registry):
                await anyio.sleep(0.05)
        assert await bus.members(registry) == [_key(run_id, "inbox:execution:0")]


async def test_an_execution_fan_out_reaches_only_ranks_below_the_world_size(
    bus: Bus, run_id: str
) -> None:
    """Made-up ranks a writer adds to the execution registry (thousands of them, a rank spelt
    with a leading zero) get no copy of a fan-out bounded by the world size: only the run's
    ranks do."""
    real = [_key(run_id, f"inbox:execution:{r}") for r in (0, 1)]
    made_up = [_key(run_id, f"inbox:execution:{1000 + i}") for i in range(3000)]
    made_up += [_key(run_id, "inbox:execution:01"), _key(run_id, "inbox:execution:2")]
    await bus.register(_key(run_id, "registry:execution"), *real, *made_up)
    assert await Router(bus, run_id, world_size=2).inboxes("execution", None) == real


async def test_a_rank_beyond_the_world_size_is_an_error_logged_once(
    bus: Bus, run_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A rank's inbox registered at or beyond the world size (made up, or a process whose config
    lacks the run's world size) is not routed to and is logged once, as an error that names
    ``barrier.world_size``."""
    ranks = [_key(run_id, f"inbox:execution:{r}") for r in (0, 1, 2)]
    await bus.register(_key(run_id, "registry:execution"), *ranks)
    router = Router(bus, run_id, world_size=2)
    with caplog.at_level(logging.WARNING, logger="kasmina.actors"):
        assert await router.inboxes("execution", None) == ranks[:2]
        router._cache.clear()
        assert await router.inboxes("execution", None) == ranks[:2]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "barrier.world_size=2" in errors[0].getMessage()
    assert ranks[2] in errors[0].getMessage()
