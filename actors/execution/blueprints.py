"""Blueprints: a registry of seed factories, each output-side zero-initialised.

A seed built from a blueprint returns a *delta*: the slot adds it to the host activation, so a
freshly built seed (delta exactly 0) changes nothing. Seeds read either the slot output ``h``
(residual MLP, conv adapter, low-rank adapter) or the slot input ``x`` (width seed: new hidden
units fed from the wrapped submodule's input, their fan-out zero, their contribution added to the
submodule's output, i.e. ``W_out [relu(W_in x); relu(U x)] = h + V relu(U x)`` with ``V = 0``).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

Factory = Callable[["SlotShape", Mapping[str, float], nn.Module], nn.Module]


@dataclass(frozen=True)
class SlotShape:
    """Shapes and dtype seen at a slot on a probe batch (batch dimension included)."""

    out_shape: tuple[int, ...]
    dtype: torch.dtype
    in_shape: tuple[int, ...] | None = None

    @staticmethod
    def of(h: Tensor, x: Tensor | None = None) -> SlotShape:
        """The shape record of a host output ``h`` (and input ``x``)."""
        return SlotShape(tuple(h.shape), h.dtype, None if x is None else tuple(x.shape))


@dataclass(frozen=True)
class Blueprint:
    """A seed factory plus what it needs of a slot."""

    name: str
    build: Factory
    accepts: Callable[[SlotShape], bool]
    reads_input: bool = False
    convex_ok: bool = True  # delta is 0 at birth, so h + delta == h: convex blending is allowed
    description: str = ""
    artifact: str = ""  # the artifact id it was loaded from ("" = registered in Python)
    #: the germinate parameters ``build`` reads (besides the runtime's own, ``RUNTIME_PARAMS``);
    #: None: not declared, any name is passed on
    params: frozenset[str] | None = None


_REGISTRY: dict[str, Blueprint] = {}


def register_blueprint(bp: Blueprint, *, replace: bool = False) -> Blueprint:
    """Add ``bp`` to the registry (refuses to shadow a name unless ``replace``)."""
    if bp.name in _REGISTRY and not replace:
        raise ValueError(f"blueprint {bp.name!r} already registered")
    _REGISTRY[bp.name] = bp
    return bp


def unregister_blueprint(name: str) -> None:
    """Remove a blueprint (tests register planted ones and remove them)."""
    _REGISTRY.pop(name, None)


def get_blueprint(name: str) -> Blueprint:
    """The registered blueprint ``name``; KeyError if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown blueprint {name!r}") from None


def blueprint_names() -> list[str]:
    """Names of every registered blueprint, sorted."""
    return sorted(_REGISTRY)


def signed_off(blueprint: str | Blueprint, shape: SlotShape) -> bool:
    """True when the blueprint is registered and signed off for a slot of this shape."""
    if isinstance(blueprint, Blueprint) and blueprint.artifact:  # verified, fit checked by shape
        return bool(blueprint.accepts(shape))
    name = blueprint if isinstance(blueprint, str) else blueprint.name
    bp = _REGISTRY.get(name)
    if bp is None or (isinstance(blueprint, Blueprint) and bp is not blueprint):
        return False
    return bool(bp.accepts(shape))


