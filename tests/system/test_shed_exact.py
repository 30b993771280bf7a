"""Shed runs are recorded exactly: a shed taken back (its record never written) leaves neither
the counters nor the reject-storm window changed, and a record covers exactly the ids it shed."""

from __future__ import annotations

import pytest

from actors.hosting.admission import Admission
from actors.hosting.rejection import Rejections
from bus import Append, Bus, Fence, Fenced, Shedding
from contracts import KasminaConfig, KeyRing, Reason, Signer, streams

BATCH, BOUND, VERIFY, FLOOD = 64, 100, 8, 400
SHED = FLOOD - BATCH - (BOUND - BATCH)  # what one shed inside the store names: 300


def _config(**overrides: object) -> KasminaConfig:
    return KasminaConfig.load(
        env={},
        overrides={
            "bus.batch": BATCH,
            "bus.admission_backlog": BOUND,
            "bus.admission_verify": VERIFY,
            "bus.aggregate_from": 8,
            **overrides,
        },
    )


def _signals(appends: list[Append], run: str) -> list[Append]:
    return [a for a in appends if a.stream == streams.inbox(run, "safety")]


@pytest.mark.parametrize("threshold", [SHED - 50, SHED + 700])
async def test_a_shed_taken_back_leaves_the_storm_window_as_it_was(
    bus: Bus, run_id: str, threshold: int
) -> None:
    """A fenced-off shed of 300 entries adds nothing to the storm window: neither a quiet period
    from the signal it would have raised (threshold 250) nor its count (threshold 1000); the next
    ``threshold`` real rejections raise no storm and one more does."""
    if not isinstance(bus, Shedding):
        pytest.skip("the in-memory bus sheds in the actor: its records ride on the commit")
    config = _config(
        **{"safety.reject_storm_count": threshold, "safety.reject_storm_window_s": 600}
    )
    inbox, group = streams.inbox(run_id, "seed", "a"), "actor:seed:a"
    await bus.ensure_group(inbox, group)
    await bus.publish_many([Append(inbox, {"junk": b"x"}) for _ in range(FLOOD)])
    batch = await bus.read(inbox, group, "c", count=BATCH, block_ms=0)
    lease = streams.prefix(run_id) + "lease:test"
    await bus.set_value(lease, b"someone-else", ttl_ms=60_000)
    ring = KeyRing.generate()
    rejections = Rejections(run_id, "seed:a", Signer(ring, "seed:a"), config.safety)
    admission = Admission(bus, inbox, group, config, rejections, shed_inside=True)
    with pytest.raises(Fenced):
        await admission.cut(batch, Fence(lease, "me", 60_000))
    assert rejections.counts["overloaded"] == 0
    span = (inbox, batch[0].id, batch[-1].id, threshold)
    quiet = rejections.record_range(Reason.BAD_FRAME, "test", span)
    assert _signals(quiet, run_id) == []
    storm = rejections.record(batch[0], Reason.BAD_FRAME, "one more")
    assert len(_signals(storm, run_id)) == 1
