"""The canonical JSON of docs/recording-format.md, pinned on a header with a non-ASCII meta value:
every non-ASCII character is a lowercase ``\\uXXXX`` escape (a surrogate pair above U+FFFF), in the
line as written and in the bytes the header signature covers."""

from __future__ import annotations

import base64
import gzip
import hmac
import json
from pathlib import Path

import anyio
import pytest

from bus import MemoryBus, Recording, SealKey, record

SEAL = SealKey("k-canonical", bytes(range(32)))
STREAM = "kasmina:{r1}:events"
META = {"run": "r1", "note": "opérateur 😀"}
NOTE = '"note":"op\\u00e9rateur \\ud83d\\ude00"'


def _trusted(key_id: str, created_ns: int) -> bytes | None:
    return SEAL.secret if key_id == SEAL.key_id else None


def _sig(body: str) -> str:
    data = b"kasmina.recording.v2\x00header\x00" + body.encode("ascii")
    return base64.b64encode(hmac.digest(SEAL.secret, data, "sha256")).decode("ascii")


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, list[str]]:
    """A signed recording (one empty stream) whose meta holds non-ASCII text, and its lines."""
    path = tmp_path / "utf8.kasrec"

    async def make() -> None:
        bus = MemoryBus()
        try:
            await record(bus, [STREAM], path, META, seal=SEAL)
        finally:
            await bus.close()

    anyio.run(make)
    return path, gzip.open(path, "rb").read().decode("ascii").splitlines()


def test_the_header_line_escapes_non_ascii_and_is_signed_as_written(
    written: tuple[Path, list[str]],
) -> None:
    """The header is ASCII, keys sorted, no spaces; its sig covers exactly that text without sig."""
    _, lines = written
    header = json.loads(lines[0])
    created = header["created_ns"]
    head = (
        f'{{"created_ns":{created},"format":"kasmina-recording","key_id":"k-canonical",'
        f'"meta":{{{NOTE},"run":"r1"}},'
    )
    tail = f'"streams":["{STREAM}"],"version":2}}'
    assert lines[0] == head + f'"sig":"{header["sig"]}",' + tail  # "sig" sorts before "streams"
    assert header["sig"] == _sig(head + tail)
    assert header["meta"] == META


def test_a_recording_with_non_ascii_meta_verifies(written: tuple[Path, list[str]]) -> None:
    """The reader re-derives the same canonical form: the recording passes its integrity check."""
    path, _ = written
    opened = Recording.open(path, keys=_trusted)
    assert opened.integrity.ok, opened.integrity.problems
    assert opened.meta == META


def test_a_header_signed_over_raw_utf8_does_not_verify(
    written: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """Signing the UTF-8 form instead (no escapes) covers other bytes: the header is refused."""
    _, lines = written
    header = {k: v for k, v in json.loads(lines[0]).items() if k != "sig"}
    raw = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert "opérateur 😀" in raw
    data = b"kasmina.recording.v2\x00header\x00" + raw.encode("utf-8")
    header["sig"] = base64.b64encode(hmac.digest(SEAL.secret, data, "sha256")).decode("ascii")
    path = tmp_path / "raw.kasrec"
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.write(json.dumps(header, ensure_ascii=False) + "\n" + lines[-1] + "\n")
    problems = Recording.open(path, keys=_trusted).integrity.problems
    assert "header signature does not match (altered header?)" in problems
