"""The memory pool (harness/guest_memory.py): files in a real tmpfs, reused by boots of their
size, never shared by two guests, within the host's budget, gone when the harness is done,
interrupted or killed (at the next start); and boots that really run on them."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import guest_memory, qemu, results, upstream
from harness.profiles import get_profile
from harness.targets import lava
from tests.cli import HARNESS
from tests.recorded import X86, document

REPO = Path(__file__).resolve().parent.parent
SHM = Path("/dev/shm")


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A pool of this test's own on the host's tmpfs (its own ledger and budget with it)."""
    if guest_memory._filesystem_type(SHM) not in guest_memory.MEMORY_FILESYSTEMS:
        pytest.skip("/dev/shm is not a tmpfs here")
    directory = SHM / f"hvo-harness-test-{os.getpid()}-{tmp_path.name}"
    monkeypatch.setenv("HVO_HARNESS_MEMORY_DIR", str(directory))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _touch(path: Path, mib: int) -> None:
    """Write MIB of data into a memory file, as a guest does to the RAM it uses."""
    with open(path, "r+b") as memory:
        memory.write(b"\xa5" * (mib << 20))


def test_a_boot_gets_a_file_per_node_and_the_next_boot_of_that_size_reuses_them(pool: Path) -> None:
    with guest_memory.take((64, 32)) as first:
        assert first.files is not None and len(first.files) == 2
        assert first.reused == [False, False]
        assert [path.stat().st_size >> 20 for path in first.files] == [64, 32]
        for path in first.files:
            _touch(path, 8)
        record = first.record()
    assert record["backing"] == "pool" and record["reused"] == [False, False]
    with guest_memory.take((64, 32)) as second:
        assert second.files == first.files
        assert second.reused == [True, True]
    with guest_memory.take((128,)) as larger:
        assert larger.files is not None and not set(larger.files) & set(first.files)
    # A smaller node takes a larger idle file (QEMU maps the node's size of it), the one of
    # its own size first.
    with guest_memory.take((32, 16)) as smaller:
        assert smaller.files == first.files[::-1] and smaller.reused == [True, True]


def test_two_guests_at_once_never_share_a_file(pool: Path) -> None:
    with guest_memory.take((64,)) as one, guest_memory.take((64,)) as two:
        assert one.files is not None and two.files is not None
        assert set(one.files).isdisjoint(two.files)


