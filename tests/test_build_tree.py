"""Kernels built from Debian's linux-source-7.2 with the `debug` variant (CONFIG_DEBUG_VM), on
every arch and page size, booted with HVO on and off; and a commit of our own that breaks the
memmap alignment on riscv64, which sparse_init() must report.

Builds are cached (tree state + fragments + toolchain): a session builds each kernel at most
once, and a repeated run takes them from the cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import bundle as bundles
from harness import pipeline, triage
from harness.profiles import ARCH_NAMES, get_profile
from harness.results import Results, Run, validate

REPO = Path(__file__).resolve().parent.parent
MISALIGN_PATCH = REPO / "patches" / "riscv-misalign-vmemmap.patch"
SPARSE_INIT_CHECK = "sparse_init-memmap-alignment"
# (arch, variant) of the debug matrix: loongarch64 at each of its page sizes (4K with 3 and with
# 4 levels of page tables).
DEBUG_UNITS = [("x86_64", "debug+4k"), ("riscv64", "debug+4k"), ("loongarch64", "debug+16k"),
               ("loongarch64", "debug+4k"), ("loongarch64", "debug+4k4l")]
# The .config lines each page-size variant must have.
PAGE_SIZE_LINES = {"4k": ("CONFIG_PAGE_SIZE_4KB=y",), "16k": ("CONFIG_PAGE_SIZE_16KB=y",),
                   "4k4l": ("CONFIG_PAGE_SIZE_4KB=y", "CONFIG_4KB_4LEVEL=y", "CONFIG_PGTABLE_LEVELS=4")}

# The first test to need the debug matrix builds four kernels when the cache is cold (about
# 6 minutes each on 2 cores): more than the suite's default per-test timeout.
pytestmark = [pytest.mark.boot, pytest.mark.timeout(3600)]


@pytest.fixture(scope="session")
def debug_matrix(tmp_path_factory: pytest.TempPathFactory) -> Results:
    out = tmp_path_factory.mktemp("debug")
    request = pipeline.MatrixRequest(
        profiles=[get_profile(name) for name in ARCH_NAMES],
        build=pipeline.TreeBuild(variants=("debug",), all_page_sizes=True),
    )
    results = pipeline.run_matrix(request, out)
    results.write(out / "results.json")
    return results


@pytest.fixture(scope="session")
def misaligned_riscv(tmp_path_factory: pytest.TempPathFactory) -> Run:
    out = tmp_path_factory.mktemp("misaligned")
    request = pipeline.MatrixRequest(
        profiles=[get_profile("riscv64")], hvo_settings=("on",),
        build=pipeline.TreeBuild(variants=("debug",), patches=MISALIGN_PATCH),
    )
    (run,) = pipeline.run_matrix(request, out).runs
    return run


def unit_runs(results: Results, arch: str, variant: str) -> list[Run]:
    runs = [r for r in results.runs if r.arch == arch and r.variant == variant]
    assert {r.hvo.requested for r in runs} == {"on", "off"}, [(r.arch, r.variant) for r in results.runs]
    return runs


def test_debug_matrix_is_complete_and_valid(debug_matrix: Results) -> None:
    validate(debug_matrix.to_json())
    assert sorted({(r.arch, r.variant) for r in debug_matrix.runs}) == sorted(DEBUG_UNITS)


@pytest.mark.parametrize(("arch", "variant"), DEBUG_UNITS)
def test_built_kernel_names_its_source(debug_matrix: Results, arch: str, variant: str) -> None:
    for run in unit_runs(debug_matrix, arch, variant):
        source = run.kernel.source
        assert source["type"] == "tree" and source["variant"] == variant
        assert Path(source["tree"]).name.startswith("linux-source-7.2")
        assert len(source["commit"]) == 40 and len(source["config_sha256"]) == 64
        metadata = json.loads(Path(source["build_metadata"]).read_text())
        assert metadata["image_sha256"] == run.kernel.sha256
        assert metadata["config_sha256"] == source["config_sha256"]
        config = Path(metadata["config"]).read_text()
        assert "CONFIG_DEBUG_VM=y" in config
        for line in PAGE_SIZE_LINES[variant.split("+")[-1]]:
            assert line in config.splitlines(), line


@pytest.mark.parametrize(("arch", "variant"), DEBUG_UNITS)
def test_no_sparse_init_finding_on_the_unmodified_tree(
    debug_matrix: Results, arch: str, variant: str
) -> None:
    for run in unit_runs(debug_matrix, arch, variant):
        # sparse_init() ran: the kernel got past it (loongarch64 4K dies later, findings #4).
        assert "Zone ranges" in Path(run.console_log).read_text(errors="replace"), run.console_log
        assert not [f for f in run.findings if f.check == SPARSE_INIT_CHECK], run.console_log


@pytest.mark.parametrize(("arch", "variant"), DEBUG_UNITS)
def test_every_scenario_has_a_verdict_and_a_reason(debug_matrix: Results, arch: str, variant: str) -> None:
    for run in unit_runs(debug_matrix, arch, variant):
        assert run.scenarios, run.console_log
        for scenario in run.scenarios:
            assert scenario.status in ("pass", "fail", "skip") and scenario.reason
        # A finding is never a pass.
        if run.findings:
            assert run.verdict == "fail", run.verdict_reason


def hvo_on(results: Results, arch: str, variant: str) -> Run:
    return next(r for r in unit_runs(results, arch, variant) if r.hvo.requested == "on")


def assert_decoded(run: Run, function: str, file: str, lines: set[int]) -> None:
    """The findings' call traces decoded with the build's own vmlinux: file:line per frame, and
    FUNCTION at FILE, at one of LINES (the statement that fired), among them."""
    traced = [f for f in run.findings if f.trace and f.trace["status"] == "decoded"]
    assert traced, [f.trace for f in run.findings]
    for finding in traced:
        assert finding.trace is not None
        frames = finding.trace["frames"]
        assert frames and all(frame["file"] and frame["line"] for frame in frames), finding.trace
        assert Path(finding.trace["vmlinux"]).name == "vmlinux"
    frames = [frame for finding in traced for frame in finding.trace["frames"]]  # type: ignore[index]
    assert any(frame["function"] == function and frame["file"] == file and frame["line"] in lines
               for frame in frames), [finding.trace["text"] for finding in traced]  # type: ignore[index]


@pytest.mark.parametrize("arch", ["riscv64", "x86_64"])
def test_hvo_savings_exact_at_run_time_on_4k_kernels(debug_matrix: Results, arch: str) -> None:
    """Run-time 2M and 1G pages on every node: expected = claimed = measured KiB per page."""
    on = hvo_on(debug_matrix, arch, "debug+4k")
    assert on.hvo.state == "active", on.hvo.reason
    runtime = [s for s in on.scenarios if s.mode == "runtime" and s.hvo == "on" and s.size in ("2M", "1G")]
    assert {(s.size, s.node) for s in runtime} == {(size, node) for size in ("2M", "1G") for node in (0, 1)}
    for scenario in runtime:
        assert scenario.status == "pass", scenario.reason
        vm = scenario.vmemmap
        want = {"2M": 28, "1G": 16380}[scenario.size]
        assert vm.expected_kib_per_page == vm.claimed_kib_per_page == vm.measured_kib_per_page == want


def test_riscv_boot_time_hvo_warning_is_reported(debug_matrix: Results) -> None:
    """docs/findings.md #3: VM_WARN_ON_ONCE(!PageTail) in vmemmap_remap_pte while boot-time
    gigantic pages are optimized; the boot fails and so does every boot-time scenario."""
    on = hvo_on(debug_matrix, "riscv64", "debug+4k")
    assert on.verdict == "fail"
    where = {(f.function, f.file, f.line) for f in on.findings}
    assert ("vmemmap_remap_pte", "mm/hugetlb_vmemmap.c", 223) in where
    for scenario in on.scenarios:
        if scenario.mode == "boot":
            assert scenario.status == "fail" and "vmemmap_remap_pte" in scenario.reason
    # The statement, from the tree that was built, and no named check (it is not the alignment).
    for finding in on.findings:
        assert finding.source is not None and finding.source["status"] == "found", finding.source
        assert finding.source["function"] == "vmemmap_remap_pte"
        assert "VM_WARN_ON_ONCE(!PageTail(" in finding.source["lines"][0]["text"]
        assert finding.check is None
    assert_decoded(on, "vmemmap_remap_pte", "mm/hugetlb_vmemmap.c", {223})
    off = next(r for r in unit_runs(debug_matrix, "riscv64", "debug+4k") if r.hvo.requested == "off")
    assert not [f for f in off.findings if f.function == "vmemmap_remap_pte"]


@pytest.mark.parametrize("append", ["quiet", "loglevel=1"])
def test_riscv_boot_time_hvo_warning_survives_the_console_log_level(
    debug_matrix: Results, tmp_path: Path, append: str
) -> None:
    """`quiet` sets the console log level to 4 and `loglevel=1` to 1: both hide KERN_WARNING,
    so the WARN above is not on the console; the guest's /dev/kmsg stream still gives it to the
    judge, attributed to the boot-time scenarios (it fires while boot-time pages are optimized)."""
    request = pipeline.MatrixRequest(profiles=[get_profile("riscv64")], hvo_settings=("on",),
                                     append=append, build=pipeline.TreeBuild(variants=("debug",)))
    (run,) = pipeline.run_matrix(request, tmp_path).runs
    assert run.verdict == "fail", run.verdict_reason
    where = {(f.function, f.file, f.line) for f in run.findings}
    assert ("vmemmap_remap_pte", "mm/hugetlb_vmemmap.c", 223) in where
    assert "WARNING: mm/hugetlb_vmemmap.c" not in Path(run.console_log).read_text()
    assert all(s.status == "fail" for s in run.scenarios if s.mode == "boot")


def test_x86_bad_page_state_on_releasing_boot_time_1g_page(debug_matrix: Results) -> None:
    """docs/findings.md #1 on the built debug kernel at the default 6 GiB nodes: releasing the
    boot-time 1G page of node 0 with HVO on gives `Bad page state`; HVO off does not."""
    on = hvo_on(debug_matrix, "x86_64", "debug+4k")
    assert on.verdict == "fail"
    assert on.findings and all("Bad page state" in f.excerpt for f in on.findings)
    failed = {(s.size, s.mode, s.node) for s in on.scenarios if s.status == "fail"}
    assert ("1G", "boot", 0) in failed
    assert all(f.source == {"status": "no file:line", "why": "the kernel printed no file:line for this "
                            "report"} and f.check is None for f in on.findings)
    frames = on.findings[0].trace["frames"] if on.findings[0].trace else []
    assert any(frame["function"] == "__free_pages_ok" and frame["file"] == "mm/page_alloc.c"
               for frame in frames), on.findings[0].trace
    assert all(frame["file"] and frame["line"] for frame in frames)
    off = next(r for r in unit_runs(debug_matrix, "x86_64", "debug+4k") if r.hvo.requested == "off")
    assert off.verdict == "pass" and not off.findings, off.verdict_reason


def test_loongarch_4k_dies_in_memmap_init(debug_matrix: Results) -> None:
    """docs/findings.md #4: 4K pages (3 levels) fault in memmap_init_range before any scenario."""
    for run in unit_runs(debug_matrix, "loongarch64", "debug+4k"):
        assert run.verdict == "fail" and run.ended == "panic", run.verdict_reason
        assert [f.kind for f in run.findings] == ["oops", "panic"]
        assert run.findings[0].function == "memmap_init_range"
        assert all(s.status == "fail" and "never ran" in s.reason for s in run.scenarios)


