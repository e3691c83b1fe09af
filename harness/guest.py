"""Run one guest: QEMU under pexpect, the console logged to disk as it arrives.

The guest is ended as soon as the console shows a panic, at the timeout if it hangs, and in
every case (including Ctrl-C) before this returns or raises: no QEMU is ever left behind."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pexpect

INIT_STARTED = b"hvo-init: start"
INIT_DONE = b"hvo-init: done"
# Lines after which the kernel is dead or about to be: end the guest (after the trace).
PANIC = re.compile(rb"Kernel panic - not syncing|Attempted to kill init")
PANIC_TRACE_END = re.compile(rb"---\[ end Kernel panic")
# How long to keep reading after a panic line, for the trace that follows it.
PANIC_GRACE_SECONDS = 3.0
# How long a guest that said it is done may take to power off before it is ended.
POWEROFF_GRACE_SECONDS = 5.0


@dataclass
class GuestOutcome:
    ended: str  # "done" | "panic" | "timeout" | "exited" | "interrupted"
    reason: str
    boot_seconds: float | None  # QEMU start to the guest's init running
    seconds: float  # QEMU start to QEMU end
    exit_status: int | None


def run(
    argv: list[str],
    console_log: Path,
    timeout: float,
    stop: threading.Event | None = None,
) -> GuestOutcome:
    """Boot argv; `stop` (set by another thread on Ctrl-C) ends the guest within a second."""
    start = time.monotonic()
    deadline = start + timeout
    boot_seconds: float | None = None
    ended, reason = "timeout", f"no end after {timeout:.0f} s: guest hung, ended by the harness"
    console_log.parent.mkdir(parents=True, exist_ok=True)
    with open(console_log, "wb", buffering=0) as log:
        child = pexpect.spawn(argv[0], argv[1:], timeout=None, searchwindowsize=16384)
        child.logfile_read = log
        try:
            patterns = [INIT_STARTED, INIT_DONE, PANIC, pexpect.EOF, pexpect.TIMEOUT]
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if stop is not None and stop.is_set():
                    ended, reason = "interrupted", "interrupted by the user"
                    break
                index = child.expect(patterns, timeout=min(remaining, 1.0))
                if index == 0:
                    boot_seconds = time.monotonic() - start
                elif index == 1:
                    ended, reason = "done", "guest finished its scenarios"
                    _wait_for_exit(child, POWEROFF_GRACE_SECONDS)
                    break
                elif index == 2:
                    ended = "panic"
                    panic_line = _line_around(child)
                    reason = f"guest panicked: {panic_line}" if panic_line else "guest panicked"
                    _drain_until(child, PANIC_TRACE_END, PANIC_GRACE_SECONDS)
                    break
                elif index == 3:
                    ended = "exited"
                    reason = "QEMU exited before the guest finished"
                    break
        except KeyboardInterrupt:
            ended, reason = "interrupted", "interrupted by the user"
            raise
        finally:
            if child.isalive():
                child.terminate(force=True)
            child.close(force=True)
            log.flush()
    seconds = time.monotonic() - start
    status = child.exitstatus if child.exitstatus is not None else child.signalstatus
    if ended == "exited" and child.exitstatus not in (None, 0):
        reason = f"QEMU exited with status {child.exitstatus}: {_tail(console_log)}"
    return GuestOutcome(ended, reason, boot_seconds, seconds, status)


def _wait_for_exit(child: pexpect.spawn, seconds: float) -> None:
    with contextlib.suppress(pexpect.TIMEOUT):
        child.expect(pexpect.EOF, timeout=seconds)


def _drain_until(child: pexpect.spawn, pattern: re.Pattern[bytes], seconds: float) -> None:
    try:
        child.expect([pattern, pexpect.EOF], timeout=seconds)
        # The end-of-panic line itself, to its end.
        child.expect([b"\n", pexpect.EOF], timeout=0.5)
    except pexpect.TIMEOUT:
        pass


def _line_around(child: pexpect.spawn) -> str:
    """The text of the matched line (the panic reason)."""
    matched = child.after if isinstance(child.after, bytes) else b""
    try:
        child.expect([b"\n", pexpect.EOF], timeout=0.5)
        rest = child.before if isinstance(child.before, bytes) else b""
    except pexpect.TIMEOUT:
        rest = b""
    return (matched + rest).decode(errors="replace").strip()


def _tail(path: Path) -> str:
    lines = path.read_bytes().decode(errors="replace").strip().splitlines()
    return lines[-1].strip() if lines else "(no console output)"
