"""``Bus.find_entry`` on every backend: whether an append whose reply was lost was written."""

from __future__ import annotations

import uuid

import pytest

from bus import Append, Bus

pytestmark = pytest.mark.anyio


async def test_find_entry_finds_the_first_match_at_or_after_start(bus: Bus) -> None:
    """The first entry from ``start`` on whose field holds the value, across several pages of
    the search; None for a value that is absent, only before ``start``, in another field, or in
    a missing stream."""
    stream = f"kasmina:{{find-{uuid.uuid4().hex[:8]}}}:inbox:seed:s"
    try:
        ids = [await bus.publish(stream, {"m": b"early", "kind": b"k"})]
        filler = [Append(stream, {"m": f"f{i}".encode(), "kind": b"k"}) for i in range(450)]
        ids += await bus.publish_many(filler)
        ids += [await bus.publish(stream, {"m": b"\x00frame\xff", "kind": b"k"})]
        ids += [await bus.publish(stream, {"m": b"\x00frame\xff", "kind": b"k"})]
        assert await bus.find_entry(stream, "m", b"\x00frame\xff", "0-0") == ids[-2]
        assert await bus.find_entry(stream, "m", b"\x00frame\xff", ids[-1]) == ids[-1]
        assert await bus.find_entry(stream, "m", b"early", ids[1]) is None
        assert await bus.find_entry(stream, "m", b"early", "0-0") == ids[0]
        assert await bus.find_entry(stream, "kind", b"early", "0-0") is None
        assert await bus.find_entry(stream, "m", b"absent", "0-0") is None
        assert await bus.find_entry(stream + ":none", "m", b"early", "0-0") is None
    finally:
        await bus.delete(stream, f"{stream}:found")