def test_loongarch_4k_4level_gets_past_memmap_init_and_breaks_where_hvo_optimizes(
    debug_matrix: Results,
) -> None:
    """4K pages with 4-level page tables (CONFIG_4KB_4LEVEL) get past memmap_init_range, where 3
    levels die (docs/findings.md #4). What shows next is where HVO optimizes 2M pages:
    `page does not match folio` (dump_page of a page whose folio is garbage), then the kernel
    breaks. With HVO on at boot that is before init, and paging requests follow (in sched_tick,
    then in the exception path) until the guest hangs. With HVO off at boot the boot-time pages
    and the run-time pass with the sysctl off pass; the pass with hugetlb_optimize_vmemmap=1
    fails and the kernel panics, or dumps pages until it is ended as hung. Which report comes
    first and how the guest ends vary from boot to boot (seen: `kernel BUG at
    include/linux/page-flags.h:345` in kmem_cache_free; `kernel BUG at include/linux/mm.h:1810`
    in ___free_pages with `Bad page map in process hvoh`, then a panic, or a storm of `page:
    refcount:0 ... invalid mapping` dumps until the timeout: CI of 2026-12-02, on reused guest
    memory, whose contents the broken kernel reads)."""
    on, off = (next(r for r in unit_runs(debug_matrix, "loongarch64", "debug+4k4l") if r.hvo.requested == hvo)
               for hvo in ("on", "off"))
    for run in (on, off):
        console = Path(run.console_log).read_text(errors="replace")
        assert "Memory: " in console and "page does not match folio" in console, run.console_log
        assert not [f for f in run.findings if f.function == "memmap_init_range"]
        assert run.verdict == "fail" and run.findings, run.verdict_reason
    assert on.ended in ("timeout", "panic"), on.verdict_reason
    assert all(s.status == "fail" and "never ran" in s.reason for s in on.scenarios)
    assert off.ended in ("panic", "timeout"), off.verdict_reason
    passed = {(s.size, s.mode, s.hvo) for s in off.scenarios if s.status == "pass"}
    assert {("2M", "boot", "off"), ("2M", "runtime", "off")} <= passed, passed
    optimized = [s for s in off.scenarios if (s.size, s.mode, s.hvo) == ("2M", "runtime", "on")]
    assert optimized and all(s.status == "fail" for s in optimized), [s.reason for s in optimized]
    # LoongArch has no 1G pages at any page size: refused, a skip, never a FAIL of its own.
    assert all(s.status == "skip" or "never ran" in s.reason for s in off.scenarios if s.size == "1G")


