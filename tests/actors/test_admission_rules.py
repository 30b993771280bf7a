"""The pure rules of admission: how much of a batch is shed, which rejections are aggregated, what
a shed entry claims to be."""

from __future__ import annotations

from dataclasses import replace

import msgpack
import pytest

from actors.client import build_command
from actors.hosting import FRAME
from actors.hosting.admission import (
    SHED_OUTCOMES,
    Admission,
    aggregated,
    claim_of,
    claims_of,
    kept_ahead,
    runs_in,
    shed_count,
)
from actors.hosting.rejection import Rejections
from bus import Append, Batch, Entry, open_bus
from contracts import ContractError, KasminaConfig, KeyRing, Reason, Signer, streams
from contracts.errors import BadFrame, UnknownKey

INBOX = streams.inbox("r1", "seed", "a")


def _drain(backlog: int, *, batch: int, bound: int, verify: int) -> tuple[int, int]:
    """Entries shed and decided while a backlog of ``backlog`` entries is read in batches."""
    shed = decided = 0
    while backlog:
        n = min(batch, backlog)
        cut = shed_count(n, backlog - n, bound=bound, verify=verify)
        shed, decided, backlog = shed + cut, decided + n - cut, backlog - n
    return shed, decided


def test_shedding_inside_the_store_keeps_the_bound_less_the_batch_in_hand() -> None:
    """Redis keeps the newest bound - batch undelivered entries (the batch in hand is decided
    whole), never a negative number."""
    assert kept_ahead(256, bound=1024) == 768
    assert kept_ahead(64, bound=100) == 36
    assert kept_ahead(100, bound=100) == 0
    assert kept_ahead(300, bound=100) == 0


def test_nothing_is_shed_within_the_bound() -> None:
    """A backlog at or under the bound, or of unknown size, loses nothing."""
    assert shed_count(64, 36, bound=100, verify=8) == 0
    assert shed_count(64, 0, bound=10, verify=64) == 0  # a batch never sheds below `verify`
    assert shed_count(64, None, bound=1, verify=1) == 0  # lag unknown: nothing is shed
    assert _drain(1000, batch=64, bound=1000, verify=8) == (0, 1000)


def test_only_the_excess_is_shed_and_verify_entries_are_always_decided() -> None:
    """The shed count never exceeds the excess over the bound nor leaves fewer than `verify`
    entries of a batch; draining a flood decides at least the bound."""
    for backlog in range(1, 3000, 37):
        for batch in (1, 8, 64, 256):
            n = min(batch, backlog)
            cut = shed_count(n, backlog - n, bound=500, verify=8)
            assert 0 <= cut <= max(0, backlog - 500) and n - cut >= min(n, 8)
        shed, decided = _drain(backlog, batch=64, bound=500, verify=8)
        assert shed + decided == backlog and decided >= min(backlog, 500)
        assert shed <= max(0, backlog - 500)


def _entries(n: int) -> list[Entry]:
    return [Entry(INBOX, f"1-{i}", {FRAME: b"x"}) for i in range(n)]


def test_rejections_of_one_reason_reaching_the_threshold_are_one_run() -> None:
    """Verifier errors (and missing frames) of one reason form a run once they reach the
    threshold; fewer, or verified envelopes, stay per entry."""
    batch = _entries(12)
    checked: list[object] = [BadFrame("junk") for _ in range(8)]
    checked += [None, ContractError("x"), object(), object()]
    runs = aggregated(batch, checked, threshold=8)  # type: ignore[arg-type]
    (run,) = {id(r): r for r in runs.values()}.values()
    assert run.reason is Reason.BAD_FRAME and run.count == 10 and run.detail == "junk"
    assert [e.id for e in run.entries] == [e.id for e in batch[:10]]
    assert set(runs) == {e.id for e in batch[:10]}
    assert aggregated(batch[:7], checked[:7], threshold=8) == {}  # type: ignore[arg-type]


def test_a_shed_entry_is_answered_only_when_it_claims_a_command() -> None:
    """The claimed id of a command frame (signed or not) is read without its MAC, with the entry
    that claims it; garbage and other kinds claim nothing, and one shed run answers at most
    SHED_OUTCOMES claims."""
    signer = Signer(KeyRing.generate(), "tamiyo")
    command = signer.seal("seed.command", build_command("a", "pause"), stream=INBOX, msg_id="c1")
    report = signer.seal("step.report", b"", stream=INBOX, msg_id="r1")
    claim = claim_of(Entry(INBOX, "1-0", {FRAME: command}), FRAME, 1 << 20)
    assert claim is not None
    assert (claim.message_id, claim.sender, claim.entry_id) == ("c1", "tamiyo", "1-0")
    tampered = command[:-3] + b"xyz"  # the MAC is never looked at
    assert claim_of(Entry(INBOX, "1-1", {FRAME: tampered}), FRAME, 1 << 20) == replace(
        claim, entry_id="1-1"
    )
    for fields in ({FRAME: report}, {FRAME: b"\x00garbage"}, {"junk": b"x"}):
        assert claim_of(Entry(INBOX, "1-2", fields), FRAME, 1 << 20) is None
    many = [Entry(INBOX, f"2-{i}", {FRAME: command}) for i in range(SHED_OUTCOMES + 10)]
    assert len(claims_of(many, FRAME, 1 << 20)) == SHED_OUTCOMES


