"""Recordings: a stream log written to a file and read back as an EntrySource.

Format (docs/recording-format.md): gzip'd JSON lines, each line canonical JSON (sorted keys, no
spaces). Line 1 is the header ``{"format": "kasmina-recording", "version": 2, "created_ns": int,
"meta": {...}, "streams": [names], "key_id": str, "sig": base64}``; then one line per entry
``{"stream": str, "id": str, "fields": {name: base64}}``, stream after stream, each in id order;
the last line is the trailer ``{"trailer": true, "count": n, "hash": hex, "run": str,
"key_id": str, "sig": base64}``.

Tamper evidence: a running hash chain ``h_0 = sha256(0x00 || header line)``,
``h_i = sha256(0x01 || h_(i-1) || entry line i)`` ends in the trailer's ``hash``; the header and the
trailer are HMAC-SHA256 signed (each over a domain tag and its canonical JSON without ``sig``). So
truncation, a deleted, inserted, reordered or rewritten line, lines spliced from another recording
and a relabelled run all fail :attr:`Recording.integrity`. The keys that check the signatures are
the reader's (a lookup passed in), never anything stored beside the file.

Version 1 files (unsigned, no chain) are still read, but never pass an integrity check.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import gzip
import hashlib
import hmac
import json
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from .api import Entry, EntrySource, aiter_entries, parse_id, select_range

__all__ = [
    "FORMAT",
    "VERSION",
    "Integrity",
    "Recording",
    "RecordingError",
    "SealKey",
    "record",
]

FORMAT = "kasmina-recording"
VERSION = 2
_READABLE = (1, 2)
_DOMAIN = b"kasmina.recording.v2\x00"


class RecordingError(ValueError):
    """The file is not a readable recording of a supported version."""


@dataclass(frozen=True, slots=True)
class SealKey:
    """The HMAC key that signs a recording's header and trailer."""

    key_id: str
    secret: bytes


@dataclass(frozen=True, slots=True)
class Integrity:
    """What the reader could establish about a recording: ``ok`` only if signed by a trusted key,
    complete (trailer present, count and chain equal) and unaltered; ``problems`` says why not."""

    ok: bool
    problems: tuple[str, ...] = ()


#: ``(key_id, created_ns) -> secret``: a key the reader trusts for a recording written at
#: ``created_ns`` (None: not trusted).
KeyLookup = Callable[[str, int], "bytes | None"]


