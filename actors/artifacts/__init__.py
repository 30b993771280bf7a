"""Blueprint artifacts: signed manifests and the content-addressed artifact store (torch-free).

Packing a module into an artifact and loading one onto a device is the torch side's
(``actors/execution/kernels.py``); caching loaded ones is ``actors/execution/kernelcache.py``.
"""

from actors.artifacts.manifest import (
    ARTIFACT_ROLES,
    ArtifactError,
    Manifest,
    Sealed,
    check_id,
    seal,
    verify,
)
from actors.artifacts.store import ArtifactStore, BusStore, DirectoryStore, open_store

__all__ = [
    "ARTIFACT_ROLES",
    "ArtifactError",
    "ArtifactStore",
    "BusStore",
    "DirectoryStore",
    "Manifest",
    "Sealed",
    "check_id",
    "open_store",
    "seal",
    "verify",
]
