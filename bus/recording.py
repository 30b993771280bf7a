"""Recordings: a stream log written to a file and read back as an EntrySource.

Format (docs/recording-format.md): gzip'd JSON lines. Line 1 is the header
``{"format": "kasmina-recording", "version": 1, "created_ns": int, "meta": {...},
"streams": [names]}``; then one line per entry ``{"stream": str, "id": str,
"fields": {name: base64}}``, stream after stream, each in id order.
"""

from __future__ import annotations

import base64
import fnmatch
import gzip
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio

from .api import Entry, EntrySource, aiter_entries, parse_id, select_range

__all__ = ["FORMAT", "VERSION", "Recording", "RecordingError", "record"]

FORMAT = "kasmina-recording"
VERSION = 1


class RecordingError(ValueError):
    """The file is not a readable recording of a supported version."""


def _entry_line(entry: Entry) -> str:
    fields = {k: base64.b64encode(v).decode("ascii") for k, v in entry.fields.items()}
    return json.dumps({"stream": entry.stream, "id": entry.id, "fields": fields}) + "\n"


async def record(
    bus: EntrySource,
    streams: Sequence[str],
    path: str | Path,
    meta: Mapping[str, Any] | None = None,
) -> int:
    """Write ``streams`` of ``bus`` (in that order) to ``path``; returns the number of entries."""
    header = {
        "format": FORMAT,
        "version": VERSION,
        "created_ns": time.time_ns(),
        "meta": dict(meta or {}),
        "streams": list(streams),
    }
    lines = [json.dumps(header) + "\n"]
    for stream in streams:
        async for entry in aiter_entries(bus, stream):
            lines.append(_entry_line(entry))
    await anyio.to_thread.run_sync(_write, Path(path), lines)
    return len(lines) - 1


def _write(path: Path, lines: list[str]) -> None:
    """Write atomically: a temporary file renamed over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as out:
        out.writelines(lines)
    tmp.replace(path)


def _lines(path: Path) -> Iterator[str]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as src:
            yield from src
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise RecordingError(f"{path}: not a gzip'd recording ({exc})") from exc


def _check_header(path: Path, line: str | None) -> dict[str, Any]:
    try:
        header = json.loads(line) if line else None
    except json.JSONDecodeError as exc:
        raise RecordingError(f"{path}: header is not JSON ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise RecordingError(f"{path}: not a {FORMAT} file")
    version = header.get("version")
    if version != VERSION:
        raise RecordingError(
            f"{path}: recording format version {version!r} is not supported (expected {VERSION})"
        )
    return header


class Recording:
    """A recording opened for reading; ranges yield the same Entry objects a live bus does."""

    def __init__(self, header: dict[str, Any], entries: dict[str, list[Entry]]) -> None:
        self.header = header
        self.meta: dict[str, Any] = dict(header.get("meta") or {})
        self.created_ns: int = int(header.get("created_ns") or 0)
        self._entries = entries
        self._ids = {s: [parse_id(e.id) for e in es] for s, es in entries.items()}

    @classmethod
    def open(cls, path: str | Path) -> Recording:
        """Read and validate a recording (format name, version, every line)."""
        path = Path(path)
        lines = _lines(path)
        header = _check_header(path, next(lines, None))
        entries: dict[str, list[Entry]] = {s: [] for s in header.get("streams") or []}
        for number, line in enumerate(lines, start=2):
            try:
                row = json.loads(line)
                fields = {k: base64.b64decode(v, validate=True) for k, v in row["fields"].items()}
                entry = Entry(str(row["stream"]), str(row["id"]), fields)
                parse_id(entry.id)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise RecordingError(f"{path}:{number}: bad entry line ({exc})") from exc
            entries.setdefault(entry.stream, []).append(entry)
        return cls(header, entries)

    async def streams(self, pattern: str = "*") -> list[str]:
        """Recorded stream names matching ``pattern`` (glob), sorted."""
        return sorted(s for s in self._entries if fnmatch.fnmatchcase(s, pattern))

    async def range(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[Entry]:
        """Entries of ``stream`` between ``start`` and ``end`` (XRANGE semantics)."""
        entries = self._entries.get(stream, [])
        return entries[select_range(self._ids.get(stream, []), start, end, count)]

    def entries(self, stream: str) -> list[Entry]:
        """Every recorded entry of ``stream``, in order."""
        return list(self._entries.get(stream, []))
