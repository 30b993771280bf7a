"""The lifecycle tables against docs/design.md §2, written out here by hand (never read from the code)."""

from __future__ import annotations

import itertools

import pytest

from actors.seed.lifecycle import (
    ACTIVE,
    ALLOWED,
    EXIT_GATE,
    GUARD,
    gate_name,
    is_allowed,
    stage_budget,
    stage_name,
)
from contracts.config import KasminaConfig, LifecycleConfig
from leyline import pb

# docs/design.md §2: the stage numbers of Leyline's SeedLifecycleStage.
NUMBER = {
    "UNKNOWN": 0,
    "DORMANT": 1,
    "GERMINATED": 2,
    "TRAINING": 3,
    "BLENDING": 4,
    "SHADOWING": 5,
    "PROBATIONARY": 6,
    "FOSSILIZED": 7,
    "CULLED": 8,
    "EMBARGOED": 9,
    "RESETTING": 10,
    "TERMINATED": 11,
}

# docs/design.md §2, the "from | to (gate guarding it)" table.
DESIGN_TABLE: dict[str, dict[str, str | None]] = {
    "UNKNOWN": {"DORMANT": None},
    "DORMANT": {"GERMINATED": "G0_SANITY", "TERMINATED": None},
    "GERMINATED": {"TRAINING": None, "CULLED": None},
    "TRAINING": {"BLENDING": "G1_GRADIENT_HEALTH", "CULLED": None},
    "BLENDING": {"SHADOWING": "G2_STABILITY", "CULLED": None},
    "SHADOWING": {"PROBATIONARY": "G3_INTERFACE", "CULLED": None},
    "PROBATIONARY": {"FOSSILIZED": "G4_SYSTEM_IMPACT", "CULLED": None},
    "FOSSILIZED": {"TERMINATED": None},
    "CULLED": {"EMBARGOED": None},
    "EMBARGOED": {"RESETTING": None},
    "RESETTING": {"DORMANT": "G5_RESET"},
    "TERMINATED": {},
}

# docs/design.md §3: gate numbers of Leyline's SeedLifecycleGate.
GATE_NUMBER = {
    "G0_SANITY": 0,
    "G1_GRADIENT_HEALTH": 1,
    "G2_STABILITY": 2,
    "G3_INTERFACE": 3,
    "G4_SYSTEM_IMPACT": 4,
    "G5_RESET": 5,
}

# Stages that hold a live seed that is not permanent yet: the ones that may move to CULLED.
CULLABLE = {"GERMINATED", "TRAINING", "BLENDING", "SHADOWING", "PROBATIONARY"}


def _s(name: str) -> int:
    return NUMBER[name]


def test_stage_and_gate_numbers_are_the_wire_numbers() -> None:
    """Leyline's stage and gate enums carry DESIGN's names at DESIGN's numbers."""
    for name, number in NUMBER.items():
        assert pb.SeedLifecycleStage.Value(f"SEED_STAGE_{name}") == number
    for name, number in GATE_NUMBER.items():
        assert pb.SeedLifecycleGate.Value(f"SEED_GATE_{name}") == number


@pytest.mark.parametrize(("frm", "to"), list(itertools.product(NUMBER, NUMBER)))
def test_every_pair_of_stages_is_allowed_exactly_when_the_design_says(frm: str, to: str) -> None:
    """All 144 (from, to) pairs: allowed iff docs/design.md §2 lists the move."""
    expected = to in DESIGN_TABLE[frm]
    assert is_allowed(_s(frm), _s(to)) is expected  # type: ignore[arg-type]
    assert (_s(to) in ALLOWED[_s(frm)]) is expected  # type: ignore[index]


def test_the_table_has_a_row_for_every_stage_and_nothing_else() -> None:
    """ALLOWED names each of the twelve stages once, with DESIGN's row."""
    assert sorted(ALLOWED) == sorted(NUMBER.values())
    for frm, row in DESIGN_TABLE.items():
        assert ALLOWED[_s(frm)] == frozenset(_s(to) for to in row)  # type: ignore[index]


@pytest.mark.parametrize("number", [-1, 12, 99])
def test_a_stage_number_outside_the_enum_allows_nothing(number: int) -> None:
    """An unknown from-stage (or to-stage) is never allowed, and does not raise."""
    for name in NUMBER:
        assert is_allowed(number, _s(name)) is False  # type: ignore[arg-type]
        assert is_allowed(_s(name), number) is False  # type: ignore[arg-type]


def test_terminated_is_final() -> None:
    """Nothing leaves TERMINATED, and only DORMANT and FOSSILIZED lead to it."""
    for name in NUMBER:
        assert not is_allowed(_s("TERMINATED"), _s(name))  # type: ignore[arg-type]
    into = {frm for frm in NUMBER if is_allowed(_s(frm), _s("TERMINATED"))}  # type: ignore[arg-type]
    assert into == {"DORMANT", "FOSSILIZED"}


