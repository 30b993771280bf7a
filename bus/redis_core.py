"""The plumbing of RedisStreamBus: retries, durable writes (WAIT), feature detection, groups.

- redis-py's own retries are switched off (a retried XADD would duplicate); idempotent calls are
  retried here with exponential backoff and jitter, the others raise :class:`BusUnavailable`.
- With ``wait_replicas`` every write is followed by ``WAIT`` on the same connection.
- ``NOGROUP`` (stream deleted, group destroyed) is healed by recreating the group.
- Features are detected once from the server version (INFO; fakeredis: its emulated version).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
import redis.asyncio as aioredis
import redis.exceptions as rex
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import MasterNotFoundError

from ._read_scripts import FIND_ENTRY, STREAM_STATE
from ._scripts import (
    CLAIM_KEY,
    CLAIM_KEYS,
    CLAIM_NONCES,
    COMMIT,
    DEAD_LETTER,
    PUBLISH_MANY,
    RELEASE_KEY,
    RENEW_KEY,
)
from ._shed_scripts import SHED, SHED_SKIP
from .backoff import backoff_s
from .connect import Closer
from .errors import BusClosed, BusConfigError, BusError, BusProtocolError, BusUnavailable
from .redis_codec import _not_applied

__all__ = ["DAY_MS", "GONE", "RedisCore", "gone"]

T = TypeVar("T")
DAY_MS = 24 * 3600 * 1000
# Error texts meaning the stream or the group is gone (deleted, destroyed, or a blocked read
# unblocked by that): a read recreates the group, a claim finds nothing.
GONE = ("NOGROUP", "UNBLOCKED", "The XGROUP subcommand requires the key to exist")


def gone(exc: BaseException) -> bool:
    """Whether ``exc`` says the stream or the group is gone (see :data:`GONE`)."""
    return any(mark in str(exc) for mark in GONE)


class RedisCore:
    """Connection state and the call paths every RedisStreamBus command goes through."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        processed_ttl_ms: int = DAY_MS,
        server_version: tuple[int, ...] | None = None,
        poll_interval_s: float = 0.02,
        retries: int = 3,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 2.0,
        close_client: bool = True,
        max_block_ms: int | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        closers: Sequence[Closer] = (),
    ) -> None:
        self.client: Any = client  # redis-py's stubs disagree with its runtime types
        self.is_cluster = isinstance(client, RedisCluster)
        if wait_replicas < 0 or wait_timeout_ms < 1:
            raise ValueError("wait_replicas must be >= 0 and wait_timeout_ms >= 1")
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._closers = list(closers)
        self.max_block_ms = max_block_ms
        self.processed_ttl_ms = processed_ttl_ms
        self.server_version = server_version
        self.poll_interval_s = poll_interval_s
        self.retries = retries
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.is_fake = type(client).__module__.startswith("fakeredis")
        self._close_client = close_client
        self._closed = False
        self._commit = client.register_script(COMMIT)
        self._dead = client.register_script(DEAD_LETTER)
        self._claim = client.register_script(CLAIM_KEY)
        self._claim_many = client.register_script(CLAIM_KEYS)
        self._claim_nonces = client.register_script(CLAIM_NONCES)
        self._publish_many = client.register_script(PUBLISH_MANY)
        self._renew = client.register_script(RENEW_KEY)
        self._release = client.register_script(RELEASE_KEY)
        self._shed = client.register_script(SHED)
        self._shed_skip = client.register_script(SHED_SKIP)
        self._stream_state = client.register_script(STREAM_STATE)
        self._find_entry = client.register_script(FIND_ENTRY)

    def _translate(self, exc: BaseException) -> BusError:
        if self._closed:
            return BusClosed("the bus is closed")
        if isinstance(exc, MasterNotFoundError):  # its text ends in the sentinel client's repr
            service = str(exc).split(" : ", 1)[0]
            return BusUnavailable(f"redis unavailable: {service} (no sentinel answers, or none "
                                  "knows the service)")  # fmt: skip
        if isinstance(exc, rex.ConnectionError | rex.TimeoutError | OSError) or _not_applied(exc):
            return BusUnavailable(f"redis unavailable: {exc}")
        if isinstance(exc, rex.RedisClusterException):
            return _cluster_error(exc)
        if isinstance(exc, rex.ResponseError) and "unknown command 'SENTINEL'" in str(exc):
            return BusConfigError(f"the URL's sentinel address is a plain Redis server ({exc})")
        if isinstance(exc, rex.ResponseError) and "DB index is out of range" in str(exc):
            return BusConfigError(f"the server has no database of the URL's number ({exc})")
        return BusProtocolError(str(exc))

    async def _call(self, op: Callable[[], Awaitable[T]], *, idempotent: bool = True) -> T:
        if self._closed:
            raise BusClosed("the bus is closed")
        attempt = 0
        while True:
            try:
                return await op()
            except (rex.RedisError, rex.RedisClusterException, OSError) as exc:
                err = self._translate(exc)
                if isinstance(err, BusUnavailable):
                    await self._drop_idle_connections()
                if not isinstance(err, BusUnavailable) or not (idempotent or _not_applied(exc)):
                    raise err from exc
                if attempt >= self.retries:
                    raise err from exc
            await anyio.sleep(
                backoff_s(attempt, base_s=self.backoff_base_s, cap_s=self.backoff_cap_s)
            )
            attempt += 1

    async def _drop_idle_connections(self) -> None:
        """After a connection-level failure the server may have restarted: the pool's idle
        connections are then dead too, and a write sent on one would fail with an unknown
        outcome. Drop them so that the next command opens a fresh connection."""
        pool = getattr(self.client, "connection_pool", None)  # a cluster client manages its own
        if pool is None:
            return
        with contextlib.suppress(Exception):
            await pool.disconnect(inuse_connections=False)

    async def _durable(self, command: list[Any], script: Any = None) -> Any:
        """Run one write ``command`` (EVALSHA of ``script`` when given: ``[keys, args]``).

        With ``wait_replicas`` the command is followed by ``WAIT`` on the same connection (one
        round trip); fewer replicas than asked within ``wait_timeout_ms`` raises BusUnavailable:
        the write may be on the primary only, so its outcome is unknown, like a lost reply.
        """
        if script is not None:
            keys, args = command
            if not self.wait_replicas:
                return await script(keys=keys, args=args)
            command = ["EVALSHA", script.sha, len(keys), *keys, *args]
        elif not self.wait_replicas:
            return await self.client.execute_command(*command)
        if self.is_cluster:
            return await self._durable_on_shard(command, script)
        for _ in range(2):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.execute_command(*command)
                pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
                reply, acked = await pipe.execute(raise_on_error=False)
            if isinstance(reply, rex.NoScriptError) and script is not None:
                await self.client.script_load(script.script)  # not run: load, then send again
                continue
            return self._confirmed(reply, acked)
        raise BusProtocolError("script could not be loaded")  # pragma: no cover

    async def _durable_on_shard(self, command: list[Any], script: Any) -> Any:
        """:meth:`_durable` on a cluster: the write and its WAIT go to the shard that owns the
        command's first key, on one connection of that node. A MOVED reply (the slot moved)
        sends it again to the new owner; an ASK reply (the slot is migrating and the key is at
        the target already) sends it to the target after ``ASKING``, as redis-py does for a
        single command."""
        key_at = 3 if command[0] == "EVALSHA" else 1
        node, asking = None, False
        reply: Any = None
        acked: Any = None
        for _ in range(4):
            await self.client.initialize()  # a no-op unless the topology must be (re)discovered
            node = node or self.client.get_node_from_key(command[key_at])
            reply, acked = await self._on_node(node, command, asking)
            if isinstance(reply, rex.NoScriptError) and script is not None:
                await node.execute_command("SCRIPT", "LOAD", script.script)  # not run: send again
                continue
            if isinstance(reply, rex.MovedError | rex.AskError):
                moved = isinstance(reply, rex.MovedError)
                if moved:
                    self.client._initialize = True  # refresh the slot map
                node = None if moved else self.client.get_node(host=reply.host, port=reply.port)
                asking = node is not None
                if not moved and node is None:  # a target the slot map does not know yet
                    self.client._initialize = True
                continue
            if isinstance(reply, rex.ClusterDownError):
                self.client._initialize = True
            return self._confirmed(reply, acked)
        return self._confirmed(reply, acked)  # redirected each time: raise the last one

    async def _on_node(self, node: Any, command: list[Any], asking: bool) -> tuple[Any, Any]:
        """``command`` and its WAIT (after ``ASKING`` if ``asking``) on one connection of
        ``node``: the replies of the two."""
        from redis.asyncio.cluster import PipelineCommand

        head = [PipelineCommand(0, "ASKING")] if asking else []
        n = len(head)
        cmds = [*head, PipelineCommand(n, *command),
                PipelineCommand(n + 1, "WAIT", self.wait_replicas, self.wait_timeout_ms)]  # fmt: skip
        try:
            await node.execute_pipeline(cmds)
        except AttributeError as exc:  # the node's connection was closed under it (its writer
            if "NoneType" not in str(exc):  # is None); any other is a bug, not an outage
                raise
            self.client._initialize = True
            raise rex.ConnectionError(f"connection to {node.name} closed: {exc}") from exc
        except (rex.ConnectionError, rex.TimeoutError, OSError):
            self.client._initialize = True  # rediscover the topology on the next command
            raise
        return cmds[-2].result, cmds[-1].result

    def _confirmed(self, reply: Any, acked: Any) -> Any:
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(acked, BaseException) or int(acked) < self.wait_replicas:
            got = acked if not isinstance(acked, BaseException) else f"error: {acked}"
            raise BusUnavailable(
                f"write not confirmed by {self.wait_replicas} replica(s) within "
                f"{self.wait_timeout_ms} ms ({got}): its outcome is unknown"
            )
        return reply

    async def version(self) -> tuple[int, ...]:
        """The server version (detected once; fakeredis reports its emulated version)."""
        if self.server_version is None:
            if self.is_fake:
                self.server_version = (7, 0)
            else:
                info = await self._call(lambda: self.client.info("server"))
                text = str(info.get("redis_version", "0"))
                self.server_version = tuple(int(p) for p in text.split(".") if p.isdigit())
        return self.server_version

    async def set_group_id(self, stream: str, group: str, last_id: str) -> None:
        await self._call(lambda: self.client.xgroup_setid(stream, group, last_id))

    async def ensure_group(self, stream: str, group: str, *, start: str = "0") -> None:
        async def run() -> None:
            try:
                await self._durable(["XGROUP CREATE", stream, group, start, "MKSTREAM"])
            except rex.ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise

        await self._call(run)


def _cluster_error(exc: BaseException) -> BusError:
    """A cluster client's own error: no seed node reachable is an outage, a server that is no
    cluster node a configuration error, anything else (a command the client cannot route) a
    protocol error."""
    text = str(exc)
    if "Cluster mode is not enabled" in text:
        return BusConfigError(f"the URL's cluster nodes are not in cluster mode ({text})")
    if "cannot be connected" in text:
        return BusUnavailable(f"redis cluster unavailable: {text}")
    return BusProtocolError(text)
