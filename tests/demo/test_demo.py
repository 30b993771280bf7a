"""The growth demo end to end on the in-process buses, and its pure parts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from actors.execution import stages as st
from actors.replay import verify_digests
from bus import Recording
from contracts import KeyRing, streams
from kasmina.cli import main
from scenarios.cluster import read_events
from scenarios.demo import Budgets, Tamiyo, plans_for

STEPS = 400


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    """Run ``kasmina ...`` in-process; returns the one JSON object it printed."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    out: dict[str, object] = json.loads(lines[0])
    return out


@pytest.mark.parametrize("bus", ["memory", "fakeredis"])
def test_demo_grows_records_and_replays(
    bus: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A short demo writes every file, reports the JSON fields, germinates a seed, replays clean."""
    out = tmp_path / "out"
    info = run_cli(
        ["demo", "--bus", bus, "--steps", str(STEPS), "--out", str(out), "--json"], capsys
    )
    for key in ("task", "accuracy_before", "accuracy_after", "host_params", "final_params"):
        assert key in info
    for key in ("report", "plot", "recording", "model"):
        assert Path(str(info[key])).is_file(), key
    assert info["task"] == "digits"
    assert isinstance(info["accuracy_static_host"], float)
    seeds = info["seeds"]
    assert isinstance(seeds, dict) and sum(seeds.values()) >= 1  # a seed left DORMANT
    gates = info["gates"]
    assert isinstance(gates, dict) and gates["passed"] >= 1
    saved = torch.load(out / "model.pt", weights_only=True)
    assert set(saved["slots"]) == {"units", "hidden"}
    # the recording re-folds to the recorded state digests, with the keys the demo wrote
    rec = Recording.open(out / "recording.kasrec")
    ring = KeyRing.load(out / "keys.json")
    run = str(rec.meta["run"])
    assert streams.events(run) in await_streams(rec)
    events = _events(rec, run, ring)
    assert any(kind == "state.digest" for _, kind, _ in events)
    assert verify_digests(events) == []
    assert "## Timeline" in (out / "report.md").read_text(encoding="utf-8")


def await_streams(rec: Recording) -> list[str]:
    """The recording's stream names."""
    import anyio

    return anyio.run(rec.streams)


def _events(rec: Recording, run: str, ring: KeyRing) -> list[tuple[str, str, Any]]:
    import anyio

    return anyio.run(read_events, rec, run, ring)  # type: ignore[arg-type]


def test_budgets_scale_and_fit_a_lifecycle() -> None:
    """Short runs scale the stage budgets so a whole lifecycle fits after the earliest germination."""
    for steps in (400, 600, 3000):
        b = Budgets.for_steps(steps)
        assert b.earliest + b.lifecycle_steps < steps
        cfg = b.config()
        assert cfg.lifecycle.training_steps == b.training
        assert cfg.barrier.frequency == b.barrier
    assert Budgets.for_steps(3000).training == 500
    with pytest.raises(ValueError):
        Budgets.for_steps(100)


def test_tamiyo_places_width_where_features_are_short_and_depth_elsewhere() -> None:
    """A bottleneck layer gets a width seed first; a wide layer gets a residual depth seed first."""
    assert [p.blueprint for p in plans_for(64, 8, 0.01)] == ["width", "residual_mlp"]
    assert [p.slot for p in plans_for(2, 16, 0.01)] == ["hidden", "units"]


def _tamiyo() -> Tamiyo:
    return Tamiyo(
        plans_for(64, 8, 0.01), earliest=100, patience=50, lifecycle_steps=300, total_steps=1000
    )


def test_tamiyo_germinates_on_plateau_only_when_slots_are_free() -> None:
    """No germination before ``earliest`` or while improving; one on plateau; none while busy."""
    t = _tamiyo()
    free = {"units": st.DORMANT, "hidden": st.DORMANT}
    for step, loss in ((0, 1.0), (50, 0.5), (100, 0.4)):
        t.observe(step, loss)
        assert t.decide(step, free) is None
    t.observe(150, 0.4)
    plan = t.decide(150, free)
    assert plan is not None and plan.slot == "units"
    t.observe(300, 0.4)
    assert t.decide(360, {"units": st.TRAINING, "hidden": st.DORMANT}) is None
    nxt = t.decide(360, {"units": st.FOSSILIZED, "hidden": st.DORMANT})
    assert nxt is not None and nxt.slot == "hidden"


def test_tamiyo_starts_no_second_seed_that_cannot_finish() -> None:
    """After the first seed, no germination once less than a lifecycle of steps is left."""
    t = _tamiyo()
    t.observe(0, 1.0)
    assert t.decide(150, {"units": st.DORMANT, "hidden": st.DORMANT}) is not None
    t.observe(160, 0.9)
    assert t.decide(800, {"units": st.FOSSILIZED, "hidden": st.DORMANT}) is None
