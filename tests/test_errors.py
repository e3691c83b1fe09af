"""Bad input gives one clear error line naming the fix, and exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import artefacts
from harness.profiles import get_profile

HARNESS = [sys.executable, "-m", "harness.cli"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, env=env, timeout=120)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hvo-harness: error: ")
    return lines[0]


def test_missing_kernel(tmp_path: Path) -> None:
    line = one_error_line(run_cli("run", "--arch", "x86_64", "--kernel", str(tmp_path / "nope"),
                                  "--out", str(tmp_path)))
    assert "does not exist" in line and "nope" in line


def test_wrong_arch_kernel_names_both_arches(tmp_path: Path) -> None:
    riscv = artefacts.ensure_debian_kernel(get_profile("riscv64")).image
    line = one_error_line(run_cli("run", "--arch", "x86_64", "--kernel", str(riscv),
                                  "--out", str(tmp_path)))
    assert "riscv64" in line and "x86_64" in line


def test_corrupt_image(tmp_path: Path) -> None:
    x86 = artefacts.ensure_debian_kernel(get_profile("x86_64")).image
    truncated = tmp_path / "truncated-bzImage"
    truncated.write_bytes(x86.read_bytes()[:4096])
    garbage = tmp_path / "garbage"
    garbage.write_bytes(os.urandom(65536))
    for image in (truncated, garbage):
        line = one_error_line(run_cli("run", "--arch", "x86_64", "--kernel", str(image),
                                      "--out", str(tmp_path)))
        assert str(image) in line


def test_missing_qemu_names_the_package(tmp_path: Path) -> None:
    x86 = artefacts.ensure_debian_kernel(get_profile("x86_64")).image
    # A PATH with python but without QEMU.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    env = {**os.environ, "PATH": str(bin_dir)}
    line = one_error_line(run_cli("run", "--arch", "x86_64", "--kernel", str(x86),
                                  "--out", str(tmp_path / "out"), env=env))
    assert "qemu-system-x86_64 not found" in line and "qemu-system-x86" in line


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["run", "--arch", "sparc"], "unknown arch 'sparc'"),
        (["run", "--hvo", "maybe"], "--hvo"),
        (["run", "--node-mem", "lots"], "--node-mem"),
        (["parse", "/nonexistent/console.log"], "not a readable file"),
    ],
)
def test_usage_errors(args: list[str], words: str) -> None:
    assert words in one_error_line(run_cli(*args))
