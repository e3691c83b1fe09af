"""Run one guest: QEMU under pexpect, the console logged to disk as it arrives.

The console is read in chunks and each chunk is written to the log before it is looked at;
the markers are found by scanning each chunk with a small carry-over of the one before, so
nothing this module keeps grows with the console (a flooding guest costs disk up to
CONSOLE_LOG_LIMIT, then it is ended). The guest is ended as soon as the console shows a panic,
at the timeout if it hangs, and in every case (a full disk, Ctrl-C in the middle of a read)
before this returns or raises: no QEMU is ever left behind. This module only runs a guest and
says how it ended (GuestOutcome); judging is judge.py's."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pexpect

INIT_STARTED = b"hvo-init: start"
INIT_DONE = b"hvo-init: done"
# Lines after which the kernel is dead or about to be: end the guest (after the trace).
PANIC = re.compile(rb"Kernel panic - not syncing|Attempted to kill init")
PANIC_TRACE_END = re.compile(rb"---\[ end Kernel panic")
# QEMU stopped the guest's vCPU (KVM could not run it): the guest never goes on; end it after
# KVM_STOP_GRACE_SECONDS of the register dump that follows (the QEMU target,
# harness/targets/qemu.py, boots it again under TCG).
KVM_STOPPED = re.compile(rb"KVM internal error")
KVM_STOP_GRACE_SECONDS = 1.0
# How long to keep reading after a panic line, for the trace that follows it.
PANIC_GRACE_SECONDS = 3.0
# After the end-of-trace line, how long to wait for the rest of that line.
PANIC_LINE_END_SECONDS = 0.5
# How long a guest that said it is done may take to power off before it is ended.
POWEROFF_GRACE_SECONDS = 5.0
# A boot with its scenarios prints well under 1 MiB; a guest printing 64 MiB is flooding (a
# WARN in a loop, a console storm) and more of it would only fill the disk.
CONSOLE_LOG_LIMIT = 64 * 1024 * 1024
# One read from the pty; bounds what a chunk holds in memory.
READ_SIZE = 64 * 1024
# What of one chunk is kept for the next scan: longer than any marker, so a marker split
# between two chunks is found, and enough for the last lines of the console (QEMU's error).
CARRY_BYTES = 4096
# A quoted console line (the panic line, QEMU's error line) is cut to this.
LINE_LIMIT = 512
# After the pty reports EOF, how long QEMU may take to be reaped before it is ended.
REAP_SECONDS = 5.0
# How often the loop wakes without console output, to see the stop event and the clock.
POLL_SECONDS = 1.0

# QEMU's own error messages: its program name, a colon, the message (error_report()).
_QEMU_ERROR_LINE = re.compile(rb"qemu-system-[A-Za-z0-9_.-]+: [^\r\n]*")
_QEMU_ERROR_LINE_COMPLETE = re.compile(_QEMU_ERROR_LINE.pattern + rb"\r?\n")
_NEWLINE = re.compile(rb"\n")
_INIT_STARTED = re.compile(re.escape(INIT_STARTED))
_INIT_DONE = re.compile(re.escape(INIT_DONE))
# Signals with which a process dies by its own fault: QEMU crashed rather than was killed.
_CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGILL,
                            signal.SIGFPE, signal.SIGTRAP, signal.SIGSYS})


@dataclass
class GuestOutcome:
    """How a guest ended. `ended` is one of:

    - "done": the guest printed "hvo-init: done" (its scenarios ran); QEMU then had
      POWEROFF_GRACE_SECONDS to exit and was ended by the harness if it did not.
    - "panic": the console showed a kernel panic (PANIC); the trace after it was read (up to
      PANIC_GRACE_SECONDS) and the guest ended. The reason quotes the panic line.
    - "timeout": no end before the deadline: the guest hung, the harness ended it.
    - "exited": QEMU exited by itself with a status before the guest was done. Status 0: the
      guest reset or powered off (a kernel that triple-faults under -no-reboot ends so);
      non-zero: QEMU failed, and the reason quotes QEMU's own error line.
    - "signalled": QEMU was killed by a signal the harness did not send (exit_signal): killed
      by someone (SIGKILL, the OOM killer) or crashed (SIGSEGV, SIGABRT, ...).
    - "interrupted": the stop event (Ctrl-C in another thread) ended the guest while it booted.
    - "flood": the console passed the log limit (CONSOLE_LOG_LIMIT): the log holds the
      first limit bytes, the guest was ended.
    - "log-error": the console log could not be written (e.g. a full filesystem): the guest
      was ended at once; the reason names the log and the error.

    The harness's own ending of QEMU (after done, a panic, the timeout, a flood, a log error,
    an interruption) is never "signalled"; exit_status/exit_signal then say how QEMU took it."""

    ended: str
    reason: str
    boot_seconds: float | None  # QEMU start to the guest's init running
    seconds: float  # QEMU start to QEMU end
    exit_status: int | None  # QEMU's exit status when it exited (None: killed by a signal)
    exit_signal: int | None = None  # the signal QEMU died of, whoever sent it
    console_bytes: int = 0  # console bytes received (the log holds them up to the limit)


class _Console:
    """What the console has shown, found with bounded state: markers are searched in each
    new chunk plus the carry-over (the previous chunk's last CARRY_BYTES), and a match counts
    only if it ends in the new bytes, so one in the carry is not seen twice."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.carry = b""
        self.boot_seconds: float | None = None
        # "boot" -> "done" (powering off) or "panic" (reading the trace) -> "trace-end" (the
        # end-of-trace line's rest) -> "over" (the guest is to be ended now).
        self.phase = "boot"
        self.phase_deadline: float | None = None
        self.panic_line = b""
        self.panic_line_open = False  # the panic line's newline is still to come
        self.qemu_error = b""

    def feed(self, data: bytes, now: float) -> None:
        buf = self.carry + data
        fresh = len(self.carry)
        if self.panic_line_open:
            self._extend_panic_line(data)
        for match in _QEMU_ERROR_LINE_COMPLETE.finditer(buf):
            if match.end() > fresh:
                self.qemu_error = match.group().rstrip()[:LINE_LIMIT]
        pos = 0
        while True:
            if self.phase == "boot":
                pos = self._boot(buf, fresh, pos, now)
                if pos < 0:
                    break
            elif self.phase == "panic":
                end = _find(PANIC_TRACE_END, buf, pos, fresh)
                if end is None:
                    break
                pos = end.end()
                self.phase = "trace-end"
                self.phase_deadline = min(self.phase_deadline or now, now + PANIC_LINE_END_SECONDS)
            elif self.phase == "trace-end":
                # The end-of-trace line itself, to its end.
                if _find(_NEWLINE, buf, pos, fresh) is not None:
                    self.phase = "over"
                break
            else:  # "done" waits for QEMU to exit; "over" for the guest to be ended
                break
        self.carry = buf[-CARRY_BYTES:]

    def _boot(self, buf: bytes, fresh: int, pos: int, now: float) -> int:
        """The first marker from pos on, acted upon; where to go on, or -1 for none left."""
        found = [
            (match, kind)
            for pattern, kind in ((_INIT_STARTED, "start"), (_INIT_DONE, "done"), (PANIC, "panic"),
                                  (KVM_STOPPED, "kvm"))
            if (match := _find(pattern, buf, pos, fresh)) is not None
        ]
        if not found:
            return -1
        match, kind = min(found, key=lambda item: item[0].start())
        if kind == "start":
            if self.boot_seconds is None:
                self.boot_seconds = now - self.start
        elif kind == "kvm":
            self.phase = "kvm-stopped"
            self.phase_deadline = now + KVM_STOP_GRACE_SECONDS
        elif kind == "done":
            self.phase = "done"
            self.phase_deadline = now + POWEROFF_GRACE_SECONDS
        else:
            self.phase = "panic"
            self.phase_deadline = now + PANIC_GRACE_SECONDS
            self.panic_line = b""
            self.panic_line_open = True
            self._extend_panic_line(buf[match.start():])
        return match.end()

    def _extend_panic_line(self, data: bytes) -> None:
        newline = data.find(b"\n")
        piece = data if newline < 0 else data[:newline]
        self.panic_line = (self.panic_line + piece)[:LINE_LIMIT]
        self.panic_line_open = newline < 0 and len(self.panic_line) < LINE_LIMIT

    def error_line(self) -> str:
        """QEMU's last error line, else the console's last line: why QEMU exited."""
        # The carry may end in an error line without its newline (QEMU's last words).
        matches = list(_QEMU_ERROR_LINE.finditer(self.carry))
        line = matches[-1].group()[:LINE_LIMIT] if matches else self.qemu_error
        if not line:
            lines = [text for text in self.carry.splitlines() if text.strip()]
            line = lines[-1][-LINE_LIMIT:] if lines else b""
        return line.decode(errors="replace").strip() or "(no console output)"


def _find(pattern: re.Pattern[bytes], buf: bytes, pos: int, fresh: int) -> re.Match[bytes] | None:
    """The first match of pattern in buf from pos that ends in the new bytes (past `fresh`)."""
    for match in pattern.finditer(buf, pos):
        if match.end() > fresh:
            return match
    return None


def run(
    argv: list[str],
    console_log: Path,
    timeout: float,
    stop: threading.Event | None = None,
    *,
    log_limit: int = CONSOLE_LOG_LIMIT,
    on_spawn: Callable[[int], None] | None = None,
) -> GuestOutcome:
    """Boot argv; `stop` (set by another thread on Ctrl-C) ends the guest within a second.

    log_limit: console bytes kept before the guest is ended as a flood. on_spawn: called with
    QEMU's pid once it runs (tests use it to do things to that very process)."""
    start = time.monotonic()
    try:
        console_log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(console_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as error:
        return GuestOutcome("log-error", _log_error(console_log, error), None, 0.0, None)
    console = _Console(start)
    ended: str | None = None
    reason = ""
    received = written = 0
    # Set when the harness signals QEMU itself: that end is the harness's, not "signalled".
    harness_ended = False
    child: pexpect.spawn | None = None
    try:
        child = pexpect.spawn(argv[0], argv[1:], timeout=None)
        if on_spawn is not None:
            on_spawn(child.pid)
        deadline = start + timeout
        while True:
            now = time.monotonic()
            if stop is not None and stop.is_set():
                # A guest already done or panicked keeps that end: Ctrl-C only cut its grace.
                if console.phase == "boot":
                    ended, reason = "interrupted", "interrupted by the user"
                break
            # Booting, the timeout is the limit; after done or a panic, that phase's grace.
            until = deadline if console.phase == "boot" else (console.phase_deadline or now)
            if console.phase == "over" or now >= until:
                if console.phase == "boot":
                    ended = "timeout"
                    reason = f"no end after {timeout:.0f} s: guest hung, ended by the harness"
                elif console.phase == "done":
                    reason = (f"guest finished its scenarios; QEMU did not exit within "
                              f"{POWEROFF_GRACE_SECONDS:.0f} s, ended by the harness")
                break
            try:
                data = child.read_nonblocking(READ_SIZE, timeout=min(until - now, POLL_SECONDS))
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                # QEMU closed the console: it is exiting. Reap it, to learn how it ended.
                if not _reap(child, REAP_SECONDS) and console.phase == "boot":
                    ended = "exited"
                    reason = "QEMU closed the console before the guest finished and did not exit"
                break
            received += len(data)
            kept = data[: max(log_limit - written, 0)]
            try:
                _write_all(fd, kept)
            except OSError as error:
                ended, reason = "log-error", _log_error(console_log, error)
                break
            written += len(kept)
            # Only what the log holds is looked at: the outcome never says more than the log.
            console.feed(kept, time.monotonic())
            if len(kept) < len(data):
                if console.phase == "boot":
                    ended = "flood"
                    reason = (f"console flood: more than {_size(log_limit)} of console output, "
                              f"the log keeps the first {_size(log_limit)}; ended by the harness")
                break
    finally:
        # Also on Ctrl-C (KeyboardInterrupt, raised on to the caller) and any other exception.
        try:
            if child is not None:
                harness_ended = _end(child)
        finally:
            os.close(fd)
    assert child is not None  # spawn() raised otherwise, and so did this
    seconds = time.monotonic() - start
    status, killed_by = child.exitstatus, child.signalstatus
    # The console's end (done, a panic) stands unless the harness's own trouble (the log,
    # Ctrl-C) came first or cut it.
    if console.phase in ("panic", "trace-end", "over") and ended is None:
        ended = "panic"
        line = console.panic_line.decode(errors="replace").strip()
        reason = f"guest panicked: {line}" if line else "guest panicked"
    elif console.phase == "kvm-stopped" and ended is None:
        ended = "kvm-stopped"
        reason = "KVM stopped the guest (KVM internal error): the emulator's failure, not the kernel's"
    elif console.phase == "done" and ended is None:
        ended = "done"
        reason = reason or "guest finished its scenarios"
        if killed_by is not None and not harness_ended:
            reason += f"; then {_signal_text(killed_by)}"
    elif ended is None:
        if killed_by is not None and not harness_ended:
            ended, reason = "signalled", f"{_signal_text(killed_by)} before the guest finished"
        elif status == 0:
            ended = "exited"
            reason = "QEMU exited with status 0 before the guest finished: the guest reset or powered off"
        else:
            ended = "exited"
            reason = f'QEMU exited with status {status} before the guest finished: "{console.error_line()}"'
    return GuestOutcome(ended, reason, console.boot_seconds, seconds, status, killed_by, received)


def _write_all(fd: int, data: bytes) -> None:
    # os.write may write part of the data (a filesystem nearly full): the rest, or the error.
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _end(child: pexpect.spawn) -> bool:
    """End QEMU if it still runs, and close the pty; True if the harness had to signal it.

    A second Ctrl-C while this runs must not leave QEMU behind: it is held until QEMU is
    gone, then raised."""
    signalled = False
    interrupted = False
    while True:
        try:
            # isalive() reaps QEMU if it has exited; if not, it is ours to end.
            if child.isalive():
                signalled = True
                child.terminate(force=True)
            if not child.isalive():
                # Reaped already: ptyprocess's close() would otherwise sleep 0.1 s after
                # closing the pty ("give the kernel time"), which only a live child needs.
                child.ptyproc.delayafterclose = 0.0
            child.close(force=True)
            break
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt
    return signalled


def _reap(child: pexpect.spawn, seconds: float) -> bool:
    """Wait for an exiting QEMU to be gone (True) for up to `seconds`."""
    deadline = time.monotonic() + seconds
    while child.isalive():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _signal_text(number: int) -> str:
    try:
        sig = signal.Signals(number)
    except ValueError:
        return f"QEMU was killed by signal {number}"
    if sig in _CRASH_SIGNALS:
        return f"QEMU crashed (signal {number}, {sig.name})"
    return f"QEMU was killed by signal {number} ({sig.name})"


def _log_error(path: Path, error: OSError) -> str:
    return f"cannot write the console log {path}: {error.strerror or error}"


def _size(limit: int) -> str:
    for unit, factor in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if limit >= factor and limit % factor == 0:
            return f"{limit // factor} {unit}"
    return f"{limit} bytes"