def test_a_shed_frame_is_screened_before_it_is_decoded() -> None:
    """Only a frame within the size limit that holds the command kind's bytes is decoded: a
    command one byte over the limit claims nothing, garbage around the kind's bytes claims
    nothing, and a command among garbage is still found."""
    signer = Signer(KeyRing.generate(), "tamiyo")
    command = signer.seal("seed.command", build_command("a", "pause"), stream=INBOX, msg_id="c1")
    entry = Entry(INBOX, "1-0", {FRAME: command})
    assert claim_of(entry, FRAME, len(command) - 1) is None
    claim = claim_of(entry, FRAME, len(command))
    assert claim is not None and claim.message_id == "c1"
    posing = Entry(INBOX, "1-1", {FRAME: b"\x00seed.command\xff"})
    assert claim_of(posing, FRAME, 1 << 20) is None
    garbage = [Entry(INBOX, f"2-{i}", {FRAME: bytes([i % 256]) * 50}) for i in range(300)]
    found = claims_of([*garbage, entry, *garbage], FRAME, 1 << 20)
    assert [c.message_id for c in found] == ["c1"]


def test_a_reason_under_the_threshold_does_not_stop_a_later_one_forming_a_run() -> None:
    """Two unknown-key frames first (under the threshold of 3), then three bad frames: the bad
    frames are one run whose detail is the first one's, and the others stay per entry."""
    batch = _entries(5)
    unknown = [UnknownKey("k0") for _ in range(2)]
    bad = [BadFrame("first"), BadFrame("second"), BadFrame("third")]
    runs = aggregated(batch, [*unknown, *bad], threshold=3)
    assert set(runs) == {"1-2", "1-3", "1-4"}
    run = runs["1-2"]
    assert (run.reason, run.detail, run.count) == (Reason.BAD_FRAME, "first", 3)


def test_a_verdict_list_of_another_length_than_the_batch_is_an_error() -> None:
    """Aggregation pairs each entry with its own verdict: a list one short is refused, never
    silently truncated."""
    batch = _entries(4)
    with pytest.raises(ValueError):
        aggregated(batch, [BadFrame("x")] * 3, threshold=1)


def test_a_command_frame_without_an_id_claims_nothing_and_a_claim_names_its_kind() -> None:
    """A frame that says it is a seed.command but carries an empty message id cannot be answered
    (nothing to name), so it claims nothing; a real command's claim names the kind."""
    no_id = msgpack.packb(
        [2, "seed.command", "", "tamiyo", "k1", 1, "", "r1", "seed:a", b"", b"s" * 32],
        use_bin_type=True,
    )
    assert claim_of(Entry(INBOX, "1-0", {FRAME: no_id}), FRAME, 1 << 20) is None
    signer = Signer(KeyRing.generate(), "tamiyo")
    command = signer.seal("seed.command", build_command("a", "pause"), stream=INBOX, msg_id="c9")
    claim = claim_of(Entry(INBOX, "1-1", {FRAME: command}), FRAME, 1 << 20)
    assert claim is not None
    assert (claim.message_id, claim.kind, claim.sender) == ("c9", "seed.command", "tamiyo")


@pytest.mark.parametrize("n", [1, 3])
def test_a_shed_run_is_recorded_once_with_its_first_entry(n: int) -> None:
    """The shed entries' commit items: every entry acked by the group, the one record of the run
    carried by the first item only (so a run of one entry is recorded too), counted n times."""
    run = "r1"
    config = KasminaConfig()
    rejections = Rejections(run, "seed:a", Signer(KeyRing.generate(), "seed:a"))
    admission = Admission(open_bus("memory://"), INBOX, "g", config, rejections)
    items = admission.shed_items(_entries(n))
    assert [i.entry.id for i in items] == [f"1-{k}" for k in range(n)]
    assert {i.group for i in items} == {"g"} and admission.shed == n
    assert [len(i.appends) > 0 for i in items] == [True] + [False] * (n - 1)
    assert {a.stream for a in items[0].appends} == {streams.rejected(run)}
    assert rejections.counts[Reason.OVERLOADED.value] == n


def test_shed_entries_split_into_runs_adjacent_in_their_batch() -> None:
    """Entries shed around kept ones are recorded as separate runs, each exactly the ids it
    covers: 0,1 | 3 | 5,6 of a batch of 7 (2 and 4 kept), with the claims on the first."""
    batch = _entries(7)
    shed = [batch[i] for i in (0, 1, 3, 5, 6)]
    assert [[e.id for e in run] for run in runs_in(shed, batch)] == [
        ["1-0", "1-1"],
        ["1-3"],
        ["1-5", "1-6"],
    ]
    rejections = Rejections("r1", "seed:a", Signer(KeyRing.generate(), "seed:a"))
    admission = Admission(open_bus("memory://"), INBOX, "g", KasminaConfig(), rejections)
    items = admission.shed_items(shed, batch)
    assert [len(i.appends) > 0 for i in items] == [True, False, True, True, False]
    assert rejections.counts[Reason.OVERLOADED.value] == 5 and admission.shed == 5


async def test_a_batch_not_known_contiguous_is_not_cut() -> None:
    """A full batch over the bound is cut only when it is one read of new entries: a plain
    list (a re-read, a claim) is decided whole."""
    config = KasminaConfig.load(
        env={}, overrides={"bus.batch": 4, "bus.admission_backlog": 4, "bus.admission_verify": 1}
    )
    bus = open_bus("memory://")
    await bus.ensure_group(INBOX, "g")
    await bus.publish_many([Append(INBOX, {"k": b"v"}) for _ in range(12)])
    entries = await bus.read(INBOX, "g", "c", count=4, block_ms=0)
    rejections = Rejections("r1", "seed:a", Signer(KeyRing.generate(), "seed:a"))
    admission = Admission(bus, INBOX, "g", config, rejections)
    assert await admission.cut(list(entries)) == 0
    assert await admission.cut(Batch(list(entries), contiguous=True)) == 3
