"""A guest that panics is ended at the panic; Ctrl-C leaves no QEMU and keeps the logs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import guest, judge, pipeline, qemu
from harness.profiles import get_profile

pytestmark = pytest.mark.boot


def qemu_processes_mentioning(text: str) -> list[str]:
    # -ww: full command lines (piped, ps cuts them to a width and the path would never match).
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if "qemu-system" in line and text in line]


def test_a_panicking_guest_is_ended_and_judged_fail(tmp_path: Path) -> None:
    profile = get_profile("riscv64")
    kernel = pipeline.prepare_kernel(profile, "debian")
    env = pipeline.prepare_environment(profile)
    # No init to run and no root to mount: the kernel panics right after boot.
    run = pipeline.boot(profile, kernel, env, "on", tmp_path, append="rdinit=/nonexistent",
                        timeout=120)
    assert run.ended == "panic"
    assert run.verdict == "fail"
    assert any(f.kind == "panic" for f in run.findings)
    assert "panicked" in run.verdict_reason or "panic" in run.verdict_reason.lower()
    # The panic is seen long before the timeout, and QEMU is gone.
    assert run.hugetlb["seconds"] < 60
    assert not qemu_processes_mentioning(str(tmp_path))
    # Every planned scenario is reported, as never run.
    assert run.scenarios and all(s.status == "fail" for s in run.scenarios)


def test_ctrl_c_leaves_no_qemu_and_keeps_the_logs(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", "--arch", "riscv64", "--hvo", "on",
         "--out", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    console = tmp_path / "riscv64-hvo-on.console.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if console.exists() and b"hvo-init: start" in console.read_bytes():
            break
        time.sleep(0.2)
    assert qemu_processes_mentioning(str(tmp_path)), "the guest should be running by now"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert not qemu_processes_mentioning(str(tmp_path))
    assert b"hvo-init: start" in console.read_bytes()
    assert (tmp_path / "results.json").exists()


def test_a_guest_kvm_stopped_is_ended_at_once_as_the_emulators_failure(tmp_path: Path) -> None:
    """QEMU pauses a vCPU KVM cannot run and waits for ever: the watcher ends it within a few
    seconds (not at the timeout), as kvm-stopped, which the judge never calls the kernel's."""
    script = "printf 'KVM internal error. Suberror: 1\\nextra data[0]: 0x1\\n'; sleep 120"
    started = time.monotonic()
    outcome = guest.run(["sh", "-c", script], tmp_path / "console.log", timeout=60)
    assert outcome.ended == "kvm-stopped", outcome
    assert time.monotonic() - started < 30
    assert "kvm-stopped" in judge._TEST_BED_ENDS
    assert qemu.kvm_boot_failure((tmp_path / "console.log").read_text()) == "KVM internal error. Suberror: 1"
