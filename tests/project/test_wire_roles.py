"""The role → kinds table of docs/wire.md §4 is contracts/roles.py's KINDS_BY_ROLE, kind for kind."""

from __future__ import annotations

import re
from pathlib import Path

from contracts import REGISTRY
from contracts.roles import KINDS_BY_ROLE

WIRE = Path(__file__).resolve().parents[2] / "docs" / "wire.md"
ROW = re.compile(r"^\s*\|\s*`(\w+)`\s*\|(.*)\|\s*$")


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def _documented() -> dict[str, set[str]]:
    """The rows of the §4 table whose first cell is a role: role → the backticked kinds."""
    table: dict[str, set[str]] = {}
    for line in _section(WIRE.read_text(encoding="utf-8"), "4. Keys").splitlines():
        match = ROW.match(line)
        if match and match.group(1) in KINDS_BY_ROLE:
            assert match.group(1) not in table, f"role {match.group(1)} listed twice"
            table[match.group(1)] = set(re.findall(r"`([^`]+)`", match.group(2)))
    return table


def test_wire_md_lists_the_kinds_of_every_role_exactly() -> None:
    """Each role's row names exactly the kinds a key with that role may sign."""
    documented = _documented()
    assert documented.keys() == KINDS_BY_ROLE.keys()
    for role, kinds in KINDS_BY_ROLE.items():
        assert documented[role] == set(kinds), (
            f"{role}: missing {sorted(set(kinds) - documented[role])}, "
            f"extra {sorted(documented[role] - set(kinds))}"
        )


def test_every_registered_kind_has_a_role() -> None:
    """No kind of §6 is one that no key may sign."""
    signable = set().union(*KINDS_BY_ROLE.values())
    assert set(REGISTRY) <= signable
