"""Redis URLs of the bus and the redis-py clients they open: one server, a Cluster, or Sentinel.

Schemes (``rediss`` instead of ``redis`` for TLS):

- ``redis://[[user]:password@]host:port[/db]`` and ``unix://…``: one server;
- ``redis+cluster://[[user]:password@]host:port[,host:port…]``: a Redis Cluster, the listed nodes
  used to discover it (redis-py's cluster client: MOVED/ASK followed, slots refreshed);
- ``redis+sentinel://[[user]:password@]host:port[,host:port…]/service[/db]``: the primary of
  ``service`` as the listed sentinels name it, rediscovered after a failover.

Query parameters the bus reads (and removes before the URL reaches redis-py):

- ``wait=N``: every acknowledged write has reached ``N`` replicas (``WAIT N``), else the write
  raises :class:`~bus.errors.BusUnavailable` (outcome unknown; see docs/operations.md);
- ``wait_timeout_ms=T``: how long a write waits for its replicas (default 1000);
- ``sentinel_password=…``: password of the sentinels (Sentinel URLs only).

The bus's own retry policy stays in charge: redis-py's retries are switched off everywhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

__all__ = ["BusUrl", "Closer", "open_client", "parse_bus_url"]

Topology = Literal["single", "cluster", "sentinel"]
Closer = Callable[[], Awaitable[None]]
# wraps a plain connection class (e.g. with a faster command packer)
Wrap = Callable[[type[Any]], type[Any]] | None

BUS_PARAMS = ("wait", "wait_timeout_ms", "sentinel_password")
DEFAULT_WAIT_TIMEOUT_MS = 1000
# per node; every blocked read holds one (redis-py's default of 100 would starve many actors)
CLUSTER_MAX_CONNECTIONS = 4096
_PORT = 6379
_SENTINEL_PORT = 26379


@dataclass(frozen=True, slots=True)
class BusUrl:
    """A parsed bus URL (see the module docstring)."""

    topology: Topology
    url: str  # single server: the URL redis-py gets (bus parameters removed)
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    wait: int = 0
    wait_timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS
    sentinel_password: str | None = None
    options: dict[str, str] = field(default_factory=dict)


def _int(name: str, value: str, *, low: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"bus url: {name} must be an integer, got {value!r}") from None
    if number < low:
        raise ValueError(f"bus url: {name} must be >= {low}, got {number}")
    return number


def _nodes(netloc: str, default_port: int, url: str) -> tuple[tuple[str, int], ...]:
    hosts = netloc.rpartition("@")[2]
    out: list[tuple[str, int]] = []
    for part in hosts.split(","):
        if not part:
            continue
        if part.startswith("["):  # [ipv6]:port
            host, _, rest = part[1:].partition("]")
            port = rest.removeprefix(":")
        else:
            host, _, port = part.rpartition(":") if ":" in part else (part, "", "")
        out.append((host, _int("port", port, low=1) if port else default_port))
    if not out:
        raise ValueError(f"bus url {url!r} names no host")
    return tuple(out)


def _flavour(scheme: str, url: str) -> str:
    """The topology part of ``scheme`` ("", "cluster" or "sentinel"); refuses any other."""
    base, _, flavour = scheme.partition("+")
    if base not in ("redis", "rediss", "unix") or flavour not in ("", "cluster", "sentinel"):
        raise ValueError(f"unsupported redis url {url!r}")
    if base == "unix" and flavour:
        raise ValueError(f"{scheme}:// is not supported: use redis+{flavour}:// with host:port")
    return flavour


def _common(parts: SplitResult, ours: dict[str, str], query: dict[str, str]) -> dict[str, Any]:
    """The fields every topology's :class:`BusUrl` has: credentials, TLS, WAIT, options."""
    wait = _int("wait", ours["wait"], low=0) if "wait" in ours else 0
    timeout = (
        _int("wait_timeout_ms", ours["wait_timeout_ms"], low=1)
        if "wait_timeout_ms" in ours
        else DEFAULT_WAIT_TIMEOUT_MS
    )
    return {
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password is not None else None,
        "tls": parts.scheme.lower().partition("+")[0] == "rediss",
        "wait": wait,
        "wait_timeout_ms": timeout,
        "options": query,
    }


def _cluster_url(
    url: str, parts: SplitResult, path: list[str], ours: dict[str, str], common: dict[str, Any]
) -> BusUrl:
    """A ``redis+cluster://`` URL: its seed nodes, database 0 only."""
    if "sentinel_password" in ours:
        raise ValueError("bus url: sentinel_password is for redis+sentinel:// only")
    db = common["options"].get("db", "0")
    if (path and path != ["0"]) or db != "0":
        raise ValueError(f"bus url {url!r}: a cluster has database 0 only")
    return BusUrl("cluster", url, _nodes(parts.netloc, _PORT, url), **common)


