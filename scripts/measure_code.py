"""Size and complexity of the package code: modules over 400 lines, functions over 50 lines or
over cyclomatic complexity 12.

Usage: python scripts/measure_code.py [--json] [--all] [ROOT]

Counts physical lines of each module (generated ``*_pb2*`` files aside) and, per function or
method, its lines (``def`` to last line, decorators and docstring included) and its cyclomatic
complexity (1 + one per ``if``/``elif``, loop, ``except``, ``with``-less boolean operand,
conditional expression, comprehension ``if``/``for``, ``case`` and ``assert``), as mccabe counts.
Prints a summary table and the offenders; ``--all`` lists every function. Exits 0 always (it
measures; the limits are reported, not enforced).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

PACKAGES = ("actors", "bus", "contracts", "kasmina", "leyline", "scenarios", "benchmarks")
MODULE_LIMIT = 400
FUNCTION_LIMIT = 50
COMPLEXITY_LIMIT = 12


@dataclass(frozen=True)
class Function:
    """One function or method."""

    module: str
    name: str
    line: int
    lines: int
    complexity: int


class _Complexity(ast.NodeVisitor):
    def __init__(self) -> None:
        self.count = 1

    def _add(self, node: ast.AST, n: int = 1) -> None:
        self.count += n
        self.generic_visit(node)

    def visit_If(self, node: ast.If) -> None:
        self._add(node)

    def visit_For(self, node: ast.For) -> None:
        self._add(node)

    def visit_AsyncFor(self, node: ast.AsyncFor) -> None:
        self._add(node)

    def visit_While(self, node: ast.While) -> None:
        self._add(node)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        self._add(node)

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self._add(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        self._add(node, len(node.values) - 1)

    def visit_comprehension(self, node: ast.comprehension) -> None:
        self._add(node, 1 + len(node.ifs))

    def visit_match_case(self, node: ast.match_case) -> None:
        self._add(node)

    def visit_Assert(self, node: ast.Assert) -> None:
        self._add(node)

    # nested functions and classes are measured on their own
    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        return

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        return

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        return

    def visit_Lambda(self, node: ast.Lambda) -> None:
        return


def _complexity(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    visitor = _Complexity()
    for stmt in fn.body:
        visitor.visit(stmt)
    return visitor.count


def _functions(module: str, tree: ast.AST, prefix: str = "") -> list[Function]:
    out: list[Function] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            lines = (node.end_lineno or node.lineno) - start + 1
            name = prefix + node.name
            out.append(Function(module, name, node.lineno, lines, _complexity(node)))
            out += _functions(module, node, name + ".")
        elif isinstance(node, ast.ClassDef):
            out += _functions(module, node, prefix + node.name + ".")
    return out


def measure(root: Path) -> tuple[dict[str, int], list[Function]]:
    """Lines per module and every function, for the packages under ``root``."""
    modules: dict[str, int] = {}
    functions: list[Function] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "_pb2" in path.name:
                continue
            rel = str(path.relative_to(root))
            text = path.read_text()
            modules[rel] = len(text.splitlines())
            functions += _functions(rel, ast.parse(text, rel))
    return modules, functions


def summary(modules: dict[str, int], functions: list[Function]) -> dict[str, object]:
    """The table's figures and the offenders."""
    big = {m: n for m, n in modules.items() if n > MODULE_LIMIT}
    long_ = [f for f in functions if f.lines > FUNCTION_LIMIT]
    complex_ = [f for f in functions if f.complexity > COMPLEXITY_LIMIT]
    return {
        "modules": len(modules),
        "lines": sum(modules.values()),
        "largest_module": max(modules.values(), default=0),
        "modules_over_limit": big,
        "functions": len(functions),
        "longest_function": max((f.lines for f in functions), default=0),
        "most_complex_function": max((f.complexity for f in functions), default=0),
        "functions_over_length": [asdict(f) for f in long_],
        "functions_over_complexity": [asdict(f) for f in complex_],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=".")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--all", action="store_true", help="list every function")
    args = parser.parse_args()
    modules, functions = measure(Path(args.root))
    report = summary(modules, functions)
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
        return
    print(
        f"modules {report['modules']}, lines {report['lines']}, largest {report['largest_module']}"
    )
    print(f"functions {report['functions']}, longest {report['longest_function']} lines, "
          f"most complex {report['most_complex_function']}")  # fmt: skip
    print(f"\nmodules over {MODULE_LIMIT} lines:")
    for module, n in sorted(report["modules_over_limit"].items(), key=lambda kv: -kv[1]):  # type: ignore[attr-defined]
        print(f"  {n:5d}  {module}")
    shown = functions if args.all else [
        f for f in functions if f.lines > FUNCTION_LIMIT or f.complexity > COMPLEXITY_LIMIT
    ]  # fmt: skip
    print(f"\nfunctions over {FUNCTION_LIMIT} lines or complexity {COMPLEXITY_LIMIT}:")
    for f in sorted(shown, key=lambda f: (f.module, f.line)):
        print(f"  {f.lines:4d} lines  cc {f.complexity:3d}  {f.module}:{f.line}  {f.name}")


if __name__ == "__main__":
    main()
