"""The fault suite's tools (tests/test_faults.py): guests that misbehave on purpose, QEMU
processes found and ended by id, results files read back, and the `faults: ...` line.

A fault is made real, never mocked: a fault initramfs whose `hvo/scenarios.sh` is a wrapper
from tests/faults/ around the real guest_scripts/scenarios.sh (at `hvo/scenarios-real.sh`),
a signal to the real QEMU or to the real harness, a kernel image that dies, a full disk."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness import initramfs, pipeline
from harness import results as results_module
from harness.profiles import ArchProfile, get_profile
from harness.results import Run
from tests.cli import HARNESS, REPO
from tests.test_guest_lifetime import qemu_processes_mentioning

FAULTS = Path(__file__).parent / "faults"
INIT_STARTED = b"hvo-init: start"
RESULTS_JSON = "results.json"


# --- booting a misbehaving guest -------------------------------------------------------------

@functools.cache
def kernel(arch: str) -> pipeline.PreparedKernel:
    return pipeline.prepare_kernel(get_profile(arch), "debian")


@functools.cache
def environment(arch: str) -> pipeline.GuestEnvironment:
    return pipeline.prepare_environment(get_profile(arch))


def fault_environment(arch: str, wrapper: str | None) -> pipeline.GuestEnvironment:
    """The arch's guest environment with tests/faults/<wrapper> as hvo/scenarios.sh (None: the
    harness's own initramfs)."""
    env = environment(arch)
    if wrapper is None:
        return env
    assert env.busybox is not None and env.helper is not None
    real = initramfs.guest_script_files()["hvo/scenarios.sh"]
    cpio = initramfs.build(env.busybox, env.helper, extra={
        "hvo/scenarios.sh": FAULTS / wrapper,
        "hvo/scenarios-real.sh": real,
    })
    return replace(env, initramfs=cpio)


def boot(
    arch: str,
    wrapper: str | None,
    out_dir: Path,
    timeout: float,
    hvo: str = "on",
    prepared: pipeline.PreparedKernel | None = None,
    stop: threading.Event | None = None,
    profile: ArchProfile | None = None,
) -> Run:
    profile = profile or get_profile(arch)
    return pipeline.boot(profile, prepared or kernel(arch), fault_environment(arch, wrapper), hvo,
                         out_dir, timeout=timeout, stop=stop)


class BackgroundBoot:
    """pipeline.boot in a thread, so the test can hurt the QEMU it runs."""

    def __init__(self, boot_call: Callable[[], Run]) -> None:
        self._run: Run | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._target, args=(boot_call,), daemon=True)
        self._thread.start()

    def _target(self, boot_call: Callable[[], Run]) -> None:
        try:
            self._run = boot_call()
        except BaseException as error:  # handed to the test in result()
            self._error = error

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def result(self, timeout: float) -> Run:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the boot did not return within {timeout:.0f} s"
        if self._error is not None:
            raise self._error
        assert self._run is not None
        return self._run


# --- QEMU processes, by id -------------------------------------------------------------------

def qemu_pids_mentioning(text: str) -> list[int]:
    ps = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    pids = []
    for line in ps.splitlines():
        pid, _, args = line.strip().partition(" ")
        if "qemu-system" in args and text in args and pid.isdigit():
            pids.append(int(pid))
    return pids


def wait_for(condition: Callable[[], bool], timeout: float, what: str, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def file_contains(path: Path, text: bytes) -> Callable[[], bool]:
    return lambda: path.exists() and text in path.read_bytes()


def signal_qemu(text: str, signum: int) -> int:
    """Send signum to the one QEMU whose command line mentions text; its pid."""
    pids = qemu_pids_mentioning(text)
    assert len(pids) == 1, f"expected one QEMU mentioning {text}, found {pids}"
    os.kill(pids[0], signum)
    return pids[0]


def assert_no_qemu_left(text: str, grace: float = 5.0) -> None:
    """No QEMU mentioning text is left (after a short grace for one that is exiting). Any that
    is left is killed by its id, so a failing test leaves nothing behind, and reported."""
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not qemu_pids_mentioning(text), grace, "QEMU to end")
    left = qemu_processes_mentioning(text)
    reap_qemu(text)
    assert not left, f"QEMU left running: {left}"


def reap_qemu(text: str) -> None:
    for pid in qemu_pids_mentioning(text):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def no_core_dumps() -> Iterator[None]:
    """A QEMU killed by SIGSEGV or SIGABRT (it inherits this process's limit) dumps no core."""
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))


def _no_core_in_child() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))