def test_guards_are_the_designs_gates() -> None:
    """GUARD holds exactly the gated moves of docs/design.md §2, each with its gate."""
    expected = {
        (_s(frm), _s(to)): GATE_NUMBER[gate]
        for frm, row in DESIGN_TABLE.items()
        for to, gate in row.items()
        if gate is not None
    }
    assert dict(GUARD) == expected
    assert len(expected) == 6


def test_exit_gate_of_each_gated_stage() -> None:
    """EXIT_GATE: the gate that lets a stage go, and where it goes (literal, per stage)."""
    expected = {
        _s("DORMANT"): (GATE_NUMBER["G0_SANITY"], _s("GERMINATED")),
        _s("TRAINING"): (GATE_NUMBER["G1_GRADIENT_HEALTH"], _s("BLENDING")),
        _s("BLENDING"): (GATE_NUMBER["G2_STABILITY"], _s("SHADOWING")),
        _s("SHADOWING"): (GATE_NUMBER["G3_INTERFACE"], _s("PROBATIONARY")),
        _s("PROBATIONARY"): (GATE_NUMBER["G4_SYSTEM_IMPACT"], _s("FOSSILIZED")),
        _s("RESETTING"): (GATE_NUMBER["G5_RESET"], _s("DORMANT")),
    }
    assert dict(EXIT_GATE) == expected


def test_active_stages_are_the_cullable_ones() -> None:
    """ACTIVE is the five stages with a live, not yet permanent seed, which DESIGN lets be culled."""
    assert {_s(n) for n in CULLABLE} == {
        _s(frm) for frm, row in DESIGN_TABLE.items() if "CULLED" in row
    }
    assert frozenset(ACTIVE) == frozenset(_s(n) for n in CULLABLE)


@pytest.mark.parametrize("name", list(NUMBER))
def test_stage_names(name: str) -> None:
    """stage_name drops the enum prefix: 3 -> TRAINING."""
    assert stage_name(_s(name)) == name


@pytest.mark.parametrize(
    ("number", "text"), [(12, "STAGE_12"), (-3, "STAGE_-3"), (400, "STAGE_400")]
)
def test_unknown_stage_number_has_a_readable_name(number: int, text: str) -> None:
    """A stage number outside the enum prints as STAGE_<n> instead of raising."""
    assert stage_name(number) == text


@pytest.mark.parametrize(("name", "number"), list(GATE_NUMBER.items()))
def test_gate_names(name: str, number: int) -> None:
    """gate_name drops the enum prefix: 1 -> G1_GRADIENT_HEALTH."""
    assert gate_name(number) == name


@pytest.mark.parametrize(("number", "text"), [(6, "G6"), (99, "G99"), (-1, "G-1")])
def test_unknown_gate_number_has_a_readable_name(number: int, text: str) -> None:
    """A gate number outside the enum prints as G<n> instead of raising."""
    assert gate_name(number) == text


CFG = KasminaConfig(
    lifecycle=LifecycleConfig(
        training_steps=11, blend_steps=13, shadowing_steps=17, probationary_steps=19
    )
)


@pytest.mark.parametrize(
    ("name", "override", "budget"),
    [
        ("TRAINING", 0, 11),
        ("TRAINING", 5, 11),  # the override is the blend ramp's only
        ("BLENDING", 0, 13),
        ("BLENDING", 5, 5),
        ("BLENDING", 1, 1),
        ("SHADOWING", 0, 17),
        ("SHADOWING", 5, 17),
        ("PROBATIONARY", 0, 19),
        ("PROBATIONARY", 5, 19),
    ],
)
def test_stage_budgets(name: str, override: int, budget: int) -> None:
    """The four timed stages run their configured budget; a germination's blend_steps overrides
    the blend ramp only."""
    assert stage_budget(_s(name), CFG, override) == budget  # type: ignore[arg-type]


def test_blend_budget_without_an_override_is_the_configured_one() -> None:
    """stage_budget's default (no override given) is the configured blend ramp."""
    assert stage_budget(_s("BLENDING"), CFG) == 13  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    [
        "UNKNOWN",
        "DORMANT",
        "GERMINATED",
        "FOSSILIZED",
        "CULLED",
        "EMBARGOED",
        "RESETTING",
        "TERMINATED",
    ],
)
def test_untimed_stages_have_no_budget(name: str) -> None:
    """Only TRAINING, BLENDING, SHADOWING and PROBATIONARY are timed by a step budget."""
    assert stage_budget(_s(name), CFG, 5) is None  # type: ignore[arg-type]
