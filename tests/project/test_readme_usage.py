"""The README's usage block, run top to bottom by bash as a new user would (on a real Redis):
every command returns, the trainer is part of it, and the germination it publishes lands."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest

from bus import open_bus
from bus.testing import purge_prefix, real_redis_url
from contracts import streams

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.redis


def usage_block() -> list[str]:
    """The lines of the first bash block under '## Usage'."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Usage") :]
    match = re.search(r"^```bash\n(.*?)^```", section, re.M | re.S)
    assert match is not None
    return match.group(1).splitlines()


def _run_block(lines: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    run = f"readme-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KASMINA")}
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "KASMINA_REDIS": real_redis_url(),
            "KASMINA_RUN": run,
            "PYTHONUNBUFFERED": "1",
        }
    )
    script = "set -e\n" + "\n".join(lines) + "\n"
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the block's background jobs share this group
    )
    try:
        out, err = proc.communicate(timeout=540)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the block left running
        proc.wait()

        async def clean() -> None:
            bus = open_bus(real_redis_url())
            await purge_prefix(bus, streams.prefix(run))
            await bus.close()

        anyio.run(clean)
    return done, run


def _check_run_part(done: subprocess.CompletedProcess[str], run: str, where: Path) -> None:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    outcome = next(r for r in rows if "command_id" in r)
    assert outcome["ok"] and outcome["to_stage"] == "SEED_STAGE_GERMINATED", outcome
    status = next(r for r in rows if "actors" in r and "slots" in r)
    assert status["run"] == run
    assert {"seed:units", "seed:hidden", "gate", "barrier"} <= {a["name"] for a in status["actors"]}
    summary = next(r for r in rows if r.get("summary"))
    assert summary["verified"] and summary["slots"]["units"] != "DORMANT"
    assert (where / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # replay --plot


@pytest.mark.timeout(600)
def test_readme_usage_runs_a_trainer_and_every_command_returns(tmp_path: Path) -> None:
    """Keys, two `kasmina run`, `kasmina train`, publish --wait, status, record, replay, kill:
    the block up to the scripted runs returns and the germination lands."""
    lines = usage_block()
    cut = next(i for i, line in enumerate(lines) if line.startswith("kill "))
    done, run = _run_block(lines[: cut + 1], tmp_path)
    _check_run_part(done, run, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_readme_usage_block_runs_top_to_bottom(tmp_path: Path) -> None:
    """The whole block, scripted runs and benchmarks included, returns with exit code 0."""
    done, run = _run_block(usage_block(), tmp_path)
    _check_run_part(done, run, tmp_path)
