"""The consumer loop every actor shell runs (docs/design.md §5).

ensure group -> own pending entries (id 0, paged) after start and after every error -> new entries
with COUNT and BLOCK -> every ``claim_every_s`` claim entries idle longer than ``lease_ms`` ->
entries delivered more than ``max_deliveries`` times, or whose payload was trimmed away, go to the
dead-letter stream instead of the caller. The caller commits each batch (effects + ack).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import anyio

from .api import Bus, Entry
from .backoff import backoff_s
from .errors import BusClosed, BusUnavailable

log = logging.getLogger("kasmina.bus")
DEAD_LOG_S = 60.0  # dead letters of one consumer: the first logged, then a line a minute

__all__ = ["Batch", "Consumer", "contiguous"]


class Batch(list[Entry]):
    """Entries handed out together. ``contiguous``: one read of new entries, nothing screened
    out, so they follow each other in the stream with no other entry between them (a re-read of
    pending entries or a claim can leave gaps: entries acked or held by others in between)."""

    __slots__ = ("contiguous",)

    def __init__(self, entries: list[Entry], *, contiguous: bool = False) -> None:
        super().__init__(entries)
        self.contiguous = contiguous


def contiguous(entries: object) -> bool:
    """Whether ``entries`` is a :class:`Batch` known to follow each other in its stream."""
    return isinstance(entries, Batch) and entries.contiguous


class Consumer:
    """Yields batches of entries for one consumer of one group (see module docstring)."""

    def __init__(
        self,
        bus: Bus,
        stream: str,
        group: str,
        name: str,
        *,
        batch: int = 256,
        block_ms: int = 1000,
        lease_ms: int = 30_000,
        max_deliveries: int = 5,
        dead_stream: str,
        claim_every_s: float = 5.0,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 2.0,
    ) -> None:
        self.bus = bus
        self.stream = stream
        self.group = group
        self.name = name
        self.batch = batch
        self.block_ms = block_ms
        self.lease_ms = lease_ms
        self.max_deliveries = max_deliveries
        self.dead_stream = dead_stream
        self.claim_every_s = claim_every_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.dead_lettered = 0
        self._dead_said_at = 0.0
        self.errors = 0
        self._closed = False
        self._rewind = False
        self._scope: anyio.CancelScope | None = None

    async def _screen(self, entries: list[Entry]) -> list[Entry]:
        live: list[Entry] = []
        for entry in entries:
            reason = None
            if not entry.fields:
                reason = "payload_trimmed"
            elif entry.deliveries > self.max_deliveries:
                reason = "max_deliveries"
            if reason is None:
                live.append(entry)
                continue
            await self.bus.dead_letter(
                entry, self.group, dead_stream=self.dead_stream, reason=reason
            )
            self.dead_lettered += 1
            self._said_dead(entry, reason)
        return live

    def _said_dead(self, entry: Entry, reason: str) -> None:
        """Log a dead letter: the first, then at most one line a minute with the count."""
        now = time.monotonic()
        if self.dead_lettered > 1 and now - self._dead_said_at < DEAD_LOG_S:
            return
        self._dead_said_at = now
        log.warning("%s: entry %s of %s moved to %s (%s); %d dead-lettered so far", self.group,
                    entry.id, entry.stream, self.dead_stream, reason, self.dead_lettered)  # fmt: skip

    async def _next(self, state: dict[str, object]) -> list[Entry] | None:
        """One step of the loop; None when there was nothing to hand out this time."""
        bus = self.bus
        if self._rewind:
            self._rewind = False
            state["pending"] = "0"
        if not state["ensured"]:
            await bus.ensure_group(self.stream, self.group)
            state["ensured"] = True
        if state["pending"] is not None:
            entries = await bus.read(
                self.stream, self.group, self.name, count=self.batch,
                pending_first=True, pending_after=str(state["pending"]),
            )  # fmt: skip
            if not entries:
                state["pending"] = None
                return None
            state["pending"] = entries[-1].id
            return await self._screen(entries)
        now = anyio.current_time()
        due = float(state["claim_at"])  # type: ignore[arg-type]
        if now >= due and not state["claimed"]:
            state["claim_at"] = now + self.claim_every_s
            state["claimed"] = True
            claimed = await bus.claim_stale(
                self.stream, self.group, self.name, min_idle_ms=self.lease_ms, count=self.batch
            )
            return await self._screen(claimed) if claimed else None
        state["claimed"] = False
        block = max(1, min(self.block_ms, int((due - now) * 1000)))
        entries = []
        with anyio.CancelScope() as scope:
            self._scope = scope
            if not self._closed:
                entries = await bus.read(
                    self.stream, self.group, self.name, count=self.batch, block_ms=block
                )
        self._scope = None
        if scope.cancelled_caught and not self._closed:
            self._rewind = True  # woken: what the cut read may have taken is pending, re-read it
        if not entries:
            return None
        live = await self._screen(entries)
        return Batch(live, contiguous=len(live) == len(entries))

    async def batches(self) -> AsyncIterator[list[Entry]]:
        """Batches of live entries until :meth:`close` (or the bus is closed)."""
        state: dict[str, object] = {
            "ensured": False,
            "pending": "0",
            "claim_at": anyio.current_time(),
            "claimed": False,
        }
        failures = 0
        while not self._closed:
            try:
                batch = await self._next(state)
                failures = 0
            except BusUnavailable:
                self.errors += 1
                failures += 1
                state.update(ensured=False, pending="0")
                await anyio.sleep(
                    backoff_s(failures - 1, base_s=self.backoff_base_s, cap_s=self.backoff_cap_s)
                )
                continue
            except BusClosed:
                return
            if batch:
                yield batch

    def rewind(self) -> None:
        """Re-read this consumer's own pending entries next (e.g. after a failed commit)."""
        self._rewind = True

    @property
    def reading(self) -> bool:
        """A blocking read of new entries is in progress (:meth:`wake` would cut it short)."""
        return self._scope is not None

    def wake(self) -> None:
        """Cut a blocking read in progress short: the loop reads again at once, its own pending
        entries first (e.g. after its group was moved back: entries added meanwhile are
        readable, and a read blocked since then would only see them when its time runs out)."""
        if self._scope is not None:
            self._scope.cancel()

    async def close(self) -> None:
        """Stop the loop: a blocking read in progress is cancelled, ``batches()`` ends."""
        self._closed = True
        if self._scope is not None:
            self._scope.cancel()
