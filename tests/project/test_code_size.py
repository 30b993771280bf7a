"""Pins the size rules of the library packages: modules of at most 400 lines, functions of at
most 50 lines and cyclomatic complexity 12 (benchmarks, a developer tool, are measured but
exempt)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ("actors/", "bus/", "contracts/", "kasmina/", "leyline/", "scenarios/")


def _measure_code() -> ModuleType:
    spec = importlib.util.spec_from_file_location("measure_code", ROOT / "scripts/measure_code.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("measure_code", module)  # its dataclasses look their module up
    spec.loader.exec_module(sys.modules["measure_code"])
    return sys.modules["measure_code"]


def test_no_library_module_or_function_is_over_the_limits() -> None:
    """scripts/measure_code.py finds no library module over 400 lines and no library function
    over 50 lines or complexity 12."""
    mc = _measure_code()
    modules, functions = mc.measure(ROOT)
    assert len(modules) > 100 and len(functions) > 1000  # the packages were found and measured
    big = {m: n for m, n in modules.items() if m.startswith(LIBRARY) and n > 400}
    over = [
        f"{f.module}:{f.line} {f.name} ({f.lines} lines, cc {f.complexity})"
        for f in functions
        if f.module.startswith(LIBRARY) and (f.lines > 50 or f.complexity > 12)
    ]
    assert big == {} and over == []


def test_the_measure_counts_lines_and_branches() -> None:
    """The measure itself: a function's lines from def to its end, one complexity per branch."""
    import ast

    mc = _measure_code()
    source = "def f(x):\n    if x:\n        return 1\n    for i in x:\n        pass\n    return 0\n"
    (fn,) = mc._functions("m.py", ast.parse(source))
    assert (fn.name, fn.lines, fn.complexity) == ("f", 6, 3)
