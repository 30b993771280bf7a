"""Regenerate leyline/leyline_pb2.py and leyline/leyline_pb2.pyi from leyline/leyline.proto.

Usage: python scripts/generate_leyline.py [--out DIR]   (default: the repository root)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def generate(out: Path) -> None:
    """Run protoc (grpcio-tools) with the mypy-protobuf plugin into ``out``."""
    from grpc_tools import protoc

    plugin = shutil.which(
        "protoc-gen-mypy",
        path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    if plugin is None:
        raise SystemExit("protoc-gen-mypy not found: install the dev extra (mypy-protobuf)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "leyline").mkdir(exist_ok=True)
    args = [
        "protoc",
        f"-I{ROOT}",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"--python_out={out}",
        f"--mypy_out={out}",
        str(ROOT / "leyline" / "leyline.proto"),
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT)
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
