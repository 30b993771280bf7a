"""Artifact manifests: what a blueprint artifact holds, signed with a key of the ring.

An artifact is a payload (a safetensors file: the tensors of a ``torch.export`` program or of a
blueprint's ``weights_only`` state) and a manifest (canonical JSON: kind, blueprint, shapes,
dtype, parameter count, the payload's sha256 and size, and the id of the key that signed it).
The artifact id is the sha256 of the manifest bytes, so an id pins the manifest and, through its
checksum, the payload. The manifest's MAC is HMAC-SHA256 over a domain tag and those bytes.

:func:`verify` checks in this order and parses nothing before the MAC passes: sizes, id against
the manifest bytes (``manifest_changed``), signer in the ring with a role that may publish
(``unknown_signer``), MAC (``bad_signature``), then the payload's size and sha256
(``checksum_mismatch``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from contracts import KeyRing

__all__ = [
    "ARTIFACT_ROLES",
    "ID_RE",
    "KINDS",
    "ArtifactError",
    "Manifest",
    "Sealed",
    "check_id",
    "seal",
    "verify",
]

FORMAT = "kasmina-artifact"
VERSION = 1
KINDS = ("program", "weights")
ID_RE = re.compile(r"^[0-9a-f]{64}$")
#: roles whose keys may sign an artifact (a person at the CLI, or the run's actor processes)
ARTIFACT_ROLES = frozenset({"operator", "actor"})
MAX_MANIFEST_BYTES = 256 * 1024
_DOMAIN = b"kasmina-artifact-v1\x00"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class ArtifactError(ValueError):
    """An artifact is missing, malformed or fails its checks; ``reason`` is a stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"artifact refused ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Manifest:
    """What an artifact holds. Shapes exclude the batch dimension."""

    kind: str  # "program" (torch.export) or "weights" (a registered blueprint's state)
    blueprint: str
    input_shape: tuple[int, ...]  # what the seed reads, one example
    output_shape: tuple[int, ...]  # the delta it returns, one example
    dtype: str  # e.g. "float32"
    tensors: dict[str, tuple[int, ...]]  # every tensor of the payload and its shape
    parameters: tuple[str, ...]  # the trainable ones among them
    param_count: int
    size: int  # payload bytes
    sha256: str  # of the payload
    signer: str = ""  # id of the key that signed the manifest
    params: dict[str, float] = field(default_factory=dict)  # blueprint parameters (weights)
    reads_input: bool = False
    convex_ok: bool = True

    def encode(self) -> bytes:
        """The canonical bytes (sorted keys, no spaces): what is hashed and signed."""
        body: dict[str, Any] = {"format": FORMAT, "version": VERSION, **asdict(self)}
        return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    @staticmethod
    def decode(raw: bytes) -> Manifest:
        """Parse manifest bytes (already authenticated); ArtifactError ``malformed`` if odd."""
        try:
            data = json.loads(raw)
            if data.pop("format") != FORMAT or data.pop("version") != VERSION:
                raise ValueError("not a kasmina-artifact manifest of version 1")
            m = Manifest(
                kind=str(data["kind"]),
                blueprint=str(data["blueprint"]),
                input_shape=_shape(data["input_shape"]),
                output_shape=_shape(data["output_shape"]),
                dtype=str(data["dtype"]),
                tensors={str(k): _shape(v) for k, v in dict(data["tensors"]).items()},
                parameters=tuple(str(p) for p in data["parameters"]),
                param_count=int(data["param_count"]),
                size=int(data["size"]),
                sha256=str(data["sha256"]),
                signer=str(data["signer"]),
                params={str(k): float(v) for k, v in dict(data["params"]).items()},
                reads_input=bool(data["reads_input"]),
                convex_ok=bool(data["convex_ok"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ArtifactError("malformed", f"manifest: {exc}") from None
        m.check()
        return m

    def check(self) -> None:
        """Field sanity: ArtifactError ``malformed`` naming the first bad field."""
        problems = [
            (self.kind not in KINDS, f"kind {self.kind!r} (expected one of {KINDS})"),
            (not _NAME_RE.match(self.blueprint), f"blueprint name {self.blueprint!r}"),
            (not ID_RE.match(self.sha256), "sha256 is not 64 lowercase hex digits"),
            (self.size < 0 or self.param_count < 0, "negative size or parameter count"),
            (not set(self.parameters) <= set(self.tensors), "parameters not among the tensors"),
            (not all(math.isfinite(v) for v in self.params.values()), "non-finite parameter"),
        ]
        for bad, what in problems:
            if bad:
                raise ArtifactError("malformed", f"manifest: {what}")


def _shape(value: Any) -> tuple[int, ...]:
    dims = tuple(int(d) for d in value)
    if any(d < 0 for d in dims):
        raise ValueError(f"negative dimension in {dims}")
    return dims


@dataclass(frozen=True)
class Sealed:
    """An artifact as stored: id, manifest bytes, signature (``SIGNER:MAC-HEX``), payload."""

    id: str
    manifest: bytes
    signature: str
    payload: bytes

    @property
    def nbytes(self) -> int:
        """Bytes stored."""
        return len(self.manifest) + len(self.signature) + len(self.payload)


def check_id(artifact_id: str) -> str:
    """``artifact_id`` if it is 64 lowercase hex digits, else ArtifactError ``bad_id``."""
    if not isinstance(artifact_id, str) or not ID_RE.match(artifact_id):
        raise ArtifactError("bad_id", f"{artifact_id!r} is not an artifact id (64 hex digits)")
    return artifact_id


def _mac(secret: bytes, manifest: bytes) -> str:
    return hmac.digest(secret, _DOMAIN + manifest, "sha256").hex()


def seal(manifest: Manifest, payload: bytes, ring: KeyRing) -> Sealed:
    """Sign ``manifest`` (its checksum and size set from ``payload``) with the ring's active
    key; the key must hold a role of :data:`ARTIFACT_ROLES`."""
    key = ring.active
    if not key.roles & ARTIFACT_ROLES:
        raise ArtifactError(
            "unknown_signer",
            f"key {key.id!r} may not sign artifacts: it needs one of {sorted(ARTIFACT_ROLES)}",
        )
    m = Manifest(
        **{
            **asdict(manifest),
            "sha256": hashlib.sha256(payload).hexdigest(),
            "size": len(payload),
            "signer": key.id,
        }
    )
    m.check()
    raw = m.encode()
    return Sealed(
        hashlib.sha256(raw).hexdigest(), raw, f"{key.id}:{_mac(key.secret, raw)}", payload
    )


def verify(sealed: Sealed, ring: KeyRing, now_ns: int, *, max_bytes: int | None = None) -> Manifest:
    """The artifact's manifest once every check passes (module docstring), else ArtifactError."""
    check_id(sealed.id)
    if len(sealed.manifest) > MAX_MANIFEST_BYTES:
        raise ArtifactError("malformed", f"manifest of {len(sealed.manifest)} bytes")
    if max_bytes is not None and len(sealed.payload) > max_bytes:
        raise ArtifactError("too_large", f"payload of {len(sealed.payload)} > {max_bytes} bytes")
    if not hmac.compare_digest(hashlib.sha256(sealed.manifest).hexdigest(), sealed.id):
        raise ArtifactError("manifest_changed", f"manifest bytes do not hash to {sealed.id}")
    signer, _, mac = sealed.signature.rpartition(":")
    key = ring.get(signer)
    if key is None or not key.valid_at(now_ns) or not key.roles & ARTIFACT_ROLES:
        raise ArtifactError("unknown_signer", f"signer {signer!r} is not a trusted publisher")
    if not hmac.compare_digest(_mac(key.secret, sealed.manifest), mac):
        raise ArtifactError("bad_signature", f"the manifest's MAC does not verify ({signer})")
    manifest = Manifest.decode(sealed.manifest)
    if manifest.signer != signer:
        raise ArtifactError("bad_signature", f"signed by {signer!r}, names {manifest.signer!r}")
    digest = hashlib.sha256(sealed.payload).hexdigest()
    if len(sealed.payload) != manifest.size or not hmac.compare_digest(digest, manifest.sha256):
        raise ArtifactError(
            "checksum_mismatch",
            f"payload sha256 {digest[:12]}… != manifest {manifest.sha256[:12]}…",
        )
    return manifest
