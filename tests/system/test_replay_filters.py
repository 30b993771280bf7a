"""`kasmina replay`'s row filters: what a kind pattern, a kind named outright and ``--all``
show."""

from __future__ import annotations

import argparse

from kasmina.commands.replay import _wanted

ROWS = [
    {"kind": "lifecycle.transition", "slot": "units"},
    {"kind": "lifecycle.progress", "slot": "units"},
    {"kind": "lifecycle.refused", "slot": "hidden"},
    {"kind": "state.digest", "slot": "units"},
    {"kind": "gate.result", "slot": "units"},
]


def _shown(
    kind: list[str] | None = None, every: bool = False, slot: str | None = None
) -> list[str]:
    args = argparse.Namespace(kind=kind, all=every, slot=slot)
    return [r["kind"] for r in ROWS if _wanted(r, args)]


def test_a_kind_pattern_leaves_the_hidden_kinds_hidden_unless_named_or_all() -> None:
    """`--kind 'lifecycle.*'` shows transitions and refusals, not progress rows (hidden by
    default); `--kind lifecycle.progress` or `--all` shows them; no filter hides them too."""
    assert _shown() == ["lifecycle.transition", "lifecycle.refused", "gate.result"]
    assert _shown(["lifecycle.*"]) == ["lifecycle.transition", "lifecycle.refused"]
    assert _shown(["lifecycle.*"], every=True) == [
        "lifecycle.transition", "lifecycle.progress", "lifecycle.refused",
    ]  # fmt: skip
    assert _shown(["lifecycle.progress"]) == ["lifecycle.progress"]
    assert _shown(["gate.result", "state.digest"]) == ["state.digest", "gate.result"]
    assert _shown(["lifecycle.*"], slot="hidden") == ["lifecycle.refused"]
