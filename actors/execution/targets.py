"""Slot targets by name pattern: one entry of ``insert_slots`` can name several submodules.

A target is an exact dotted path (``"layers.0.mlp"``), a glob (it holds ``*``, ``?`` or ``[``:
``"layers.*.mlp"``, ``*`` matching any characters, dots included) or a regular expression
(``"re:layers\\.[0-3]\\.mlp"``, matched against the whole path). Paths are those of the
model as the user wrote it: a submodule already wrapped by a slot is matched at its own path,
never at ``.host`` or inside its slot.

A pattern's slot id is a template: ``{path}`` becomes the matched path and ``{i}`` its index
among the matches (in module order); without either, the id is ``KEY.PATH``. Every generated id
must be a valid slot id, distinct from every other. A pattern that matches nothing is an error.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Mapping

from torch import nn

from contracts.streams import check_slot

__all__ = ["expand_targets", "is_pattern", "module_paths"]

_GLOB = frozenset("*?[")


def is_pattern(target: str) -> bool:
    """Whether ``target`` is a glob or a ``re:`` expression rather than an exact path."""
    return target.startswith("re:") or bool(_GLOB & set(target))


def module_paths(model: nn.Module) -> list[str]:
    """Every submodule's dotted path (root excluded), slots' own modules skipped."""
    return list(_walk(model, ""))


def _walk(module: nn.Module, prefix: str) -> Iterator[str]:
    from actors.execution.slot import SeedSlot, SlottedModule

    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, SeedSlot):
            continue
        yield path
        inner = child.host if isinstance(child, SlottedModule) else child
        yield from _walk(inner, f"{path}.")


def _matches(target: str, paths: list[str]) -> list[str]:
    if target.startswith("re:"):
        try:
            rx = re.compile(target[3:])
        except re.error as exc:
            raise ValueError(f"slot target {target!r}: bad regular expression: {exc}") from None
        return [p for p in paths if rx.fullmatch(p)]
    return [p for p in paths if fnmatch.fnmatchcase(p, target)]


def _slot_id(key: str, path: str, index: int) -> str:
    if "{path}" in key or "{i}" in key:
        sid = key.replace("{path}", path).replace("{i}", str(index))
    else:
        sid = f"{key}.{path}"
    try:
        return check_slot(sid)
    except ValueError as exc:
        raise ValueError(f"slot id {key!r} for {path!r}: {exc}") from None


def expand_targets(model: nn.Module, points: Mapping[str, str]) -> dict[str, str]:
    """``{slot_id: path}`` with every pattern replaced by its matches (exact paths kept as they
    are); ValueError for a pattern that matches nothing or ids that collide."""
    if not any(is_pattern(t) for t in points.values()):
        return dict(points)
    paths = module_paths(model)
    out: dict[str, str] = {}
    for key, target in points.items():
        if not is_pattern(target):
            found = [(key, target)]
        else:
            matched = _matches(target, paths)
            if not matched:
                sample = ", ".join(paths[:8]) + (", …" if len(paths) > 8 else "")
                raise ValueError(
                    f"slot target {target!r} matches no submodule of {type(model).__name__}"
                    f" (its paths: {sample})"
                )
            found = [(_slot_id(key, p, i), p) for i, p in enumerate(matched)]
        for sid, path in found:
            if sid in out:
                raise ValueError(f"slot id {sid!r} is generated twice")
            out[sid] = path
    return out
