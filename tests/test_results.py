"""Results say what was done (complete, partial_reason), are written whole or not at all, and a
run keeps what an earlier one wrote: the previous run's files, the results of an interrupted one."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness import artefacts, cli, pipeline
from harness.errors import HarnessError
from harness.profiles import get_profile
from harness.results import Accel, Hvo, KernelInfo, Results, Run, from_json, load, validate
from tests.cli import REPO, one_error_line, run_cli

RECORDED = Path(__file__).parent / "data" / "results-riscv64-7.2.13-debug-hvo-on.json"


def _tmpfs(mount: Path, options: str) -> Iterator[Path]:
    mount.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A real full disk: a tmpfs of one page holds a probe file, never a results file."""
    yield from _tmpfs(tmp_path / "tiny", "size=4k")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs that holds a few small files, to fill or make read-only under a written one."""
    yield from _tmpfs(tmp_path / "small", "size=64k")


def _recorded() -> Results:
    return load(RECORDED)


# --- The record ---------------------------------------------------------------------------


def test_complete_and_partial_reason_round_trip() -> None:
    results = _recorded()
    results.complete, results.partial_reason = False, "interrupted by SIGTERM after 1 of 6 boots"
    document = results.to_json()
    validate(document)
    assert (document["complete"], document["partial_reason"]) == (
        False, "interrupted by SIGTERM after 1 of 6 boots")
    again = from_json(copy.deepcopy(document))
    assert (again.complete, again.partial_reason) == (False, "interrupted by SIGTERM after 1 of 6 boots")


def test_older_files_without_the_fields_still_load() -> None:
    document = json.loads(RECORDED.read_text())
    for key in ("complete", "partial_reason"):
        document.pop(key, None)
    validate(document)
    results = from_json(document)
    assert (results.complete, results.partial_reason) == (True, None)


def test_a_full_disk_keeps_the_earlier_file(small_fs: Path) -> None:
    path = small_fs / "results.json"
    small = pipeline.new_results()
    small.write(path)
    earlier = path.read_text()
    big = _recorded()
    big.runs = big.runs * 40  # far more than the 64 KiB the file system has
    with pytest.raises(HarnessError) as caught:
        big.write(path)
    assert str(caught.value) == (f"cannot write {path}: No space left on device: "
                                 "free space or give another --out")
    assert path.read_text() == earlier
    assert sorted(p.name for p in small_fs.iterdir()) == ["results.json"]  # no temp file left


def test_a_read_only_file_system_keeps_the_earlier_file(small_fs: Path) -> None:
    path = small_fs / "r.json"
    _recorded().write(path)
    earlier = path.read_bytes()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    with pytest.raises(HarnessError) as caught:
        pipeline.new_results().write(path, "--json")
    assert str(caught.value) == f"cannot write {path}: Read-only file system: give another --json"
    assert path.read_bytes() == earlier


def test_write_leaves_no_temp_file_and_keeps_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    _recorded().write(path)
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert load(path).runs


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- The matrix, with the boots faked: what the CLI saves and how it stops -------------------


def _fake_run(arch: str, hvo: str, out_dir: Path, ended: str) -> Run:
    console = out_dir / f"{arch}-hvo-{hvo}.console.log"
    console.write_text("fake\n")
    return Run(
        arch=arch, kernel=KernelInfo("/fake", None, "0" * 64, {"type": "image"}),
        # A cmdline bigger than the one page of tiny_fs, so the first save fills it.
        accel=Accel("tcg", "faked"), cmdline="x" * 8192, boot_seconds=None,
        verdict="pass" if ended == "done" else "error",
        hvo=Hvo(hvo, "active", "faked"), findings=[], scenarios=[], console_log=str(console),
        verdict_reason="faked", ended=ended,
    )


@pytest.fixture
def fake_boots(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """run_matrix with its downloads, environment and boots replaced: riscv64 boots until the
    stop event is set (at most 30 s), loongarch64 as soon as riscv64 is booting (so riscv64 is
    always mid-boot when loongarch64's results are saved). Records what it saw."""
    seen: dict[str, Any] = {"stopped": threading.Event(), "riscv64 booting": threading.Event()}
    monkeypatch.setattr(artefacts, "ensure_linux_source", lambda *a, **k: Path("/nonexistent"))
    monkeypatch.setattr(pipeline, "prepare_kernels",
                        lambda request, progress=None: [(p, SimpleNamespace(variant=None))
                                                         for p in request.profiles])
    monkeypatch.setattr(pipeline, "prepare_environment", lambda *a, **k: None)

    def boot(profile: Any, kernel: Any, env: Any, hvo: str, out_dir: Path, *args: Any) -> Run:
        stop = next(a for a in args if isinstance(a, threading.Event))
        if profile.name == "riscv64":
            seen["riscv64 booting"].set()
            if stop.wait(30):
                seen["stopped"].set()
                return _fake_run(profile.name, hvo, out_dir, "interrupted")
        else:
            assert seen["riscv64 booting"].wait(30)
        return _fake_run(profile.name, hvo, out_dir, "done")

    monkeypatch.setattr(pipeline, "boot", boot)
    return seen


def test_a_full_disk_mid_matrix_stops_every_guest(
    fake_boots: dict[str, Any], tiny_fs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    target = tiny_fs / "r.json"
    started = time.monotonic()
    status = cli.main(["run", "--arch", "loongarch64,riscv64", "--jobs", "2", "--hvo", "on",
                       "--out", str(out), "--json", str(target)])
    assert status == 2
    assert time.monotonic() - started < 15, "the other arch's guest was not stopped"
    assert fake_boots["stopped"].is_set()
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("hvo-harness: error:")]
    assert errors == [f"hvo-harness: error: cannot write {target}: No space left on device: "
                      "free space or give another --json"]
    assert list(tiny_fs.iterdir()) == []
    # --out had room: it says how far the run got and why it stopped.
    saved = load(out / "results.json")
    assert not saved.complete
    assert saved.partial_reason is not None
    assert saved.partial_reason.startswith("stopped by an error after 1 of 2 boots: cannot write")


def test_results_in_progress_then_complete(fake_boots: dict[str, Any], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "boot", lambda profile, kernel, env, hvo, out_dir, *a:
                        _fake_run(profile.name, hvo, out_dir, "done"))
    written: list[tuple[bool, str | None, int]] = []
    original = Results.write

    def spy(self: Results, path: Path, option: str = "--out") -> None:
        written.append((self.complete, self.partial_reason, len(self.runs)))
        original(self, path, option)

    monkeypatch.setattr(Results, "write", spy)
    out = tmp_path / "out"
    assert cli.main(["run", "--arch", "loongarch64", "--out", str(out)]) == 0
    assert written == [
        (False, "run in progress: 1 of 2 boots done", 1),
        (False, "run in progress: 2 of 2 boots done", 2),
        (True, None, 2),
    ]
    assert load(out / "results.json").complete


def test_json_may_go_into_the_out_it_makes(fake_boots: dict[str, Any], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "boot", lambda profile, kernel, env, hvo, out_dir, *a:
                        _fake_run(profile.name, hvo, out_dir, "done"))
    out = tmp_path / "new" / "out"
    assert cli.main(["run", "--arch", "loongarch64", "--hvo", "on", "--out", str(out),
                     "--json", str(out / "all.json")]) == 0
    assert load(out / "all.json").complete and load(out / "results.json").complete


def test_on_run_is_told_the_total(fake_boots: dict[str, Any], tmp_path: Path) -> None:
    calls: list[tuple[int, int, bool, str | None]] = []
    request = pipeline.MatrixRequest(profiles=[get_profile("loongarch64"), get_profile("riscv64")],
                                     hvo_settings=("on", "off"))
    assert request.boot_count() == 4
    stop = threading.Event()

    def on_run(results: Results, total: int) -> None:
        calls.append((len(results.runs), total, results.complete, results.partial_reason))
        if len(results.runs) == 2:
            stop.set()  # riscv64's fake boot returns when stopped; the matrix ends short

    results = pipeline.run_matrix(request, tmp_path, on_run, stop=stop)
    assert [c[:3] for c in calls] == [(1, 4, False), (2, 4, False), (3, 4, False)]
    assert calls[0][3] == "run in progress: 1 of 4 boots done"
    # loongarch64's two boots and riscv64's interrupted one: two of four finished.
    assert (results.complete, results.partial_reason) == (False, "stopped after 2 of 4 boots")


# --- Real boots: a second run keeps the first; SIGTERM and Ctrl-C keep the results --------


def _qemu_mentioning(text: str) -> list[str]:
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if "qemu-system" in line and text in line]


