"""open_bus(url): choose a Bus adapter from a URL, once, at the edge."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .api import Bus
from .memory import MemoryBus, MemoryStore
from .redis_bus import RedisStreamBus

__all__ = ["REDIS_SCHEMES", "is_redis_url", "open_bus", "redact_url"]

REDIS_SCHEMES = frozenset(
    {"redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel",
     "rediss+sentinel"}
)  # fmt: skip
_FAKE_SERVERS: dict[str, Any] = {}
_MEMORY_STORES: dict[str, MemoryStore] = {}


def _name(url: str) -> str:
    parts = urlsplit(url)
    return (parts.netloc + parts.path).strip("/")


def is_redis_url(url: str) -> bool:
    """Whether ``url`` names a Redis server, cluster or sentinel service (not fake or memory)."""
    return urlsplit(url).scheme.lower() in REDIS_SCHEMES


def redact_url(url: str) -> str:
    """``url`` without its credentials (``redis://user:secret@host`` -> ``redis://user:***@host``),
    for anything printed, logged or written to a report. Query parameters that carry a password
    are masked too."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            auth, _, host = netloc.rpartition("@")
            user, sep, _ = auth.partition(":")
            netloc = f"{user}:***@{host}" if sep else f"***@{host}"
        query = "&".join(
            f"{k}=***" if k.lower() in ("password", "pass", "pwd") else f"{k}{eq}{v}"
            for k, eq, v in (item.partition("=") for item in parts.query.split("&") if item)
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparseable url>"


def open_bus(url: str, **opts: Any) -> Bus:
    """``redis://`` / ``rediss://`` / ``unix://``, ``redis+cluster://`` and ``redis+sentinel://``
    (see :mod:`bus.connect`) -> RedisStreamBus; ``fakeredis://[name]`` -> RedisStreamBus over
    FakeAsyncRedis (version 7.0; one in-process server per name, shared); ``memory://[name]`` ->
    MemoryBus (a named store is shared). Unnamed fake/memory URLs get a fresh private server."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in REDIS_SCHEMES:
        return RedisStreamBus.from_url(url, **opts)
    if scheme == "fakeredis":
        import fakeredis

        name = _name(url)
        server = _FAKE_SERVERS.get(name) if name else None
        if server is None:
            server = fakeredis.FakeServer(version=(7, 0))
            if name:
                _FAKE_SERVERS[name] = server
        client = fakeredis.FakeAsyncRedis(server=server, version=(7, 0))
        return RedisStreamBus(client, server_version=(7, 0), **opts)
    if scheme == "memory":
        name = _name(url)
        if not name:
            return MemoryBus(**opts)
        store = _MEMORY_STORES.setdefault(name, MemoryStore())
        return MemoryBus(store, **opts)
    raise ValueError(
        f"unsupported bus url {url!r}: use redis://, rediss://, redis+cluster://, "
        "redis+sentinel://, fakeredis:// or memory://"
    )
