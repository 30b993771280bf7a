"""Checkpoint files: tensors as safetensors, everything else as JSON metadata; no pickle at all.

A checkpoint is one safetensors file. Its tensors are the payload's tensors, named by their path
in the payload (``host/layer1.weight``, ``slots/l1.s0/seed/down.weight``…); its header metadata
holds one entry, ``kasmina``: the payload as JSON with each tensor replaced by a reference to its
name. Reading one parses a length-prefixed JSON header and copies raw bytes: no code can run, no
object other than tensors, numbers, strings, lists and mappings can come back.

Files are written atomically (tmp + fsync + ``os.replace`` + directory fsync), so a reader sees
the old file or the whole new one. A file written by ``torch.save`` (an older Kasmina's pickle
checkpoint) is refused with :class:`CheckpointError` saying so.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

__all__ = ["FORMAT", "CheckpointError", "decode", "encode", "read_checkpoint", "write_atomic"]

FORMAT = "kasmina-checkpoint/1"  # the metadata's format tag
META_KEY = "kasmina"
_TENSOR, _TUPLE, _INTKEYS = "__tensor__", "__tuple__", "__intkeys__"
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive, a legacy pickle stream


class CheckpointError(ValueError):
    """The file is not a Kasmina checkpoint this version can read (nothing was loaded)."""


# -- encoding ------------------------------------------------------------------------------------
def encode(payload: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """Split ``payload`` into named tensors and the JSON that refers to them."""
    tensors: dict[str, torch.Tensor] = {}
    meta = {"format": FORMAT, "payload": _to_json(payload, "", tensors)}
    return tensors, json.dumps(meta, separators=(",", ":"))


def _to_json(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        return _tensor_ref(value, path, tensors)
    if isinstance(value, dict):
        return _mapping_json(value, path, tensors)
    if isinstance(value, tuple):
        return {_TUPLE: [_to_json(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_to_json(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"checkpoint value at {path!r} is a {type(value).__name__}, not storable")


def _tensor_ref(value: torch.Tensor, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A CPU copy of ``value`` stored under a name of its own; the reference to it."""
    name = path or "tensor"
    while name in tensors:  # a key with a "/" could spell another tensor's path
        name += "#"
    tensors[name] = value.detach().to("cpu", copy=True).contiguous()
    return {_TENSOR: name}


def _mapping_json(value: dict[Any, Any], path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A mapping with string keys as a JSON object; one with int keys as a tagged pair list."""
    if all(isinstance(k, str) for k in value):
        return {k: _to_json(v, f"{path}/{k}" if path else k, tensors) for k, v in value.items()}
    if all(isinstance(k, int) and not isinstance(k, bool) for k in value):
        return {_INTKEYS: [[k, _to_json(v, f"{path}/{k}", tensors)] for k, v in value.items()]}
    raise TypeError(f"checkpoint mapping at {path!r} mixes key types")


def decode(tensors: dict[str, torch.Tensor], meta: str, *, device: str = "cpu") -> dict[str, Any]:
    """The payload :func:`encode` split (tensors moved to ``device``)."""
    try:
        doc = json.loads(meta)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint metadata is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise CheckpointError(f"checkpoint format {found!r}, expected {FORMAT!r}")
    payload = _from_json(doc.get("payload"), tensors, torch.device(device))
    if not isinstance(payload, dict):
        raise CheckpointError("checkpoint payload is not a mapping")
    return payload


def _from_json(value: Any, tensors: dict[str, torch.Tensor], device: torch.device) -> Any:
    if isinstance(value, list):
        return [_from_json(v, tensors, device) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {_TENSOR}:
        name = value[_TENSOR]
        if name not in tensors:
            raise CheckpointError(f"checkpoint refers to a tensor it does not hold: {name!r}")
        return tensors[name].to(device)
    if set(value) == {_TUPLE}:
        return tuple(_from_json(v, tensors, device) for v in value[_TUPLE])
    if set(value) == {_INTKEYS}:
        return {int(k): _from_json(v, tensors, device) for k, v in value[_INTKEYS]}
    return {k: _from_json(v, tensors, device) for k, v in value.items()}


# -- files ---------------------------------------------------------------------------------------
def write_atomic(payload: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``payload`` to ``path`` so that a reader sees the old file or the whole new one."""
    tensors, meta = encode(payload)
    data = st_save(tensors, metadata={META_KEY: meta})
    target = os.fspath(path)
    tmp = f"{target}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:  # a full disk leaves no partial file behind
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _sync_dir(os.path.dirname(os.path.abspath(target)))


def _sync_dir(directory: str) -> None:
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
    """Load a checkpoint written by :func:`write_atomic` (raises :class:`CheckpointError` for
    anything else, an older pickle checkpoint included)."""
    name = os.fspath(path)
    with open(name, "rb") as f:
        data = f.read()
    try:  # parsed as safetensors first: its 8-byte header length may itself start with 0x80
        tensors = st_load(data)
        meta = _metadata(data)
    except (SafetensorError, ValueError, OSError) as exc:
        if data.startswith(_PICKLE_MAGIC):
            raise CheckpointError(
                f"{name} is a torch.save (pickle) checkpoint of an older version; this version "
                "reads only safetensors checkpoints and never unpickles (write a new checkpoint)"
            ) from None
        raise CheckpointError(f"{name} is not a safetensors checkpoint: {exc}") from None
    if meta is None:
        raise CheckpointError(f"{name} is a safetensors file without Kasmina checkpoint metadata")
    return decode(tensors, meta, device=device)


def _metadata(data: bytes) -> str | None:
    """The ``kasmina`` entry of a safetensors header (8-byte little-endian length + JSON)."""
    if len(data) < 8:
        raise ValueError("file too short")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise ValueError("header length beyond the end of the file")
    header = json.loads(data[8 : 8 + size])
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    value = meta.get(META_KEY) if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None
