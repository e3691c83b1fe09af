"""guest.run against a real QEMU booting Debian's riscv64 kernel: every way a guest can end.

Nothing here mocks QEMU: the argv is built as pipeline.boot builds it, and the ends the
harness must tell apart are made for real (QEMU killed from outside, QEMU refusing an option,
a guest powering off early, a console bigger than the limit, a console log on a full
filesystem, Ctrl-C in the middle of a read)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import guest, guest_memory, pipeline, qemu
from harness.profiles import ArchProfile, get_profile
from tests import fault_suite
from tests.test_guest_lifetime import qemu_processes_mentioning

pytestmark = pytest.mark.boot

ARCH = "riscv64"
# Printed by every kernel early in its boot, seconds before the guest could be done: a kill
# sent when it appears lands in the middle of the boot.
MID_BOOT = b"Linux version"
# Debian's riscv64 kernel prints about 18 KiB on a boot, well past these.
SMALL_LIMIT = 8 * 1024
SMALL_TMPFS = "8k"


@dataclass(frozen=True)
class Prepared:
    profile: ArchProfile
    kernel: pipeline.PreparedKernel
    env: pipeline.GuestEnvironment


@pytest.fixture(scope="module")
def prepared() -> Prepared:
    profile = get_profile(ARCH)
    kernel = pipeline.prepare_kernel(profile, "debian")
    return Prepared(profile, kernel, pipeline.prepare_environment(profile))


@pytest.fixture
def no_core_dumps() -> Iterator[None]:
    """QEMU killed with SIGSEGV must not dump its many GiB of guest RAM into the work tree."""
    with fault_suite.no_core_dumps():
        yield


def boot_argv(prepared: Prepared, out: Path, *cmdline: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The argv pipeline.boot would run (results and dmesg ports in `out`), plus `extra`."""
    files = qemu.GuestFiles(
        prepared.kernel.image.path, prepared.env.initramfs, out / "results.ktap", out / "dmesg.log"
    )
    line = qemu.kernel_cmdline(prepared.profile, "hugetlb_free_vmemmap=on", *cmdline)
    return [*qemu.build_argv(prepared.profile, files, line, prepared.env.accel), *extra]


def run_guest(prepared: Prepared, argv: list[str], console: Path, **kwargs: object) -> guest.GuestOutcome:
    # The host-wide guest memory budget, as the pytest plugin takes it: under -n N several of
    # these 16 GiB guests must not start at once.
    with guest_memory.reserve(prepared.profile.memory_mib):
        return guest.run(argv, console, timeout=120, **kwargs)  # type: ignore[arg-type]


def when_console_shows(console: Path, marker: bytes, act: Callable[[int], None]) -> Callable[[int], None]:
    """An on_spawn hook: once the console log shows `marker`, act(pid) from another thread."""

    def on_spawn(pid: int) -> None:
        def watch() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if console.exists() and marker in console.read_bytes():
                    act(pid)
                    return
                time.sleep(0.05)

        threading.Thread(target=watch, daemon=True).start()

    return on_spawn


