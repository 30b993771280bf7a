"""Pins the package layout: import direction and public surfaces."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["leyline", "contracts", "bus", "actors", "scenarios", "kasmina"]
# what each package may import from the project (docs/design.md §1)
ALLOWED = {
    "leyline": set(),
    "bus": set(),
    "contracts": {"leyline"},
    "actors": {"leyline", "contracts", "bus"},
    "scenarios": {"leyline", "contracts", "bus", "actors"},
    "kasmina": {"leyline", "contracts", "bus", "actors", "scenarios"},
}


def _project_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(n.split(".")[0] for n in names if n.split(".")[0] in PACKAGES)
    return found


def test_imports_only_point_down() -> None:
    """No package imports a package above it in docs/design.md §1's list; bus and leyline import none."""
    bad = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for imported in _project_imports(path) - {package}:
                if imported not in ALLOWED[package]:
                    bad.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert bad == []


def test_contracts_never_talks_to_redis() -> None:
    """contracts/ does not import redis or fakeredis (the Redis nonce backend lives in bus/)."""
    for path in (ROOT / "contracts").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "import redis" not in text and "fakeredis" not in text, path


def test_actors_do_not_import_redis() -> None:
    """Actors reach Redis only through the Bus port."""
    for path in (ROOT / "actors").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] not in {"redis", "fakeredis"}, path
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] not in {"redis", "fakeredis"} for a in node.names)


def test_contracts_public_surface_is_explicit() -> None:
    """contracts.__all__ lists only names that exist."""
    import contracts

    assert all(hasattr(contracts, name) for name in contracts.__all__)
