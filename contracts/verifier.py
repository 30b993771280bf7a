"""Verifying envelope v2 frames on receipt (``docs/wire.md`` §4–5): size, shape, key, MAC before
any parse, run and stream binding, freshness, kind and role, nonce. The frame format and sealing
are in :mod:`contracts.envelope`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import cast

from contracts.envelope import (
    _BEFORE_MEMORY,
    DEFAULT_MAX_BYTES,
    Envelope,
    _compare_digest,
    _hmac_sha256,
    mac_input,
    stream_address,
    unpack,
)
from contracts.errors import (
    BadSignature,
    ContractError,
    ExpiredKey,
    ForbiddenKind,
    FromFuture,
    Replayed,
    RevokedKey,
    Stale,
    UnknownKey,
    UnknownKind,
    WrongDestination,
    WrongRun,
)
from contracts.keys import Key, KeyRing
from contracts.nonce import Claim, NonceGuard
from contracts.registry import REGISTRY, Registry
from contracts.roles import SIGNERS_BY_STREAM, allowed, stream_refusal

__all__ = ["Verifier"]

_FOREVER = 2**63  # past any valid timestamp (``envelope``: ts_ns < 2**63)
_ADMITTED = frozenset({"new", "redelivered"})  # claims of a message let through (if not too old)
_Item = tuple[str, str, int]  # what the nonce guard is asked: nonce, token, deadline (Unix ms)


class Verifier:
    """Verifies frames: size, shape, key, MAC (before any parse), binding, freshness, kind, nonce."""

    __slots__ = (
        "_clock",
        "_keyed",
        "_max_bytes",
        "_nonce",
        "_registry",
        "_replay",
        "_ring",
        "_tolerance_ns",
    )

    def __init__(
        self,
        ring: KeyRing,
        *,
        nonce_guard: NonceGuard | None = None,
        clock: Callable[[], int] = time.time_ns,
        tolerance_s: float = 60.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        replay: bool = False,
        registry: Registry = REGISTRY,
    ) -> None:
        self._ring = ring
        self._nonce = nonce_guard
        self._clock = clock
        self._tolerance_ns = int(tolerance_s * 1e9)
        self._max_bytes = max_bytes
        self._replay = replay
        self._registry = registry
        # key id -> (key, the registered kinds its roles may sign, the time its validity ends)
        self._keyed: dict[str, tuple[Key, frozenset[str], int]] = {}

    @property
    def ring(self) -> KeyRing:
        """The key ring in use."""
        return self._ring

    @property
    def tolerance_s(self) -> float:
        """How far a live message's timestamp may be from this clock."""
        return self._tolerance_ns / 1e9

    def with_ring(self, ring: KeyRing) -> Verifier:
        """The same verifier over another key ring (after a rotation)."""
        twin = Verifier.__new__(Verifier)
        for name in Verifier.__slots__:
            setattr(twin, name, getattr(self, name))
        twin._ring = ring
        twin._keyed = {}
        return twin

    def with_replay(self, replay: bool = True) -> Verifier:
        """The same verifier in replay mode: MAC, binding, roles and key validity at each
        message's own timestamp checked; freshness and nonces skipped."""
        twin = self.with_ring(self._ring)
        twin._replay = replay
        return twin

    def open(self, frame: bytes, *, stream: str) -> Envelope:
        """Check everything but the nonce for a frame read from the stream key ``stream``; return
        the envelope or raise a ContractError (which carries the claimed id)."""
        env = unpack(frame, max_bytes=self._max_bytes)
        keyed = self._keyed.get(env.key_id) or self._key_of(env)
        key, kinds, until = keyed
        now = self._clock()
        # a key verifies what was stamped while it was valid (replay too), and live only until
        # it expires; a revoked key is valid at no time (``Key.valid_at``: before ``until``)
        if not env.ts_ns < until or (not self._replay and not now < until):
            raise _key_refusal(env, key)
        if not _mac_valid(key, env):
            raise BadSignature(f"message {env.id}").claim(
                env.id, env.kind, env.sender, verified=False
            )
        address = stream_address(stream)
        if (env.run, env.to) != address:
            raise _address_refusal(env, *address)
        tolerance = self._tolerance_ns
        if not self._replay and not now - tolerance <= env.ts_ns <= now + tolerance:
            raise _time_refusal(env, now, tolerance)
        if env.kind not in kinds:
            raise _kind_refusal(env, key, self._registry)
        if env.to in SIGNERS_BY_STREAM:  # the run's own logs: by role and name, not kind alone
            why = stream_refusal(key.roles, env.to, env.sender)
            if why:
                raise ForbiddenKind(f"key {env.key_id!r}: {why}").claim(
                    env.id, env.kind, env.sender, verified=True
                )
        return env

    def signed_by_refused_key(self, frame: bytes, *, stream: str) -> bool:
        """Whether ``frame``, refused for its key (revoked, say), carries a valid MAC under that
        key: a message its holder signed (the run's own past, or a forgery by whoever leaked
        it), not a writer's garbage under a key id it copied."""
        try:
            env = unpack(frame, max_bytes=self._max_bytes)
        except ContractError:
            return False
        key = self._ring.get(env.key_id)
        if key is None or (env.run, env.to) != stream_address(stream):
            return False
        return _mac_valid(key, env)

    def speaks_for(self, env: Envelope, actor: str) -> bool:
        """Whether ``env`` (opened by this verifier) may speak for ``actor``: signed by a key
        with the ``actor`` role (the actor processes sign for each of their actors), or in
        ``actor``'s own name (a trainer rank's records of itself)."""
        key = self._ring.get(env.key_id)
        return key is not None and ("actor" in key.roles or env.sender == actor)

    def _key_of(self, env: Envelope) -> tuple[Key, frozenset[str], int]:
        """The ring's key that ``env`` names, the registered kinds it may sign and the time its
        validity ends (0 when revoked), remembered per key id; UnknownKey when there is none."""
        key = self._ring.get(env.key_id)
        if key is None:
            raise UnknownKey(f"key id {env.key_id!r}").claim(
                env.id, env.kind, env.sender, verified=False
            )
        kinds = frozenset(k for k in allowed(key.roles) if k in self._registry)
        until = 0 if key.revoked_ns is not None else key.expires_ns
        keyed = self._keyed[env.key_id] = (key, kinds, _FOREVER if until is None else until)
        return keyed

    def deadline_ms(self, env: Envelope) -> int:
        """The message's deadline (Unix ms, rounded up): its timestamp plus the clock tolerance.
        Its nonce is kept until then; a nonce store refuses it as late from then on."""
        return -(-(env.ts_ns + self._tolerance_ns) // 1_000_000)

    def _judge(self, env: Envelope, claim: Claim, since_ns: int) -> Envelope | ContractError:
        """The envelope, or the error for the nonce guard's ``claim`` about it."""
        if claim == "replayed":
            return Replayed(f"message id {env.id} already seen").claim(
                env.id, env.kind, env.sender, verified=True
            )
        if claim == "late":
            return Stale("past its deadline by the nonce store's clock").claim(
                env.id, env.kind, env.sender, verified=True
            )
        if env.ts_ns < since_ns:
            return Replayed(_BEFORE_MEMORY).claim(env.id, env.kind, env.sender, verified=True)
        return env

    def _open_all(
        self, frames: Sequence[tuple[bytes, str, str]], scope: str
    ) -> tuple[list[Envelope | ContractError], list[int], list[_Item]]:
        """``open`` each frame; also the indexes of those the nonce guard is to judge and what
        it is asked for each: ``(nonce, token, deadline_ms)``."""
        results: list[Envelope | ContractError] = []
        add = results.append
        open_ = self.open
        for frame, stream, _ in frames:
            try:
                add(open_(frame, stream=stream))
            except ContractError as exc:
                add(exc)
        if self._replay or self._nonce is None:
            return results, [], []
        admit = [i for i, r in enumerate(results) if type(r) is Envelope]
        # all of them, in the common case: no second list
        opened = cast(
            list[Envelope], results if len(admit) == len(results) else [results[i] for i in admit]
        )
        tolerance = self._tolerance_ns
        pre = f"{scope}|" if scope else ""
        # deadline_ms, inline
        items = [
            (pre + env.id, frames[i][2] or env.id, -(-(env.ts_ns + tolerance) // 1_000_000))
            for i, env in zip(admit, opened, strict=True)
        ]
        return results, admit, items

    async def verify_many(
        self, frames: Sequence[tuple[bytes, str, str]], *, scope: str = ""
    ) -> list[Envelope | ContractError]:
        """``verify`` for a batch of ``(frame, stream, token)``: one nonce round trip for all.

        Returns, per frame, the envelope or the ContractError that rejected it (never raises one).
        """
        results, admit, items = self._open_all(frames, scope)
        if not admit or self._nonce is None:
            return results
        try:
            claims = await self._nonce.admit_many(items)
        except ContractError as exc:
            for index in admit:
                results[index] = exc
            return results
        since = self._nonce.since_ns
        for index, claim in zip(admit, claims, strict=True):
            env = cast(Envelope, results[index])
            if claim not in _ADMITTED or env.ts_ns < since:  # else ``_judge`` gives ``env``
                results[index] = self._judge(env, claim, since)
        return results

    async def verify(
        self, frame: bytes, *, stream: str, token: str = "", scope: str = ""
    ) -> Envelope:
        """``open`` plus the nonce check (live mode only).

        ``token`` identifies this delivery's stream entry: seeing the same message id again with the
        same token is a redelivery (allowed; dedupe handles effects), with another token a replay.
        ``scope`` names the receiver (its consumer group): one message may be fanned out to several
        inboxes, and a replay is judged per receiver. The nonce is kept until the message's
        deadline (``deadline_ms``).
        """
        env = self.open(frame, stream=stream)
        if not self._replay and self._nonce is not None:
            nonce = f"{scope}|{env.id}" if scope else env.id
            claim = await self._nonce.admit(nonce, token or env.id, self.deadline_ms(env))
            judged = self._judge(env, claim, self._nonce.since_ns)
            if isinstance(judged, ContractError):
                raise judged
        return env


def _mac_valid(key: Key, env: Envelope) -> bool:
    """Whether ``env``'s MAC is the one ``key`` gives its fields."""
    expected = _hmac_sha256(
        key.secret,
        mac_input(env.v, env.kind, env.id, env.sender, env.key_id, env.ts_ns,
                  env.causation_id, env.run, env.to, env.body),
    )  # fmt: skip
    return _compare_digest(expected, env.sig)


# Refusals, built off the hot path: each is called only once a check has failed.
def _key_refusal(env: Envelope, key: Key) -> ContractError:
    """A key that is not valid for ``env``: revoked, or retired (at its stamp or now)."""
    if key.revoked_ns is not None:
        error: ContractError = RevokedKey(f"key id {env.key_id!r} revoked")
    else:
        error = ExpiredKey(f"key id {env.key_id!r} retired")
    return error.claim(env.id, env.kind, env.sender, verified=False)


def _address_refusal(env: Envelope, run: str, to: str) -> ContractError:
    """A verified frame read from a stream of another run or another destination."""
    if env.run != run:
        error: ContractError = WrongRun(f"signed for run {env.run!r}, read in run {run!r}")
    else:
        error = WrongDestination(f"signed for {env.to!r}, read from {to!r}")
    return error.claim(env.id, env.kind, env.sender, verified=True)


def _time_refusal(env: Envelope, now: int, tolerance_ns: int) -> ContractError:
    """A live frame stamped further than ``tolerance_ns`` from ``now``."""
    if env.ts_ns < now - tolerance_ns:
        stale = Stale(f"{(now - env.ts_ns) / 1e9:.1f} s old")
        stale.ts_ns = env.ts_ns
        error: ContractError = stale
    else:
        error = FromFuture(f"{(env.ts_ns - now) / 1e9:.1f} s ahead")
    return error.claim(env.id, env.kind, env.sender, verified=True)


def _kind_refusal(env: Envelope, key: Key, registry: Registry) -> ContractError:
    """A kind the registry does not know, or one the key's roles may not sign."""
    if env.kind not in registry:
        error: ContractError = UnknownKind(env.kind)
    else:
        error = ForbiddenKind(
            f"key {env.key_id!r} ({','.join(sorted(key.roles))}) may not sign {env.kind!r}"
        )
    return error.claim(env.id, env.kind, env.sender, verified=True)
