"""Kernels: blueprint artifacts packed from torch modules and loaded back onto a device.

Two kinds, both a safetensors payload (tensors only; nothing is unpickled on load):

- ``program``: a ``torch.export`` program of a seed module (its graph as the exporter's JSON in
  the safetensors metadata, its parameters and buffers as tensors, batch dimension dynamic). Any
  process can germinate it without the Python code that built it.
- ``weights``: the ``weights_only`` state of a registered blueprint built with given parameters;
  germination builds that blueprint and loads the state into it.

:func:`load_kernel` turns a verified manifest and payload into a :class:`Kernel` on a device;
:meth:`Kernel.instantiate` gives each germination its own copy.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from actors.artifacts import ArtifactError, Manifest
from actors.execution.blueprints import Blueprint, SlotShape, get_blueprint, param_count

__all__ = ["Kernel", "as_blueprint", "load_kernel", "pack_program", "pack_weights"]

_PROGRAM_KEY = "torch.export"
_STATE, _CONST = "state.", "const."


@dataclass
class Kernel:
    """A loaded artifact: its manifest and, on the device, a template module (program) or the
    state tensors (weights). ``nbytes`` is what it holds on the device."""

    id: str
    manifest: Manifest
    module: nn.Module | None
    state: dict[str, Tensor]
    nbytes: int

    def instantiate(self, build: Callable[[], nn.Module] | None = None) -> nn.Module:
        """A fresh seed: a deep copy of the program, or ``build()`` with the state loaded."""
        if self.module is not None:
            with warnings.catch_warnings():  # torch's own deprecated pytree spec, copied along
                warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec", FutureWarning)
                return copy.deepcopy(self.module)
        if build is None:
            raise ArtifactError("malformed", "a weights artifact needs its blueprint to build")
        seed = build()
        try:
            seed.load_state_dict(self.state, strict=True)
        except RuntimeError as exc:
            raise ArtifactError(
                "shape_mismatch", f"state does not fit the blueprint: {exc}"
            ) from None
        return seed


def as_blueprint(kernel: Kernel) -> Blueprint:
    """The blueprint germination uses for a kernel: its shapes and dtype are what it accepts; a
    weights kernel also needs its blueprint registered here (KeyError otherwise)."""
    m = kernel.manifest
    base = get_blueprint(m.blueprint) if m.kind == "weights" else None

    def build(shape: SlotShape, params: Mapping[str, float], host: nn.Module) -> nn.Module:
        if base is None:
            return kernel.instantiate()
        return kernel.instantiate(lambda: base.build(shape, m.params, host))

    def accepts(shape: SlotShape) -> bool:
        src = shape.in_shape if m.reads_input else shape.out_shape
        return (
            _dtype_name(shape.dtype) == m.dtype
            and src is not None
            and tuple(src[1:]) == m.input_shape
            and tuple(shape.out_shape[1:]) == m.output_shape
            and (base is None or bool(base.accepts(shape)))
        )

    # built from the manifest's own parameters: a germinate's blueprint parameters do not apply
    return Blueprint(m.blueprint, build, accepts, reads_input=m.reads_input,
                     convex_ok=m.convex_ok, artifact=kernel.id, params=frozenset())  # fmt: skip


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def pack_program(
    seed: nn.Module,
    name: str,
    input_shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    *,
    reads_input: bool = False,
    convex_ok: bool = True,
) -> tuple[Manifest, bytes]:
    """Export ``seed`` (eval mode, batch dimension dynamic) and pack it; the manifest is unsigned."""
    seed = seed.to(dtype=dtype).eval()
    example = torch.zeros((2, *input_shape), dtype=dtype)
    batch = torch.export.Dim("batch", min=1)
    try:
        ep = torch.export.export(seed, (example,), dynamic_shapes=({0: batch},))
    except Exception as exc:
        raise ArtifactError("malformed", f"torch.export failed: {exc}") from None
    from torch._export.serde.serialize import serialize

    program = serialize(
        ep, serialize_state_dict=False, serialize_constants=False, serialize_example_inputs=False
    ).exported_program
    tensors = {_STATE + k: v for k, v in ep.state_dict.items()}
    for k, v in ep.constants.items():
        if not isinstance(v, Tensor):
            raise ArtifactError("malformed", f"constant {k!r} is not a tensor")
        tensors[_CONST + k] = v
    with torch.no_grad():
        out = seed(example)
    params = tuple(_STATE + p for p in ep.graph_signature.parameters)
    manifest = _manifest("program", name, tensors, params, input_shape, out, dtype)
    manifest = _with(manifest, reads_input=reads_input, convex_ok=convex_ok)
    return manifest, _payload(tensors, {_PROGRAM_KEY: program.decode()})


def pack_weights(
    blueprint: str, shape: SlotShape, params: Mapping[str, float], host: nn.Module | None = None
) -> tuple[Manifest, bytes]:
    """Build the registered ``blueprint`` for ``shape`` and pack its state (unsigned manifest)."""
    bp = get_blueprint(blueprint)
    if bp.reads_input and shape.in_shape is None:
        raise ArtifactError("shape_mismatch", f"blueprint {blueprint!r} reads the slot input: "
                            "its shape is needed (--in-shape)")  # fmt: skip
    if not bp.accepts(shape):
        raise ArtifactError("shape_mismatch", f"blueprint {blueprint!r} does not fit {shape}")
    _check_params(bp, params)
    seed = bp.build(shape, dict(params), host if host is not None else nn.Identity())
    seed = seed.to(dtype=shape.dtype)
    tensors = dict(seed.state_dict())
    src = shape.in_shape if bp.reads_input else shape.out_shape
    assert src is not None
    names = tuple(n for n, _ in seed.named_parameters())
    with torch.no_grad():
        out = seed(torch.zeros(src, dtype=shape.dtype))
    manifest = _manifest("weights", blueprint, tensors, names, tuple(src[1:]), out, shape.dtype)
    manifest = _with(manifest, params={k: float(v) for k, v in params.items()},
                     reads_input=bp.reads_input, convex_ok=bp.convex_ok)  # fmt: skip
    return manifest, _payload(tensors, {})


def _check_params(bp: Blueprint, params: Mapping[str, float]) -> None:
    """Refuse a parameter ``bp`` does not declare: a misspelt size would be packed at its
    default, silently."""
    unknown = sorted(set(params) - bp.params) if bp.params is not None else []
    if unknown:
        raise ArtifactError("bad_params", f"blueprint {bp.name!r} takes no parameter "
                            f"{', '.join(unknown)} (its parameters: "
                            f"{', '.join(sorted(bp.params or ())) or 'none'})")  # fmt: skip


def _manifest(
    kind: str,
    name: str,
    tensors: Mapping[str, Tensor],
    params: tuple[str, ...],
    input_shape: tuple[int, ...],
    out: Tensor,
    dtype: torch.dtype,
) -> Manifest:
    return Manifest(
        kind=kind,
        blueprint=name,
        input_shape=tuple(input_shape),
        output_shape=tuple(out.shape[1:]),
        dtype=_dtype_name(dtype),
        tensors={k: tuple(v.shape) for k, v in sorted(tensors.items())},
        parameters=tuple(sorted(params)),
        param_count=sum(tensors[p].numel() for p in params),
        size=0,
        sha256="0" * 64,
    )


def _with(m: Manifest, **changes: object) -> Manifest:
    return Manifest(**{**m.__dict__, **changes})


def _payload(tensors: Mapping[str, Tensor], metadata: dict[str, str]) -> bytes:
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return bytes(st_save(flat, metadata=metadata or None))


def _metadata(payload: bytes) -> dict[str, str]:
    """The safetensors header's ``__metadata__`` (read without loading any tensor)."""
    n = int.from_bytes(payload[:8], "little")
    if len(payload) < 8 or n > len(payload) - 8:
        raise ArtifactError("malformed", "payload is not a safetensors file")
    try:
        meta = json.loads(payload[8 : 8 + n]).get("__metadata__") or {}
    except (ValueError, AttributeError):
        raise ArtifactError("malformed", "payload header is not JSON") from None
    return {str(k): str(v) for k, v in meta.items()}


