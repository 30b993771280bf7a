"""The bundled scenario files (``scenarios/files/*.toml``) and name-or-path lookup."""

from __future__ import annotations

from pathlib import Path

from scenarios.model import ScenarioError, ScenarioSpec, load_scenario

__all__ = ["FILES", "bundled", "resolve"]

FILES = Path(__file__).resolve().parent / "files"


def bundled() -> list[ScenarioSpec]:
    """Every bundled scenario, by name."""
    specs = [load_scenario(path) for path in sorted(FILES.glob("*.toml"))]
    return sorted(specs, key=lambda s: s.name)


def resolve(name_or_path: str) -> list[ScenarioSpec]:
    """``all`` -> every bundled scenario; a file path -> that file; else the bundled one by name."""
    if name_or_path == "all":
        return bundled()
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return [load_scenario(path)]
    specs = bundled()
    for spec in specs:
        if spec.name == name_or_path:
            return [spec]
    names = ", ".join(s.name for s in specs)
    raise ScenarioError(
        f"no scenario named {name_or_path!r}: choose all, a file, or one of {names}"
    )
