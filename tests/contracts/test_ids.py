"""Message ids: the UUIDv7 layout for given time and random bytes, fresh random bytes per id
(across draws of the pool), and a forked process never handing out its parent's."""

from __future__ import annotations

import multiprocessing
import uuid

from contracts.ids import is_valid_id, new_id

NOW_NS = 1_700_000_000_123_456_789


def test_an_id_is_the_uuid7_of_its_millisecond_and_random_bytes() -> None:
    """The 48-bit milliseconds, version 7, 74 of the random bits and variant 10, as text."""
    rand = bytes(range(0xF0, 0xFA))
    assert new_id(NOW_NS, rand) == "018bcfe5-687b-70f1-b2f3-f4f5f6f7f8f9"
    parsed = uuid.UUID(new_id(NOW_NS, rand))
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == NOW_NS // 1_000_000


def test_ids_are_valid_and_distinct_across_pool_draws() -> None:
    """Ids of one millisecond, many more than one draw of random bytes, are valid and all
    different."""
    ids = [new_id(NOW_NS) for _ in range(3000)]
    assert len(set(ids)) == len(ids)
    assert all(is_valid_id(i) and i.startswith("018bcfe5-687b-7") for i in ids)


def _next_ids(n: int) -> list[str]:
    return [new_id(NOW_NS) for _ in range(n)]


def test_a_forked_child_does_not_reuse_its_parents_random_bytes() -> None:
    """After a fork, parent and child draw different ids, even with random bytes left over in the
    parent's pool."""
    new_id(NOW_NS)  # the pool now holds bytes a fork would copy
    with multiprocessing.get_context("fork").Pool(1) as pool:
        child = pool.apply(_next_ids, (50,))
    assert not set(child) & set(_next_ids(50))
