"""Errors a command meets in one of its concurrent tasks exit with one line, like any other: a
Redis writer who turns a run's stream into a plain string makes ``publish --wait`` fail cleanly."""

from __future__ import annotations

import pytest
import redis
from test_cli_run import cli_env, kasmina  # noqa: F401  (the fixture is used by name)

from bus import BusError
from contracts import streams

pytestmark = pytest.mark.redis


def test_publish_wait_reports_a_wrong_typed_stream_in_one_line(
    cli_env: dict[str, str],  # noqa: F811
) -> None:
    """`publish --wait` whose outcome watcher meets WRONGTYPE exits 2 with a one-line reason."""
    client = redis.Redis.from_url(cli_env["KASMINA_REDIS"])
    inbox = streams.inbox(cli_env["KASMINA_RUN"], "seed", "l1.s0")
    client.xgroup_create(inbox, "actor:seed:l1.s0", id="0", mkstream=True)  # the slot is served
    client.set(streams.outcomes(cli_env["KASMINA_RUN"]), b"not a stream")
    try:
        done = kasmina("publish", "germinate", "--slot", "l1.s0", "--blueprint", "residual_mlp",
                       "--wait", "--timeout", "5", env=cli_env)  # fmt: skip
    finally:
        client.delete(streams.outcomes(cli_env["KASMINA_RUN"]), inbox)
        client.close()
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]  # after the progress lines of the wait
    assert last.startswith("kasmina publish: Redis:") and "WRONGTYPE" in last


def test_a_group_of_reported_errors_stands_for_its_first_leaf_and_a_bug_for_itself() -> None:
    """A task group's failure is reported by its first leaf the command line does not foresee
    (a bug), else by its first leaf."""
    from kasmina.cli import _leaf

    first, second = BusError("refused"), ValueError("bad")
    nested = BaseExceptionGroup("outer", [ExceptionGroup("inner", [first]), second])
    assert _leaf(nested) is first
    bug = KeyError("bug")
    buggy = ExceptionGroup("outer", [first, ExceptionGroup("inner", [bug])])
    assert _leaf(buggy) is bug
    plain = RuntimeError("x")
    assert _leaf(plain) is plain


def test_an_unforeseen_error_is_one_line_and_exit_1_unless_debugging(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error no command foresaw (a library's OverflowError, say) prints one line naming its
    type, exit 1, no traceback; with KASMINA_DEBUG set it is raised with its traceback."""
    from kasmina.cli import _exit_code

    monkeypatch.delenv("KASMINA_DEBUG", raising=False)
    assert _exit_code("keys", OverflowError("cannot convert float infinity to integer")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("kasmina keys: unexpected OverflowError: cannot convert float")
    monkeypatch.setenv("KASMINA_DEBUG", "1")
    with pytest.raises(OverflowError):
        _exit_code("keys", OverflowError("again"))


def test_a_reader_that_went_away_ends_a_command_quietly_with_141(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kasmina replay … | head`: the broken pipe is no usage error (exit 2) and prints nothing;
    the exit code is 141, as a shell reports SIGPIPE, and stdout is pointed at /dev/null so the
    interpreter's last flush cannot fail again."""
    from kasmina import cli

    moved: list[int] = []
    monkeypatch.setattr(cli.os, "dup2", lambda fd, to: moved.append(to))
    monkeypatch.setattr(cli.sys.stdout, "fileno", lambda: 1)
    assert cli._exit_code("replay", BrokenPipeError(32, "Broken pipe")) == 141
    assert moved == [1]
    out = capsys.readouterr()
    assert out.out == out.err == ""


@pytest.mark.parametrize("wait", [[], ["--wait", "--timeout", "3"]])
def test_publish_to_a_redis_that_does_not_answer_says_so_at_once(
    cli_env: dict[str, str],  # noqa: F811
    wait: list[str],
) -> None:
    """`publish` against a port nobody listens on exits 2 with one line that names the URL and
    says nothing was sent, before any of its waits (it used to wait out its own retries of the
    slot's heartbeat for about 30 s, whatever --timeout said)."""
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    done = kasmina("publish", "pause", "--slot", "l1.s0", "--redis", url, *wait, env=cli_env)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"kasmina publish: Redis: no answer from {url}; nothing was sent"
    ]
