"""Verifying an inbox batch: per entry its envelope, its error or None (no frame), in order, one
chunk at a time with turns for the process's other actors in between."""

from __future__ import annotations

import anyio
import anyio.lowlevel

from actors.client import build_command
from actors.hosting import FRAME, inbox_consumer, verify_entries
from bus import Entry
from contracts import (
    ContractError,
    Envelope,
    KasminaConfig,
    KeyRing,
    MemoryNonceGuard,
    Reason,
    Signer,
    Verifier,
    streams,
)

INBOX = streams.inbox("r1", "seed", "a")


def _batch(ring: KeyRing, n: int) -> list[Entry]:
    """``n`` entries: a signed command, garbage and an entry without a frame, in turn."""
    signer = Signer(ring, "tamiyo")
    out = []
    for i in range(n):
        if i % 3 == 0:
            frame = signer.seal("seed.command", build_command("a", "pause"), stream=INBOX)
            fields = {FRAME: frame}
        elif i % 3 == 1:
            fields = {FRAME: b"\x00garbage"}
        else:
            fields = {"junk": b"x"}
        out.append(Entry(INBOX, f"1-{i}", fields))
    return out


async def test_each_entry_gets_its_own_result_in_order() -> None:
    """Across several chunks: the command verified, the garbage refused as bad_frame, the entry
    without a frame None; a command seen again under another entry id is a replay."""
    ring = KeyRing.generate()
    verifier = Verifier(ring, nonce_guard=MemoryNonceGuard())
    batch = _batch(ring, 10)
    out = await verify_entries(verifier, batch, "actor:seed:a", chunk=4)
    assert [type(r).__name__ if r is not None else None for r in out] == [
        "Envelope", "BadFrame", None, "Envelope", "BadFrame", None,
        "Envelope", "BadFrame", None, "Envelope",
    ]  # fmt: skip
    copy = Entry(INBOX, "2-0", batch[0].fields)
    (again,) = await verify_entries(verifier, [copy], "actor:seed:a")
    assert isinstance(again, ContractError) and again.code == Reason.REPLAYED
    assert isinstance(out[0], Envelope)


async def test_other_tasks_run_between_chunks() -> None:
    """Verifying 3 chunks gives the other tasks of the process at least 2 turns in between,
    even when the nonce guard never suspends (an in-process one)."""
    ring = KeyRing.generate()
    verifier = Verifier(ring, nonce_guard=MemoryNonceGuard())
    batch = _batch(ring, 12)
    turns: list[int] = []
    done = anyio.Event()

    async def other() -> None:
        while not done.is_set():
            turns.append(len(turns))
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(other)
        await anyio.lowlevel.checkpoint()  # let it start
        started = len(turns)
        await verify_entries(verifier, batch, "g", chunk=4)
        during = len(turns) - started
        done.set()
    assert during >= 2
    single: list[int] = []
    # one chunk: no turn is given (nothing to interleave with)
    async with anyio.create_task_group() as tg:
        stop = anyio.Event()

        async def count() -> None:
            while not stop.is_set():
                single.append(1)
                await anyio.lowlevel.checkpoint()

        tg.start_soon(count)
        await anyio.lowlevel.checkpoint()
        before = len(single)
        await verify_entries(verifier, _batch(ring, 4), "g", chunk=4)
        assert len(single) == before
        stop.set()


def test_an_inbox_consumer_reads_with_the_configured_delivery_parameters() -> None:
    """An actor's inbox consumer reads its inbox for its group under its name, with the batch,
    block, lease and delivery limit of the config, dead-lettering to the run's dead stream."""
    config = KasminaConfig.load(
        env={},
        overrides={
            "bus.batch": 7,
            "bus.block_ms": 123,
            "bus.lease_ms": 4567,
            "bus.max_deliveries": 3,
        },
    )
    consumer = inbox_consumer(None, config, "r1", INBOX, "actor:seed:a", "c-1")  # type: ignore[arg-type]
    assert (consumer.stream, consumer.group, consumer.name) == (INBOX, "actor:seed:a", "c-1")
    assert (consumer.batch, consumer.block_ms, consumer.lease_ms, consumer.max_deliveries) == (
        7, 123, 4567, 3,
    )  # fmt: skip
    assert consumer.dead_stream == "kasmina:{r1}:dead"


async def test_a_message_is_a_replay_only_within_the_scope_it_was_verified_in() -> None:
    """Nonces are kept per consumer group: a group admits the first copy of a message it reads,
    even one another group admitted under another entry, and refuses a further copy."""
    ring = KeyRing.generate()
    verifier = Verifier(ring, nonce_guard=MemoryNonceGuard())
    (entry,) = _batch(ring, 1)
    copies = [Entry(INBOX, f"2-{i}", entry.fields) for i in range(2)]  # the frame added again
    (first,) = await verify_entries(verifier, [entry], "actor:seed:a")
    (other,) = await verify_entries(verifier, [copies[0]], "actor:gate")
    (again,) = await verify_entries(verifier, [copies[1]], "actor:gate")
    assert isinstance(first, Envelope) and isinstance(other, Envelope)
    assert isinstance(again, ContractError) and again.code == Reason.REPLAYED
