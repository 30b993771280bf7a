"""The artifact store: content-addressed blueprint artifacts in a directory or in Redis.

Both backends hold the same three parts per artifact id (manifest bytes, signature, payload) and
never interpret them; :func:`actors.artifacts.manifest.verify` does, wherever they are loaded.

- :class:`DirectoryStore`: ``ROOT/ID/manifest.json``, ``ROOT/ID/signature``,
  ``ROOT/ID/payload.safetensors``; written to a temporary directory and renamed into place, so a
  reader sees a whole artifact or none. Its reads also exist synchronously (the training thread
  may read a local directory at a step boundary).
- :class:`BusStore`: the keys ``kasmina:artifact:{ID}:manifest|signature|payload`` and the set
  ``kasmina:artifacts`` of every id, through the :class:`~bus.Bus` port (the run's Redis). Keys
  are not per run: an artifact published once serves every run on that Redis.

:func:`open_store` picks one from a URL (``file:///path`` or a bare path: a directory;
``redis://``, ``fakeredis://``, ``memory://``: a bus).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from actors.artifacts.manifest import ID_RE, Sealed, check_id
from bus import Bus, open_bus

__all__ = ["INDEX_KEY", "ArtifactStore", "BusStore", "DirectoryStore", "artifact_key", "open_store"]

INDEX_KEY = "kasmina:artifacts"
_PARTS = ("manifest", "signature", "payload")
_FILES = {"manifest": "manifest.json", "signature": "signature", "payload": "payload.safetensors"}


def artifact_key(artifact_id: str, part: str) -> str:
    """The Redis key of one part of an artifact."""
    if part not in _PARTS:
        raise ValueError(f"unknown artifact part {part!r}")
    return f"kasmina:artifact:{{{check_id(artifact_id)}}}:{part}"


class ArtifactStore(Protocol):
    """Where artifacts live; ``get`` of an unknown id is None."""

    async def put(self, sealed: Sealed) -> None: ...

    async def get(self, artifact_id: str) -> Sealed | None: ...

    async def ids(self) -> list[str]: ...


class DirectoryStore:
    """Artifacts as files under ``root`` (created on first write)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def put_sync(self, sealed: Sealed) -> None:
        """Write the artifact atomically (an id already present is left as it is)."""
        final = self.root / check_id(sealed.id)
        if final.is_dir():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{sealed.id[:12]}-", dir=self.root))
        try:
            parts = {"manifest": sealed.manifest, "signature": sealed.signature.encode(),
                     "payload": sealed.payload}  # fmt: skip
            for part, data in parts.items():
                with open(tmp / _FILES[part], "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, final)
        except OSError:
            if final.is_dir():  # a rival wrote the same id first: same content
                return
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def get_sync(self, artifact_id: str) -> Sealed | None:
        """The artifact's parts, or None when the id is not stored."""
        folder = self.root / check_id(artifact_id)
        try:
            data = {part: (folder / name).read_bytes() for part, name in _FILES.items()}
        except FileNotFoundError:
            return None
        return Sealed(artifact_id, data["manifest"], data["signature"].decode(), data["payload"])

    def ids_sync(self) -> list[str]:
        """Every stored id, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and ID_RE.match(p.name))

    async def put(self, sealed: Sealed) -> None:
        """See :meth:`put_sync`."""
        self.put_sync(sealed)

    async def get(self, artifact_id: str) -> Sealed | None:
        """See :meth:`get_sync`."""
        return self.get_sync(artifact_id)

    async def ids(self) -> list[str]:
        """See :meth:`ids_sync`."""
        return self.ids_sync()


class BusStore:
    """Artifacts as values on the bus (Redis), indexed by the set :data:`INDEX_KEY`."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def put(self, sealed: Sealed) -> None:
        """Write the parts, then add the id to the index (a reader never sees a partial one)."""
        parts = {"manifest": sealed.manifest, "signature": sealed.signature.encode(),
                 "payload": sealed.payload}  # fmt: skip
        for part, data in parts.items():
            await self.bus.set_value(artifact_key(sealed.id, part), data)
        await self.bus.register(INDEX_KEY, sealed.id)

    async def get(self, artifact_id: str) -> Sealed | None:
        """The artifact's parts, or None when any is missing."""
        data = {p: await self.bus.get_value(artifact_key(artifact_id, p)) for p in _PARTS}
        manifest, signature, payload = data["manifest"], data["signature"], data["payload"]
        if manifest is None or signature is None or payload is None:
            return None
        return Sealed(artifact_id, manifest, signature.decode(errors="replace"), payload)

    async def ids(self) -> list[str]:
        """Every indexed id that is a well-formed id, sorted."""
        return sorted(i for i in await self.bus.members(INDEX_KEY) if ID_RE.match(i))


def open_store(url: str, bus: Bus | None = None) -> DirectoryStore | BusStore:
    """The store ``url`` names: ``file:///path`` or a bare path is a directory; ``redis://``,
    ``fakeredis://``, ``memory://`` (any bus URL) is that bus; ``""`` is ``bus`` itself (the
    run's own Redis). The caller closes a bus this opened (``store.bus``)."""
    if not url:
        if bus is None:
            raise ValueError("no artifact store: give a directory, a bus URL or a bus")
        return BusStore(bus)
    scheme = urlsplit(url).scheme
    if scheme == "file":
        return DirectoryStore(urlsplit(url).path)
    if len(scheme) <= 1:  # a path (a one-letter scheme is a drive letter)
        return DirectoryStore(url)
    return BusStore(open_bus(url))