# --- the CLI as a process --------------------------------------------------------------------

@dataclass
class Cli:
    """`python -m harness.cli ...` running in its own process; output to files (no pipe fills)."""

    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    @classmethod
    def start(cls, args: Sequence[str], logs: Path) -> Cli:
        logs.mkdir(parents=True, exist_ok=True)
        stdout, stderr = logs / "cli.stdout", logs / "cli.stderr"
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            proc = subprocess.Popen([*HARNESS, *args], cwd=REPO, stdout=out, stderr=err,
                                    stdin=subprocess.DEVNULL, preexec_fn=_no_core_in_child)
        return cls(proc, stdout, stderr)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as expired:
            self.proc.kill()
            self.proc.wait()
            message = f"the harness did not exit within {timeout:.0f} s: {self.err()}"
            raise AssertionError(message) from expired

    def err(self) -> str:
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --- results files ---------------------------------------------------------------------------

def read_results(path: Path) -> dict[str, Any]:
    """A results file that is whole: valid JSON, an hvo-harness/1 document, no temp file left."""
    leftovers = sorted(p.name for p in path.parent.glob(path.name + ".*tmp*"))
    assert not leftovers, f"temporary files left beside {path.name}: {leftovers}"
    document = json.loads(path.read_text())
    results_module.validate(document)
    return document


def write_results(run: Run, out_dir: Path) -> dict[str, Any]:
    """The run as results.json (written as the CLI writes it), read back: it says what was done."""
    results = pipeline.new_results()
    results.runs = [run]
    path = out_dir / RESULTS_JSON
    results.write(path)
    document = read_results(path)
    (record,) = document["runs"]
    assert record["verdict"] == run.verdict and record["ended"] == run.ended
    assert record["verdict_reason"] == run.verdict_reason
    assert [s["status"] for s in record["scenarios"]] == [s.status for s in run.scenarios]
    return document


def assert_partial(document: Mapping[str, Any]) -> None:
    """A results file of a run that did not finish says so (CLI fields `complete`, `partial_reason`)."""
    assert "complete" in document, "results.json has no top-level `complete` field"
    assert document["complete"] is False
    assert document.get("partial_reason"), "a partial results.json says why in `partial_reason`"


def assert_complete(document: Mapping[str, Any]) -> None:
    assert "complete" in document, "results.json has no top-level `complete` field"
    assert document["complete"] is True
    assert not document.get("partial_reason")


# --- what a reason says ----------------------------------------------------------------------

def assert_says(text: str, words: Sequence[str]) -> None:
    """Each word (case-insensitive) is in text; 'a|b' is either."""
    lowered = text.lower()
    missing = [w for w in words if not any(alt.lower() in lowered for alt in w.split("|"))]
    assert not missing, f"{text!r} does not say {missing}"


# --- the `faults: N tried, N handled right` line ---------------------------------------------

SUMMARY_FILE_ENV = "HVO_FAULT_SUMMARY"


def fault_counts(stats: Mapping[str, Sequence[Any]]) -> tuple[int, int]:
    """(tried, handled right) over the fault tests' reports: a test is tried when it was not
    skipped, handled right when none of its phases failed."""
    outcome: dict[str, str] = {}
    for reports in stats.values():
        for report in reports:
            keywords = getattr(report, "keywords", None) or {}
            nodeid = getattr(report, "nodeid", None)
            if "fault" not in keywords or nodeid is None or not hasattr(report, "when"):
                continue
            if report.failed:
                outcome[nodeid] = "failed"
            elif report.skipped:
                if outcome.get(nodeid) != "failed":
                    outcome[nodeid] = "skipped"
            elif report.passed and report.when == "call":
                outcome.setdefault(nodeid, "passed")
    tried = [o for o in outcome.values() if o != "skipped"]
    return len(tried), sum(o == "passed" for o in tried)


def summary_line(stats: Mapping[str, Sequence[Any]]) -> str | None:
    tried, right = fault_counts(stats)
    return f"faults: {tried} tried, {right} handled right" if tried else None


def report_summary(stats: Mapping[str, Sequence[Any]], write_line: Callable[[str], None]) -> None:
    """For conftest's pytest_terminal_summary: the line goes to $HVO_FAULT_SUMMARY when set (the
    Makefile prints it last), else to the terminal."""
    line = summary_line(stats)
    target = os.environ.get(SUMMARY_FILE_ENV)
    if target:
        tried, right = fault_counts(stats)
        Path(target).write_text(f"faults: {tried} tried, {right} handled right\n")
    elif line:
        write_line(line)
