"""The group watch moves an inbox's consumer group back only when it is really past the end of
the stream: a group that looks ahead because entries were added and delivered between reading
the stream and reading its groups (two round trips on Redis) is left alone."""

from __future__ import annotations

import dataclasses

import anyio

from actors.hosting.groupwatch import reset_if_ahead
from bus import Bus, StreamInfo, open_bus
from contracts import KeyRing, Signer, streams

RUN = "watch"
INBOX = streams.inbox(RUN, "seed", "s")
GROUP = "actor:seed:s"


class _SecondLook:
    """A bus whose first ``info`` shows the stream as it was one entry earlier (read before the
    last entry was added and delivered), as two round trips can."""

    def __init__(self, inner: Bus, earlier: str) -> None:
        self.inner, self.earlier, self.looks, self.moved = inner, earlier, 0, False

    async def info(self, stream: str, **kw: bool | str | None) -> StreamInfo:
        info = await self.inner.info(stream, **kw)  # type: ignore[arg-type]
        self.looks += 1
        return dataclasses.replace(info, last_id=self.earlier) if self.looks == 1 else info

    async def set_group_id(self, stream: str, group: str, last_id: str) -> None:
        self.moved = True

    async def publish(self, *args: object, **kw: object) -> str:
        return await self.inner.publish(*args, **kw)  # type: ignore[arg-type]


def test_a_group_that_only_looks_ahead_through_a_race_is_left_alone() -> None:
    """First look: the stream ends before the group's last delivery; second look: it does not.
    Nothing is moved and no note is written."""

    async def main() -> None:
        inner = open_bus("memory://watch")
        await inner.ensure_group(INBOX, GROUP)
        first = await inner.publish(INBOX, {"m": b"1"})
        await inner.publish(INBOX, {"m": b"2"})
        await inner.read(INBOX, GROUP, "c", count=10, block_ms=0)
        bus = _SecondLook(inner, first)
        signer = Signer(KeyRing.generate(), "t")
        moved = await reset_if_ahead(bus, INBOX, GROUP, None, 60.0, (signer, RUN, "seed:s"))  # type: ignore[arg-type]
        assert moved is None and not bus.moved and bus.looks == 2
        assert (await inner.info(streams.quarantine(RUN))).length == 0
        await inner.close()

    anyio.run(main)
