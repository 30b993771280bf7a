"""One process serves an actor: a second one stands by, takes over on release, and a shell whose
lease was taken can no longer write. The supervisor restarts a shell that crashed mid-run."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from actors.assemble import build_shells, live_verifier
from actors.client import Outcome
from actors.replay import fold_events
from actors.shell import ActorShell
from actors.supervisor import Supervisor
from bus import Bus, BusProtocolError, Entry, open_bus
from bus.testing import REDIS_SERVER, FaultyBus, eventually, redis_server
from contracts import KasminaConfig, KeyRing, Signer, streams
from scenarios.chaos.harness import read_log
from scenarios.cluster import Cluster, running_cluster
from scenarios.sim import SimRuntime

SLOT = "l0.s0"


def _config() -> KasminaConfig:
    return KasminaConfig.load(env={}, overrides={"bus.owner_ttl_s": 0.6})


def _seed_shell(cl: Cluster) -> ActorShell:
    (shell,) = [s for s in cl.supervisor.shells if s.logic.name == f"seed:{SLOT}"]
    return shell


async def _cull(cl: Cluster) -> Outcome:
    outcome = await cl.client.command(SLOT, "cull", wait=True, timeout_s=20)
    assert isinstance(outcome, Outcome)
    return outcome


async def _log_folds(cl: Cluster, bus: Bus) -> int:
    """The run's log re-folds (no seq gap or duplicate); returns the slot's refusals."""
    log = await read_log(bus, cl.run, cl.ring)
    fold_events([(e, k, m) for e, k, m, _ in log])
    return sum(1 for _, k, m, _ in log if k == "lifecycle.refused" and m.slot == SLOT)


async def test_a_second_process_stands_by_and_takes_over(bus: Bus, run_id: str) -> None:
    """Two processes for one slot: one serves, the other stands by; commands are decided once
    each (the log re-folds); when the first stops, the second serves on from the same state."""
    run = run_id
    ring, config = KeyRing.generate(), _config()
    async with running_cluster(bus, run=run, slots=[SLOT], ring=ring, config=config) as cl:
        first = _seed_shell(cl)
        (second,) = build_shells(
            bus=bus, run=run, config=config, signer=Signer(ring, "second"),
            verifier=live_verifier(bus, run, ring, config), actors=["seed"], slots=[SLOT],
        )  # fmt: skip
        other = Supervisor([second])
        async with anyio.create_task_group() as tg:
            await tg.start(lambda task_status: other.run(handle_signals=False,
                                                         task_status=task_status))  # fmt: skip
            assert first.owner and not second.owner
            assert second.standing_by == first.token
            outcomes = [await _cull(cl) for _ in range(6)]
            assert [o.kind for o in outcomes] == ["lifecycle.refused"] * 6
            assert second.processed == 0
            await first.stop()

            async def took_over() -> bool:
                return second.owner

            await eventually(took_over, timeout_s=10)
            assert (await _cull(cl)).kind == "lifecycle.refused"
            assert second.processed == 1
            await other.stop()
        assert await _log_folds(cl, bus) == 7


async def test_a_shell_whose_lease_was_taken_writes_nothing(bus: Bus, run_id: str) -> None:
    """A shell that lost its lease (another holder) is fenced off and stands by; the command it
    was handling stays pending and is decided exactly once after it takes the lease back."""
    run = run_id
    async with running_cluster(bus, run=run, slots=[SLOT], config=_config()) as cl:
        shell = _seed_shell(cl)
        assert (await _cull(cl)).kind == "lifecycle.refused"
        await bus.delete(shell.lease.key)
        assert await bus.claim_key(shell.lease.key, "intruder", 60_000) is None
        events = streams.events(run)
        before = (await bus.info(events)).length
        command_id = str(await cl.client.command(SLOT, "cull"))

        async def fenced_off() -> bool:
            return shell.standing_by == "intruder"

        await eventually(fenced_off, timeout_s=10)
        assert not shell.owner and (await bus.info(events)).length == before
        await bus.delete(shell.lease.key)  # the intruder's lease ends
        outcome = await cl.client.wait(command_id, timeout_s=20)
        assert outcome.kind == "lifecycle.refused" and shell.owner
        assert await _log_folds(cl, bus) == 2


@pytest.mark.redis
@pytest.mark.skipif(not Path(REDIS_SERVER).exists(), reason="needs redis-server")
async def test_a_lease_gone_when_redis_returns_is_taken_back(run_id: str) -> None:
    """Redis SIGKILLed and restarted (AOF) without the shell's lease (lapsed meanwhile, or never
    replicated to a promoted server): the shell takes it back by itself, and the next command
    is decided exactly once under the retaken lease; the log re-folds."""
    with redis_server(aof=True) as server:
        bus = open_bus(server.url)
        try:
            async with running_cluster(bus, run=run_id, slots=[SLOT], config=_config()) as cl:
                shell = _seed_shell(cl)
                assert (await _cull(cl)).kind == "lifecycle.refused"
                rebuilds = shell.rebuilds
                server.kill()
                await anyio.to_thread.run_sync(server.start)
                await bus.delete(shell.lease.key)
                assert (await _cull(cl)).kind == "lifecycle.refused"  # its commit is fenced
                assert shell.owner and shell.rebuilds > rebuilds
                assert await bus.get_value(shell.lease.key) == shell.token.encode()
                assert await _log_folds(cl, bus) == 2
        finally:
            await bus.close()


async def test_supervisor_restarts_a_shell_that_crashed_while_serving(run_id: str) -> None:
    """A shell crashing on an unexpected bus error after it started is restarted; the command
    it was handling is decided once by the restarted shell."""
    run = run_id
    inner = open_bus(f"memory://{run}")
    faulty = FaultyBus(inner)
    async with running_cluster(faulty, run=run, slots=[SLOT], config=_config()) as cl:
        assert (await _cull(cl)).kind == "lifecycle.refused"
        original = faulty._run

        async def crash_once(op: str, call: object) -> object:
            if op == "commit" and not faulty.failures:
                faulty.failures += 1
                call.close()  # type: ignore[attr-defined]
                raise BusProtocolError("injected: the server refused the script")
            return await original(op, call)

        faulty._run = crash_once  # type: ignore[method-assign]
        assert (await _cull(cl)).kind == "lifecycle.refused"
        assert cl.supervisor.restarts == 1
        assert await _log_folds(cl, inner) == 2
    await inner.close()


class _SlowRebuilds(FaultyBus):
    """Ranges of the event stream take ``delay_s`` (a long event log to re-fold)."""

    delay_s = 0.0

    async def range(self, stream: str, start: str = "-", end: str = "+",
                    count: int | None = None) -> list[Entry]:  # fmt: skip
        if stream.endswith(":events"):
            await anyio.sleep(self.delay_s)
        return await super().range(stream, start, end, count)


async def test_the_lease_is_kept_through_a_rebuild_longer_than_its_ttl(run_id: str) -> None:
    """A shell whose rebuild outlasts the lease TTL keeps its lease (renewed from the start), so a
    standby does not take over and the two never trade the actor back and forth."""
    run = run_id
    inner = open_bus(f"memory://{run}")
    slow = _SlowRebuilds(inner)
    ring, config = (
        KeyRing.generate(),
        KasminaConfig.load(env={}, overrides={"bus.owner_ttl_s": 0.3}),
    )
    async with running_cluster(inner, run=run, slots=[SLOT], ring=ring, config=config) as cl:
        assert (await _cull(cl)).kind == "lifecycle.refused"
        first = _seed_shell(cl)
        await first.stop()  # hand the slot to a process whose rebuild is slow
        slow.delay_s = 1.0
        (late,) = build_shells(
            bus=slow, run=run, config=config, signer=Signer(ring, "late"),
            verifier=live_verifier(inner, run, ring, config), actors=["seed"], slots=[SLOT],
        )  # fmt: skip
        (standby,) = build_shells(
            bus=inner, run=run, config=config, signer=Signer(ring, "standby"),
            verifier=live_verifier(inner, run, ring, config), actors=["seed"], slots=[SLOT],
        )  # fmt: skip
        async with anyio.create_task_group() as tg:
            tg.start_soon(late.run)

            async def late_owns() -> bool:
                return late.owner

            await eventually(late_owns, timeout_s=5)
            await tg.start(standby.run)  # returns once it stands by
            assert (await _cull(cl)).kind == "lifecycle.refused"
            assert late.owner and late.processed == 1 and standby.processed == 0
            assert standby.standing_by == late.token
            await standby.stop()
            await late.stop()
        assert await _log_folds(cl, inner) == 2
    await inner.close()


async def test_fan_out_routes_by_the_registry_without_scanning(run_id: str) -> None:
    """Serving seed shells and execution actors register their inboxes (a registration Redis
    refused is retried before serving); a fan-out to every slot is routed from the registry,
    with no keyspace scan."""
    run = run_id
    inner = open_bus(f"memory://{run}")
    counting = FaultyBus(inner, {"register"}, times=1)
    slots = ["l0.s0", "l0.s1"]
    async with running_cluster(counting, run=run, slots=slots, runtimes=[SimRuntime(slots)]) as cl:
        assert await inner.members(streams.registry(run, "seed")) == [
            streams.inbox(run, "seed", s) for s in slots
        ]

        async def rank_registered() -> bool:  # the ExecutionActor registers once it reads orders
            registered = await inner.members(streams.registry(run, "execution"))
            return registered == [streams.inbox(run, "execution", "0")]

        await eventually(rank_registered)
        (safety,) = [s for s in cl.supervisor.shells if s.logic.name == "safety"]
        assert await safety.router.inboxes("seed", None) == [
            streams.inbox(run, "seed", s) for s in slots
        ]
        assert counting.calls["streams"] == 0 and counting.failures == 1
    await inner.close()
