"""A Redis URL's database: a path that is no number is refused before anything connects, and a
number the server does not have is one line and exit 2, not a status of unreadable parts."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import pytest

from bus import BusConfigError, open_bus
from bus.connect import parse_bus_url
from bus.testing import shared_redis
from contracts import KeyRing
from kasmina.cli import main


def _with_db(url: str, db: str) -> str:
    """``url`` (``redis://host:port[/n]``) naming database ``db``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + db, parts.query, ""))


@pytest.mark.parametrize("path", ["abc", "1/2", "-1", "%C2%B2", "0x1"])
def test_a_database_path_that_is_no_number_is_refused(path: str) -> None:
    """redis-py would take such a path as database 0 (another run's data, or none): refused."""
    with pytest.raises(ValueError, match="names a database by its number"):
        parse_bus_url(f"redis://127.0.0.1:6379/{path}")


@pytest.mark.parametrize("url", ["redis://h:1", "redis://h:1/", "redis://h:1/7", "rediss://h/0",
                                 "unix:///tmp/r.sock?db=3"])  # fmt: skip
def test_a_database_number_or_none_is_taken(url: str) -> None:
    """A number, an empty path, or a socket path (its database in the query) are URLs as before."""
    assert parse_bus_url(url).topology == "single"


@pytest.mark.redis
async def test_a_database_the_server_lacks_is_a_configuration_error() -> None:
    """A database number past the server's count raises BusConfigError at once (no retry)."""
    with shared_redis() as url:
        bus = open_bus(_with_db(url, "9999"))
        try:
            with pytest.raises(BusConfigError, match="no database"):
                await bus.streams("kasmina:*")
        finally:
            await bus.close()


@pytest.mark.redis
@pytest.mark.parametrize("db", ["9999", "abc"])
def test_status_against_a_database_it_cannot_use_exits_2(
    db: str, tmp_path: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """`kasmina status` names the database problem in one line and exits 2 (a usage error),
    whether the path is no number or a number the server does not have."""
    keys = tmp_path / "keys.json"  # type: ignore[operator]
    KeyRing.generate().save(keys)
    monkeypatch.setenv("KASMINA_KEYS", str(keys))
    with shared_redis() as url, pytest.raises(SystemExit) as done:
        main(["status", "--redis", _with_db(url, db)])
    text = capsys.readouterr().err
    assert done.value.code == 2 and "Traceback" not in text
    assert len(text.strip().splitlines()) == 1 and "database" in text