def test_loongarch_tree_builds_boot_directly_on_one_node(debug_matrix: Results) -> None:
    """vmlinux.elf (CONFIG_EFI_STUB=n) cannot boot through the UEFI firmware: QEMU boots it
    directly, where the kernel sees no ACPI and so one NUMA node: it gets one node of the 8G."""
    for variant in ("debug+16k", "debug+4k", "debug+4k4l"):
        for run in unit_runs(debug_matrix, "loongarch64", variant):
            assert "-bios" not in run.qemu_argv
            numa = [run.qemu_argv[i + 1] for i, word in enumerate(run.qemu_argv) if word == "-numa"]
            assert numa == ["node,nodeid=0,memdev=mem0,cpus=0-1"], numa
            assert {s.node for s in run.scenarios} == {0}


def test_triage_varies_a_loongarch_direct_boot_on_one_node(debug_matrix: Results) -> None:
    """The profile's node layouts are two-node ones; a direct boot gets each as one node of its
    total: 4096+4096 is the boot's own 8192 (not booted again), 3072+3072 is one 6144 node."""
    run = hvo_on(debug_matrix, "loongarch64", "debug+4k")
    assert run.repro, run.verdict_reason
    variations = triage.variations(bundles.load(Path(run.repro)))
    nodes = [(v.name, v.overrides.node_mem_mib) for v in variations if v.name.startswith("nodes")
             and v.overrides is not None]
    assert nodes == [("nodes-6144", (6144,))]


