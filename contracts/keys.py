"""The key ring: HMAC keys with ids, several active at once, rotation with a grace period.

Key file format (JSON, written with mode 0600 by ``kasmina keys generate``)::

    {"format": "kasmina-keys", "version": 1, "active": "k-…",
     "keys": [{"id": "k-…", "secret": "<base64, 32 bytes>", "created_ns": 0, "expires_ns": null,
               "revoked_ns": null, "roles": ["controller", "trainer", "actor", "operator"]}]}

``active`` names the key that signs. A key verifies a message only if the message was stamped while
the key was valid: a rotated-out key gets ``expires_ns`` = rotation time + grace and verifies nothing
stamped at or after it, live or in replay (old logs still verify until ``prune`` drops the key). A
revoked key (``revoked_ns`` set, by ``kasmina keys revoke``) verifies nothing at all: its secret is
presumed known to someone else, who can stamp any time. ``roles`` limits what a key may sign
(``contracts.roles``); a key without the field (older files) holds every role.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from contracts.roles import ROLES

MIN_SECRET_BYTES = 32
ENV_FILE = "KASMINA_KEYS"
ENV_INLINE = "KASMINA_KEY"  # "key_id:base64secret[,key_id:base64secret…]", first one signs


class KeyRingError(ValueError):
    """A key file or key specification is unusable."""


@dataclass(frozen=True, slots=True)
class Key:
    """One HMAC key."""

    id: str
    secret: bytes
    created_ns: int = 0
    expires_ns: int | None = None
    revoked_ns: int | None = None
    roles: frozenset[str] = ROLES

    def valid_at(self, now_ns: int) -> bool:
        """True if the key verifies a message stamped (or checked) at ``now_ns``."""
        if self.revoked_ns is not None:
            return False
        return self.expires_ns is None or now_ns < self.expires_ns


def _new_key(now_ns: int) -> Key:
    return Key(id=f"k-{secrets.token_hex(6)}", secret=secrets.token_bytes(32), created_ns=now_ns)


class KeyRing:
    """An immutable set of keys with one active (signing) key."""

    __slots__ = ("_active", "_keys")

    def __init__(self, keys: Iterable[Key], active: str) -> None:
        table: dict[str, Key] = {}
        for key in keys:
            if not key.id or len(key.id) > 64:
                raise KeyRingError("key ids must be 1-64 characters")
            if len(key.secret) < MIN_SECRET_BYTES:
                raise KeyRingError(f"key {key.id!r}: secret shorter than {MIN_SECRET_BYTES} bytes")
            if key.id in table:
                raise KeyRingError(f"duplicate key id {key.id!r}")
            unknown = set(key.roles) - ROLES
            if unknown or not key.roles:
                raise KeyRingError(
                    f"key {key.id!r}: roles must be a non-empty subset of {sorted(ROLES)}"
                )
            table[key.id] = key
        if active not in table:
            raise KeyRingError(f"active key {active!r} is not in the ring")
        if table[active].expires_ns is not None or table[active].revoked_ns is not None:
            raise KeyRingError(f"active key {active!r} must not expire or be revoked")
        self._keys = table
        self._active = active

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def generate(cls, now_ns: int | None = None, roles: Iterable[str] | None = None) -> KeyRing:
        """A ring with one fresh random key (every role unless ``roles`` says otherwise)."""
        key = _new_key(time.time_ns() if now_ns is None else now_ns)
        if roles is not None:
            key = replace(key, roles=frozenset(roles))
        return cls([key], key.id)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeyRing:
        """Parse the key file structure (docs/wire.md §4: anything else refuses the file)."""
        if not isinstance(data, Mapping):
            raise KeyRingError("not a kasmina key file (not a JSON object)")
        version = data.get("version")
        if data.get("format") != "kasmina-keys" or type(version) is not int or version != 1:
            raise KeyRingError("not a kasmina key file (format/version)")
        items, active = data.get("keys"), data.get("active")
        if not isinstance(items, list) or type(active) is not str:
            raise KeyRingError("malformed key file: needs a list of keys and the active key's id")
        return cls([_key_of(item) for item in items], active)

    @classmethod
    def load(cls, path: str | Path) -> KeyRing:
        """Read a key file."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise KeyRingError(f"cannot read key file {path}: {exc.strerror}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KeyRingError(f"key file {path} is not JSON: {exc}") from exc
        return cls.from_json(data)

    @classmethod
    def from_inline(cls, spec: str) -> KeyRing:
        """Parse ``id:base64secret[,id:base64secret…]``; the first key signs."""
        keys = []
        for part in spec.split(","):
            kid, sep, secret = part.strip().partition(":")
            if not sep:
                raise KeyRingError("inline keys look like id:base64secret")
            try:
                keys.append(Key(id=kid, secret=base64.b64decode(secret, validate=True)))
            except (ValueError, binascii.Error) as exc:
                raise KeyRingError(f"inline key {kid!r}: bad base64") from exc
        if not keys:
            raise KeyRingError("no keys given")
        return cls(keys, keys[0].id)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KeyRing:
        """Load from ``$KASMINA_KEYS`` (a file) or ``$KASMINA_KEY`` (inline)."""
        env = os.environ if env is None else env
        if env.get(ENV_FILE):
            return cls.load(env[ENV_FILE])
        if env.get(ENV_INLINE):
            return cls.from_inline(env[ENV_INLINE])
        raise KeyRingError(
            f"no keys: pass --keys FILE or set ${ENV_FILE} (kasmina keys generate -o FILE)"
        )

    # -- use ----------------------------------------------------------------------------------
    @property
    def active(self) -> Key:
        """The signing key."""
        return self._keys[self._active]

    def get(self, key_id: str) -> Key | None:
        """The key with this id, or None."""
        return self._keys.get(key_id)

    def ids(self) -> list[str]:
        """All key ids (sorted)."""
        return sorted(self._keys)

    def rotate(self, grace_s: float, now_ns: int | None = None) -> KeyRing:
        """A new ring whose new key signs; the old active key verifies for ``grace_s`` more."""
        now = time.time_ns() if now_ns is None else now_ns
        fresh = replace(_new_key(now), roles=self.active.roles)  # signs what the old one did
        old = [
            replace(k, expires_ns=now + int(grace_s * 1e9)) if k.id == self._active else k
            for k in self._keys.values()
        ]
        # expired keys stay in the ring: they never verify live, but replay of old logs needs them
        return KeyRing([*old, fresh], fresh.id)

    def prune(self, before_ns: int) -> KeyRing:
        """A ring without the revoked keys and those that expired before ``before_ns`` (logs
        signed by them stop verifying)."""
        kept = [
            k
            for k in self._keys.values()
            if k.revoked_ns is None and (k.expires_ns is None or k.expires_ns >= before_ns)
        ]
        return KeyRing(kept, self._active)

    def revoke(self, key_id: str, now_ns: int | None = None) -> KeyRing:
        """A ring in which ``key_id`` verifies nothing any more (rotate first if it signs)."""
        if key_id not in self._keys:
            raise KeyRingError(f"no key {key_id!r} in the ring")
        if key_id == self._active:
            raise KeyRingError(f"{key_id!r} is the signing key: rotate before revoking it")
        now = time.time_ns() if now_ns is None else now_ns
        keys = [replace(k, revoked_ns=now) if k.id == key_id else k for k in self._keys.values()]
        return KeyRing(keys, self._active)

    def members(self) -> list[Key]:
        """Every key of the ring, sorted by id."""
        return [self._keys[k] for k in sorted(self._keys)]

    def to_json(self) -> dict[str, Any]:
        """The key file structure."""
        return {
            "format": "kasmina-keys",
            "version": 1,
            "active": self._active,
            "keys": [
                {
                    "id": k.id,
                    "secret": base64.b64encode(k.secret).decode("ascii"),
                    "created_ns": k.created_ns,
                    "expires_ns": k.expires_ns,
                    "revoked_ns": k.revoked_ns,
                    "roles": sorted(k.roles),
                }
                for k in self._keys.values()
            ],
        }

    def save(self, path: str | Path) -> None:
        """Write the key file atomically with mode 0600.

        The secret goes to a fresh temporary file of the target's directory, created exclusively
        (``mkstemp``: ``O_CREAT | O_EXCL``, so no file or symlink planted there beforehand is
        followed or reused) and renamed over the target; a symlink at the target itself is
        refused rather than followed."""
        target = Path(path)
        if target.is_symlink():
            raise KeyRingError(f"{target} is a symbolic link: refusing to write keys through it")
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.to_json(), fh, indent=2)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _key_of(item: object) -> Key:
    """One entry of a key file's ``keys``, with the types docs/wire.md §4 gives."""
    if not isinstance(item, Mapping) or type(item.get("id")) is not str:
        raise KeyRingError("malformed key file: each key is an object with a string id")
    kid, secret = item["id"], item.get("secret")
    try:
        raw = base64.b64decode(secret, validate=True) if type(secret) is str else None
    except (ValueError, binascii.Error):
        raw = None
    if raw is None:
        raise KeyRingError(f"key {kid!r}: the secret must be standard base64 text")
    return Key(
        id=kid,
        secret=raw,
        created_ns=_stamp(item, "created_ns", kid) or 0,
        expires_ns=_stamp(item, "expires_ns", kid),
        revoked_ns=_stamp(item, "revoked_ns", kid),
        roles=_roles(item["roles"]) if "roles" in item else ROLES,
    )


def _stamp(item: Mapping[str, Any], name: str, kid: str) -> int | None:
    """An optional nanosecond stamp of a key entry: absent or null is None, else an integer."""
    value = item.get(name)
    if value is not None and (type(value) is not int or value < 0):
        raise KeyRingError(f"key {kid!r}: {name} must be a non-negative integer or null")
    return value


def _roles(value: object) -> frozenset[str]:
    """The ``roles`` of a key file entry that has the field (absent means every role)."""
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        raise KeyRingError("roles must be a list of role names")
    return frozenset(value)


#: Roles whose keys may sign a recording (the actors' processes, or an operator at the CLI).
RECORDING_ROLES = frozenset({"actor", "operator"})


def recording_secret(ring: KeyRing, key_id: str, at_ns: int) -> bytes | None:
    """The secret that checks a recording signed by ``key_id`` at ``at_ns``, or None when the
    ring does not trust that key for it (unknown, revoked, expired then, or without the role)."""
    key = ring.get(key_id)
    if key is None or not key.valid_at(at_ns) or not key.roles & RECORDING_ROLES:
        return None
    return key.secret
