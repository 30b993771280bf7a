"""``kasmina scenario list | run``: output formats, exit codes, failed expectations named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from kasmina.cli import main
from scenarios.catalog import FILES, bundled

ROOT = Path(__file__).resolve().parents[2]


def _broken(tmp_path: Path) -> Path:
    """hostile-commands with a wrong expected count of replayed rejects."""
    text = (FILES / "hostile-commands.toml").read_text(encoding="utf-8")
    text = text.replace("replayed = 2", "replayed = 5")
    assert tomllib.loads(text)["expect"]["rejected"]["replayed"] == 5
    path = tmp_path / "broken.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0)


def test_list_json_names_every_bundled_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    """``scenario list --json`` prints one object (name, description) per bundled scenario."""
    assert _exit_code(["scenario", "list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == [s.name for s in bundled()]
    assert all(r["description"] for r in rows)


def test_run_by_name_passes_with_json(capsys: pytest.CaptureFixture[str]) -> None:
    """``scenario run NAME --json`` exits 0 and prints scenario, passed and empty failures."""
    assert _exit_code(["scenario", "run", "g0-refused", "--bus", "memory", "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["scenario"] == "g0-refused" and row["passed"] is True and row["failures"] == {}


def test_run_broken_file_exits_1_naming_the_expectation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed expectation exits 1; text output and stderr both name it."""
    assert _exit_code(["scenario", "run", str(_broken(tmp_path))]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("FAIL hostile-commands")
    assert "rejected[replayed]: expected 5, got 2" in out
    assert "hostile-commands failed: rejected[replayed]" in err


def test_unknown_scenario_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown name exits 2 with one line naming the problem."""
    assert _exit_code(["scenario", "run", "no-such-thing"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kasmina scenario: no scenario named 'no-such-thing'")
    assert "\n" not in err


def test_run_in_a_subprocess_reports_json_failures(tmp_path: Path) -> None:
    """``python -m kasmina scenario run FILE --json`` exits 1 with the failure in its JSON line."""
    proc = subprocess.run(
        [sys.executable, "-m", "kasmina", "scenario", "run", str(_broken(tmp_path)), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 1, proc.stderr
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["scenario"] == "hostile-commands" and row["passed"] is False
    assert row["failures"] == {"rejected[replayed]": "expected 5, got 2"}
    assert "rejected[replayed]" in proc.stderr
