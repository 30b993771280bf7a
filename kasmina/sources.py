"""Where replay and status read from: a live bus (URL) or a recording file."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus import EntrySource, Recording, is_redis_url, open_bus
from contracts import KeyRing, KeyRingError, streams
from kasmina.common import CliError, default_run

OTHER_BUSES = ("fakeredis://", "memory://")


def is_url(source: str) -> bool:
    """Whether ``source`` is a bus URL (else a recording file)."""
    return is_redis_url(source) or source.startswith(OTHER_BUSES)


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
    if is_url(source):
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
            if not is_url(source) and beside.exists():
                print(f"kasmina: using keys from {beside}", file=sys.stderr)
                return KeyRing.load(beside)
            raise
    except KeyRingError as exc:
        raise CliError(str(exc)) from exc


def events_stream(run: str) -> str:
    """The event stream of ``run``."""
    return streams.events(run)