def test_an_earlier_runs_kernel_log_and_bundles_are_kept_not_left(tmp_path: Path) -> None:
    """The files a run writes whole go to previous/ with its results: its kernel log (else the
    next run overwrites it) and its reproducer bundles and triage boots (else a bundle stays for
    a boot that the next run passed)."""
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "x86_64-hvo-on.kernel.log").write_text("old kernel log\n")
    (tmp_path / "repro/x86_64-hvo-on").mkdir(parents=True)
    (tmp_path / "repro/x86_64-hvo-on/repro.sh").write_text("old\n")
    (tmp_path / "triage/x86_64-hvo-on").mkdir(parents=True)
    (tmp_path / "mine").mkdir()
    kept = cli._keep_previous_run(tmp_path, lambda line: None)
    assert kept is not None
    assert sorted(p.name for p in kept.iterdir()) == ["repro", "results.json", "triage",
                                                       "x86_64-hvo-on.kernel.log"]
    assert (kept / "repro/x86_64-hvo-on/repro.sh").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "previous"]


@pytest.mark.boot
def test_a_second_run_keeps_the_first(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run_cli("run", "--arch", "loongarch64", "--hvo", "on", "--out", str(out))
    assert first.returncode in (0, 1), first.stderr
    first_results = (out / "results.json").read_text()
    assert json.loads(first_results)["complete"] is True
    (out / "notes.txt").write_text("mine\n")
    (out / "loongarch64-hvo-on.console.log.orig").write_text("mine too\n")

    second = run_cli("run", "--arch", "loongarch64", "--hvo", "on", "--out", str(out))
    assert second.returncode in (0, 1), second.stderr
    (kept,) = (out / "previous").iterdir()
    assert (kept / "results.json").read_text() == first_results
    assert sorted(p.name for p in kept.iterdir() if p.is_file()) == sorted([
        "results.json", "loongarch64-hvo-on.console.log", "loongarch64-hvo-on.results.ktap",
        "loongarch64-hvo-on.dmesg.log", "loongarch64-hvo-on.kernel.log", "loongarch64-hvo-on.qemu.sh",
    ])
    assert f"> kept the previous run in {kept}/" in second.stderr
    # What the user put there stays where it was; the new run is in place of the old.
    assert (out / "notes.txt").read_text() == "mine\n"
    assert (out / "loongarch64-hvo-on.console.log.orig").read_text() == "mine too\n"
    assert (out / "results.json").read_text() != first_results
    assert b"hvo-init: start" in (out / "loongarch64-hvo-on.console.log").read_bytes()


@pytest.mark.boot
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_a_signal_keeps_the_results_and_ends_qemu(tmp_path: Path, signum: int, status: int) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", "--arch", "loongarch64", "--hvo", "on,off",
         "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    console = out / "loongarch64-hvo-on.console.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if console.exists() and b"hvo-init: start" in console.read_bytes():
            break
        time.sleep(0.2)
    assert _qemu_mentioning(str(out)), "the guest should be running by now"
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=30)
    name = signal.Signals(signum).name
    assert proc.returncode == status, stderr
    assert f"interrupted by {name}" in stderr
    assert not _qemu_mentioning(str(out))
    saved = json.loads((out / "results.json").read_text())
    validate(saved)
    assert saved["complete"] is False
    assert saved["partial_reason"] == f"interrupted by {name} after 0 of 2 boots"
    assert [run["ended"] for run in saved["runs"]] == ["interrupted"]


@pytest.mark.boot
def test_a_full_disk_is_one_line_and_keeps_out(tmp_path: Path, tiny_fs: Path) -> None:
    out = tmp_path / "out"
    target = tiny_fs / "r.json"
    line = one_error_line(run_cli("run", "--arch", "loongarch64", "--hvo", "on", "--out", str(out),
                                  "--json", str(target)))
    assert line == (f"hvo-harness: error: cannot write {target}: No space left on device: "
                    "free space or give another --json")
    assert list(tiny_fs.iterdir()) == []
    saved = load(out / "results.json")
    assert not saved.complete and len(saved.runs) == 1
