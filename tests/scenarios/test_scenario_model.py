"""The scenario file format: valid files load, invalid ones fail with the bad field named."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from scenarios.catalog import resolve
from scenarios.model import ScenarioError, load_scenario, parse_scenario

BASE: dict[str, Any] = {
    "name": "tiny",
    "description": "a minimal scenario",
    "slots": ["l1.s0"],
    "config": {"lifecycle.training_steps": 10},
    "driver": {"steps": 5},
    "timeline": [
        {"at": 1, "do": "command", "action": "germinate", "slot": "l1.s0", "blueprint": "b"}
    ],
    "expect": {"final_stage": {"l1.s0": "dormant"}},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    *parents, last = path.split("/")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[last] = value
    return data


def test_minimal_scenario_loads_with_normalised_names() -> None:
    """Stage names are case-insensitive and normalised; the world size reaches the config."""
    spec = parse_scenario(BASE)
    assert spec.expect.final_stage == {"l1.s0": "DORMANT"}
    assert spec.kasmina_config().lifecycle.training_steps == 10
    assert spec.kasmina_config().barrier.world_size == 1


def test_nested_config_tables_become_dotted_keys() -> None:
    """``[config.lifecycle]`` tables and quoted dotted keys mean the same override."""
    spec = parse_scenario(_with("config", {"lifecycle": {"blend_steps": 7}}))
    assert spec.config == {"lifecycle.blend_steps": 7}


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        ("expect/final_stage", {"l1.s0": "GROWING"}, "expect.final_stage.l1.s0: unknown stage"),
        (
            "timeline",
            [{"at": 1, "do": "command", "action": "grow", "slot": "l1.s0"}],
            "timeline[0].action",
        ),
        ("timeline", [{"at": 1, "do": "explode"}], "timeline[0]"),
        (
            "timeline",
            [{"at": 1, "do": "command", "action": "germinate", "slot": "l1.s0"}],
            "germinate needs a blueprint",
        ),
        (
            "config",
            {"lifecycle.training_stepz": 3},
            "config: lifecycle.training_stepz: Extra inputs",
        ),
        (
            "config",
            {"lifecycle.training_steps": 0},
            "config: lifecycle.training_steps: Input should be greater",
        ),
        ("driver/fail_gates", ["G9"], "driver.fail_gates[0]: unknown gate"),
        ("driver/byzantine_rank", 1, "byzantine_rank 1 is outside a world of 1"),
        ("driver/steps", 0, "driver.steps"),
        ("expect/rejected", {"sneaky": 1}, "expect.rejected: unknown reject reason 'sneaky'"),
        ("expect/paused", {"l9.s9": False}, "expect.paused: slot 'l9.s9' is not one of"),
        (
            "timeline",
            [{"at": 2, "do": "replay", "of": "nope"}],
            "timeline[0].of: no earlier command",
        ),
        (
            "timeline",
            [{"at": 2, "do": "kill_actor", "actor": "tamiyo"}],
            "timeline[0].actor: unknown actor",
        ),
        ("slots", ["bad slot"], "slots[0]: invalid slot id"),
        ("surprise", 1, "surprise: Extra inputs are not permitted"),
    ],
)
def test_invalid_field_is_named(path: str, value: Any, named: str) -> None:
    """Each kind of mistake raises ScenarioError whose message names the offending field."""
    with pytest.raises(ScenarioError) as info:
        parse_scenario(_with(path, value), "x.toml")
    assert str(info.value).startswith("x.toml: ")
    assert named in str(info.value)


def test_bad_toml_and_missing_file_are_scenario_errors(tmp_path: Path) -> None:
    """A syntax error and a missing file are ScenarioErrors naming the file."""
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nname = "y"\n')
    with pytest.raises(ScenarioError, match=r"bad\.toml: not valid TOML"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match="cannot read scenario"):
        load_scenario(tmp_path / "missing.toml")


def test_unknown_name_lists_the_bundled_scenarios() -> None:
    """Resolving an unknown name says which names exist."""
    with pytest.raises(ScenarioError, match="happy-path"):
        resolve("no-such-scenario")
