"""Reproducer bundles, `hvo-harness repro` and `hvo-harness triage` on a real failing boot:
docs/findings.md #1 (Debian's x86_64 kernel, two 4 GiB nodes, HVO on: 60 x `Bad page state`).

The boot is made once for the module (about a minute under TCG); its bundle is booted again
by plain QEMU through repro.sh (no harness on PATH or in Python's path), by `hvo-harness repro`,
and by `hvo-harness triage --only hvo-off,cpu-qemu64`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from harness import bundle, pipeline
from harness.profiles import MIB, get_profile, with_node_memory
from harness.results import Finding, Run, load
from tests.cli import run_cli


def test_files_under_64_mib_are_copied_in_and_bigger_ones_are_not() -> None:
    assert bundle.FILE_LIMIT == 64 * MIB
    assert bundle.copied_into_bundle(12 * MIB)  # a Debian vmlinuz
    assert bundle.copied_into_bundle(64 * MIB - 1)
    assert not bundle.copied_into_bundle(64 * MIB)
    assert not bundle.copied_into_bundle(300 * MIB)  # a debug vmlinux


def test_grep_pattern_is_the_headline_before_its_addresses() -> None:
    bad_page = Finding("bug", None, None, None, "[   20.181838] BUG: Bad page state in process sh  pfn:40040")
    assert bundle.grep_pattern(bad_page) == "BUG: Bad page state in process sh"
    warn = Finding("warn", "vmemmap_remap_pte", None, None,
                   "[    0.5] ------------[ cut here ]------------\n"
                   "[    0.5] WARNING: mm/hugetlb_vmemmap.c:223 at vmemmap_remap_pte+0x112/0x11e, CPU#1")
    assert bundle.grep_pattern(warn) == "WARNING: mm/hugetlb_vmemmap.c:223 at vmemmap_remap_pte"



@pytest.fixture(scope="module")
def failing_boot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Run]:
    out = tmp_path_factory.mktemp("f1")
    profile = with_node_memory(get_profile("x86_64"), "4096,4096")
    kernel = pipeline.prepare_kernel(profile, "debian")
    run = pipeline.boot(profile, kernel, pipeline.prepare_environment(profile), "on", out)
    results = pipeline.new_results()
    results.runs = [run]
    results.write(out / "results.json")
    return out, run


def _bad_page_lines(*paths: Path) -> int:
    return sum(p.read_text(errors="replace").count("BUG: Bad page state") for p in paths if p.exists())


@pytest.mark.boot
def test_a_failing_boot_has_a_self_contained_bundle(failing_boot: tuple[Path, Run]) -> None:
    out, run = failing_boot
    assert run.verdict == "fail" and any("Bad page state" in f.excerpt for f in run.findings)
    assert run.repro == str((out / "repro" / "x86_64-hvo-on").resolve())
    assert load(out / "results.json").runs[0].repro == run.repro
    path = Path(run.repro)
    spec = json.loads((path / "repro.json").read_text())
    assert spec["profile"]["node_mem_mib"] == [4096, 4096] and spec["profile"]["smp"] == 2
    assert spec["hvo"] == "on" and spec["append"] == "" and spec["backend"] == "qemu"
    assert spec["original"]["verdict"] == "fail" and spec["original"]["findings"]
    assert spec["kernel"]["source"]["type"] == "debian"
    for name in ("kernel", "initramfs.cpio", "config", "guest/hvoh", "guest/busybox", "guest/init",
                 "guest/scenarios.sh", "original/console.log", "qemu-argv.json", "cmdline.txt"):
        assert (path / name).is_file(), name
    assert spec["files"]["kernel"]["file"] == "kernel"
    assert json.loads((path / "qemu-argv.json").read_text()) == run.qemu_argv
    assert os.access(path / "repro.sh", os.X_OK)
    script = (path / "repro.sh").read_text()
    # Nothing of the harness's paths: the bundle's own files, the ports in OUT_DIR.
    assert str(Path(run.console_log).parent) not in script and "/.cache/" not in script


@pytest.mark.boot
def test_repro_sh_reproduces_it_with_plain_qemu(failing_boot: tuple[Path, Run], tmp_path: Path) -> None:
    _, run = failing_boot
    assert run.repro
    # No harness: a PATH without the venv, no PYTHONPATH, run from elsewhere.
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    out = tmp_path / "plain"
    proc = subprocess.run(["sh", str(Path(run.repro) / "repro.sh"), str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"the console goes to {out}/console.log" in proc.stderr
    assert _bad_page_lines(out / "console.log") > 0, proc.stderr[-2000:]
    assert "hvo-init: done" in (out / "console.log").read_text(errors="replace")
    assert (out / "results.ktap").stat().st_size > 0
    assert "repro.sh: BUG: Bad page state in process sh:" in proc.stderr


@pytest.mark.boot
def test_hvo_harness_repro_reproduces_it(failing_boot: tuple[Path, Run], tmp_path: Path) -> None:
    _, run = failing_boot
    assert run.repro
    proc = run_cli("repro", run.repro, "--out", str(tmp_path / "rerun"))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "reproduced: yes" in proc.stdout
    assert "new findings: none" in proc.stdout and "gone findings: none" in proc.stdout
    rerun = load(tmp_path / "rerun" / "results.json").runs[0]
    assert rerun.verdict == "fail" and rerun.kernel.sha256 == run.kernel.sha256
    # The struct page measured for the original: the oracle's expectations are the same.
    assert run.kernel.struct_page and run.kernel.struct_page.get("size")
    assert rerun.kernel.struct_page == run.kernel.struct_page
    assert [(s.name, s.vmemmap.expected_kib_per_page) for s in rerun.scenarios] == \
        [(s.name, s.vmemmap.expected_kib_per_page) for s in run.scenarios]


@pytest.mark.boot
def test_triage_hvo_off_is_gone_and_qemu64_not_applicable(failing_boot: tuple[Path, Run],
                                                          tmp_path: Path) -> None:
    out, _ = failing_boot
    proc = run_cli("triage", str(out / "results.json"), "--only", "hvo-off,cpu-qemu64",
                   "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    triage = load(out / "results.json").runs[0].triage
    assert triage is not None
    outcomes = {row["name"]: row for row in triage["variations"]}
    assert outcomes["hvo-off"]["outcome"] == "gone", outcomes["hvo-off"]
    assert outcomes["cpu-qemu64"]["outcome"] == "not applicable", outcomes["cpu-qemu64"]
    assert "1G" in outcomes["cpu-qemu64"]["detail"]
    assert triage["conclusion"].startswith("Gone with hvo-off")
    assert (tmp_path / "triage" / "x86_64-hvo-on" / "hvo-off" / "x86_64-hvo-off.console.log").is_file()
    assert "Gone with hvo-off" in proc.stdout