def test_loongarch_16k_hvo_active_and_exact(debug_matrix: Results) -> None:
    on = hvo_on(debug_matrix, "loongarch64", "debug+16k")
    assert on.verdict == "pass" and on.hvo.state == "active", on.verdict_reason
    native = [s for s in on.scenarios if s.size == "32M" and s.hvo == "on"]
    assert {s.mode for s in native} == {"boot", "runtime"}
    for scenario in native:
        vm = scenario.vmemmap
        assert scenario.status == "pass", scenario.reason
        assert vm.expected_kib_per_page == vm.claimed_kib_per_page == vm.measured_kib_per_page == 112


def test_misaligned_riscv_reports_sparse_init(misaligned_riscv: Run) -> None:
    run = misaligned_riscv
    assert run.variant == "debug+4k"
    assert [p["name"] for p in run.kernel.source["patches"]] == [MISALIGN_PATCH.name]
    assert run.verdict == "fail"
    found = [f for f in run.findings if f.check == SPARSE_INIT_CHECK]
    assert len(found) == 1, [f.summary for f in run.findings]
    assert found[0].function == "sparse_init"
    assert found[0].file == "mm/sparse.c" and found[0].line is not None
    assert "sparse_init" in found[0].excerpt
    assert SPARSE_INIT_CHECK in run.verdict_reason or "sparse_init" in run.verdict_reason
    # Named from the statement at that line of the patched tree as built, not from the name.
    source = found[0].source
    assert source is not None and source["status"] == "found" and source["function"] == "sparse_init"
    assert "IS_ALIGNED((unsigned long) pfn_to_page(0)," in " ".join(e["text"] for e in source["lines"])
    assert_decoded(run, "sparse_init", "mm/sparse.c", {e["line"] for e in source["lines"]})


def test_run_tree_cli_names_tree_and_variant(tmp_path: Path) -> None:
    """The documented command: riscv64, debug variant, results JSON naming tree and variant."""
    json_path = tmp_path / "r.json"
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--tree", "--arch", "riscv64", "--variant", "debug",
         "--hvo", "on", "--json", str(json_path), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=1800,
    )
    assert done.returncode in (0, 1), done.stderr
    document = json.loads(json_path.read_text())
    validate(document)
    (run,) = document["runs"]
    assert run["variant"] == "debug+4k"
    assert run["kernel"]["source"]["type"] == "tree"
    assert run["kernel"]["source"]["variant"] == "debug+4k"
    assert "linux-source-7.2" in run["kernel"]["source"]["tree"]
