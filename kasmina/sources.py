"""Where replay and status read from: a live bus (URL) or a recording file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus import EntrySource, Integrity, Recording, SealKey, is_redis_url, open_bus
from contracts import KeyRing, KeyRingError, streams
from contracts.keys import RECORDING_ROLES, recording_secret
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
    integrity: Integrity | None = None  # a recording's (None for a live bus)

    async def close(self) -> None:
        """Close a live connection."""
        if self.closer is not None:
            await self.closer.close()


def open_source(source: str, run: str | None, ring: KeyRing) -> Source:
    """A recording file path (its integrity checked with ``ring``) or a bus URL."""
    if is_url(source):
        bus = open_bus(source)
        return Source(bus, run or default_run(), bus)
    path = Path(source)
    if not path.exists():
        raise CliError(f"{source}: no such recording (or pass a redis:// URL)")
    recording = Recording.open(path, keys=lambda kid, at_ns: recording_secret(ring, kid, at_ns))
    recorded_run = str(recording.meta.get("run", "")) or None
    integrity = recording.integrity
    if run is not None and recorded_run is not None and run != recorded_run:
        problem = f"--run {run!r} differs from the recorded run {recorded_run!r}"
        integrity = Integrity(False, (*integrity.problems, problem))
    return Source(recording, run or recorded_run or default_run(), integrity=integrity)


def keys_for(source: str, keys: str | None) -> KeyRing:
    """``--keys``, else $KASMINA_KEYS/$KASMINA_KEY; never a key file found beside the data (a
    forged recording would bring its own)."""
    del source  # the source never supplies the keys that judge it
    try:
        if keys:
            return KeyRing.load(keys)
        return KeyRing.from_env()
    except KeyRingError as exc:
        raise CliError(str(exc)) from exc


def seal_key(ring: KeyRing) -> SealKey:
    """The key that signs a recording: the ring's active key, if its roles allow it."""
    key = ring.active
    if not key.roles & RECORDING_ROLES:
        raise CliError(
            f"key {key.id!r} ({','.join(sorted(key.roles))}) may not sign recordings: "
            f"it needs one of {sorted(RECORDING_ROLES)}"
        )
    return SealKey(key.id, key.secret)


def events_stream(run: str) -> str:
    """The event stream of ``run``."""
    return streams.events(run)