def test_a_file_written_into_holds_that_memory_against_the_budget(pool: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with guest_memory.take((64,)) as first:
        assert first.files is not None
        _touch(first.files[0], 48)
    # 32 MiB busy, 48 MiB idle (72 in the budget's units) and 65 more asked: over a 100 MiB
    # budget, so the idle file, too small for the node, gives way rather than the boot waiting.
    monkeypatch.setenv("HVO_HARNESS_GUEST_MEMORY_MIB", "100")
    with guest_memory.take((32,), fresh="held by the test"):
        assert first.files[0].exists()
        with guest_memory.take((65,)) as second:
            assert second.files is not None
            assert not first.files[0].exists()


def test_a_file_a_boot_takes_again_is_not_counted_twice(pool: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with guest_memory.take((64,)) as first:
        assert first.files is not None
        _touch(first.files[0], 48)
    # 64 asked of a 100 MiB budget with 32 busy: it fits only because the 48 MiB the reused
    # file holds are part of the 64, not more on top of them.
    monkeypatch.setenv("HVO_HARNESS_GUEST_MEMORY_MIB", "100")
    with guest_memory.take((32,), fresh="held by the test"), guest_memory.take((64,)) as again:
        assert again.files == first.files and again.reused == [True]


def test_fresh_memory_when_asked_and_when_the_filesystem_has_no_room(pool: Path) -> None:
    with guest_memory.take((64,), fresh="--fresh-memory") as asked:
        assert asked.files is None and asked.record() == {"backing": "fresh", "why": "--fresh-memory"}
    free = guest_memory._free_mib(SHM)
    with guest_memory.take((free + 1024,)) as too_big:
        assert too_big.files is None
        assert f"{pool} has" in (too_big.why_fresh or "") and "MiB free" in (too_big.why_fresh or "")
    assert guest_memory.pool_files() == []


def test_a_directory_on_disk_is_no_pool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if guest_memory._filesystem_type(tmp_path) in guest_memory.MEMORY_FILESYSTEMS:
        pytest.skip("the test's tmp_path is itself on tmpfs")
    monkeypatch.setenv("HVO_HARNESS_MEMORY_DIR", str(tmp_path / "pool"))
    with guest_memory.take((64,)) as backing:
        assert backing.files is None
        assert "not a memory filesystem" in (backing.why_fresh or "")
        assert "HVO_HARNESS_MEMORY_DIR" in (backing.why_fresh or "")


def test_the_files_of_a_killed_process_and_unknown_files_go_at_the_next_sweep(pool: Path) -> None:
    script = ("import os, signal\n"
              "from harness import guest_memory\n"
              "with guest_memory.take((64, 64)) as backing:\n"
              "    print(' '.join(str(p) for p in backing.files), flush=True)\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr
    left = [Path(name) for name in done.stdout.split()]
    assert len(left) == 2 and all(path.exists() for path in left)
    stray = pool / "4096M-0badf00d.mem"
    stray.write_bytes(b"")
    guest_memory.sweep()
    assert not any(path.exists() for path in left) and not stray.exists()
    ledger = json.loads((pool / guest_memory.LEDGER).read_text())
    assert ledger["files"] == {} and ledger["reservations"] == {}


def test_release_leaves_files_in_use_unless_the_process_is_ending(pool: Path) -> None:
    with guest_memory.take((64,)) as backing:
        assert backing.files is not None
        assert guest_memory.release_pool() == []
        assert backing.files[0].exists()
        assert guest_memory.release_pool(busy_too=True) == [backing.files[0].name]
    assert guest_memory.pool_files() == []


def test_the_qemu_command_backs_each_node_with_its_file_shared() -> None:
    profile = get_profile("x86_64")
    files = qemu.GuestFiles(Path("/boot/vmlinuz"), Path("/tmp/initrd"), Path("/tmp/r"), Path("/tmp/d"))
    accel = qemu.AccelChoice("tcg", "test")
    memory = [Path("/dev/shm/hvo-harness/6144M-a.mem"), Path("/dev/shm/hvo-harness/6144M-b.mem")]
    pooled = qemu.build_argv(profile, files, "console=ttyS0", accel, memory)
    node1 = "memory-backend-file,id=mem1,size=6144M,mem-path=/dev/shm/hvo-harness/6144M-b.mem,share=on"
    assert node1 in pooled
    fresh = qemu.build_argv(profile, files, "console=ttyS0", accel)
    assert "memory-backend-ram,id=mem0,size=6144M" in fresh and not any(".mem," in arg for arg in fresh)


# -- real boots -----------------------------------------------------------------------------------

def _harness(args: list[str], pool: Path) -> subprocess.Popen[str]:
    # SIGINT as a terminal gives it, even where this suite was started in the background
    # with SIGINT ignored (which children inherit, and Python then keeps).
    return subprocess.Popen(
        [*HARNESS, *args], cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "HVO_HARNESS_MEMORY_DIR": str(pool), "PYTHONPATH": str(REPO)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.boot
def test_a_run_reuses_its_files_and_leaves_none(pool: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    harness = _harness(["run", "--arch", "loongarch64", "--hvo", "on,off", "--jobs", "1", "--out", str(out)],
                       pool)
    output, _ = harness.communicate(timeout=900)
    assert harness.returncode in (0, 1), output
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [run["memory"]["backing"] for run in runs] == ["pool", "pool"], output
    assert runs[0]["memory"]["reused"] == [False] * len(runs[0]["memory"]["files"])
    # The second boot, of the same size, found what the first one wrote.
    assert runs[1]["memory"]["files"] == runs[0]["memory"]["files"]
    assert all(runs[1]["memory"]["reused"])
    assert any("memory-backend-file" in arg for arg in runs[1]["qemu_argv"])
    by_hand = (out / "loongarch64-hvo-off.qemu.sh").read_text()
    assert "memory-backend-ram" in by_hand and "memory-backend-file" not in by_hand
    said = " ".join(output.split())  # the report wraps its lines
    assert "memory: new pool files" in said and "memory: reused pool files" in said, output
    assert guest_memory.pool_files() == []


@pytest.mark.boot
def test_fresh_memory_boots_on_fresh_ram_and_says_so(pool: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    harness = _harness(["run", "--arch", "loongarch64", "--hvo", "on", "--fresh-memory", "--out", str(out)],
                       pool)
    output, _ = harness.communicate(timeout=600)
    assert harness.returncode in (0, 1), output
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert run["memory"] == {"backing": "fresh", "why": "--fresh-memory"}
    assert any(arg.startswith("memory-backend-ram,") for arg in run["qemu_argv"])
    assert not any("memory-backend-file" in arg for arg in run["qemu_argv"])
    assert "memory: fresh RAM (--fresh-memory)" in " ".join(output.split()), output
    assert guest_memory.pool_files() == []


def _interrupt_mid_boot(pool: Path, out: Path, signum: int) -> tuple[int, str]:
    harness = _harness(["run", "--arch", "loongarch64", "--hvo", "on", "--out", str(out)], pool)
    deadline = time.monotonic() + 300
    while not guest_memory.pool_files() and harness.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert guest_memory.pool_files(), "the boot never took its memory files"
    time.sleep(1.0)  # QEMU has them mapped
    harness.send_signal(signum)
    output, _ = harness.communicate(timeout=120)
    return harness.returncode, output


@pytest.mark.boot
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_run_leaves_no_file(pool: Path, tmp_path: Path, signum: int) -> None:
    code, output = _interrupt_mid_boot(pool, tmp_path / "run", signum)
    assert code != 0, output
    assert guest_memory.pool_files() == [], output


@pytest.mark.boot
def test_a_killed_runs_files_go_at_the_next_start(pool: Path, tmp_path: Path) -> None:
    code, output = _interrupt_mid_boot(pool, tmp_path / "run", signal.SIGKILL)
    assert code == -signal.SIGKILL, output
    left = guest_memory.pool_files()
    assert left, "SIGKILL leaves the files for the next start to remove"
    # Any command of the harness, even one that fails on its input, starts with the sweep.
    # (QEMU, orphaned by the kill, ends on its own pipe; the files' names go at once.)
    nothing = _harness(["report", str(tmp_path / "none.json")], pool)
    nothing.communicate(timeout=60)
    assert nothing.returncode == 2
    assert guest_memory.pool_files() == []
    # The killed harness's QEMU, orphaned, is not this test's to leave running.
    subprocess.run(["pkill", "-KILL", "-f", f"mem-path={pool}"], check=False)


def _on_pool_files(doc: dict[str, Any]) -> dict[str, Any]:
    """A recorded run's document as if the run had booted on the memory pool's files."""
    run = doc["runs"][0]
    run["qemu_argv"] = [
        re.sub(r"^memory-backend-ram,id=(mem\d+),size=(\d+)M$",
               r"memory-backend-file,id=\1,size=\2M,mem-path=/dev/shm/hvo-harness/\2M-0a1b2c3d.mem,share=on",
               arg) for arg in run["qemu_argv"]]
    assert any("memory-backend-file" in arg for arg in run["qemu_argv"])
    run["memory"] = {"backing": "pool", "files": ["/dev/shm/hvo-harness/4096M-0a1b2c3d.mem"] * 2,
                     "reused": [True, True]}
    return doc


def test_the_pools_files_stay_the_harnesss_in_reports_and_lava_jobs() -> None:
    """An upstream report's QEMU command and a LAVA job made from a run on pool files boot the
    same guest on fresh RAM: the files are the harness's, gone when it is done."""
    fresh_doc = document(X86)
    pooled = results.from_json(_on_pool_files(document(X86)))
    text = upstream.render(pooled, upstream.select_run(pooled, None), Path("r.json"))
    fresh = results.from_json(fresh_doc)
    assert "/dev/shm/hvo-harness" not in text and "memory-backend-file" not in text
    assert text == upstream.render(fresh, upstream.select_run(fresh, None), Path("r.json"))
    spec, = lava.specs_from_results(pooled, Path("r.json"))
    fresh_spec, = lava.specs_from_results(fresh, Path("r.json"))
    assert spec.profile.node_mem_mib == fresh_spec.profile.node_mem_mib
    assert spec.machine_args == fresh_spec.machine_args
    assert not any("mem-path" in arg for arg in spec.machine_args)
