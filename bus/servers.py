"""Throwaway local Redis topologies for tests: a Redis Cluster and a Sentinel-managed primary.

Every process is a ``redis-server`` (sentinels: ``redis-server CONF --sentinel``) on a free
localhost port, in a temporary directory removed afterwards; every one is stopped on exit, even
when the body raised. Waits poll the servers' own state (``cluster_state``, ``master_link_status``,
the sentinels' view of the primary), never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from .testing import REDIS_SERVER, RedisServer, _free_port

__all__ = ["LocalCluster", "LocalSentinel", "redis_cluster", "redis_sentinel", "wait_until"]

CLUSTER_SLOTS = 16384
# how long a cluster may take to form (gossip, slot coverage, replica sync) on a loaded machine
FORMATION_S = 120.0


def wait_until(
    predicate: Callable[[], bool], *, timeout_s: float = 30.0, what: str = "condition"
) -> float:
    """Poll ``predicate`` (every 20 ms) until it holds; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{what}: not reached within {timeout_s} s")
        time.sleep(0.02)
    return time.monotonic() - start


def _client(port: int, timeout_s: float = 2.0) -> Any:
    return redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )


def _ask(port: int, *args: Any) -> Any:
    """One command to the server on ``port`` (None if it does not answer)."""
    client = _client(port)
    try:
        return client.execute_command(*args)
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()


def _text(value: Any) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def _server(tmp: Path, name: str, extra: list[str], *, aof: bool) -> RedisServer:
    port = _free_port()
    node_dir = tmp / name
    node_dir.mkdir()
    args = [
        REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
        "--save", "", "--appendonly", "yes" if aof else "no", "--appendfsync", "always",
        "--protected-mode", "no", "--daemonize", "no", "--maxmemory-policy", "noeviction",
        "--repl-diskless-sync-delay", "0", *extra,
    ]  # fmt: skip
    return RedisServer(port=port, dir=node_dir, args=args)


