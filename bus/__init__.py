"""Transport of opaque entries over Redis Streams (or in memory). Knows nothing of Leyline."""

from __future__ import annotations

from .api import (
    DEAD_FIELDS,
    DEAD_MAXLEN,
    SHED_BUDGET,
    Append,
    Bus,
    Entry,
    EntrySource,
    Fence,
    Fields,
    GroupInfo,
    Handled,
    Shedding,
    ShedRange,
    StreamInfo,
    aiter_entries,
    next_id,
    parse_id,
    processed_key,
    watermark_key,
)
from .backoff import backoff_s
from .consumer import Batch, Consumer, contiguous
from .errors import (
    BusClosed,
    BusConfigError,
    BusError,
    BusProtocolError,
    BusUnavailable,
    Fenced,
)
from .factory import REDIS_SCHEMES, is_redis_url, open_bus, redact_url
from .memory import MemoryBus, MemoryStore
from .nonce import RedisNonceGuard
from .recording import Integrity, Recording, RecordingError, SealKey, record
from .redis_bus import RedisStreamBus
from .retention import safe_trim_id, set_watermark

__all__ = [
    "DEAD_FIELDS",
    "DEAD_MAXLEN",
    "REDIS_SCHEMES",
    "SHED_BUDGET",
    "Append",
    "Batch",
    "Bus",
    "BusClosed",
    "BusConfigError",
    "BusError",
    "BusProtocolError",
    "BusUnavailable",
    "Consumer",
    "Entry",
    "EntrySource",
    "Fence",
    "Fenced",
    "Fields",
    "GroupInfo",
    "Handled",
    "Integrity",
    "MemoryBus",
    "MemoryStore",
    "Recording",
    "RecordingError",
    "RedisNonceGuard",
    "RedisStreamBus",
    "SealKey",
    "ShedRange",
    "Shedding",
    "StreamInfo",
    "aiter_entries",
    "backoff_s",
    "contiguous",
    "is_redis_url",
    "next_id",
    "open_bus",
    "parse_id",
    "processed_key",
    "record",
    "redact_url",
    "safe_trim_id",
    "set_watermark",
    "watermark_key",
]
