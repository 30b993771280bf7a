"""Bus URLs: one server, Redis Cluster and Sentinel schemes, and the bus's own parameters."""

from __future__ import annotations

import pytest

from bus import RedisStreamBus, is_redis_url, open_bus
from bus.connect import DEFAULT_WAIT_TIMEOUT_MS, parse_bus_url


def test_plain_url_keeps_redis_options_and_drops_the_bus_ones() -> None:
    """A redis:// URL reaches redis-py without wait/wait_timeout_ms, with its own options kept."""
    target = parse_bus_url("redis://u:p%40ss@h:7000/3?wait=1&wait_timeout_ms=250&client_name=x")
    assert target.topology == "single"
    assert target.url == "redis://u:p%40ss@h:7000/3?client_name=x"
    assert (target.wait, target.wait_timeout_ms) == (1, 250)
    assert parse_bus_url("redis://h").wait == 0
    assert parse_bus_url("redis://h").wait_timeout_ms == DEFAULT_WAIT_TIMEOUT_MS
    assert parse_bus_url("rediss://h:1").tls


def test_cluster_url_lists_startup_nodes() -> None:
    """redis+cluster:// names every startup node (default port 6379), auth and TLS."""
    target = parse_bus_url("rediss+cluster://me:pw@a:7000,b,[::1]:7002?wait=2")
    assert target.topology == "cluster" and target.tls
    assert target.nodes == (("a", 7000), ("b", 6379), ("::1", 7002))
    assert (target.username, target.password, target.wait) == ("me", "pw", 2)


def test_sentinel_url_names_the_service_and_database() -> None:
    """redis+sentinel://…/service[/db]: sentinels (default port 26379), service, db, passwords."""
    target = parse_bus_url(
        "redis+sentinel://:secret@s1:5000,s2/mymaster/2?sentinel_password=sp&wait=1"
    )
    assert target.topology == "sentinel"
    assert target.nodes == (("s1", 5000), ("s2", 26379))
    assert (target.service, target.db, target.password) == ("mymaster", 2, "secret")
    assert (target.sentinel_password, target.wait) == ("sp", 1)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://s1:5000", "name the service"),
        ("redis+sentinel://s1/a/1/2", "expected /service"),
        ("redis+cluster://a:1/3", "database 0 only"),
        ("redis+cluster://a:1?db=2", "database 0 only"),
        ("redis+cluster://a:1?sentinel_password=x", "sentinel_password"),
        ("redis://h?wait=-1", "wait must be >= 0"),
        ("redis://h?wait=one", "wait must be an integer"),
        ("redis://h?wait_timeout_ms=0", "wait_timeout_ms must be >= 1"),
        ("redis+cluster://a:notaport", "port must be an integer"),
        ("unix+cluster:///tmp/x.sock", "not supported"),
        ("redis+shards://a:1", "unsupported redis url"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(url: str, message: str) -> None:
    """A malformed URL is refused at parse time, naming what is wrong."""
    with pytest.raises(ValueError, match=message):
        parse_bus_url(url)


def test_open_bus_knows_every_redis_scheme() -> None:
    """open_bus and is_redis_url accept the cluster and sentinel schemes, not unknown ones."""
    for url in ("redis+cluster://a:1", "rediss+sentinel://s:1/svc", "unix:///tmp/r.sock"):
        assert is_redis_url(url)
    assert not is_redis_url("fakeredis://x") and not is_redis_url("memory://")
    with pytest.raises(ValueError, match="redis\\+cluster://"):
        open_bus("mongodb://x")


async def test_an_unreachable_cluster_or_sentinel_is_unavailable_in_one_clear_line() -> None:
    """No seed node of a cluster answering, or no sentinel, is BusUnavailable (what the command
    line reports as an unreachable Redis, exit 2), and the sentinel's says so without the
    client's repr."""
    import socket

    from bus import BusUnavailable

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for url, said in (
        (f"redis+cluster://127.0.0.1:{port}", "redis cluster unavailable"),
        (f"redis+sentinel://127.0.0.1:{port}/svc", "no sentinel answers, or none knows"),
    ):
        bus = RedisStreamBus.from_url(url, retries=0)
        try:
            with pytest.raises(BusUnavailable, match=said) as info:
                await bus.members("kasmina:{x}:registry:seed")
            assert "<redis" not in str(info.value)
        finally:
            await bus.close()


@pytest.mark.redis
@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("redis+sentinel://{host}:{port}/svc", "plain Redis server"),
        ("redis+cluster://{host}:{port}", "not in cluster mode"),
    ],
)
async def test_a_topology_url_naming_a_plain_server_is_a_configuration_error(
    url: str, said: str, redis_url: str
) -> None:
    """``redis+sentinel://`` or ``redis+cluster://`` at a plain Redis server is BusConfigError
    saying so, not a protocol error or an outage to wait out."""
    from urllib.parse import urlsplit

    from bus import BusConfigError

    plain = urlsplit(redis_url)
    bus = RedisStreamBus.from_url(url.format(host=plain.hostname, port=plain.port), retries=0)
    try:
        with pytest.raises(BusConfigError, match=said):
            await bus.members("kasmina:{x}:registry:seed")
    finally:
        await bus.close()
