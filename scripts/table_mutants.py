"""Hand-made mutants of the module-level tables that mutmut does not touch.

Each mutant edits one entry of a table (the lifecycle adjacency, ACTIVE, GUARD, the gate check
table, the envelope constants) in a throwaway copy of the tree and runs the tests that pin that
table; a mutant whose tests still pass survives. Prints one line per mutant and a summary.

    .venv/bin/python scripts/table_mutants.py [lifecycle|gates|envelope ...]
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
Mutant = tuple[str, str]  # (label, mutated source)

SUITES = {
    "lifecycle": (
        "actors/seed/lifecycle.py",
        ["tests/actors/test_lifecycle_table.py"],
    ),
    "gates": (
        "actors/gates/checks.py",
        ["tests/actors/test_gate_table.py"],
    ),
    "envelope": (
        "contracts/envelope.py",
        ["tests/contracts/test_envelope_limits.py", "tests/contracts/test_envelope.py"],
    ),
}

# Checks whose design is being reworked: reported, but not counted as table survivors.
UNPINNED = {"slot_free", "slot_embargoed"}
UNPINNED_GATES = {"SEED_GATE_G1_GRADIENT_HEALTH", "SEED_GATE_G4_SYSTEM_IMPACT"}


def _splice(src: str, node: ast.AST, text: str) -> str:
    lines = src.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    a = starts[node.lineno - 1] + node.col_offset  # type: ignore[attr-defined]
    b = starts[node.end_lineno - 1] + node.end_col_offset  # type: ignore[attr-defined]
    return src[:a] + text + src[b:]


def _delete(src: str, node: ast.AST) -> str:
    """Remove ``node`` and the comma that follows it."""
    marked = _splice(src, node, "\0")
    a = marked.index("\0")
    b = a + 1
    while b < len(marked) and marked[b] in " \t\n":
        b += 1
    if b < len(marked) and marked[b] == ",":
        b += 1
    return marked[:a] + marked[b:]


def _assigned(tree: ast.Module, name: str) -> ast.expr:
    for node in tree.body:
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            value = node.value
            assert value is not None
            return value
    raise KeyError(name)


def _short(node: ast.AST) -> str:
    return ast.unparse(node).replace("S.SEED_STAGE_", "").replace("G.SEED_GATE_", "")


def _set_members(node: ast.expr) -> ast.Set:
    """``frozenset({...})`` -> the set literal."""
    assert isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Set), node
    return node.args[0]


def lifecycle_mutants(src: str) -> Iterator[Mutant]:
    tree = ast.parse(src)
    allowed = _assigned(tree, "ALLOWED")
    assert isinstance(allowed, ast.Call)
    table = allowed.args[0]
    assert isinstance(table, ast.Dict)
    for key, row in zip(table.keys, table.values, strict=True):
        assert key is not None
        members = _set_members(row).elts if isinstance(row, ast.Call) and row.args else []
        for m in members:
            rest = [ast.unparse(e) for e in members if e is not m]
            text = f"frozenset({{{', '.join(rest)}}})" if rest else "frozenset()"
            yield f"ALLOWED: drop {_short(key)} -> {_short(m)}", _splice(src, row, text)
    extra = {
        "S.SEED_STAGE_DORMANT": "S.SEED_STAGE_TRAINING",
        "S.SEED_STAGE_FOSSILIZED": "S.SEED_STAGE_CULLED",
        "S.SEED_STAGE_EMBARGOED": "S.SEED_STAGE_DORMANT",
        "S.SEED_STAGE_TERMINATED": "S.SEED_STAGE_DORMANT",
    }
    for key, row in zip(table.keys, table.values, strict=True):
        frm = ast.unparse(key)  # type: ignore[arg-type]
        if frm in extra:
            members = [ast.unparse(e) for e in _set_members(row).elts] if row.args else []  # type: ignore[attr-defined]
            text = f"frozenset({{{', '.join([*members, extra[frm]])}}})"
            yield (
                f"ALLOWED: add {_short(key)} -> {extra[frm].split('_')[-1]}",
                _splice(src, row, text),
            )  # type: ignore[arg-type]
    active = _set_members(_assigned(tree, "ACTIVE"))
    for m in active.elts:
        rest = ", ".join(ast.unparse(e) for e in active.elts if e is not m)
        yield f"ACTIVE: drop {_short(m)}", _splice(src, active, "{" + rest + "}")
    for add in ("S.SEED_STAGE_DORMANT", "S.SEED_STAGE_FOSSILIZED"):
        members = ", ".join([*(ast.unparse(e) for e in active.elts), add])
        yield f"ACTIVE: add {add.split('_')[-1]}", _splice(src, active, "{" + members + "}")
    guard = _assigned(tree, "GUARD")
    assert isinstance(guard, ast.Call)
    gtable = guard.args[0]
    assert isinstance(gtable, ast.Dict)
    gates = [ast.unparse(v) for v in gtable.values]
    for i, (key, value) in enumerate(zip(gtable.keys, gtable.values, strict=True)):
        other = gates[(i + 1) % len(gates)]
        yield f"GUARD: {_short(key)} guarded by {other.split('.')[-1]}", _splice(src, value, other)  # type: ignore[arg-type]


def _spec_name(spec: ast.expr) -> str:
    if isinstance(spec, ast.Call):  # _flag(ev.X)
        return ast.unparse(spec.args[0]).removeprefix("ev.").lower()
    assert isinstance(spec, ast.Tuple)
    first = spec.elts[0]
    if isinstance(first, ast.Constant):
        return str(first.value)
    return ast.unparse(first).removeprefix("ev.").lower()


FLIP = {">=": ">", ">": ">=", "<=": ">=", "==": "<="}


def gate_mutants(src: str) -> Iterator[Mutant]:
    tree = ast.parse(src)
    table = _assigned(tree, "GATE_CHECKS")
    assert isinstance(table, ast.Dict)
    for key, specs in zip(table.keys, table.values, strict=True):
        gate = ast.unparse(key).removeprefix("G.")  # type: ignore[arg-type]
        assert isinstance(specs, ast.Tuple)
        for spec in specs.elts:
            name = _spec_name(spec)
            tag = f"{gate.removeprefix('SEED_GATE_')}.{name}"
            if gate in UNPINNED_GATES or name in UNPINNED:
                tag = "(unpinned) " + tag
            yield f"{tag}: deleted", _delete(src, spec)
            if isinstance(spec, ast.Tuple):
                comp = spec.elts[2]
                assert isinstance(comp, ast.Constant)
                yield (
                    f"{tag}: {comp.value} -> {FLIP[comp.value]}",
                    _splice(src, comp, repr(FLIP[comp.value])),
                )
                limit = spec.elts[3]
                yield (
                    f"{tag}: limit + 1",
                    _splice(src, limit, f"lambda t: ({ast.unparse(limit)})(t) + 1"),
                )
            else:
                yield (
                    f"{tag}: == 1 -> == 0",
                    _splice(
                        src,
                        spec,
                        f"({ast.unparse(spec.args[0])}, _metric({ast.unparse(spec.args[0])}), '==', lambda t: 0.0)",  # type: ignore[attr-defined]
                    ),
                )


ENVELOPE_EDITS = [
    ("VERSION = 2", "VERSION = 3"),
    ('DOMAIN = b"kasmina.leyline.v2\\x00"', 'DOMAIN = b"kasmina.leyline.v2"'),
    ("FIELDS = 11", "FIELDS = 12"),
    ("SIG_BYTES = 32", "SIG_BYTES = 31"),
    ("MAX_FIELD_BYTES = 256", "MAX_FIELD_BYTES = 257"),
    ("MAX_FIELD_BYTES = 256", "MAX_FIELD_BYTES = 255"),
    ("DEFAULT_MAX_BYTES = 1 << 20", "DEFAULT_MAX_BYTES = (1 << 20) + 1"),
    ("DEFAULT_MAX_BYTES = 1 << 20", "DEFAULT_MAX_BYTES = (1 << 20) - 1"),
    ("WALK_ABOVE = 1024", "WALK_ABOVE = 1 << 20"),
    ('_LENS = struct.Struct(">10I")', '_LENS = struct.Struct("<10I")'),
    ('_TS = struct.Struct(">Q")', '_TS = struct.Struct("<Q")'),
    ("_TS_LIMIT = 2**63", "_TS_LIMIT = 2**64"),
    ('_V2 = b"2"', '_V2 = b"02"'),
    ("_IPAD = bytes(x ^ 0x36 for x in range(256))", "_IPAD = bytes(x ^ 0x5C for x in range(256))"),
    ("if len(_PADS) >= 256:", "if len(_PADS) >= 257:"),
    ("tolerance_s: float = 60.0", "tolerance_s: float = 61.0"),
]


def envelope_mutants(src: str) -> Iterator[Mutant]:
    for old, new in ENVELOPE_EDITS:
        if src.count(old) != 1:
            yield f"(not applicable) {old!r}", src
            continue
        yield f"{old} -> {new}", src.replace(old, new)


GENERATORS = {"lifecycle": lifecycle_mutants, "gates": gate_mutants, "envelope": envelope_mutants}


def _copy_tree(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for rel in files:
        if rel.startswith("mutants/") or not (ROOT / rel).is_file():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("tables", nargs="*", default=list(SUITES))
    args = ap.parse_args()
    survivors: list[str] = []
    total = 0
    with tempfile.TemporaryDirectory(prefix="kasmina-table-mutants-") as tmp:
        work = Path(tmp)
        _copy_tree(work)
        env = dict(os.environ, PYTHONPATH=str(work), PYTHONDONTWRITEBYTECODE="1")
        for table in args.tables:
            module, tests = SUITES[table]
            path = work / module
            original = path.read_text()
            for label, mutated in GENERATORS[table](original):
                if mutated == original or label.startswith("(unpinned)"):
                    print(f"  skip      {table}: {label}")
                    continue
                path.write_text(mutated)
                proc = subprocess.run(
                    [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                    cwd=work, env=env, capture_output=True, text=True, check=False,
                )  # fmt: skip
                path.write_text(original)
                killed = proc.returncode != 0
                total += 1
                if not killed:
                    survivors.append(f"{table}: {label}")
                print(f"  {'killed' if killed else 'SURVIVED'}  {table}: {label}", flush=True)
    print(
        f"\n{total - len(survivors)} of {total} table mutants killed; survivors: {len(survivors)}"
    )
    for s in survivors:
        print(f"  {s}")
    return 1 if survivors else 0


if __name__ == "__main__":
    raise SystemExit(main())
