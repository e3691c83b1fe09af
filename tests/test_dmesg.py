"""The console parser on logs the harness recorded from real boots (see data/README.md)."""

from __future__ import annotations

import subprocess
import sys

from harness import dmesg
from tests.conftest import DATA


def read(name: str) -> str:
    return (DATA / name).read_bytes().decode(errors="replace")


def test_bad_page_state_after_releasing_a_boot_time_1g_page() -> None:
    report = dmesg.parse(read("x86_64-7.2.13-hvo-on-4G-nodes.console.log"))
    bad = [f for f in report.findings if "Bad page state" in f.excerpt]
    assert report.findings and len(bad) == len(report.findings)
    first = bad[0]
    assert first.kind == "bug"
    assert "pfn:40040" in first.excerpt and "nonzero _refcount" in first.excerpt
    assert "update_and_free_pages_bulk" in first.excerpt
    assert report.hugetlb.registered == {"2M": 4, "1G": 2}
    assert report.hugetlb.freeable_kib == {"2M": 28, "1G": 16380}
    assert "unsupported hugepagesz=16G" in report.hugetlb.unsupported["16G"]


def test_parse_command_exits_1_on_findings_and_0_on_a_clean_log(tmp_path) -> None:
    dirty = subprocess.run(
        [sys.executable, "-m", "harness.cli", "parse",
         str(DATA / "x86_64-7.2.13-hvo-on-4G-nodes.console.log"), "--json", str(tmp_path / "f.json")],
        capture_output=True, text=True,
    )
    assert dirty.returncode == 1 and "Bad page state" in dirty.stdout
    assert (tmp_path / "f.json").read_text().count('"kind": "bug"') == 60


def test_two_cpus_warning_at_once_are_two_findings_with_function_and_line() -> None:
    """Two boot-time HVO workers hit VM_WARN_ON_ONCE(!PageTail) together: interleaved lines."""
    report = dmesg.parse(read("riscv64-7.2.13-debug-hvo-on.console.log"))
    assert len(report.findings) == 2
    for finding in report.findings:
        assert finding.kind == "warn"
        where = (finding.function, finding.file, finding.line)
        assert where == ("vmemmap_remap_pte", "mm/hugetlb_vmemmap.c", 223)
        assert finding.check != "sparse_init-memmap-alignment"
    assert report.hugetlb.freeable_kib == {"2M": 28, "1G": 16380}


def test_early_boot_exception_and_panic_on_loongarch_4k() -> None:
    """docs/findings.md #4: the oops names memmap_init_range (from ERA), the panic its own line."""
    report = dmesg.parse(read("loongarch64-7.2.13-debug+4k-hvo-on.console.log"))
    kinds = [f.kind for f in report.findings]
    assert kinds == ["oops", "panic"]
    oops, panic = report.findings
    assert oops.function == "memmap_init_range" and "ADEM" in oops.excerpt
    assert panic.headline() == "Kernel panic - not syncing: Attempted to kill the idle task!"
