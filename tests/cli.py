"""Running the CLI as users do (`python -m harness.cli ...`) and reading its one error line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HARNESS = [sys.executable, "-m", "harness.cli"]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HARNESS, *args], cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """Exit 2 and exactly one `hvo-harness: error: ...` line; progress lines ("> ...") say what
    was being done and are not part of the error."""
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("> ")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hvo-harness: error: ")
    return lines[0]
