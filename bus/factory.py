"""open_bus(url): choose a Bus adapter from a URL, once, at the edge."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .api import Bus
from .memory import MemoryBus, MemoryStore
from .redis_bus import RedisStreamBus

__all__ = ["open_bus"]

_FAKE_SERVERS: dict[str, Any] = {}
_MEMORY_STORES: dict[str, MemoryStore] = {}


def _name(url: str) -> str:
    parts = urlsplit(url)
    return (parts.netloc + parts.path).strip("/")


def open_bus(url: str, **opts: Any) -> Bus:
    """``redis://`` / ``rediss://`` -> RedisStreamBus; ``fakeredis://[name]`` -> RedisStreamBus over
    FakeAsyncRedis (version 7.0; one in-process server per name, shared); ``memory://[name]`` ->
    MemoryBus (a named store is shared). Unnamed fake/memory URLs get a fresh private server."""
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss", "unix"):
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
        f"unsupported bus url {url!r}: use redis://, rediss://, fakeredis:// or memory://"
    )