# -- cluster ----------------------------------------------------------------------------------
@dataclass
class LocalCluster:
    """A running local Redis Cluster (see :func:`redis_cluster`)."""

    primaries: list[RedisServer]
    replicas: list[RedisServer] = field(default_factory=list)

    @property
    def nodes(self) -> list[RedisServer]:
        return [*self.primaries, *self.replicas]

    @property
    def url(self) -> str:
        """``redis+cluster://`` URL naming every primary as a startup node."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.primaries)
        return f"redis+cluster://{hosts}"

    def node_id(self, server: RedisServer) -> str:
        """The cluster node id of ``server``."""
        return _text(_ask(server.port, "CLUSTER", "MYID"))

    def owner(self, slot: int) -> RedisServer:
        """The primary serving hash slot ``slot`` now."""
        for server in self.nodes:
            if server.proc is None or server.proc.poll() is not None:
                continue
            for start, end, primary, *_ in _ask(server.port, "CLUSTER", "SLOTS") or ():
                if start <= slot <= end:
                    port = int(primary[1])
                    return next(s for s in self.nodes if s.port == port)
        raise LookupError(f"no node serves slot {slot}")

    def keyslot(self, key: str) -> int:
        """The hash slot of ``key`` (asked of a live node)."""
        for server in self.nodes:
            if server.proc is not None and server.proc.poll() is None:
                return int(_ask(server.port, "CLUSTER", "KEYSLOT", key))
        raise RuntimeError("no live cluster node")

    def healthy(self) -> bool:
        """Every live node reports ``cluster_state:ok`` and knows every node."""
        want = len(self.nodes)
        for server in self.nodes:
            if server.proc is None or server.proc.poll() is not None:
                continue
            info = _ask(server.port, "CLUSTER", "INFO")
            if info is None or b"cluster_state:ok" not in info:
                return False
            known = int(info.split(b"cluster_known_nodes:")[1].split(b"\r\n")[0])
            if known != want:
                return False
        return True

    def migrate_slot(self, slot: int, target: RedisServer, *, batch: int = 10) -> int:
        """Move hash slot ``slot`` (every key in it) to primary ``target``, the way
        ``redis-cli --cluster reshard`` does: IMPORTING/MIGRATING, MIGRATE in batches, SETSLOT
        NODE. Returns the keys moved."""
        source = self.owner(slot)
        if source is target:
            return 0
        self.begin_migration(slot, target)
        moved = 0
        while self.migrate_some(slot, target, batch):
            moved += batch
        self.finish_migration(slot, target)
        return moved

    def begin_migration(self, slot: int, target: RedisServer) -> RedisServer:
        """Mark ``slot`` importing on ``target`` and migrating on its owner; returns the owner."""
        source = self.owner(slot)
        _ask(target.port, "CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        _ask(source.port, "CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))
        return source

    def migrate_some(self, slot: int, target: RedisServer, count: int, *, source: RedisServer | None = None) -> int:  # fmt: skip
        """MIGRATE up to ``count`` keys of ``slot`` to ``target``; returns how many moved."""
        source = source or self._migrating_node(slot)
        keys = _ask(source.port, "CLUSTER", "GETKEYSINSLOT", slot, count) or []
        if keys:
            client = _client(source.port, timeout_s=10.0)
            try:
                client.execute_command(
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys
                )
            finally:
                client.close()
        return len(keys)

    def finish_migration(self, slot: int, target: RedisServer) -> None:
        """Assign ``slot`` to ``target`` on every primary (ends the migration)."""
        target_id = self.node_id(target)
        source = self._migrating_node(slot)
        for server in [target, source, *self.primaries]:
            _ask(server.port, "CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def _migrating_node(self, slot: int) -> RedisServer:
        for server in self.primaries:
            nodes = _ask(server.port, "CLUSTER", "NODES") or b""
            for line in nodes.decode().splitlines():
                if "myself" in line and f"[{slot}->-" in line:
                    return server
        return self.owner(slot)

    def stop(self) -> None:
        for server in self.nodes:
            server.stop()


@contextlib.contextmanager
def redis_cluster(
    primaries: int = 3, replicas: int = 0, *, node_timeout_ms: int = 1000, aof: bool = False
) -> Iterator[LocalCluster]:
    """A Redis Cluster of ``primaries`` primaries (the 16384 slots split evenly) and ``replicas``
    replicas per primary, on free localhost ports; stopped and removed on exit."""
    if primaries < 1 or replicas < 0:
        raise ValueError("a cluster needs at least one primary and no negative replica count")
    tmp = Path(tempfile.mkdtemp(prefix="kasmina-cluster-"))

    def node(name: str) -> RedisServer:
        # the cluster bus port is given explicitly (the default, port + 10000, may not be free)
        extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", str(node_timeout_ms),
                 "--cluster-port", str(_free_port())]  # fmt: skip
        return _server(tmp, name, extra, aof=aof)

    cluster = LocalCluster(
        [node(f"p{i}") for i in range(primaries)],
        [node(f"r{i}") for i in range(primaries * replicas)],
    )
    try:
        for server in cluster.nodes:
            server.start()
        for epoch, server in enumerate(cluster.nodes, start=1):
            _ask(server.port, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
        per = CLUSTER_SLOTS // primaries
        for i, server in enumerate(cluster.primaries):
            last = CLUSTER_SLOTS - 1 if i == primaries - 1 else (i + 1) * per - 1
            _ask(server.port, "CLUSTER", "ADDSLOTSRANGE", i * per, last)
        first = cluster.primaries[0]
        for server in cluster.nodes[1:]:
            bus_port = first.args[first.args.index("--cluster-port") + 1]
            _ask(server.port, "CLUSTER", "MEET", "127.0.0.1", first.port, bus_port)
        for i, replica in enumerate(cluster.replicas):
            primary_id = cluster.node_id(cluster.primaries[i % primaries])
            wait_until(
                lambda r=replica, p=primary_id: p.encode() in (_ask(r.port, "CLUSTER", "NODES") or b""),  # type: ignore[misc]
                timeout_s=FORMATION_S, what="replica learns its primary",
            )  # fmt: skip
            _ask(replica.port, "CLUSTER", "REPLICATE", primary_id)
        wait_until(cluster.healthy, timeout_s=FORMATION_S, what="cluster_state:ok on every node")
        for replica in cluster.replicas:
            wait_until(lambda r=replica: _linked(r), timeout_s=FORMATION_S, what="replica in sync")  # type: ignore[misc]
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _replication(port: int) -> dict[str, Any]:
    """``INFO replication`` of the server on ``port`` (empty if it does not answer)."""
    info = _ask(port, "INFO", "replication")
    return dict(info) if isinstance(info, dict) else {}


def _linked(server: RedisServer) -> bool:
    return _replication(server.port).get("master_link_status") == "up"


def _without_replicaof(args: list[str]) -> list[str]:
    """Server arguments less their ``--replicaof HOST PORT`` (there is one at most)."""
    at = args.index("--replicaof") if "--replicaof" in args else len(args)
    return args[:at] + args[at + 3 :]


# -- sentinel ---------------------------------------------------------------------------------
@dataclass
class LocalSentinel:
    """A primary, its replicas and the sentinels watching them (see :func:`redis_sentinel`)."""

    service: str
    servers: list[RedisServer]
    sentinels: list[RedisServer]

    @property
    def url(self) -> str:
        """``redis+sentinel://`` URL naming every sentinel and the service."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def primary_port(self) -> int | None:
        """The primary's port as the sentinels report it (None if none answers)."""
        for sentinel in self.sentinels:
            reply = _ask(sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
            if reply:
                return int(reply[1])
        return None

    def primary(self) -> RedisServer:
        """The server the sentinels name as primary."""
        port = self.primary_port()
        return next(s for s in self.servers if s.port == port)

    def replicas_of_primary(self) -> int:
        """Replicas connected to the current primary (its ``connected_slaves``)."""
        return int(_replication(self.primary().port).get("connected_slaves", 0))

    def kill_primary(self) -> RedisServer:
        """SIGKILL the current primary; returns it (restart it with :meth:`start_again`)."""
        old = self.primary()
        old.kill()
        return old

    def start_again(self, server: RedisServer) -> None:
        """Start the stopped ``server`` in the role the sentinels give it now: the primary if
        they still name it, else a replica of the one they name, whatever its first role.

        A former primary started as a primary holds what it kept (nothing without AOF) until the
        sentinels turn it into a replica, seconds later; were it elected again meanwhile, the
        promoted server would copy its data. A promoted replica started with its first
        ``--replicaof`` would follow its old primary while the sentinels name it primary."""
        port = self.primary_port()
        if port is None:
            raise RuntimeError(f"no sentinel names a primary of {self.service}")
        args = _without_replicaof(server.args)
        if port != server.port:
            args += ["--replicaof", "127.0.0.1", str(port)]
        server.args = args
        server.start()

    def wait_failover(self, old: RedisServer, timeout_s: float = 30.0) -> float:
        """Wait until every sentinel names a live primary other than ``old`` and that server
        answers as a primary; returns the seconds it took."""

        def promoted() -> bool:
            ports = {
                (_ask(s.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service) or [b"", b"0"])[1]
                for s in self.sentinels
            }  # fmt: skip
            if len(ports) != 1:
                return False
            port = int(next(iter(ports)))
            if port == old.port:
                return False
            role = _ask(port, "ROLE")
            return bool(role) and role[0] == b"master"

        return wait_until(promoted, timeout_s=timeout_s, what="sentinel failover")

    def stop(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            server.stop()


def _sentinel_server(sdir: Path, config: str) -> RedisServer:
    """A sentinel (not started yet) on a free port, its config file in ``sdir``: ``config`` (the
    monitored service) after the port, bind address and directory."""
    port = _free_port()
    sdir.mkdir()
    conf = sdir / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {sdir}\n" + config)
    return RedisServer(port=port, dir=sdir, args=[REDIS_SERVER, str(conf), "--sentinel"])


def _sentinels_ready(watchers: list[RedisServer], service: str, replicas: int) -> bool:
    """Whether every sentinel sees ``replicas`` replicas of ``service`` and every other sentinel."""
    for s in watchers:
        row = _ask(s.port, "SENTINEL", "MASTER", service)
        if not row:
            return False
        info = {_text(k): v for k, v in dict(row).items()}  # parsed by redis-py
        if int(info.get("num-slaves", 0)) < replicas:
            return False
        if int(info.get("num-other-sentinels", 0)) < len(watchers) - 1:
            return False
    return True


@contextlib.contextmanager
def redis_sentinel(
    replicas: int = 1,
    sentinels: int = 3,
    *,
    service: str = "kasmina",
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 10_000,
    aof: bool = True,
) -> Iterator[LocalSentinel]:
    """A primary with ``replicas`` replicas, watched by ``sentinels`` sentinels (quorum: a
    majority), on free localhost ports; stopped and removed on exit. The servers run with AOF
    (``appendfsync always``) unless ``aof`` is False."""
    if replicas < 1 or sentinels < 1:
        raise ValueError("a sentinel setup needs at least one replica and one sentinel")
    tmp = Path(tempfile.mkdtemp(prefix="kasmina-sentinel-"))
    primary = _server(tmp, "s0", [], aof=aof)
    servers = [primary] + [
        _server(tmp, f"s{i + 1}", ["--replicaof", "127.0.0.1", str(primary.port)], aof=aof)
        for i in range(replicas)
    ]
    watchers: list[RedisServer] = []
    setup = LocalSentinel(service, servers, watchers)
    try:
        for server in servers:
            server.start()
        for server in servers[1:]:
            wait_until(lambda s=server: _linked(s), what="replica in sync")  # type: ignore[misc]
        config = (
            f"sentinel monitor {service} 127.0.0.1 {primary.port} {sentinels // 2 + 1}\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {service} {max(1, replicas)}\n"
        )
        for i in range(sentinels):
            watchers.append(_sentinel_server(tmp / f"sentinel{i}", config))
            watchers[-1].start()
        wait_until(
            lambda: _sentinels_ready(watchers, service, replicas),
            what="sentinels see every replica and each other",
        )
        yield setup
    finally:
        setup.stop()
        shutil.rmtree(tmp, ignore_errors=True)
