"""Retention: how far a stream may be trimmed without destroying anything still needed.

The safe trim id of a stream is the minimum of
- the oldest pending id of every group (entries someone received but has not acked yet),
- the last-delivered id of every group (everything after it was never delivered),
- the recorded watermark ``<stream>:watermark`` if set (e.g. the last archived/snapshotted id).

``Bus.trim(stream, min_id=...)`` clamps ``min_id`` to that id, so it never removes an entry at or
after it. With no group and no watermark nothing constrains the trim.
"""

from __future__ import annotations

from .api import Bus, StreamInfo, next_id, parse_id, watermark_key

__all__ = ["clamp_trim_id", "safe_trim_id", "safe_trim_id_of", "set_watermark"]


def safe_trim_id_of(info: StreamInfo, watermark: str | None) -> str:
    """Pure core of :func:`safe_trim_id`: entries at or after the result must be kept."""
    candidates: list[str] = []
    for group in info.groups:
        candidates.append(group.last_delivered)
        if group.oldest_pending is not None:
            candidates.append(group.oldest_pending)
    if watermark is not None:  # one that is no entry id (a writer's garbage) keeps everything
        candidates.append(watermark if _is_id(watermark) else "0-0")
    if not candidates:
        return next_id(info.last_id)
    return min(candidates, key=parse_id)


def _is_id(value: str) -> bool:
    try:
        parse_id(value)
    except (ValueError, TypeError):
        return False
    return True


def clamp_trim_id(min_id: str, safe_id: str) -> str:
    """The id actually used for ``XTRIM MINID``: never past ``safe_id``."""
    return min(min_id, safe_id, key=parse_id)


async def safe_trim_id(bus: Bus, stream: str) -> str:
    """The smallest id that must survive a trim of ``stream`` (see module docstring)."""
    info = await bus.info(stream)
    raw = await bus.get_value(watermark_key(stream))
    return safe_trim_id_of(info, raw.decode("utf-8", "replace") if raw is not None else None)


async def set_watermark(bus: Bus, stream: str, entry_id: str) -> None:
    """Record that entries of ``stream`` before ``entry_id`` may go (archived or snapshotted)."""
    parse_id(entry_id)
    await bus.set_value(watermark_key(stream), entry_id.encode())
