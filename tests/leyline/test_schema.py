"""Pins the Leyline schema: canonical enums and generated code up to date."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from leyline import pb

ROOT = Path(__file__).resolve().parents[2]

STAGES = [
    ("SEED_STAGE_UNKNOWN", 0),
    ("SEED_STAGE_DORMANT", 1),
    ("SEED_STAGE_GERMINATED", 2),
    ("SEED_STAGE_TRAINING", 3),
    ("SEED_STAGE_BLENDING", 4),
    ("SEED_STAGE_SHADOWING", 5),
    ("SEED_STAGE_PROBATIONARY", 6),
    ("SEED_STAGE_FOSSILIZED", 7),
    ("SEED_STAGE_CULLED", 8),
    ("SEED_STAGE_EMBARGOED", 9),
    ("SEED_STAGE_RESETTING", 10),
    ("SEED_STAGE_TERMINATED", 11),
]
GATES = [
    ("SEED_GATE_G0_SANITY", 0),
    ("SEED_GATE_G1_GRADIENT_HEALTH", 1),
    ("SEED_GATE_G2_STABILITY", 2),
    ("SEED_GATE_G3_INTERFACE", 3),
    ("SEED_GATE_G4_SYSTEM_IMPACT", 4),
    ("SEED_GATE_G5_RESET", 5),
]


def test_stage_enum_matches_design_exactly() -> None:
    """SeedLifecycleStage has exactly docs/design.md §2's names and numbers, in order."""
    assert [(v.name, v.number) for v in pb.SeedLifecycleStage.DESCRIPTOR.values] == STAGES


def test_gate_enum_matches_design_exactly() -> None:
    """SeedLifecycleGate has exactly docs/design.md §3's names and numbers, in order."""
    assert [(v.name, v.number) for v in pb.SeedLifecycleGate.DESCRIPTOR.values] == GATES


def test_package_is_leyline_v1() -> None:
    """The proto package is leyline.v1."""
    assert pb.DESCRIPTOR.package == "leyline.v1"


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    """Regenerating from leyline.proto reproduces the committed *_pb2.py and .pyi byte for byte."""
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_leyline.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for name in ("leyline_pb2.py", "leyline_pb2.pyi"):
        fresh = (tmp_path / "leyline" / name).read_bytes()
        committed = (ROOT / "leyline" / name).read_bytes()
        assert fresh == committed, f"{name} is stale: run scripts/generate_leyline.py"
