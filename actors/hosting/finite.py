"""The finite-number check every input passes before a core sees it: no NaN and no infinity in
any float field of a message, however deep (nested, repeated, in a map).

Each message type's check is written out once, from its descriptor, as one small function (a
line per float field, a loop per repeated or map field), then kept: a step report is checked
without walking its descriptor each time."""

from __future__ import annotations

import keyword
import threading
from collections.abc import Callable, Iterable
from math import isfinite
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

__all__ = ["finite"]

Check = Callable[[Any], bool]

_FLOATS = frozenset({FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT})
_MESSAGE = FieldDescriptor.TYPE_MESSAGE
_CHECKS: dict[Descriptor, Check] = {}  # message type -> its check (written once)
_WRITING: set[Descriptor] = set()  # types whose check is being written (under _LOCK)
_LOCK = threading.RLock()


def finite(message: Message) -> bool:
    """True if every float field (recursively, maps included) is finite."""
    desc: Any = message.DESCRIPTOR
    check = _CHECKS.get(desc) or _check_of(desc)
    return check(message)


def _check_of(desc: Descriptor) -> Check:
    """The kept check of a message type, written now if need be (with the types it holds); a
    type met again while its own check is being written (one that holds itself) is checked
    through :func:`finite` at run time. One thread writes checks at a time: another that meets
    a type being written waits for its check."""
    with _LOCK:
        check = _CHECKS.get(desc)
        if check is None:
            if desc in _WRITING:  # (this thread, a level up: the check exists before it runs)
                return finite
            _WRITING.add(desc)
            try:
                check = _CHECKS[desc] = _compile(desc)
            finally:
                _WRITING.discard(desc)
        return check


def _all_finite(values: Iterable[float]) -> bool:
    return all(map(isfinite, values))


def _lines(field: FieldDescriptor, scope: dict[str, Any]) -> list[str]:
    """The check of one field as source lines (none for a field that holds no float); a nested
    type's check is put in ``scope`` under a name of its own."""
    name = field.name
    get = (
        f"m.{name}"
        if name.isidentifier() and not keyword.iskeyword(name)
        else f"getattr(m, {name!r})"
    )
    if field.type in _FLOATS:
        if field.is_repeated:
            return [f"    v = {get}", "    if v and not floats(v): return False"]
        return [f"    if not isfinite({get}): return False"]
    if field.type != _MESSAGE:
        return []
    entry = field.message_type
    if entry is None or not entry.GetOptions().map_entry:
        sub = _bind(scope, entry)
        if field.is_repeated:
            return [f"    for s in {get}:", f"        if not {sub}(s): return False"]
        # an unset one holds nothing (and is not created by the check)
        return [f"    if m.HasField({name!r}) and not {sub}({get}): return False"]
    value = entry.fields_by_name["value"]
    if value.type in _FLOATS:
        return [f"    v = {get}", "    if v and not floats(v.values()): return False"]
    if value.type == _MESSAGE:
        sub = _bind(scope, value.message_type)
        return [f"    for s in {get}.values():", f"        if not {sub}(s): return False"]
    return []


def _bind(scope: dict[str, Any], desc: Descriptor | None) -> str:
    """The name under which ``scope`` holds the check of a nested type (put there now)."""
    name = f"sub{len(scope)}"
    scope[name] = finite if desc is None else _check_of(desc)
    return name


def _compile(desc: Descriptor) -> Check:
    """The check of one message type, written from its descriptor's field names (identifiers,
    or read with ``getattr`` where a name is a Python keyword)."""
    scope: dict[str, Any] = {"isfinite": isfinite, "floats": _all_finite}
    body = [line for field in desc.fields for line in _lines(field, scope)]
    source = "def check(m):\n" + "\n".join([*body, "    return True"]) + "\n"
    exec(source, scope)  # the source is built from the type's own field names
    check: Check = scope["check"]
    return check