def load_kernel(
    artifact_id: str, manifest: Manifest, payload: bytes, device: torch.device
) -> Kernel:
    """The kernel of a verified artifact on ``device`` (tensors checked against the manifest)."""
    try:
        tensors = st_load(payload)
    except Exception as exc:
        raise ArtifactError("malformed", f"payload: {exc}") from None
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    dtype = getattr(torch, manifest.dtype, None)
    if got != manifest.tensors or not isinstance(dtype, torch.dtype):
        raise ArtifactError("shape_mismatch", "payload tensors differ from the manifest's")
    tensors = {k: v.to(device) for k, v in tensors.items()}
    nbytes = sum(v.numel() * v.element_size() for v in tensors.values())
    if manifest.kind == "weights":
        return Kernel(artifact_id, manifest, None, tensors, nbytes)
    program = _metadata(payload).get(_PROGRAM_KEY)
    if program is None:
        raise ArtifactError("malformed", "program artifact without its program")
    module = _program(program.encode(), manifest, tensors)
    return Kernel(artifact_id, manifest, module, {}, nbytes)


def _program(program: bytes, manifest: Manifest, tensors: dict[str, Tensor]) -> nn.Module:
    from torch._export.serde.serialize import SerializedArtifact, deserialize

    trainable = set(manifest.parameters)
    state = {k[len(_STATE) :]: nn.Parameter(v) if k in trainable else v
             for k, v in tensors.items() if k.startswith(_STATE)}  # fmt: skip
    consts = {k[len(_CONST) :]: v for k, v in tensors.items() if k.startswith(_CONST)}
    try:
        ep = deserialize(SerializedArtifact(program, state, consts, b""))  # type: ignore[arg-type]
        module: nn.Module = ep.module(check_guards=False)
    except Exception as exc:
        raise ArtifactError("malformed", f"program does not load: {exc}") from None
    for name in ("train", "eval"):  # the exporter forbids mode switches; the graph is fixed
        module.__dict__.pop(name, None)
    if param_count(module) != manifest.param_count:
        raise ArtifactError("shape_mismatch", "program parameters differ from the manifest's")
    return module
