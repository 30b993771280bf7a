"""The growth demo end to end on the in-process buses, and its pure parts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from actors.execution import insert_slots
from actors.execution import stages as st
from actors.execution.checkpoint import read_checkpoint
from actors.replay import verify_digests
from bus import Recording
from contracts import KeyRing, streams
from kasmina.cli import main
from scenarios.cluster import read_events
from scenarios.demo import Budgets, Tamiyo, plans_for
from scenarios.demo.capacity import capacity_scores
from scenarios.demo.tasks import SLOT_POINTS, batches, build_host, load_task

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
    assert info["task"] == "spirals"
    assert isinstance(info["accuracy_static_host"], float)
    seeds = info["seeds"]
    assert isinstance(seeds, dict) and sum(seeds.values()) >= 1  # a seed left DORMANT
    gates = info["gates"]
    assert isinstance(gates, dict) and gates["passed"] >= 1
    saved = read_checkpoint(out / "model.safetensors")
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
    assert Budgets.for_steps(3000).training == 300
    with pytest.raises(ValueError):
        Budgets.for_steps(100)


def test_tamiyo_candidates_are_width_and_depth() -> None:
    """Two candidate plans: more units on ``units`` (width) or a residual block on ``hidden``."""
    plans = plans_for(64, 8, 0.01)
    assert [(p.slot, p.blueprint) for p in plans] == [
        ("units", "width"),
        ("hidden", "residual_mlp"),
    ]


def _tamiyo() -> Tamiyo:
    return Tamiyo(
        plans_for(64, 8, 0.01), warmup=100, patience=50, lifecycle_steps=300, total_steps=1000
    )


FREE = {"units": st.DORMANT, "hidden": st.DORMANT}


def test_tamiyo_germinates_on_plateau_where_the_capacity_signal_is_largest() -> None:
    """No germination in the warm-up or while improving; on a plateau the best-scored slot; none
    while busy; the reason quotes the evidence."""
    t = _tamiyo()
    scores = {"units": 0.01, "hidden": 0.3}
    for step, loss in ((0, 1.0), (50, 0.5), (100, 0.4)):
        t.observe(step, loss, train_loss=0.5)
        assert t.decide(step, FREE, lambda _: scores) is None
    t.observe(150, 0.4, train_loss=0.5)
    plan = t.decide(150, FREE, lambda _: scores)
    assert plan is not None and plan.slot == "hidden"
    assert "hidden 0.3" in plan.why and "units 0.01" in plan.why and "flat for 50" in plan.why
    t.observe(300, 0.4, train_loss=0.5)
    assert t.decide(360, {"units": st.DORMANT, "hidden": st.TRAINING}, lambda _: scores) is None
    nxt = t.decide(360, {"units": st.DORMANT, "hidden": st.FOSSILIZED}, lambda _: scores)
    assert nxt is not None and nxt.slot == "units"


def test_tamiyo_does_not_grow_a_host_that_fits_its_data() -> None:
    """A plateau with the training loss near zero (memorised) germinates nothing, and says why."""
    t = _tamiyo()
    t.observe(0, 1.0, train_loss=0.9)
    t.observe(200, 1.2, train_loss=0.001)
    assert t.decide(200, FREE, lambda _: {"units": 1.0, "hidden": 1.0}) is None
    assert t.notes and "fits its training data" in t.notes[0][1]


def test_tamiyo_starts_no_second_seed_that_cannot_finish() -> None:
    """After the first seed, no germination once less than a lifecycle of steps is left."""
    t = _tamiyo()
    t.observe(0, 1.0, train_loss=0.5)
    assert t.decide(150, FREE) is not None
    t.observe(160, 0.9, train_loss=0.5)
    assert t.decide(800, {"units": st.FOSSILIZED, "hidden": st.DORMANT}) is None


def test_tamiyo_tries_the_next_slot_while_a_culled_one_is_embargoed() -> None:
    """After a cull, the other slot takes the next-best plan without waiting for the embargo; the
    culled slot's plan is not retried, and nothing is germinated while a lifecycle is under way."""
    t = _tamiyo()
    scores = {"units": 0.01, "hidden": 0.3}
    t.observe(0, 1.0, train_loss=0.5)
    first = t.decide(150, FREE, lambda _: scores)
    assert first is not None and first.slot == "hidden"
    t.observe(160, 0.9, train_loss=0.5)
    assert t.decide(300, {"units": st.DORMANT, "hidden": st.PROBATIONARY}, lambda _: scores) is None
    nxt = t.decide(300, {"units": st.DORMANT, "hidden": st.EMBARGOED}, lambda _: scores)
    assert nxt is not None and nxt.slot == "units"
    assert t.decide(600, FREE, lambda _: scores) is None  # both plans tried


