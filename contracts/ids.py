"""Message ids: UUIDv7 strings (time-ordered; nonce and idempotency key at once)."""

from __future__ import annotations

import os
import time
import uuid


def new_id(now_ns: int | None = None, rand: bytes | None = None) -> str:
    """Return a UUIDv7 string for ``now_ns`` (default: the wall clock) and 10 random bytes."""
    ms = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
    tail = os.urandom(10) if rand is None else rand
    if len(tail) != 10:
        raise ValueError("rand must be 10 bytes")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= (int.from_bytes(tail[:2], "big") & 0x0FFF) << 64
    value |= 0b10 << 62
    value |= int.from_bytes(tail[2:], "big") & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def is_valid_id(text: str) -> bool:
    """True if ``text`` is a canonical UUID string of version 7."""
    try:
        parsed = uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        return False
    return parsed.version == 7 and str(parsed) == text