def param_count(module: nn.Module) -> int:
    """Number of scalar parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class ProbeResult:
    """Shape probe outcome: the seed's delta has the host's shape and dtype and is exactly 0."""

    shape_ok: bool
    dtype_ok: bool
    finite: bool
    max_abs_delta: float

    @property
    def ok(self) -> bool:
        """All checks passed (delta shape/dtype equal the host output's, finite, exactly zero)."""
        return self.shape_ok and self.dtype_ok and self.finite and self.max_abs_delta == 0.0


def shape_probe(seed: nn.Module, bp: Blueprint, h: Tensor, x: Tensor | None) -> ProbeResult:
    """Run the seed on a probe activation and compare its output with the host's ``h``."""
    src = x if bp.reads_input else h
    if src is None:
        return ProbeResult(False, False, False, math.inf)
    with torch.no_grad():
        z = seed(src.detach())
    if not isinstance(z, Tensor):
        return ProbeResult(False, False, False, math.inf)
    shape_ok = z.shape == h.shape
    finite = bool(torch.isfinite(z).all())
    mad = float(z.detach().abs().max()) if z.numel() else 0.0
    return ProbeResult(shape_ok, z.dtype == h.dtype, finite, mad if finite else math.inf)


# -- built-in factories --------------------------------------------------------------------------
def _features(shape: SlotShape) -> int:
    return shape.out_shape[-1]


def _is_features(shape: SlotShape) -> bool:
    return len(shape.out_shape) >= 2 and shape.dtype.is_floating_point


def _whole(params: Mapping[str, float], names: tuple[str, ...], default: int) -> int:
    """The first of ``names`` in ``params`` as a whole number >= 1 (``default`` when none is);
    ValueError for a fraction or a value below 1, which the germination reports as a refusal."""
    for name in names:
        if name in params:
            value = params[name]
            if not value >= 1 or value != int(value):
                raise ValueError(f"{name} must be a whole number >= 1, got {value:g}")
            return int(value)
    return default


def _hidden(params: Mapping[str, float], default: int) -> int:
    return _whole(params, ("hidden", "width"), default)


class ResidualMLP(nn.Module):
    """``W2 relu(W1 h)`` with ``W2 = 0`` (the slot adds it to ``h``)."""

    def __init__(self, d_in: int, hidden: int, d_out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: Tensor) -> Tensor:
        """The delta added at the slot."""
        out: Tensor = self.fc2(torch.relu(self.fc1(h)))
        return out


class ConvAdapter(nn.Module):
    """1x1 conv bottleneck ``C -> r -> C``; the output conv is zero (weight and bias)."""

    def __init__(self, channels: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(channels, rank, kernel_size=1)
        self.up = nn.Conv2d(rank, channels, kernel_size=1)
        nn.init.zeros_(self.up.weight)
        assert self.up.bias is not None
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        """The delta added at the slot."""
        out: Tensor = self.up(torch.relu(self.down(h)))
        return out


class LowRankAdapter(nn.Module):
    """``(scale / r) B A h`` with ``A`` Gaussian and ``B = 0``."""

    def __init__(self, features: int, rank: int, scale: float) -> None:
        super().__init__()
        self.a = nn.Linear(features, rank, bias=False)
        self.b = nn.Linear(rank, features, bias=False)
        nn.init.normal_(self.a.weight, std=1.0 / math.sqrt(features))
        nn.init.zeros_(self.b.weight)
        self.scaling = scale / rank

    def forward(self, h: Tensor) -> Tensor:
        """The delta added at the slot."""
        out: Tensor = self.b(self.a(h)) * self.scaling
        return out


def _build_residual(shape: SlotShape, params: Mapping[str, float], host: nn.Module) -> nn.Module:
    d = _features(shape)
    return ResidualMLP(d, _hidden(params, d), d)


def _build_width(shape: SlotShape, params: Mapping[str, float], host: nn.Module) -> nn.Module:
    assert shape.in_shape is not None
    return ResidualMLP(shape.in_shape[-1], _hidden(params, 8), _features(shape))


def _build_conv(shape: SlotShape, params: Mapping[str, float], host: nn.Module) -> nn.Module:
    c = shape.out_shape[1]
    return ConvAdapter(c, _whole(params, ("rank",), max(1, c // 4)))


def _build_lowrank(shape: SlotShape, params: Mapping[str, float], host: nn.Module) -> nn.Module:
    d = _features(shape)
    rank = _whole(params, ("rank",), 4)
    return LowRankAdapter(d, rank, float(params.get("scale", rank)))


def _accepts_width(shape: SlotShape) -> bool:
    return (
        _is_features(shape)
        and shape.in_shape is not None
        and len(shape.in_shape) == len(shape.out_shape)
        and shape.in_shape[:-1] == shape.out_shape[:-1]
    )


def _accepts_conv(shape: SlotShape) -> bool:
    return len(shape.out_shape) == 4 and shape.dtype.is_floating_point


_SIZE = frozenset({"hidden", "width"})  # "width" is another name for "hidden"
for _bp in (
    Blueprint(
        "residual_mlp", _build_residual, _is_features, description="h + W2 relu(W1 h)", params=_SIZE
    ),
    Blueprint(
        "width",
        _build_width,
        _accepts_width,
        reads_input=True,
        convex_ok=False,
        description="new hidden units from the slot input, fan-out zero",
        params=_SIZE,
    ),
    Blueprint(
        "conv_adapter",
        _build_conv,
        _accepts_conv,
        description="1x1 conv, zero output",
        params=frozenset({"rank"}),
    ),
    Blueprint(
        "lowrank",
        _build_lowrank,
        _is_features,
        description="low-rank adapter, B = 0",
        params=frozenset({"rank", "scale"}),
    ),
):
    register_blueprint(_bp)


# -- seed weight files ----------------------------------------------------------------------------
# A plain file of a seed's weights (safetensors: tensors only, nothing is unpickled). Signed,
# content-addressed blueprint artifacts that any process can germinate are actors/artifacts/.
class ArtifactError(ValueError):
    """A seed weight file failed its checksum or does not fit the seed."""


def save_artifact(seed: nn.Module, path: str | os.PathLike[str]) -> str:
    """Write the seed's weights (safetensors) atomically; return the file's sha256 (hex)."""
    data = st_save({k: v.detach().cpu().contiguous() for k, v in seed.state_dict().items()})
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def load_artifact(
    path: str | os.PathLike[str], sha256: str, into: nn.Module, *, device: str | None = None
) -> nn.Module:
    """Verify the checksum first, then load the weights (safetensors) into ``into``."""
    with open(path, "rb") as f:
        data = f.read()
    if not hmac.compare_digest(hashlib.sha256(data).hexdigest(), sha256.lower()):
        raise ArtifactError(f"checksum mismatch for {os.fspath(path)!r}")
    try:
        state = st_load(data)
        into.load_state_dict({k: v.to(device or "cpu") for k, v in state.items()})
    except Exception as exc:
        raise ArtifactError(f"{os.fspath(path)!r} does not load into the seed: {exc}") from None
    return into
