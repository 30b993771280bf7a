"""Print the mutation table of ``scripts/mutation.sh`` runs (one mutmut work directory per module).

A mutant counts as killed when its tests failed or timed out; anything else (survived, no tests,
suspicious) counts against the score. mutmut activates a mutant when its function is called, so a
mutant of code that runs only at import (the helpers that build a module-level table) cannot be
activated in its forked runs; ``--recheck`` runs each survivor again in a fresh pytest process
with the mutant chosen before import (``MUTANT_UNDER_TEST``), which settles those.

A survivor is *text-only* when the mutation changed nothing but the contents of string literals
(a message, a docstring); the last column leaves those out.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tokenize
from pathlib import Path

KILLED = {1, 3, 24, -24, 36, 152, 255, 37}


def _shape(lines: list[str]) -> list[tuple[int, str]]:
    """Tokens of some source lines with every string literal's contents blanked."""
    text = "\n".join(line.strip() for line in lines) + "\n"
    out: list[tuple[int, str]] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
                continue
            out.append((tok.type, "STR" if tok.type == tokenize.STRING else tok.string))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return [(-1, text)]
    return out


def text_only(diff: str) -> bool:
    """True when the diff's removed and added lines differ only inside string literals."""
    minus = [ln[1:] for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    plus = [ln[1:] for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    return bool(minus) and _shape(minus) == _shape(plus)


def _show(mutmut: str, workdir: Path, name: str) -> str:
    return subprocess.run(
        [mutmut, "show", name], cwd=workdir, capture_output=True, text=True, check=False
    ).stdout


def _cfg_list(workdir: Path, name: str) -> list[str]:
    """The indented values of ``name`` in the run's setup.cfg."""
    cfg = (workdir / "setup.cfg").read_text().splitlines()
    start = next((i for i, ln in enumerate(cfg) if ln.startswith(name + "=")), None)
    if start is None:
        return []
    first = cfg[start].partition("=")[2].strip()
    out = [first] if first else []
    for ln in cfg[start + 1 :]:
        if not ln.startswith("    "):
            break
        out.append(ln.strip())
    return out


def _tests(workdir: Path) -> list[str]:
    """The run's test selection and its extra pytest arguments (the same deselection)."""
    return _cfg_list(workdir, "pytest_add_cli_args_test_selection") + _cfg_list(
        workdir, "pytest_add_cli_args"
    )


def _recheck(workdir: Path, name: str, tests: list[str]) -> bool:
    """Run the module's tests on one mutant in a fresh process: True when they fail (killed)."""
    env = dict(os.environ, MUTANT_UNDER_TEST=name)
    cmd = [sys.executable, "-m", "pytest", "-x", *(tests or _tests(workdir))]
    proc = subprocess.run(cmd, cwd=workdir / "mutants", env=env, capture_output=True, check=False)
    return proc.returncode != 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs", nargs="+", help="module=workdir pairs")
    ap.add_argument("--mutmut", default="mutmut")
    ap.add_argument("--recheck", action="store_true", help="re-run survivors in a fresh process")
    ap.add_argument("--show", action="store_true", help="print every survivor's diff")
    ap.add_argument(
        "--recheck-tests",
        default="",
        help="pytest arguments for the re-runs, space separated (default: the run's own "
        "selection); a subset only makes the score a lower bound",
    )
    args = ap.parse_args()
    rows = ["| module | mutants | killed | score | ignoring text-only survivors |",
            "|---|---|---|---|---|"]  # fmt: skip
    details: list[str] = []
    for run in args.runs:
        module, _, wd = run.partition("=")
        workdir = Path(wd)
        meta = json.loads((workdir / "mutants" / (module + ".meta")).read_text())
        # mutants not run (a run limited to some functions) are left out of the table
        codes: dict[str, int] = {k: c for k, c in meta["exit_code_by_key"].items() if c is not None}
        survivors = sorted(k for k, c in codes.items() if c not in KILLED)
        if args.recheck:
            survivors = [
                k for k in survivors if not _recheck(workdir, k, args.recheck_tests.split())
            ]
        total = len(codes)
        killed = total - len(survivors)
        diffs = {k: _show(args.mutmut, workdir, k) for k in survivors}
        text = [k for k in survivors if text_only(diffs[k])]
        score = 100.0 * killed / total if total else 100.0
        rest = total - len(text)
        score_code = 100.0 * killed / rest if rest else 100.0
        rows.append(f"| `{module}` | {total} | {killed} | {score:.1f} % | {score_code:.1f} % |")
        for k in survivors:
            tag = "text-only" if k in text else "survivor"
            details.append(f"### {k} ({tag}, exit {codes[k]})\n```diff\n{diffs[k].strip()}\n```")
    print("\n".join(rows))
    if args.show and details:
        print("\n## Survivors\n")
        print("\n\n".join(details))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
