"""Bad arguments are refused before a command does anything: one line naming the option, exit 2,
nothing sent, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.recording import _write
from bus.testing import _free_port
from contracts import KeyRing
from kasmina.cli import main


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as done:
        main(args)
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out + captured.err


REFUSED = [
    (["keys", "rotate", "K", "--grace", "inf"], "--grace"),
    (["keys", "rotate", "K", "--grace", "-5"], "--grace"),
    (["keys", "prune", "K", "--older-than", "nan"], "--older-than"),
    (["status", "--interval", "nan"], "--interval"),
    (["status", "--interval", "0"], "--interval"),
    (["publish", "pause", "--slot", "s1", "--run", ""], "--run"),
    (["publish", "pause", "--slot", "s1", "--redis", " "], "--redis"),
    (["publish", "pause", "--slot", "s1", "--wait", "--timeout", "nan"], "--timeout"),
    (["publish", "pause", "--slot", "s1", "--wait", "--timeout", "-1"], "--timeout"),
    (["publish", "germinate", "--slot", "s1", "--blend-steps=-5"], "--blend-steps"),
    (["run", "--prometheus-port", "99999"], "--prometheus-port"),
    (["train", "--steps", "-5"], "--steps"),
    (["replay", "x.kasrec", "--until", "abc"], "--until"),
    (["bench", "--only", "execution", "--bus", "bogus"], "--bus"),
    (["bench", "--only", "execution", "--bus", "redis://127.0.0.1:6379/abc"], "--bus"),
]


@pytest.mark.parametrize(("args", "option"), REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_an_out_of_range_argument_is_refused_naming_its_option(
    args: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each value a command could not use (infinite, NaN, negative, empty, out of range, not an
    entry id) exits 2 with argparse's line naming the option, before any key file, bus or model
    is touched (the key file ``K`` does not even exist)."""
    code, text = _cli(args, capsys)
    assert code == 2 and "Traceback" not in text
    assert f"argument {option}" in text.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "args",
    [["--steps", "100"], ["--bus", "bogus"], ["--seed", "-1"], ["--seed", str(2**32)]],
)
def test_a_refused_demo_writes_nothing(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A demo refused for its arguments (under 200 steps, an unknown bus, a seed the data split
    or torch cannot take) creates no output directory and no key file."""
    out = tmp_path / "out"
    code, text = _cli(["demo", "--out", str(out), *args], capsys)
    assert code == 2 and "Traceback" not in text
    assert not out.exists()


def test_a_demo_refuses_an_out_it_cannot_write_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--out`` naming a file, or a place no directory can be made, exits 2 naming ``--out``
    before the run starts (no progress, no key file); a bad ``KASMINA__`` setting likewise, in
    one line."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out, why in ((blocker, "exists and is not a directory"), (blocker / "sub", "cannot write")):
        code, text = _cli(["demo", "--out", str(out)], capsys)
        assert code == 2 and "Traceback" not in text
        assert text.strip().splitlines()[-1].startswith(f"kasmina demo: --out {out}: {why}")
    monkeypatch.setenv("KASMINA__GATES__NOSUCH", "1")
    code, text = _cli(["demo", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and text.strip().splitlines() == [
        "kasmina demo: invalid KasminaConfig: gates.nosuch: Extra inputs are not permitted"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("actors", "slots", "why"),
    [("", "", "no actors to serve"), ("seed", "a,b,a", "--slots names a more than once")],
)
def test_run_refuses_nothing_to_serve_and_a_slot_twice(
    actors: str, slots: str, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``run`` with no actors (it would serve nothing for ever) or a slot named twice (two
    SeedActors for one slot) exits 2 naming why."""
    keys = tmp_path / "keys.json"
    KeyRing.generate().save(keys)
    code, text = _cli(["run", "--redis", "memory://cli-bad-args", "--run", "r", "--keys",
                       str(keys), "--actors", actors, "--slots", slots], capsys)  # fmt: skip
    assert code == 2 and why in text and "Traceback" not in text


def test_a_recording_written_over_a_directory_leaves_nothing(tmp_path: Path) -> None:
    """Writing a recording to a directory's path fails before anything is written, and leaves
    no temporary file beside it."""
    target = tmp_path / "adir"
    target.mkdir()
    with pytest.raises(IsADirectoryError):
        _write(target, ["{}\n"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]


@pytest.mark.redis
def test_status_watch_stops_on_sigterm_with_exit_0(tmp_path: Path) -> None:
    """``status --watch`` ends on SIGTERM as on Ctrl-C: exit 0, as its help says."""
    import os
    import signal
    import subprocess
    import sys

    from bus.testing import real_redis_url

    keys = tmp_path / "keys.json"
    KeyRing.generate().save(keys)
    cmd = [sys.executable, "-m", "kasmina", "status", "--watch", "--json", "--interval",
           "0.2", "--redis", real_redis_url(), "--run", "watch-sigterm", "--keys", str(keys)]  # fmt: skip
    watch = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watch.stdout is not None
        first = watch.stdout.readline()  # the first view is out: the watch is running
        assert first.startswith("{"), watch.stderr.read() if watch.stderr else ""
        os.kill(watch.pid, signal.SIGTERM)
        _, err = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0, err
    assert "Traceback" not in err


@pytest.mark.parametrize("option", ["--redis", "--bus"])
def test_a_bench_against_a_server_that_does_not_answer_stops_at_once(
    option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kasmina bench` against a port nobody listens on says so in one line, exit 2, instead
    of waiting on it (the execution part's bridge thread waited without end)."""
    url = f"redis://127.0.0.1:{_free_port()}/0"
    code, text = _cli(["bench", "--only", "execution", option, url], capsys)
    assert code == 2 and "Traceback" not in text
    assert text.strip().splitlines()[-1] == f"kasmina bench: Redis unavailable at {url}"


def test_a_scenario_run_against_a_server_that_does_not_answer_stops_at_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`kasmina scenario run` on a Redis nobody listens on says so in one line, exit 2, instead
    of its actors waiting for the server without end."""
    url = f"redis://127.0.0.1:{_free_port()}/0"
    code, text = _cli(["scenario", "run", "happy-path", "--bus", url], capsys)
    assert code == 2 and "Traceback" not in text
    assert text.strip().splitlines()[-1] == f"kasmina scenario: Redis unavailable at {url}"


def test_train_refuses_a_device_torch_does_not_know_as_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``train --device nosuchdev`` is a bad argument (exit 2, one line naming ``--device``),
    found before any key file or Redis is touched, not an unexpected error (exit 1)."""
    code, text = _cli(["train", "--device", "nosuchdev", "--steps", "5"], capsys)
    assert code == 2 and "Traceback" not in text
    assert text.strip().splitlines()[-1].startswith("kasmina train: --device 'nosuchdev': ")


CONFLICTS = [
    (["publish", "pause", "--slot", "s1", "--at-step", "5", "--masks", "nofile.json"],
     "kasmina publish: --masks, --at-step: only for prune, not pause"),
    (["publish", "cull", "--slot", "s1", "--blueprint", "width"],
     "kasmina publish: --blueprint: only for germinate, not cull"),
    (["publish", "pause", "--slot", "s1", "--param", "hidden=8"],
     "kasmina publish: --param: only for germinate, not pause"),
    (["publish", "prune", "--slot", "s1", "--masks", "m.json"],
     "kasmina publish: --slot: prune names no slot (it applies its masks to every rank)"),
    (["run", "--actors", "gate", "--slots", "hidden"],
     "kasmina run: --slots names the slots of seed actors: add seed to --actors"),
    (["status", "--count", "2"], "kasmina status: --count: only with --watch (a single view is the default)"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "line"), CONFLICTS, ids=[" ".join(a) for a, _ in CONFLICTS])
def test_an_option_the_command_would_ignore_is_refused(
    args: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An option the chosen action or mode does not take is a usage error (exit 2, one line
    naming it), never silently ignored, and is found before Redis or a key file is touched."""
    code, text = _cli([*args, "--redis", f"redis://127.0.0.1:{_free_port()}/0"], capsys)
    assert code == 2 and "Traceback" not in text
    assert text.strip().splitlines()[-1] == line


@pytest.mark.redis
def test_status_of_a_run_the_server_knows_nothing_of_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``status --run`` naming a run with no events, heartbeats or streams on the server shows
    its empty view (exit 0: a run about to start looks the same) and says on stderr that nothing
    of it is there, so a misspelt run id or a wrong database is not mistaken for an idle run."""
    from bus.testing import real_redis_url

    keys = tmp_path / "keys.json"
    KeyRing.generate().save(keys)
    run = "nosuch" + str(_free_port())
    code, text = _cli(
        ["status", "--redis", real_redis_url(), "--run", run, "--keys", str(keys)], capsys
    )
    assert code == 0 and "Traceback" not in text
    assert text.strip().splitlines()[-1].startswith(f"kasmina status: nothing of run {run} on this")