def test_tamiyo_leaves_a_seed_time_to_pay_off() -> None:
    """With ``payoff_steps``, germination stops that many steps before the lifecycle deadline: the
    first seed on capacity evidence alone at ``total - lifecycle - payoff``, no second one after it."""
    t = Tamiyo(
        plans_for(64, 8, 0.01),
        warmup=100,
        patience=50,
        lifecycle_steps=300,
        total_steps=1000,
        payoff_steps=200,
    )
    for step in range(0, 501, 50):
        t.observe(step, 1.0 - step / 1000, train_loss=0.4)
    assert t.decide(450, FREE) is None
    first = t.decide(500, FREE)
    assert first is not None and "lifecycle's worth" in first.why
    t.observe(560, 0.4, train_loss=0.4)
    t.observe(620, 0.4, train_loss=0.4)
    assert t.plateaued(620)
    assert t.decide(620, {"units": st.DORMANT, "hidden": st.CULLED}) is None


def test_tamiyo_last_chance_needs_capacity_evidence() -> None:
    """Still improving when only a lifecycle is left: germinate if the host cannot fit its data."""
    short, fits = _tamiyo(), _tamiyo()
    for step in range(0, 701, 50):
        short.observe(step, 1.0 - step / 1000, train_loss=0.4)
        fits.observe(step, 1.0 - step / 1000, train_loss=0.01)
    assert short.decide(650, FREE) is None and fits.decide(650, FREE) is None
    plan = short.decide(700, FREE)
    assert plan is not None and "lifecycle's worth" in plan.why
    assert fits.decide(700, FREE) is None and "fits its training data" in fits.notes[-1][1]


def test_capacity_signal_prefers_depth_for_spirals() -> None:
    """On two-spirals the depth seed's output weights would get the larger gradient than new units."""
    split = load_task("spirals", 0)
    model = build_host("spirals", split, 0)
    slots = insert_slots(model, SLOT_POINTS)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for idx in batches(len(split.y_train), 128, 300, 0):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(split.x_train[idx]), split.y_train[idx]).backward()
        opt.step()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = capacity_scores(model, slots, plans_for(2, 16, 0.01), (split.x_train, split.y_train))
    assert scores["hidden"] > scores["units"] > 0.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(s.seed is None for s in slots.values())


def test_the_console_summary_shows_every_g4_verdict_with_its_test() -> None:
    """A G4 verdict of class targets (the exact sign test: no standard error) is shown with its
    gain, n and bound, not left out; one with a standard error shows it."""
    from kasmina.commands.demo import _gain_text

    exact = {"gain": 0.125, "gain_se": None, "n": 160, "lower_bound": 0.0628, "passed": True}
    assert (
        _gain_text(exact) == "+12.5 pp (n 160), lower bound +6.3 pp (exact sign test): fossilized"
    )
    normal = {"gain": 0.05, "gain_se": 0.01, "n": 64, "lower_bound": -0.01, "passed": False}
    assert _gain_text(normal) == "+5.0 ± 1.0 pp (n 64), lower bound -1.0 pp: culled"
    unmeasured = {"gain": None, "gain_se": None, "n": None, "lower_bound": None, "passed": False}
    assert _gain_text(unmeasured) == "not measured: culled"
