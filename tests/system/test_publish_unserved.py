"""A command to a slot no SeedActor serves: no actor reads its inbox, so no record would ever
answer it. ``publish --wait`` says so and sends nothing; without ``--wait`` it warns and sends."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import anyio
import pytest
import redis
from test_cli_run import cli_env, kasmina  # noqa: F401  (the fixture is used by name)

from actors.client import KasminaClient
from bus import open_bus
from bus.testing import real_redis_url
from contracts import KeyRing, Signer, Verifier, streams

pytestmark = pytest.mark.redis


@pytest.fixture
def client(cli_env: dict[str, str]) -> Iterator[redis.Redis]:  # noqa: F811
    """A plain redis-py client on the run's server (what a Redis writer, or a SeedActor, does)."""
    plain = redis.Redis.from_url(cli_env["KASMINA_REDIS"])
    yield plain
    plain.close()


def _serve(client: redis.Redis, run: str, slot: str) -> None:
    """What a SeedActor does when it starts serving ``slot``: its group and its registry entry."""
    inbox = streams.inbox(run, "seed", slot)
    client.xgroup_create(inbox, f"actor:seed:{slot}", id="0", mkstream=True)
    client.sadd(streams.registry(run, "seed"), inbox)


def test_publish_wait_to_an_unserved_slot_sends_nothing_and_names_the_served_ones(
    cli_env: dict[str, str],  # noqa: F811
    client: redis.Redis,
) -> None:
    """A misspelt slot: exit 4 with `unserved` true, no command sent, the served slots named."""
    run = cli_env["KASMINA_RUN"]
    _serve(client, run, "layer1.s0")
    done = kasmina("publish", "pause", "--slot", "layer1.s9", "--wait", "--timeout", "1",
                   env=cli_env)  # fmt: skip
    assert done.returncode == 4, done.stderr
    out = json.loads(done.stdout)
    assert (out["result"], out["unserved"], out["command_id"]) == ("timed_out", True, None)
    assert "no SeedActor serves slot layer1.s9" in done.stderr
    assert "slots served: layer1.s0" in done.stderr and "nothing sent" in done.stderr
    assert not client.exists(streams.inbox(run, "seed", "layer1.s9"))  # no stray inbox


def test_publish_without_wait_to_an_unserved_slot_warns_and_sends(
    cli_env: dict[str, str],  # noqa: F811
    client: redis.Redis,
) -> None:
    """Without --wait the command is queued (a SeedActor started later reads it), with a warning."""
    run = cli_env["KASMINA_RUN"]
    done = kasmina("publish", "pause", "--slot", "later", env=cli_env)
    assert done.returncode == 0, done.stderr
    assert "no SeedActor serves slot later" in done.stderr and "(slots served: none)" in done.stderr
    assert client.xlen(streams.inbox(run, "seed", "later")) == 1


def test_publish_wait_sends_once_the_slot_is_served(
    cli_env: dict[str, str],  # noqa: F811
    client: redis.Redis,
) -> None:
    """A slot whose SeedActor starts during the wait gets the command: it is sent, not refused."""
    run = cli_env["KASMINA_RUN"]
    inbox = streams.inbox(run, "seed", "soon")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kasmina", "publish", "pause", "--slot", "soon", "--wait",
         "--timeout", "6"],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _serve(client, run, "soon")  # before or after its first look: served within the wait
    stdout, stderr = proc.communicate(timeout=60)
    out = json.loads(stdout)
    assert out["unserved"] is False and out["command_id"], stderr
    assert client.xlen(inbox) == 1  # sent once, to the served inbox


@pytest.mark.parametrize("backend", ["fakeredis", "redis"])
def test_client_served_reads_the_slot_group_and_served_slots_only_this_runs_inboxes(
    backend: str,
) -> None:
    """`served` is true once the slot's SeedActor group exists; `served_slots` lists the slots
    of this run's seed registry and drops foreign names a Redis writer added to it."""
    run = f"srv-{backend}"

    async def main() -> None:
        bus = open_bus("fakeredis://srv" if backend == "fakeredis" else real_redis_url())
        ring = KeyRing.generate()
        kas = KasminaClient(bus, run, Signer(ring, "t"), Verifier(ring))
        inbox = streams.inbox(run, "seed", "a")
        try:
            assert not await kas.served("a")
            await bus.ensure_group(inbox, "actor:seed:a")
            await bus.register(streams.registry(run, "seed"), inbox)
            await bus.register(
                streams.registry(run, "seed"), streams.inbox("other", "seed", "x"), "junk"
            )
            assert await kas.served("a") and not await kas.served("b")
            assert await kas.served_slots() == ["a"]
        finally:
            await bus.delete(inbox, streams.registry(run, "seed"))
            await bus.close()

    anyio.run(main)


def test_publish_refuses_a_slot_name_no_actor_could_serve(cli_env: dict[str, str]) -> None:  # noqa: F811
    """A slot name outside the syntax of wire.md §1 is a usage error (exit 2) at once, not a
    wait for a SeedActor that can never exist; nothing is sent."""
    done = kasmina("publish", "pause", "--slot", "bad slot", "--wait", "--timeout", "30",
                   env=cli_env)  # fmt: skip
    assert done.returncode == 2 and "invalid slot id 'bad slot'" in done.stderr
    assert done.stdout == ""