def _canonical(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _mac(secret: bytes, part: bytes, body: Mapping[str, Any]) -> str:
    data = _DOMAIN + part + b"\x00" + _canonical(body).encode()
    return base64.b64encode(hmac.digest(secret, data, "sha256")).decode("ascii")


def _signed(obj: dict[str, Any], part: bytes, seal: SealKey | None) -> dict[str, Any]:
    if seal is None:
        return obj
    body = {**obj, "key_id": seal.key_id}
    return {**body, "sig": _mac(seal.secret, part, body)}


def _chain(previous: bytes, line: str) -> bytes:
    return hashlib.sha256(b"\x01" + previous + line.encode()).digest()


def _entry_line(entry: Entry) -> str:
    fields = {k: base64.b64encode(v).decode("ascii") for k, v in entry.fields.items()}
    return _canonical({"stream": entry.stream, "id": entry.id, "fields": fields})


async def record(
    bus: EntrySource,
    streams: Sequence[str],
    path: str | Path,
    meta: Mapping[str, Any] | None = None,
    *,
    seal: SealKey | None = None,
) -> int:
    """Write ``streams`` of ``bus`` (in that order) to ``path``; returns the number of entries.

    With ``seal`` the header and trailer are signed (an unsigned recording can be replayed but
    never verified)."""
    meta = dict(meta or {})
    header = _signed(
        {
            "format": FORMAT,
            "version": VERSION,
            "created_ns": time.time_ns(),
            "meta": meta,
            "streams": list(streams),
        },
        b"header",
        seal,
    )
    lines = [_canonical(header)]
    digest = hashlib.sha256(b"\x00" + lines[0].encode()).digest()
    for stream in streams:
        async for entry in aiter_entries(bus, stream):
            line = _entry_line(entry)
            digest = _chain(digest, line)
            lines.append(line)
    trailer = {
        "trailer": True,
        "count": len(lines) - 1,
        "hash": digest.hex(),
        "run": str(meta.get("run", "")),
    }
    lines.append(_canonical(_signed(trailer, b"trailer", seal)))
    await anyio.to_thread.run_sync(_write, Path(path), [line + "\n" for line in lines])
    return len(lines) - 2


def _write(path: Path, lines: list[str]) -> None:
    """Write atomically: a temporary file renamed over ``path``; nothing is left behind when
    that fails (``path`` a directory, say)."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory: name the recording file")
    tmp = path.with_name(path.name + ".tmp")
    try:
        with gzip.open(tmp, "wt", encoding="utf-8") as out:
            out.writelines(lines)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _lines(path: Path, cut: list[str]) -> Iterator[str]:
    """The file's lines; where its compressed data ends early (a file cut off in a copy, a disk
    that filled up) or fails its check (a changed byte), the lines read until then, the reason
    appended to ``cut``."""
    read = 0
    try:
        with gzip.open(path, "rt", encoding="utf-8") as src:
            for line in src:
                read += 1
                yield line
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        if not read:  # not even a header: nothing to replay
            raise RecordingError(f"{path}: not a gzip'd recording ({exc})") from exc
        if isinstance(exc, EOFError):
            cut.append(f"the file ends inside its compressed data after line {read}: cut off")
        else:  # a changed byte: the lines read may be changed too (the hash chain says)
            cut.append(f"the compressed data is damaged after line {read} ({exc})")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordingError(f"{path}: not a gzip'd recording ({exc})") from exc


@dataclass
class _Body:
    """The lines after a recording's header: its entries by stream, their lines as written
    (for the hash chain), the trailer, and how many lines came after the first trailer."""

    entries: dict[str, list[Entry]]
    body: list[str] = field(default_factory=list)
    trailer: dict[str, Any] | None = None
    late: int = 0


def _read_body(path: Path, lines: Iterator[str], cut: list[str], names: list[str]) -> _Body:
    """Every line after the header (``names``: the header's streams, kept even when empty); a
    part of a line read before the compressed data ended (``cut``) ends the reading."""
    out = _Body({name: [] for name in names})
    for number, line in enumerate(lines, start=2):
        text = line.rstrip("\n")
        try:
            row = _row(path, number, text)
        except RecordingError:
            if not line.endswith("\n") and next(lines, None) is None and cut:
                break  # the cut is reported as the recording's integrity problem
            raise
        out.late += out.trailer is not None
        if isinstance(row, Entry):
            out.body.append(text)
            out.entries.setdefault(row.stream, []).append(row)
        else:
            out.trailer = row
    return out


def _row(path: Path, number: int, text: str) -> Entry | dict[str, Any]:
    """One line after the header: an entry, or the trailer (a dict); RecordingError if neither."""
    try:
        row = json.loads(text)
        if isinstance(row, dict) and row.get("trailer") is True:
            return row
        fields = {k: base64.b64decode(v, validate=True) for k, v in row["fields"].items()}
        entry = Entry(str(row["stream"]), str(row["id"]), fields)
        parse_id(entry.id)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RecordingError(f"{path}:{number}: bad entry line ({exc})") from exc
    return entry


def _check_header(path: Path, line: str | None) -> dict[str, Any]:
    try:
        header = json.loads(line) if line else None
    except json.JSONDecodeError as exc:
        raise RecordingError(f"{path}: header is not JSON ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise RecordingError(f"{path}: not a {FORMAT} file")
    version = header.get("version")
    if version not in _READABLE:
        raise RecordingError(
            f"{path}: recording format version {version!r} is not supported (expected {VERSION})"
        )
    return header


def _check_sig(
    obj: Mapping[str, Any], part: bytes, keys: KeyLookup | None, at_ns: int, problems: list[str]
) -> None:
    """Append a problem unless ``obj`` carries a valid signature by a trusted key."""
    what = part.decode()
    sig, key_id = obj.get("sig"), obj.get("key_id")
    if not isinstance(sig, str) or not isinstance(key_id, str):
        problems.append(f"{what} is not signed")
        return
    if keys is None:
        problems.append(f"{what} signature not checked: no keys given")
        return
    secret = keys(key_id, at_ns)
    if secret is None:
        problems.append(f"{what} signed by key {key_id!r}, which is not trusted")
        return
    body = {k: v for k, v in obj.items() if k != "sig"}
    try:
        given = base64.b64decode(sig, validate=True)
    except (ValueError, binascii.Error):
        given = b""
    expected = base64.b64decode(_mac(secret, part, body))
    if not hmac.compare_digest(given, expected):
        problems.append(f"{what} signature does not match (altered {what}?)")


def _integrity(
    header: dict[str, Any],
    header_line: str,
    body: list[str],
    trailer: dict[str, Any] | None,
    keys: KeyLookup | None,
) -> Integrity:
    if header.get("version") == 1:
        return Integrity(False, ("unsigned recording (format version 1): cannot be verified",))
    problems: list[str] = []
    created = header.get("created_ns")
    at_ns = created if isinstance(created, int) else 0
    _check_sig(header, b"header", keys, at_ns, problems)
    if trailer is None:
        problems.append("no trailer: the recording was truncated")
        return Integrity(False, tuple(problems))
    _check_sig(trailer, b"trailer", keys, at_ns, problems)
    digest = hashlib.sha256(b"\x00" + header_line.encode()).digest()
    for line in body:
        digest = _chain(digest, line)
    if trailer.get("count") != len(body):
        problems.append(
            f"trailer counts {trailer.get('count')!r} entries, the file holds {len(body)}"
        )
    if trailer.get("hash") != digest.hex():
        problems.append("hash chain broken: entries deleted, inserted, reordered or altered")
    run = str((header.get("meta") or {}).get("run", ""))
    if trailer.get("run") != run:
        problems.append(f"trailer run {trailer.get('run')!r} differs from header run {run!r}")
    return Integrity(not problems, tuple(problems))


class Recording:
    """A recording opened for reading; ranges yield the same Entry objects a live bus does."""

    def __init__(
        self,
        header: dict[str, Any],
        entries: dict[str, list[Entry]],
        integrity: Integrity = Integrity(False, ("not checked",)),
    ) -> None:
        self.header = header
        self.meta: dict[str, Any] = dict(header.get("meta") or {})
        self.created_ns: int = int(header.get("created_ns") or 0)
        self.integrity = integrity
        self._entries = entries
        self._ids = {s: [parse_id(e.id) for e in es] for s, es in entries.items()}

    @classmethod
    def open(cls, path: str | Path, *, keys: KeyLookup | None = None) -> Recording:
        """Read and validate a recording (format name, version, every line) and check its
        integrity with the reader's ``keys`` (see :attr:`integrity`)."""
        path = Path(path)
        cut: list[str] = []
        lines = _lines(path, cut)
        first = next(lines, None)
        header = _check_header(path, first)
        read = _read_body(path, lines, cut, header.get("streams") or [])
        integrity = _integrity(header, (first or "").rstrip("\n"), read.body, read.trailer, keys)
        problems = (["lines after the trailer"] if read.late else []) + cut
        if problems:
            integrity = Integrity(False, (*integrity.problems, *problems))
        return cls(header, _ordered(read.entries), integrity)

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


def _ordered(entries: dict[str, list[Entry]]) -> dict[str, list[Entry]]:
    """Each stream's entries sorted by id, without duplicates (a doctored file may hold either;
    its integrity says so, and ranges still behave like XRANGE)."""
    out: dict[str, list[Entry]] = {}
    for stream, items in entries.items():
        seen: dict[tuple[int, int], Entry] = {}
        for entry in items:
            seen.setdefault(parse_id(entry.id), entry)
        out[stream] = [seen[k] for k in sorted(seen)]
    return out