def kill_with(sig: signal.Signals) -> Callable[[int], None]:
    def act(pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    return act


def test_a_guest_that_finishes_is_done_with_its_bytes_counted(prepared: Prepared, tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    pids: list[int] = []
    outcome = run_guest(prepared, boot_argv(prepared, tmp_path), console, on_spawn=pids.append)
    assert outcome.ended == "done", outcome.reason
    assert outcome.exit_status == 0 and outcome.exit_signal is None
    assert outcome.boot_seconds is not None
    assert outcome.console_bytes == console.stat().st_size > 0
    assert len(pids) == 1
    assert not qemu_processes_mentioning(str(tmp_path))


def test_qemu_killed_with_sigkill_is_signalled(prepared: Prepared, tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    hook = when_console_shows(console, MID_BOOT, kill_with(signal.SIGKILL))
    outcome = run_guest(prepared, boot_argv(prepared, tmp_path), console, on_spawn=hook)
    assert outcome.ended == "signalled", outcome.reason
    assert outcome.exit_signal == signal.SIGKILL
    assert outcome.exit_status is None
    assert "QEMU was killed by signal 9 (SIGKILL)" in outcome.reason
    assert outcome.seconds < 60
    # What came before the kill is in the log.
    assert MID_BOOT in console.read_bytes()
    assert not qemu_processes_mentioning(str(tmp_path))


def test_qemu_that_segfaults_is_signalled_as_a_crash(
    prepared: Prepared, tmp_path: Path, no_core_dumps: None
) -> None:
    console = tmp_path / "console.log"
    hook = when_console_shows(console, MID_BOOT, kill_with(signal.SIGSEGV))
    outcome = run_guest(prepared, boot_argv(prepared, tmp_path), console, on_spawn=hook)
    assert outcome.ended == "signalled", outcome.reason
    assert outcome.exit_signal == signal.SIGSEGV
    assert "QEMU crashed (signal 11, SIGSEGV)" in outcome.reason
    assert not qemu_processes_mentioning(str(tmp_path))


def test_qemu_refusing_an_option_exited_with_its_error_line(prepared: Prepared, tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    argv = boot_argv(prepared, tmp_path, extra=("-no-such-option",))
    outcome = run_guest(prepared, argv, console)
    assert outcome.ended == "exited", outcome.reason
    assert outcome.exit_status not in (None, 0)
    assert outcome.exit_signal is None
    # QEMU's own line, from its stderr (merged into the console by the pty), quoted.
    binary = Path(argv[0]).name
    assert f'"{binary}: -no-such-option: invalid option"' in outcome.reason, outcome.reason
    assert f"status {outcome.exit_status}" in outcome.reason
    assert outcome.boot_seconds is None
    assert not qemu_processes_mentioning(str(tmp_path))


def test_a_guest_that_powers_off_early_exited_with_status_0(prepared: Prepared, tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    # busybox as init, powering off at once: the guest ends cleanly, but before it is done.
    argv = boot_argv(prepared, tmp_path, "rdinit=/bin/busybox", "--", "poweroff", "-f")
    outcome = run_guest(prepared, argv, console)
    assert outcome.ended == "exited", outcome.reason
    assert outcome.exit_status == 0 and outcome.exit_signal is None
    assert outcome.reason == (
        "QEMU exited with status 0 before the guest finished: the guest reset or powered off"
    )
    assert not qemu_processes_mentioning(str(tmp_path))


def test_the_harness_ending_a_hung_guest_is_a_timeout_not_a_signal(
    prepared: Prepared, tmp_path: Path
) -> None:
    console = tmp_path / "console.log"
    with guest_memory.reserve(prepared.profile.memory_mib):
        outcome = guest.run(boot_argv(prepared, tmp_path), console, timeout=2)
    assert outcome.ended == "timeout", outcome.reason
    assert outcome.seconds < 30
    assert not qemu_processes_mentioning(str(tmp_path))


def test_a_console_past_the_limit_is_a_flood(prepared: Prepared, tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    outcome = run_guest(prepared, boot_argv(prepared, tmp_path), console, log_limit=SMALL_LIMIT)
    assert outcome.ended == "flood", outcome.reason
    assert "8 KiB" in outcome.reason
    # The log keeps exactly what came before the limit, nothing past it.
    assert console.stat().st_size == SMALL_LIMIT
    assert outcome.console_bytes > SMALL_LIMIT
    assert not qemu_processes_mentioning(str(tmp_path))


def test_a_console_log_on_a_full_filesystem_is_a_log_error(prepared: Prepared, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_TMPFS}", "tmpfs", str(small)],
        capture_output=True, text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {mount.stderr.strip()}")
    try:
        console = small / "console.log"
        outcome = run_guest(prepared, boot_argv(prepared, tmp_path), console)
        assert outcome.ended == "log-error", outcome.reason
        assert outcome.reason == f"cannot write the console log {console}: No space left on device"
        assert 0 < console.stat().st_size <= SMALL_LIMIT
        assert not qemu_processes_mentioning(str(tmp_path))
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_ctrl_c_in_the_middle_of_a_read_leaves_no_qemu(prepared: Prepared, tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    main = threading.main_thread().ident
    assert main is not None

    def interrupt(_pid: int) -> None:
        # SIGINT to the main thread, as Ctrl-C: it lands while run() waits on or reads the pty.
        signal.pthread_kill(main, signal.SIGINT)

    hook = when_console_shows(console, MID_BOOT, interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_guest(prepared, boot_argv(prepared, tmp_path), console, on_spawn=hook)
    assert MID_BOOT in console.read_bytes()
    assert not qemu_processes_mentioning(str(tmp_path))
