"""Emergency checkpoints: written atomically (tmp + fsync + os.replace), read with weights_only."""

from __future__ import annotations

import io
import os
from typing import Any

import torch


def write_atomic(payload: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Serialise ``payload`` to ``path`` so that a reader sees the old file or the whole new one."""
    target = os.fspath(path)
    buf = io.BytesIO()
    torch.save(payload, buf)
    tmp = f"{target}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    directory = os.path.dirname(os.path.abspath(target))
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_checkpoint(path: str | os.PathLike[str], *, device: str = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`write_atomic` (``weights_only=True``: no code runs)."""
    payload = torch.load(os.fspath(path), map_location=device, weights_only=True)
    if not isinstance(payload, dict):
        raise ValueError("checkpoint is not a mapping")
    return payload
