"""Message ids: UUIDv7 strings (time-ordered; nonce and idempotency key at once)."""

from __future__ import annotations

import os
import time
import uuid

_POOL: list[bytes] = []  # 10-byte slices of one os.urandom draw, each handed out once
_DRAW = 256  # ids per draw: one system call instead of one per id


def _random10() -> bytes:
    """10 bytes from the OS's random source; ``list.pop`` hands each slice out once (atomic),
    and a forked child starts with an empty pool, never with its parent's slices."""
    try:
        return _POOL.pop()
    except IndexError:
        block = os.urandom(10 * _DRAW)
        _POOL.extend([block[i : i + 10] for i in range(0, len(block), 10)])
        return _POOL.pop()


os.register_at_fork(after_in_child=_POOL.clear)


def new_id(now_ns: int | None = None, rand: bytes | None = None) -> str:
    """Return a UUIDv7 string for ``now_ns`` (default: the wall clock) and 10 random bytes."""
    ms = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
    t = _random10() if rand is None else rand
    if len(t) != 10:
        raise ValueError("rand must be 10 bytes")
    raw = (
        (ms & 0xFFFFFFFFFFFF).to_bytes(6, "big")
        + bytes((0x70 | (t[0] & 0x0F), t[1], 0x80 | (t[2] & 0x3F)))
        + t[3:]
    )
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def is_valid_id(text: str) -> bool:
    """True if ``text`` is a canonical UUID string of version 7."""
    try:
        parsed = uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        return False
    return parsed.version == 7 and str(parsed) == text
