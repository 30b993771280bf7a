"""Actor processes of a chaos run: ``python -m kasmina run …`` started, SIGKILLed and restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from scenarios.chaos.plan import ProcessSpec

__all__ = ["ActorProcess", "config_toml", "rss_kib"]


def rss_kib(pid: int) -> tuple[int, int]:
    """(current, peak) resident set size of ``pid`` in KiB from /proc (0, 0 if gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def config_toml(overrides: dict[str, object]) -> str:
    """A KasminaConfig TOML file from ``section.field`` overrides."""
    sections: dict[str, list[str]] = {}
    for dotted, value in sorted(overrides.items()):
        section, _, name = dotted.partition(".")
        text = f'"{value}"' if isinstance(value, str) else str(value).lower()
        sections.setdefault(section, []).append(f"{name} = {text}")
    return "\n".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items())


@dataclass
class ActorProcess:
    """One ``kasmina run`` process serving ``spec`` (restartable under the same consumer names)."""

    spec: ProcessSpec
    url: str
    run: str
    keys: Path
    config: Path
    logdir: Path
    index: int
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    peak_rss_kib: int = 0
    pids: list[int] = field(default_factory=list)

    def argv(self) -> list[str]:
        argv = [
            sys.executable, "-m", "kasmina", "run", "--redis", self.url, "--run", self.run,
            "--keys", str(self.keys), "--config", str(self.config),
            "--actors", ",".join(self.spec.actors), "--log-level", "WARNING",
        ]  # fmt: skip
        if self.spec.slots:
            argv += ["--slots", ",".join(self.spec.slots)]
        return argv

    def start(self) -> None:
        """Start (or start again after a kill); a process that is running is left alone (one
        process per slot at a time: two would compete for the same consumer names)."""
        if self.alive():
            return
        log = self.logdir / f"proc{self.index}-{self.starts}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KASMINA")}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.argv(), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=Path.cwd()
            )
        self.pids.append(self.proc.pid)
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def sample_rss(self) -> int:
        """Current RSS (KiB); keeps the peak seen across samples."""
        if not self.alive():
            return 0
        assert self.proc is not None
        now, peak = rss_kib(self.proc.pid)
        self.peak_rss_kib = max(self.peak_rss_kib, peak)
        return now

    def kill(self) -> None:
        """SIGKILL: the crash (nothing is flushed, nothing acked)."""
        if self.alive():
            assert self.proc is not None
            self.sample_rss()
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.kills += 1

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout_s``); the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.sample_rss()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
