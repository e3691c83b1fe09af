"""Real boots of Debian sid's prebuilt kernels on all three arches (the built-in default)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.results import Results, validate
from tests.cli import run_cli
from tests.conftest import find_run

pytestmark = pytest.mark.boot

FREED_KIB = {"2M": 28, "1G": 16380}  # 4K pages, 64-byte struct page: (V - PAGE_SIZE) / 1024


@pytest.mark.parametrize("arch", ["x86_64", "riscv64"])
def test_hvo_on_saves_exactly_what_the_rules_say(default_matrix: Results, arch: str) -> None:
    run = find_run(default_matrix, arch, "on")
    assert run.verdict == "pass", (run.verdict_reason, run.console_log)
    assert run.hvo.state == "active"
    assert run.findings == []
    judged = [s for s in run.scenarios if s.size in FREED_KIB and s.hvo == "on"]
    # Boot-time and run-time, both nodes, for both sizes.
    assert {(s.size, s.mode, s.node) for s in judged} == {
        (size, mode, node) for size in FREED_KIB for mode in ("boot", "runtime") for node in (0, 1)
    }
    for scenario in judged:
        vm = scenario.vmemmap
        want = FREED_KIB[scenario.size]
        assert scenario.status == "pass", scenario.reason
        assert scenario.allocated == scenario.requested > 0
        assert (vm.expected_kib_per_page, vm.claimed_kib_per_page) == (want, want)
        assert vm.measured_kib_per_page == want and vm.restored_kib_per_page == want
        assert scenario.checks["guest"]["tail_flags_bad"] == "0"


@pytest.mark.parametrize("arch", ["x86_64", "riscv64"])
@pytest.mark.parametrize("hvo", ["on", "off"])
def test_hvo_off_allocations_free_nothing(default_matrix: Results, arch: str, hvo: str) -> None:
    run = find_run(default_matrix, arch, hvo)
    off = [s for s in run.scenarios if s.hvo == "off" and s.size in FREED_KIB]
    assert off, "every boot has HVO-off allocations (cmdline or sysctl)"
    for scenario in off:
        assert scenario.status == "pass", scenario.reason
        assert scenario.vmemmap.measured_kib_per_page == 0


@pytest.mark.parametrize("arch", ["x86_64", "riscv64", "loongarch64"])
def test_16g_is_refused_with_the_kernels_message(default_matrix: Results, arch: str) -> None:
    run = find_run(default_matrix, arch, "on")
    sixteen = [s for s in run.scenarios if s.size == "16G"]
    assert len(sixteen) >= 2  # boot and run time, on every node
    for scenario in sixteen:
        assert scenario.status == "skip"
        # The kernel's refusal: mmap's EINVAL always; the boot-time message where it prints one
        # (loong64 prints none after two other unsupported sizes: docs/findings.md #2).
        assert "EINVAL" in scenario.reason
        if arch != "loongarch64":
            assert "unsupported hugepagesz=16G" in scenario.reason


def test_loongarch_16k_kernel_is_hvo_inactive_never_pass(default_matrix: Results) -> None:
    run = find_run(default_matrix, "loongarch64", "on")
    assert run.hvo.state == "inactive"
    assert "CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP" in run.hvo.reason
    assert run.findings == []
    native = [s for s in run.scenarios if s.size == "32M"]
    assert native and all(s.allocated == s.requested for s in native)
    for scenario in native:
        if scenario.hvo == "on":
            assert scenario.status == "skip" and "HVO inactive" in scenario.reason
    # 2M and 1G do not exist with 16K pages: refused, reported as skips.
    assert all(s.status == "skip" for s in run.scenarios if s.size in ("2M", "1G"))


def test_loongarch_hvo_inactive_reason_is_its_measured_struct_page(default_matrix: Results) -> None:
    """Debian's loong64 kernel has no BTF; the DWARF of its linux-image-<release>-dbg vmlinux
    gives struct page (80 bytes on 7.2.13: CONFIG_KFENCE=y makes LoongArch define
    WANT_PAGE_VIRTUAL, `void *virtual` at 64), and the HVO-inactive reason is that size."""
    run = find_run(default_matrix, "loongarch64", "on")
    kernel = run.kernel
    measured = kernel.struct_page
    assert measured is not None and measured["size"] is not None, measured
    assert measured["origin"] == f"DWARF of linux-image-{kernel.release}-dbg {kernel.source['version']}"
    size = measured["size"]
    assert size & (size - 1) != 0, "HVO is inactive there: not a power of two"
    past = [m for m in measured["members"] if m["offset"] + m["size"] > 64]
    assert [m["name"] for m in past] == ["virtual"]
    assert run.hvo.state == "inactive"
    assert (f"sizeof(struct page) = {size} ({measured['origin']}): not a power of two; past 64 bytes: "
            "virtual (offset 64, 8 bytes)") in run.hvo.reason


@pytest.mark.parametrize("arch", ["x86_64", "riscv64"])
def test_the_expectation_comes_from_the_measured_struct_page(default_matrix: Results, arch: str) -> None:
    """amd64's BTF (out of its bzImage) and riscv64's (carved out of its Image) give 64 bytes:
    the 28 and 16380 KiB the scenarios expect are that size's."""
    run = find_run(default_matrix, arch, "on")
    measured = run.kernel.struct_page
    assert measured is not None and measured["size"] == 64, measured
    assert measured["origin"].startswith("BTF in ")


def test_results_json_keeps_the_contract(default_matrix: Results, tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    default_matrix.write(path)
    document = json.loads(path.read_text())
    validate(document)
    for run in document["runs"]:
        assert Path(run["console_log"]).stat().st_size > 0
        assert run["accel"]["used"] == "tcg" or run["accel"]["kvm_reason"] is None
        assert run["kernel"]["source"]["type"] == "debian"
        for scenario in run["scenarios"]:
            assert scenario["reason"], "every status carries a reason"


def test_out_dir_with_a_comma(tmp_path: Path) -> None:
    """QEMU reads file paths inside its option lists, where a comma separates options: an
    output directory with a comma in its name must still get the guest's results."""
    out = tmp_path / "nightly,loongarch64"
    proc = run_cli("run", "--arch", "loongarch64", "--hvo", "on", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    (run,) = results["runs"]
    assert run["ended"] == "done" and run["scenarios"], run["verdict_reason"]
    # QEMU wrote the results port's file at that very path (through the firmware Debian's
    # loong64 guest has the virtio-serial port; booted directly it had none).
    assert run["hugetlb"]["results_channel"] == "virtio-serial"
    assert (out / "loongarch64-hvo-on.results.ktap").stat().st_size > 0
