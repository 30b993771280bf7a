"""``kasmina blueprints publish|list``: blueprint artifacts in the artifact store.

``publish`` packs a seed once and stores it signed, so every process of every run on that store
can germinate it by id (``kasmina publish germinate --artifact ID``) without importing its code.
The target is ``FILE.py:NAME`` or ``PKG.MODULE:NAME`` (``NAME`` is a
:class:`~actors.execution.Blueprint` or a factory ``(shape, params, host) -> nn.Module``, packed
as a ``torch.export`` program) or the name of a registered blueprint (packed as its
``weights_only`` state). ``list`` prints each stored artifact's manifest and whether it verifies.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from actors.artifacts import (
    ArtifactError,
    BusStore,
    DirectoryStore,
    Sealed,
    open_store,
    seal,
    verify,
)
from bus import BusProtocolError, redact_url
from contracts import KeyRing
from kasmina.common import CliError, add_keys, emit_json, load_keys, with_password

if TYPE_CHECKING:
    from actors.execution import SlotShape

DTYPES = ("float32", "float64", "float16", "bfloat16")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("blueprints", help="publish and list blueprint artifacts")
    bp_sub = parser.add_subparsers(dest="blueprints_command", required=True, metavar="VERB")
    pub = bp_sub.add_parser("publish", help="pack a seed, sign it, store it; prints its id")
    pub.add_argument("target", metavar="FILE.py:NAME|MODULE:NAME|BLUEPRINT")
    pub.add_argument("--shape", required=True, metavar="D[,D…]",
                     help="the slot's activation for one example, batch excluded (e.g. 16)")  # fmt: skip
    pub.add_argument("--in-shape", default=None, metavar="D[,D…]",
                     help="the slot's input for one example (blueprints that read it)")  # fmt: skip
    pub.add_argument("--dtype", choices=DTYPES, default="float32")
    pub.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    pub.add_argument("--name", default=None, help="blueprint name in the manifest")
    pub.add_argument("--seed", type=int, default=0, help="torch seed of the initial weights "
                     "(the same target, shape, parameters and seed give the same id)")  # fmt: skip
    _add_store(pub)
    pub.set_defaults(func=publish)
    lst = bp_sub.add_parser("list", help="the stored artifacts (one JSON object each)")
    _add_store(lst)
    lst.set_defaults(func=list_artifacts)


def _add_store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        default=None,
        metavar="URL|DIR",
        help="artifact store: a directory or a Redis URL (default: artifacts.store of the "
        "config, else --redis)",
    )
    parser.add_argument(
        "--redis", default=None, metavar="URL", help="default: $KASMINA_REDIS or the local one"
    )
    add_keys(parser)


def _store_url(args: argparse.Namespace) -> str:
    from kasmina.common import default_redis
    from kasmina.wiring import load_config

    url = args.store or load_config().artifacts.store or args.redis or default_redis()
    return with_password(str(url))


def _dims(text: str, flag: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.split(",") if d.strip())
    except ValueError:
        raise CliError(f"{flag} {text!r}: expected positive integers separated by commas") from None
    if not dims or any(d < 1 for d in dims):
        raise CliError(f"{flag} {text!r}: expected positive integers separated by commas")
    return dims


def _params(items: list[str]) -> dict[str, float]:
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not name or not math.isfinite(number):
            raise CliError(f"--param {item!r}: expected NAME=NUMBER (finite)")
        params[name] = number
    return params


def _load_target(target: str) -> Any:
    """The object ``FILE.py:NAME`` or ``MODULE:NAME`` names."""
    where, _, name = target.rpartition(":")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise CliError(f"{target}: no file {where}")
        spec = importlib.util.spec_from_file_location(f"kasmina_blueprint_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise CliError(f"{target}: cannot load {where}")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise CliError(f"{target}: {where} fails to import: {exc}") from None
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise CliError(f"{target}: cannot import {where!r}: {exc}") from None
    if not hasattr(module, name):
        raise CliError(f"{target}: {where} has no {name!r}")
    return getattr(module, name)


def pack(args: argparse.Namespace) -> tuple[Any, bytes]:
    """The unsigned manifest and the payload the arguments describe."""
    import torch

    from actors.execution import SlotShape

    dtype = getattr(torch, args.dtype)
    out = _dims(args.shape, "--shape")
    inp = _dims(args.in_shape, "--in-shape") if args.in_shape else None
    shape = SlotShape((2, *out), dtype, None if inp is None else (2, *inp))
    params = _params(args.param)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        return _pack(args, shape, params)


def _pack(
    args: argparse.Namespace, shape: SlotShape, params: dict[str, float]
) -> tuple[Any, bytes]:
    from actors.execution import blueprint_names
    from actors.execution.kernels import pack_program, pack_weights

    dtype, out = shape.dtype, shape.out_shape[1:]
    inp = None if shape.in_shape is None else shape.in_shape[1:]
    if ":" not in args.target:
        if args.target not in blueprint_names():
            raise CliError(
                f"unknown blueprint {args.target!r}: give FILE.py:NAME, MODULE:NAME or one of "
                f"{', '.join(blueprint_names())}"
            )
        return pack_weights(args.target, shape, params)
    build, default, reads_input, convex_ok = _factory(args.target)
    if reads_input and inp is None:
        raise CliError(f"{args.target} reads the slot input: give --in-shape")
    seed = _build(args.target, build, shape, params)
    src = inp if reads_input and inp is not None else out
    return pack_program(seed, args.name or default, src, dtype, reads_input=reads_input,
                        convex_ok=convex_ok)  # fmt: skip


def _factory(target: str) -> tuple[Any, str, bool, bool]:
    """The factory ``FILE.py:NAME`` or ``MODULE:NAME`` names: (build, default name,
    reads_input, convex_ok)."""
    from actors.execution import Blueprint

    obj = _load_target(target)
    if isinstance(obj, Blueprint):
        return obj.build, obj.name, obj.reads_input, obj.convex_ok
    if callable(obj):
        return obj, target.rpartition(":")[2], False, True
    raise CliError(f"{target}: neither a Blueprint nor a factory")


def _build(target: str, build: Any, shape: SlotShape, params: dict[str, float]) -> Any:
    """The seed module the factory builds for ``shape`` (host: an identity)."""
    from torch import nn

    try:
        seed = build(shape, params, nn.Identity())
    except Exception as exc:
        raise CliError(
            f"{target}: the factory fails for shape {shape.out_shape[1:]}: {exc}"
        ) from None
    if not isinstance(seed, nn.Module):
        raise CliError(f"{target}: the factory returned {type(seed).__name__}, not a module")
    return seed


async def _put(url: str, sealed: Sealed) -> None:
    store = open_store(url)
    try:
        await store.put(sealed)
    finally:
        if isinstance(store, BusStore):
            await store.bus.close()


def publish(args: argparse.Namespace) -> int:
    ring = load_keys(args)
    url = _store_url(args)
    try:
        manifest, payload = pack(args)
        sealed = seal(manifest, payload, ring)
    except ArtifactError as exc:
        raise CliError(str(exc)) from None
    anyio.run(_put, url, sealed)
    m = verify(sealed, ring, time.time_ns())
    emit_json({"artifact": sealed.id, "blueprint": m.blueprint, "kind": m.kind,
               "input_shape": list(m.input_shape), "output_shape": list(m.output_shape),
               "dtype": m.dtype, "param_count": m.param_count, "size": m.size,
               "signer": m.signer, "store": redact_url(url)})  # fmt: skip
    return 0


async def _all(url: str) -> list[Sealed | tuple[str, str]]:
    """Every stored artifact, or ``(id, why)`` for one whose parts cannot be read (a key of
    another type a writer put there hides no other artifact)."""
    store: DirectoryStore | BusStore = open_store(url)
    out: list[Sealed | tuple[str, str]] = []
    try:
        for artifact_id in await store.ids():
            try:
                sealed = await store.get(artifact_id)
            except BusProtocolError as exc:
                out.append((artifact_id, f"unreadable: {exc}"[:300]))
                continue
            if sealed is not None:
                out.append(sealed)
        return out
    finally:
        if isinstance(store, BusStore):
            await store.bus.close()


def _row(sealed: Sealed, ring: KeyRing) -> dict[str, Any]:
    try:
        m = verify(sealed, ring, time.time_ns())
    except ArtifactError as exc:
        return {"artifact": sealed.id, "verified": False, "reason": exc.reason}
    return {"artifact": sealed.id, "verified": True, "blueprint": m.blueprint, "kind": m.kind,
            "input_shape": list(m.input_shape), "output_shape": list(m.output_shape),
            "dtype": m.dtype, "param_count": m.param_count, "size": m.size,
            "signer": m.signer}  # fmt: skip


def list_artifacts(args: argparse.Namespace) -> int:
    ring = load_keys(args)
    for sealed in anyio.run(_all, _store_url(args)):
        if isinstance(sealed, tuple):
            emit_json({"artifact": sealed[0], "verified": False, "reason": sealed[1]})
        else:
            emit_json(_row(sealed, ring))
    return 0
