"""Every bundled scenario passes on fakeredis and on a real Redis; a broken expectation is named."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from bus import open_bus
from bus.testing import shared_redis
from contracts import streams
from scenarios.catalog import FILES, bundled, resolve
from scenarios.model import parse_scenario
from scenarios.runner import run_scenario

NAMES = [spec.name for spec in bundled()]


def _data(name: str) -> dict[str, Any]:
    with (FILES / f"{name}.toml").open("rb") as fh:
        return tomllib.load(fh)


def test_at_least_ten_scenarios_named_after_their_files() -> None:
    """The catalogue has at least ten scenarios, each file named after its scenario."""
    assert len(NAMES) >= 10
    assert sorted(p.stem for p in FILES.glob("*.toml")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
async def test_scenario_passes_on_fakeredis(name: str) -> None:
    """The scenario's expectations all hold on a fresh fakeredis bus."""
    (spec,) = resolve(name)
    result = await run_scenario(spec, "fakeredis")
    assert result.failures == {}
    assert result.passed and result.steps <= spec.driver.steps


@pytest.mark.redis
@pytest.mark.parametrize("name", NAMES)
async def test_scenario_passes_on_real_redis(name: str) -> None:
    """The scenario's expectations all hold on a real Redis, and the run leaves no keys behind."""
    (spec,) = resolve(name)
    with shared_redis() as url:
        result = await run_scenario(spec, url)
        assert result.failures == {}
        bus = open_bus(url)
        try:
            assert await bus.streams(streams.prefix(result.run) + "*") == []
        finally:
            await bus.close()


async def test_broken_expectation_fails_and_is_named() -> None:
    """A wrong count of replayed rejects and a wrong final stage fail the run, each by name."""
    data = _data("hostile-commands")
    data["expect"]["rejected"]["replayed"] = 3
    data["expect"]["final_stage"] = {"l1.s0": "TRAINING"}
    result = await run_scenario(parse_scenario(data), "fakeredis")
    assert not result.passed
    assert result.failures == {
        "rejected[replayed]": "expected 3, got 2",
        "final_stage[l1.s0]": "expected TRAINING, got DORMANT",
    }


async def test_memory_bus_runs_scenarios_too() -> None:
    """The embedded bus runs a scenario with faults (forgery, replay, duplicate) to a pass."""
    (spec,) = resolve("hostile-commands")
    result = await run_scenario(spec, "memory")
    assert result.passed, result.failures


async def test_an_impossible_fault_is_reported_not_raised() -> None:
    """Duplicating from an empty inbox is a named timeline failure; the run still finishes."""
    data = _data("g0-refused")
    data["driver"]["steps"] = 3
    data["timeline"] = [{"at": 1, "do": "duplicate", "actor": "seed:l1.s0", "kind": "exec.ack"}]
    data["expect"] = {"final_stage": {"l1.s0": "DORMANT"}}
    result = await run_scenario(parse_scenario(data), "fakeredis")
    assert list(result.failures) == ["timeline[0]"]
    assert "nothing to duplicate" in result.failures["timeline[0]"]


async def test_the_documented_example_runs_and_passes() -> None:
    """The TOML example in docs/scenarios.md is a valid scenario whose expectations hold."""
    text = (FILES.parents[1] / "docs" / "scenarios.md").read_text(encoding="utf-8")
    example = text.split("## Example", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    spec = parse_scenario(tomllib.loads(example), "docs/scenarios.md")
    result = await run_scenario(spec, "memory")
    assert result.passed, result.failures
