"""Pins the user docs: every `kasmina …` line of a code block parses, and the integration example runs."""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import torch
from torch import nn

from actors.assemble import build_shells
from actors.execution import ExecutionRuntime, RuntimeConfig, insert_slots
from actors.supervisor import Supervisor
from bus.testing import purge_prefix
from contracts import KasminaConfig, KeyRing, streams
from kasmina.cli import build_parser
from kasmina.wiring import connect
from scenarios.cluster import read_events

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.M | re.S)
# synopsis lines ("kasmina demo [--bus memory|fakeredis|redis://…]") are documentation of the
# grammar, not runnable commands: a token with one of these marks is a placeholder
PLACEHOLDER = ("…", "[", "]", "|", "<", ">")


def _blocks(path: Path) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(path.read_text(encoding="utf-8"))]


def _commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line (split at &&, ||, ;, |), comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    out: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set("&|;"):
            out.append([])
        else:
            out[-1].append(token)
    return [c for c in out if c]


def _kasmina_lines() -> list[tuple[str, list[str]]]:
    found = []
    for path in DOCS:
        for lang, body in _blocks(path):
            if lang not in ("", "bash", "sh", "shell", "console"):
                continue
            for line in body.splitlines():
                if "kasmina" not in line:
                    continue
                if any(mark in line for mark in PLACEHOLDER):
                    continue
                try:
                    commands = _commands(line)
                except ValueError:
                    continue  # not shell (output text with an odd quote)
                for words in commands:
                    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
                        words = words[1:]  # VAR=value prefixes
                    if words and re.fullmatch(r"(\S*/)?kasmina", words[0]) and len(words) > 1:
                        found.append((f"{path.name}: {line.strip()}", words[1:]))
    return found


LINES = _kasmina_lines()


def test_docs_show_kasmina_commands() -> None:
    """The scan finds the commands of README and every doc that shows some."""
    shown = {where.split(":")[0] for where, _ in LINES}
    assert {"README.md", "replay.md", "operations.md", "scenarios.md"} <= shown


@pytest.mark.parametrize(("where", "words"), LINES, ids=[w for w, _ in LINES])
def test_every_documented_command_parses(where: str, words: list[str]) -> None:
    """A `kasmina …` line in a code block parses with the CLI's parser to the sub-command it names."""
    try:
        args = build_parser().parse_args(words)
    except SystemExit as exc:
        pytest.fail(f"{where}: does not parse (exit {exc.code})")
    assert args.command == words[0]


def _python_block(path: Path, marker: str) -> str:
    for lang, body in _blocks(path):
        if lang == "python" and marker in body:
            return body
    raise AssertionError(f"no python block with {marker!r} in {path.name}")


def test_integration_example_runs_to_fossilized() -> None:
    """docs/integration.md's example runs to FOSSILIZED (every gate passed), digests intact."""
    code = _python_block(ROOT / "docs" / "integration.md", "anyio.run(main)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env = {k: v for k, v in env.items() if not k.startswith("KASMINA")}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    full = (
        "DORMANT -> GERMINATED -> TRAINING -> BLENDING -> SHADOWING -> PROBATIONARY -> FOSSILIZED"
    )
    assert f"body.s0: {full}\n" in proc.stdout, proc.stdout
    assert "digest mismatches: []" in proc.stdout


async def test_bus_bridge_snippet_feeds_the_actors() -> None:
    """The documented train_on_bus serves a runtime whose step reports reach separately run actors."""
    namespace: dict[str, Any] = {}
    exec(_python_block(ROOT / "docs" / "integration.md", "async def train_on_bus"), namespace)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    slots = insert_slots(model, {"l1.s0": "1"})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    config = KasminaConfig.load(env={}, overrides={"barrier.frequency": 5})
    runtime = ExecutionRuntime(
        model, slots, optimizer, RuntimeConfig(device="cpu", barrier_frequency=5, report_every=5)
    )
    ring, run, url = KeyRing.generate(), "docs-bridge", "memory://docs-bridge"

    def train_loop() -> None:
        x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
        for step in range(20):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            runtime.on_step(step, loss, val_loss=loss.item(), val_accuracy=0.5)

    actors = connect(url, run, ring, config)  # stands in for a `kasmina run` process
    shells = build_shells(
        bus=actors.bus,
        run=run,
        config=config,
        signer=actors.signer("kasmina-run"),
        verifier=actors.verifier(),
        slots=list(slots),
    )
    supervisor = Supervisor(shells)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(
                lambda task_status: supervisor.run(handle_signals=False, task_status=task_status)
            )
            await namespace["train_on_bus"](url, run, ring, config, runtime, train_loop)
            with anyio.fail_after(20):
                while True:  # the seed actor records the step reports (0,5,10,15) up to 15; a
                    # run of them handled in one batch is one event with its last step
                    events = await read_events(actors.bus, run, ring)
                    steps = {m.step for _, k, m in events if k == "lifecycle.progress"}
                    if 15 in steps:
                        assert steps <= {0, 5, 10, 15}
                        break
                    await anyio.sleep(0.02)
            assert await actors.bus.range(streams.rejected(run)) == []
            await supervisor.stop()
    finally:
        await purge_prefix(actors.bus, streams.prefix(run))
        await actors.bus.close()


EXAMPLES = {"cnn_digits.py": "features.s1", "transformer_block.py": "block.s0"}
WALK = "DORMANT -> GERMINATED -> TRAINING -> BLENDING -> SHADOWING -> PROBATIONARY -> "
G4_CHECKS = {"cf_gain_lcb", "cf_net_gain"}  # G4: significant gain, gain over cost


@pytest.mark.timeout(600)
def test_one_call_examples_walk_a_seed_to_its_g4_verdict() -> None:
    """docs/examples (a CNN with BatchNorm on digits images, a transformer block) each walk their
    seed through every gate to G4 with kasmina.attach (run side by side): FOSSILIZED, or culled by
    G4's significance or cost checks and nothing else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KASMINA")}
    env["PYTHONPATH"] = str(ROOT)
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(ROOT / "docs" / "examples" / name)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in EXAMPLES
    }
    outputs = {}
    try:
        for name, proc in procs.items():
            outputs[name] = proc.communicate(timeout=500)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for name, (out, err) in outputs.items():
        assert procs[name].returncode == 0, err[-3000:]
        walk = f"{EXAMPLES[name]}: {WALK}"
        fossil, culled = walk + "FOSSILIZED", walk + "CULLED -> EMBARGOED"
        assert fossil in out or culled in out, out + err[-2000:]
        failed = ast.literal_eval(out.split("failed gate checks: ", 1)[1].splitlines()[0])
        assert set(failed) <= G4_CHECKS and bool(failed) == (culled in out), out


def test_controller_example_compiles_against_the_client() -> None:
    """The KasminaClient example is valid Python and uses the client's real methods."""
    from actors.client import KasminaClient

    code = _python_block(ROOT / "docs" / "integration.md", "async def controller")
    compile(code, "integration.md", "exec")
    for method in ("command", "subscribe", "wait"):
        assert callable(getattr(KasminaClient, method))
    assert "client.subscribe(" in code and "client.command(" in code
