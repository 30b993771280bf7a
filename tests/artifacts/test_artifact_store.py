"""Artifact manifests and the artifact store: the same behaviour on a directory and on the bus."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actors.artifacts import (
    ArtifactError,
    BusStore,
    DirectoryStore,
    Manifest,
    Sealed,
    open_store,
    seal,
    verify,
)
from actors.artifacts.store import INDEX_KEY, artifact_key
from bus import open_bus
from bus.testing import real_redis_url
from contracts import KeyRing

pytestmark = pytest.mark.anyio


def _manifest(blueprint: str = "custom") -> Manifest:
    return Manifest(kind="program", blueprint=blueprint, input_shape=(8,), output_shape=(8,),
                    dtype="float32", tensors={"state.w": (8, 8)}, parameters=("state.w",),
                    param_count=64, size=0, sha256="0" * 64)  # fmt: skip


def _sealed(ring: KeyRing, payload: bytes = b"payload-bytes") -> Sealed:
    return seal(_manifest(), payload, ring)


def test_seal_fills_checksum_size_and_signer_and_the_id_is_the_manifest_hash() -> None:
    """The sealed manifest names its signer, the payload's sha256 and size; the id hashes it."""
    import hashlib

    ring = KeyRing.generate()
    sealed = _sealed(ring)
    m = verify(sealed, ring, time.time_ns())
    assert m.signer == ring.active.id and m.size == len(b"payload-bytes")
    assert m.sha256 == hashlib.sha256(b"payload-bytes").hexdigest()
    assert sealed.id == hashlib.sha256(sealed.manifest).hexdigest()
    assert _sealed(ring).id == sealed.id  # same content, same key: same id


def test_verify_refuses_each_kind_of_tampering_with_its_reason() -> None:
    """Payload bytes, manifest bytes, signer, MAC, revoked key and size cap are each refused."""
    ring = KeyRing.generate()
    good = _sealed(ring)
    forged = dataclasses.replace(_manifest("other"), sha256=Manifest.decode(good.manifest).sha256)
    cases = {
        "checksum_mismatch": dataclasses.replace(good, payload=b"payload-bytez"),
        "manifest_changed": dataclasses.replace(good, manifest=forged.encode()),
        "unknown_signer": _sealed(KeyRing.generate()),
        "bad_signature": dataclasses.replace(good, signature=good.signature[:-4] + "0000"),
        "bad_id": dataclasses.replace(good, id="../etc"),
    }
    for reason, sealed in cases.items():
        with pytest.raises(ArtifactError) as exc:
            verify(sealed, ring, time.time_ns())
        assert exc.value.reason == reason
    with pytest.raises(ArtifactError, match="unknown_signer"):
        verify(good, ring.rotate(0.0).revoke(ring.active.id), time.time_ns())
    with pytest.raises(ArtifactError, match="too_large"):
        verify(good, ring, time.time_ns(), max_bytes=4)


def test_a_key_without_a_publishing_role_cannot_seal() -> None:
    """A trainer-only key may not sign artifacts (nor verify as their signer)."""
    trainer = KeyRing.generate(roles={"trainer"})
    with pytest.raises(ArtifactError, match="unknown_signer"):
        _sealed(trainer)


@pytest.fixture(
    params=["dir", "memory", "fakeredis", pytest.param("redis", marks=pytest.mark.redis)]
)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[DirectoryStore | BusStore]:
    """A fresh store of each backend (what a test wrote to the real Redis is removed after)."""
    if request.param == "dir":
        yield DirectoryStore(tmp_path / "artifacts")
        return
    url = real_redis_url() if request.param == "redis" else f"{request.param}://{uuid.uuid4()}"
    bus = open_bus(url)
    before = set(await bus.members(INDEX_KEY))
    yield BusStore(bus)
    if request.param == "redis":
        for i in set(await bus.members(INDEX_KEY)) - before:
            await bus.delete(*(artifact_key(i, p) for p in ("manifest", "signature", "payload")))
            await bus.client.srem(INDEX_KEY, i)  # type: ignore[attr-defined]
    await bus.close()


async def test_a_stored_artifact_comes_back_byte_for_byte(store: DirectoryStore | BusStore) -> None:
    """put then get returns the same parts; ids lists it; an unknown id is None."""
    ring = KeyRing.generate()
    sealed = _sealed(ring, payload=uuid.uuid4().bytes * 100)
    await store.put(sealed)
    await store.put(sealed)  # idempotent
    assert await store.get(sealed.id) == sealed
    assert sealed.id in await store.ids()
    assert await store.get("0" * 64) is None
    with pytest.raises(ArtifactError, match="bad_id"):
        await store.get("../../etc/passwd")


def test_open_store_picks_the_backend_from_the_url(tmp_path: Path) -> None:
    """A path or file:// URL is a directory; a bus URL is the bus; "" needs a bus."""
    assert isinstance(open_store(str(tmp_path)), DirectoryStore)
    assert isinstance(open_store(f"file://{tmp_path}"), DirectoryStore)
    assert isinstance(open_store("memory://x"), BusStore)
    with pytest.raises(ValueError, match="no artifact store"):
        open_store("")