def _sentinel_url(
    url: str, parts: SplitResult, path: list[str], ours: dict[str, str], common: dict[str, Any]
) -> BusUrl:
    """A ``redis+sentinel://`` URL: the sentinels, ``/service[/db]``."""
    if not path:
        raise ValueError(
            f"bus url {url!r}: name the service, e.g. redis+sentinel://host:26379/mymaster"
        )
    if len(path) > 2:
        raise ValueError(f"bus url {url!r}: expected /service[/db]")
    db = _int("db", path[1], low=0) if len(path) == 2 else 0
    return BusUrl(
        "sentinel",
        url,
        _nodes(parts.netloc, _SENTINEL_PORT, url),
        service=unquote(path[0]),
        db=db,
        sentinel_password=ours.get("sentinel_password"),
        **common,
    )


def parse_bus_url(url: str) -> BusUrl:
    """Parse a ``redis://``, ``redis+cluster://`` or ``redis+sentinel://`` URL (``rediss`` too)."""
    parts = urlsplit(url)
    flavour = _flavour(parts.scheme.lower(), url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    ours = {k: query.pop(k) for k in BUS_PARAMS if k in query}
    common = _common(parts, ours, query)
    if not flavour:
        _check_db_path(parts)
        plain = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
        return BusUrl("single", plain, **common)
    path = [p for p in parts.path.split("/") if p]
    build = _cluster_url if flavour == "cluster" else _sentinel_url
    return build(url, parts, path, ours, common)


def _check_db_path(parts: SplitResult) -> None:
    """A ``redis://`` or ``rediss://`` path names a database by its number or is empty (redis-py
    would take any other path as database 0, silently: another run's data, or none)."""
    if parts.scheme.lower() == "unix":
        return  # the path is the socket's; a database is ``?db=N``
    db = unquote(parts.path).strip("/")
    if db and not (db.isascii() and db.isdigit()):
        raise ValueError(
            f"bus url: the path names a database by its number (redis://host:port/DB), got {db!r}"
        )


def _wrap_pool(client: Any, wrap: Wrap) -> None:
    """Let ``wrap`` wrap the connection class of ``client``'s pool."""
    if wrap is not None:
        pool = client.connection_pool
        pool.connection_class = wrap(pool.connection_class)


def _no_retry() -> Any:
    """redis-py's retry policy for the bus's clients: none (the bus retries on its own)."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Retry(NoBackoff(), 0)


def _single(target: BusUrl, timeouts: dict[str, Any], wrap: Wrap) -> tuple[Any, list[Closer]]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(
        target.url, retry=_no_retry(), health_check_interval=30, **timeouts
    )
    _wrap_pool(client, wrap)
    return client, []


def _cluster_client(
    target: BusUrl, timeouts: dict[str, Any], wrap: Wrap
) -> tuple[Any, list[Closer]]:
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    cluster = RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in target.nodes],
        max_connections=CLUSTER_MAX_CONNECTIONS,
        retry=_no_retry(),
        ssl=target.tls,
        username=target.username,
        password=target.password,
        **timeouts,
    )
    if wrap is not None:  # for the nodes discovered from now on
        kwargs = cluster.nodes_manager.connection_kwargs
        kwargs["connection_class"] = wrap(kwargs["connection_class"])
        for node in cluster.nodes_manager.startup_nodes.values():
            node.connection_class = kwargs["connection_class"]
    return cluster, []


def _sentinel_client(
    target: BusUrl, timeouts: dict[str, Any], wrap: Wrap
) -> tuple[Any, list[Closer]]:
    from redis.asyncio.sentinel import Sentinel

    sentinel_kwargs: dict[str, Any] = dict(timeouts)
    if target.sentinel_password is not None:
        sentinel_kwargs["password"] = target.sentinel_password
    if target.tls:
        sentinel_kwargs["ssl"] = True
    sentinel = Sentinel(list(target.nodes), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    extra: dict[str, Any] = {"ssl": True} if target.tls else {}
    client = sentinel.master_for(
        target.service, db=target.db, retry=_no_retry(), health_check_interval=30,
        username=target.username, password=target.password, **timeouts, **extra,
    )  # fmt: skip
    _wrap_pool(client, wrap)
    closers: list[Closer] = [s.aclose for s in sentinel.sentinels]
    return client, closers


_OPENERS: dict[str, Callable[[BusUrl, dict[str, Any], Wrap], tuple[Any, list[Closer]]]] = {
    "single": _single,
    "cluster": _cluster_client,
    "sentinel": _sentinel_client,
}


def open_client(
    target: BusUrl,
    *,
    socket_timeout: float,
    socket_connect_timeout: float,
    connection_class: Wrap = None,
) -> tuple[Any, list[Closer]]:
    """A redis.asyncio client for ``target`` (lazy: nothing connects yet) and what to close
    besides it. ``connection_class`` may wrap a plain connection class (a faster packer).
    redis-py's own retries are off on every client (see the module docstring)."""
    timeouts: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
    }
    return _OPENERS[target.topology](target, timeouts, connection_class)
