"""Configuration written for an earlier version: a retired key loads with a warning, an unknown
one is still refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from contracts import KasminaConfig


def test_retired_nonce_ttl_loads_from_a_file_with_a_warning(tmp_path: Path) -> None:
    """A TOML file setting security.nonce_ttl_s loads (warned), its other settings applied."""
    path = tmp_path / "kasmina.toml"
    path.write_text("[security]\nnonce_ttl_s = 300\nclock_tolerance_s = 12.5\n")
    with pytest.warns(DeprecationWarning, match="nonce_ttl_s"):
        config = KasminaConfig.load(path, env={})
    assert config.security.clock_tolerance_s == 12.5
    assert not hasattr(config.security, "nonce_ttl_s")


def test_retired_nonce_ttl_from_the_environment_is_warned_too() -> None:
    """KASMINA__SECURITY__NONCE_TTL_S is accepted and ignored with the same warning."""
    with pytest.warns(DeprecationWarning, match="clock_tolerance_s"):
        config = KasminaConfig.load(env={"KASMINA__SECURITY__NONCE_TTL_S": "30"})
    assert config.security.clock_tolerance_s == KasminaConfig().security.clock_tolerance_s


def test_an_unknown_security_key_is_still_refused() -> None:
    """Only the retired key is tolerated: a misspelt one fails to load, naming the key."""
    with pytest.raises(ValidationError, match="nonce_tll_s"):
        KasminaConfig.load(env={}, overrides={"security.nonce_tll_s": 30})
