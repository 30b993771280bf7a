"""Where replay and status read from: a live bus (URL) or a recording file."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.shell import FRAME
from bus import EntrySource, Recording, open_bus
from contracts import REGISTRY, ContractError, KeyRing, KeyRingError, Verifier, streams
from kasmina.common import CliError, default_run

URL_SCHEMES = ("redis://", "rediss://", "unix://", "fakeredis://", "memory://")


@dataclass(slots=True)
class Source:
    """An opened source of entries (close it when done)."""

    entries: EntrySource
    run: str
    closer: Any = None

    async def close(self) -> None:
        """Close a live connection."""
        if self.closer is not None:
            await self.closer.close()


def open_source(source: str, run: str | None) -> Source:
    """A recording file path or a bus URL."""
    if source.startswith(URL_SCHEMES):
        bus = open_bus(source)
        return Source(bus, run or default_run(), bus)
    path = Path(source)
    if not path.exists():
        raise CliError(f"{source}: no such recording (or pass a redis:// URL)")
    recording = Recording.open(path)
    recorded_run = str(recording.header.get("meta", {}).get("run", "")) or None
    return Source(recording, run or recorded_run or default_run())


def keys_for(source: str, keys: str | None) -> KeyRing:
    """``--keys``, else $KASMINA_KEYS/$KASMINA_KEY, else a keys.json beside a recording."""
    try:
        if keys:
            return KeyRing.load(keys)
        try:
            return KeyRing.from_env()
        except KeyRingError:
            beside = Path(source).with_name("keys.json")
            if not source.startswith(URL_SCHEMES) and beside.exists():
                print(f"kasmina: using keys from {beside}", file=sys.stderr)
                return KeyRing.load(beside)
            raise
    except KeyRingError as exc:
        raise CliError(str(exc)) from exc


async def read_verified(
    entries: EntrySource, stream: str, ring: KeyRing, *, until: str | None = None
) -> tuple[list[tuple[str, str, Any]], list[dict[str, str]]]:
    """Every entry of ``stream`` verified in replay mode (MAC checked, freshness skipped).

    Returns the parsed ``(entry_id, kind, message)`` triples and a list of entries that failed.
    """
    verifier = Verifier(ring, replay=True)
    good: list[tuple[str, str, Any]] = []
    bad: list[dict[str, str]] = []
    start = "-"
    while True:
        page = await entries.range(stream, start, until or "+", count=2000)
        for entry in page:
            frame = entry.fields.get(FRAME)
            try:
                if frame is None:
                    raise ContractError("no frame field")
                env = verifier.open(frame)
                good.append((entry.id, env.kind, REGISTRY.parse(env.kind, env.body)))
            except ContractError as exc:
                bad.append(
                    {
                        "entry_id": entry.id,
                        "stream": stream,
                        "reason": exc.code.value,
                        "detail": exc.detail,
                    }
                )
        if len(page) < 2000:
            return good, bad
        start = "(" + page[-1].id


def events_stream(run: str) -> str:
    """The event stream of ``run``."""
    return streams.events(run)
