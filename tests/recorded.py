"""Results files the harness recorded from real runs (tests/data/README.md says how), as the
report, compare and export tests read them; planted changes are made on copies in each test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"
RISCV = DATA / "results-riscv64-7.2.13-debug-hvo-on.json"
X86 = DATA / "results-x86_64-7.2.13-tinyconfig-debug-hvo-on.json"


def document(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def both_arches() -> dict[str, Any]:
    """One file with the riscv64 and the x86_64 run, as `run --arch all` would write."""
    combined = document(RISCV)
    combined["runs"] += document(X86)["runs"]
    return combined
