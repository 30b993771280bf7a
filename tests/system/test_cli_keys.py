"""`kasmina keys`: generate writes a private key file; rotate adds a signing key and keeps the old one."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from contracts import KeyRing
from kasmina.cli import main


def test_generate_rotate_and_refuse_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The key file is mode 0600, an existing file is not overwritten, rotation keeps the old key."""
    path = tmp_path / "keys.json"
    with pytest.raises(SystemExit) as done:
        main(["keys", "generate", "-o", str(path)])
    assert done.value.code == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = KeyRing.load(path).active.id
    assert json.loads(capsys.readouterr().out)["active"] == first
    with pytest.raises(SystemExit) as done:
        main(["keys", "generate", "-o", str(path)])
    assert done.value.code == 2
    assert "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["keys", "rotate", str(path), "--grace", "60"])
    assert done.value.code == 0
    ring = KeyRing.load(path)
    assert ring.active.id != first
    old = ring.get(first)
    assert old is not None and old.expires_ns is not None
