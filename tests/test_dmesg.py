"""The console parser: on logs the harness recorded from real boots (see data/README.md), and on
crafted console text in the kernel's own formats (7.2 printk format strings)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

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
         str(DATA / "x86_64-7.2.13-hvo-on-4G-nodes.console.log"), "--json", str(tmp_path / "f.json"),
         "--no-decode"],
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
        # Which statement it is comes from the source (tests/test_source_checks.py).
        assert finding.check is None
    assert report.hugetlb.freeable_kib == {"2M": 28, "1G": 16380}


def test_early_boot_exception_and_panic_on_loongarch_4k() -> None:
    """docs/findings.md #4: the oops names memmap_init_range (from ERA), the panic its own line."""
    report = dmesg.parse(read("loongarch64-7.2.13-debug+4k-hvo-on.console.log"))
    kinds = [f.kind for f in report.findings]
    assert kinds == ["oops", "panic"]
    oops, panic = report.findings
    assert oops.function == "memmap_init_range" and "ADEM" in oops.excerpt
    assert panic.headline() == "Kernel panic - not syncing: Attempted to kill the idle task!"


# --- crafted reports: each follows the 7.2 printk formats named in harness/dmesg.py ----------


def console(*lines: str) -> str:
    """Kernel lines as a serial console shows them: time stamped, ending in CR LF."""
    return "".join(f"[   12.{n:06d}] {line}\r\n" for n, line in enumerate(lines))


BOOT_LINES = (
    "Memory: 8046528K/8388088K available (16384K kernel code, 2767K rwdata, 11420K rodata, "
    "4260K init, 4488K bss, 335408K reserved, 0K cma-reserved)",
    "HugeTLB: registered 2.00 MiB page size, pre-allocated 4 pages",
    "ACPI: PM-Timer IO Port: 0x608",
    "ACPI BIOS Warning (bug): Incorrect checksum in table [BGRT] - 0x00, should be 0x6E",
    "ACPI Warning: SystemIO range 0x0000000000000B00-0x0000000000000B08 conflicts with OpRegion",
    "[Firmware Bug]: TSC doesn't count with P0 frequency!",
)

X86_TRACE = (
    "CPU: 1 UID: 0 PID: 97 Comm: sh Not tainted 7.2.13+deb14-amd64 #1 PREEMPT(lazy)  Debian 7.2.13-1",
    "Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.3-debian-1.16.3-2 04/01/2014",
    "Call Trace:",
    " <TASK>",
    " dump_stack_lvl+0x5d/0x80",
)
SHOW_MEM = (
    "Mem-Info:",
    "active_anon:12 inactive_anon:3045 isolated_anon:0",
    "Node 0 DMA free:15360kB boost:0kB min:28kB low:40kB high:52kB reserved_highatomic:0KB",
    "lowmem_reserve[]: 0 1937 3906 3906 3906",
    "Node 0 DMA: 0*4kB 0*8kB 0*16kB 0*32kB 0*64kB 0*128kB 1*256kB (U) = 15360kB",
    "3073 total pagecache pages",
    "2097022 pages RAM",
    "0 pages HighMem/MovableOnly",
    "83874 pages reserved",
)


@pytest.mark.parametrize(("line", "function"), [
    # arch/x86/kernel/dumpstack_64.c get_stack_info()
    ("WARNING: stack recursion on stack type 4", None),
    # arch/x86/kernel/unwind_orc.c orc_warn_current(): "WARNING: " + "can't access registers at %pB"
    ("WARNING: can't access registers at asm_common_interrupt+0x1e/0x40", "asm_common_interrupt"),
    # orc_warn("WARNING: bad lookup idx: ...") prints its own "WARNING: " after orc_warn's
    ("WARNING: WARNING: bad lookup idx: idx=4 num=5 ip=__memcpy+0x12/0x20", "__memcpy"),
    ("WARNING: Corrupt .orc_unwind table.  Disabling unwinder.", None),
    # arch/x86/kernel/unwind_frame.c update_stack_state(): no function in it ("kernel" is none)
    ("WARNING: kernel stack frame pointer at 00000000b2c8a1f3 in swapper/0:1 has bad value "
     "0000000000000000", None),
    # kernel/workqueue.c __warn_flushing_systemwide_wq()
    ("WARNING: Flushing system-wide workqueues will be prohibited in near future.", None),
])
def test_a_warning_line_that_is_no_warn_header_is_a_finding(line: str, function: str | None) -> None:
    report = dmesg.parse(console(*BOOT_LINES[:2], line, "unwind stack type:0 next_sp:0 mask:0x2",
                                 *BOOT_LINES[2:]))
    assert [(f.kind, f.function, f.file) for f in report.findings] == [("warn", function, None)]
    assert report.findings[0].headline() == line
    # A line without a call trace after it is its own excerpt, not the boot lines around it.
    assert "Memory:" not in report.findings[0].excerpt and "ACPI" not in report.findings[0].excerpt


def test_a_warning_line_with_a_stack_dump_keeps_the_trace() -> None:
    report = dmesg.parse(console(
        "WARNING: Flushing system-wide workqueues will be prohibited in near future.",
        *X86_TRACE, " __warn_flushing_systemwide_wq+0x16/0x20", " </TASK>", *BOOT_LINES))
    [finding] = report.findings
    assert finding.kind == "warn" and "__warn_flushing_systemwide_wq+0x16" in finding.excerpt
    assert finding.excerpt.splitlines()[-1].endswith("</TASK>")


def test_warn_text_saying_warning_is_one_finding_with_its_header() -> None:
    """WARN_ONCE(1, "WARNING: This combination of AMD...") (arch/x86/kernel/cpu/amd.c): the
    text sits between "cut here" and the __warn header and is part of that report."""
    report = dmesg.parse(console(
        "------------[ cut here ]------------",
        "WARNING: This combination of AMD processors is not suitable for SMP.",
        "WARNING: arch/x86/kernel/cpu/amd.c:275 at init_amd+0x3a1/0x9a0, CPU#0: swapper/0/0",
        "Modules linked in:",
        "---[ end trace 0000000000000000 ]---",
    ))
    [finding] = report.findings
    assert (finding.kind, finding.function, finding.file) == ("warn", "init_amd", "arch/x86/kernel/cpu/amd.c")
    assert "not suitable for SMP" in finding.excerpt


def test_unwinder_warning_inside_a_warn_report_is_part_of_it() -> None:
    report = dmesg.parse(console(
        "------------[ cut here ]------------",
        "WARNING: mm/hugetlb_vmemmap.c:223 at vmemmap_remap_pte+0x112/0x11e, CPU#0: swapper/0/1",
        "Modules linked in:", *X86_TRACE,
        "WARNING: can't access registers at asm_common_interrupt+0x1e/0x40",
        " vmemmap_remap_pte+0x112/0x11e", " </TASK>",
        "---[ end trace 0000000000000000 ]---",
    ))
    assert [f.function for f in report.findings] == ["vmemmap_remap_pte"]
    assert "can't access registers" in report.findings[0].excerpt


@pytest.mark.parametrize("line", [
    # arch/x86/kernel/cpu/bugs.c: advice about the host CPU, its microcode and the
    # mitigations chosen, printed on ordinary boots under KVM: no kernel complaint
    "Speculative Return Stack Overflow: WARNING: See https://kernel.org/doc/html/latest/"
    "admin-guide/hw-vuln/srso.html for mitigation options.",
    "RETBleed: WARNING: Spectre v2 mitigation leaves CPU vulnerable to RETBleed attacks, data leaks "
    "possible!",
    "Spectre V2 : WARNING: Unprivileged eBPF is enabled with eIBRS on, data leaks possible via "
    "Spectre v2 BHB attacks!",
    # arch/arm64/kernel/proton-pack.c
    "WARNING: Unprivileged eBPF is enabled, data leaks possible via Spectre v2 BHB attacks!",
    # drivers/firmware/efi/libstub, about the firmware, before the kernel runs
    "EFI stub: WARNING: Failed to measure data for event 1: 0x800000000000000e",
    # the vng backend's init, writing to /dev/kmsg
    "virtme-ng-init: WARNING: failed to run: stty (error: No such file or directory)",
])
def test_benign_lines_with_warning_words_are_no_finding(line: str) -> None:
    """Each after BOOT_LINES, whose "reserved", "ACPI ... Warning" and "[Firmware Bug]" are none."""
    assert dmesg.parse(console(*BOOT_LINES, line)).findings == []


def test_lockdep_warning_lines_are_lockdep_only() -> None:
    report = dmesg.parse(console(
        "======================================================",
        "WARNING: possible circular locking dependency detected",
        "7.2.13 #1 Not tainted",
        "------------------------------------------------------",
        "======================================================",
        "WARNING: chain_key collision",
    ))
    assert [f.kind for f in report.findings] == ["lockdep", "lockdep"]


LOONGARCH_TRACE = (
    "CPU: 1 UID: 0 PID: 97 Comm: sh Not tainted 7.2.13+deb14-loong64 #1 PREEMPT(lazy)",
    "Hardware name: QEMU QEMU Virtual Machine, BIOS unknown 2/2/2022",
    "Stack : 0000000000000000 9000000000f2b9c8 0000000000000000 9000000100d13ac0",
    "Call Trace:",
    "[<9000000000224a10>] show_stack+0x5c/0x180",
    "[<900000000021f3b4>] dump_stack_lvl+0x6c/0x9c",
)


@pytest.mark.parametrize(("trace", "trace_end"), [
    ((*X86_TRACE, " warn_alloc+0x164/0x190"), (" </TASK>",)),
    ((*LOONGARCH_TRACE, "[<90000000003a1f2c>] warn_alloc+0x12c/0x1a0"), ()),
])
def test_page_allocation_failure_is_one_finding_with_its_trace(
    trace: tuple[str, ...], trace_end: tuple[str, ...]
) -> None:
    """mm/page_alloc.c warn_alloc(): the failure line, dump_stack(), then show_mem()."""
    head = ("sh: page allocation failure: order:9, mode:0xcc0(GFP_KERNEL), nodemask=(null),"
            "cpuset=/,mems_allowed=0-1")
    report = dmesg.parse(console(
        *BOOT_LINES[:2], head, *trace,
        " __alloc_frozen_pages_noprof+0x30c/0x340", " alloc_vmemmap_page_list+0x5e/0x160",
        " hugetlb_vmemmap_restore_folio+0x8c/0x110", *trace_end, *SHOW_MEM,
    ))
    [finding] = report.findings
    assert finding.kind == "alloc-failure" and finding.headline() == head
    assert "hugetlb_vmemmap_restore_folio" in finding.excerpt
    assert "Mem-Info" not in finding.excerpt and "pages reserved" not in finding.excerpt


def test_vmemmap_and_vmalloc_failures_are_allocation_failures_too() -> None:
    """warn_alloc()'s other callers: mm/sparse-vmemmap.c and mm/vmalloc.c."""
    report = dmesg.parse(console(
        "kworker/0:1: vmemmap alloc failure: order:9, mode:0x4cc0(GFP_KERNEL|__GFP_RETRY_MAYFAIL), "
        "nodemask=(null),cpuset=/,mems_allowed=0",
        *X86_TRACE, " </TASK>", *SHOW_MEM,
        "insmod: vmalloc error: size 4294967296, exceeds total pages, mode:0xcc0(GFP_KERNEL), "
        "nodemask=(null),cpuset=/,mems_allowed=0",
        *X86_TRACE, " </TASK>", *SHOW_MEM,
    ))
    assert [f.kind for f in report.findings] == ["alloc-failure", "alloc-failure"]


OOM_HEAD = ("hvoh invoked oom-killer: gfp_mask=0x140dca(GFP_HIGHUSER_MOVABLE|__GFP_ZERO), order=0, "
            "oom_score_adj=0")
OOM_TAIL = (
    "Tasks state (memory values in pages):",
    "[  pid  ]   uid  tgid total_vm      rss rss_anon rss_file rss_shmem pgtables_bytes swapents "
    "oom_score_adj name",
    "[     97]     0    97   524800   520000   520000        0         0  4198400        0     0 hvoh",
    "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0-1,global_oom,"
    "task_memcg=/,task=hvoh,pid=97,uid=0",
)
OOM_KILLED = ("Out of memory: Killed process 97 (hvoh) total-vm:2099200kB, anon-rss:2080000kB, "
              "file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4100kB oom_score_adj:0")


def test_oom_kill_is_one_finding_with_the_process_it_killed() -> None:
    """mm/oom_kill.c dump_header() then __oom_kill_process(): one event, one finding."""
    report = dmesg.parse(console(
        *BOOT_LINES[:2], OOM_HEAD, *X86_TRACE, " out_of_memory+0xe1/0x2f0", " </TASK>",
        *SHOW_MEM, *OOM_TAIL, OOM_KILLED,
        "oom_reaper: reaped process 97 (hvoh), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB",
        *BOOT_LINES[2:],
    ))
    [finding] = report.findings
    assert finding.kind == "oom" and finding.headline() == OOM_HEAD
    assert "out_of_memory+0xe1" in finding.excerpt and "Killed process 97 (hvoh)" in finding.excerpt


def test_two_oom_events_are_two_findings_and_a_kill_alone_is_one() -> None:
    report = dmesg.parse(console(
        OOM_HEAD, *X86_TRACE, " </TASK>", *SHOW_MEM, *OOM_TAIL, OOM_KILLED,
        *BOOT_LINES,
        OOM_HEAD, *X86_TRACE, " </TASK>", *SHOW_MEM, "Out of memory and no killable processes...",
        *BOOT_LINES,
        # dump_header() is rate limited: the kill line can come alone
        OOM_KILLED.replace("97 (hvoh)", "98 (sh)"),
    ))
    assert [f.kind for f in report.findings] == ["oom", "oom", "oom"]
    first, second, alone = report.findings
    assert "Killed process 97" in first.excerpt and "no killable processes" not in first.excerpt
    assert "no killable processes" in second.excerpt
    assert alone.headline().startswith("Out of memory: Killed process 98 (sh)")


def test_oom_panic_is_the_oom_and_the_panic() -> None:
    report = dmesg.parse(console(
        OOM_HEAD, *X86_TRACE, " </TASK>", *SHOW_MEM,
        "Kernel panic - not syncing: Out of memory: compulsory panic_on_oom is enabled",
        "---[ end Kernel panic - not syncing: Out of memory: compulsory panic_on_oom is enabled ]---",
    ))
    assert [f.kind for f in report.findings] == ["oom", "panic"]


DEBUG_LOCKS = "DEBUG_LOCKS_WARN_ON(lock->magic != lock)"


def test_debug_locks_warn_on_with_its_warn_header_is_one_finding() -> None:
    """include/linux/debug_locks.h: WARN(1, "DEBUG_LOCKS_WARN_ON(%s)", #c)."""
    report = dmesg.parse(console(
        "------------[ cut here ]------------", DEBUG_LOCKS,
        "WARNING: kernel/locking/mutex.c:156 at __mutex_lock+0x6b1/0xd40, CPU#0: sh/1",
        "Modules linked in:", "---[ end trace 0000000000000000 ]---",
    ))
    [finding] = report.findings
    assert (finding.kind, finding.function) == ("warn", "__mutex_lock") and DEBUG_LOCKS in finding.excerpt


def test_debug_locks_warn_on_alone_is_a_finding() -> None:
    report = dmesg.parse(console(*BOOT_LINES[:3], DEBUG_LOCKS, *BOOT_LINES[3:]))
    [finding] = report.findings
    assert finding.kind == "warn" and finding.headline() == DEBUG_LOCKS


LIST_ADD = ("list_add corruption. next->prev should be prev (ffff888003a4c0a8), but was "
            "0000000000000000. (next=ffff888003a4c0b8).")
LIST_DEL = ("list_del corruption. prev->next should be ffff888003a4c0a8, but was ffff888003a4c0b8. "
            "(prev=ffff888003a4c0c8)")


@pytest.mark.parametrize("line", [
    LIST_ADD, LIST_DEL, "list_del corruption, ffff888003a4c0a8->next is LIST_POISON1 (dead000000000100)",
    "list_add double add: new=ffff888003a4c0a8, prev=ffff888003a4c0a8, next=ffff888003a4c0b8.",
])
def test_list_corruption_alone_is_a_finding(line: str) -> None:
    """lib/list_debug.c through CHECK_DATA_CORRUPTION(): a report with no WARN/BUG after it."""
    report = dmesg.parse(console(*BOOT_LINES[:2], line, *BOOT_LINES[2:]))
    [finding] = report.findings
    assert finding.kind == "list-corruption" and finding.headline() == line


def test_list_corruption_with_bug_on_data_corruption_is_the_bug() -> None:
    """CONFIG_BUG_ON_DATA_CORRUPTION: pr_err(fmt) then BUG(): one finding, the line in it."""
    report = dmesg.parse(console(
        *BOOT_LINES[:2], LIST_ADD, "------------[ cut here ]------------",
        "kernel BUG at lib/list_debug.c:32!",
        "Oops: invalid opcode: 0000 [#1] SMP NOPTI", X86_TRACE[0], X86_TRACE[1],
        "RIP: 0010:__list_add_valid_or_report+0x7c/0xa0",
        "---[ end trace 0000000000000000 ]---",
    ))
    [finding] = report.findings
    assert (finding.kind, finding.function, finding.file) == (
        "bug", "__list_add_valid_or_report", "lib/list_debug.c")
    assert finding.headline() == LIST_ADD


def test_list_corruption_as_a_warn_is_the_warn() -> None:
    report = dmesg.parse(console(
        "------------[ cut here ]------------", LIST_DEL,
        "WARNING: lib/list_debug.c:62 at __list_del_entry_valid_or_report+0x9d/0xc0, CPU#1: sh/97",
        "Modules linked in:", "---[ end trace 0000000000000000 ]---",
    ))
    [finding] = report.findings
    assert (finding.kind, finding.function) == ("warn", "__list_del_entry_valid_or_report")
    assert LIST_DEL in finding.excerpt


# mm/debug.c dump_page() in 7.2: __dump_page() and __dump_folio() lines, then its reason.
PAGE_DUMP = (
    "page does not match folio",
    "page: refcount:0 mapcount:0 mapping:0000000000000000 index:0x0 pfn:0x1f3c0",
    "flags: 0x0(zone=0)",
    "raw: 0000000000000000 9000000001e7f008 9000000001e7f008 0000000000000000",
    "raw: 0000000000000000 0000000000000000 00000000ffffffff 0000000000000000",
)


def test_a_page_dump_with_no_report_around_it_is_a_finding() -> None:
    """A kernel that dumps pages and hangs before any BUG/WARN header (docs/findings.md #4,
    loongarch64 4K with 4 levels, HVO on): the dumps are the kernel's report, one finding per
    dump, each with its lines."""
    report = dmesg.parse(console(*BOOT_LINES[:2], *PAGE_DUMP, *PAGE_DUMP[1:], "random: crng init done"))
    assert [f.kind for f in report.findings] == ["page-dump", "page-dump"]
    first, second = report.findings
    assert first.headline() == "page does not match folio"
    assert all(line in first.excerpt for line in PAGE_DUMP)
    assert second.headline().startswith("page: refcount:0 mapcount:0") and "crng" not in second.excerpt


def test_a_page_dump_before_vm_bug_on_page_is_the_bug() -> None:
    """VM_BUG_ON_PAGE(): dump_page(page, "VM_BUG_ON_PAGE(...)") and then BUG(): one finding,
    the BUG, whose excerpt starts with the dump."""
    report = dmesg.parse(console(
        *BOOT_LINES[:2], *PAGE_DUMP[1:], "page dumped because: VM_BUG_ON_PAGE(page->compound_info & 1)",
        "------------[ cut here ]------------", "kernel BUG at include/linux/page-flags.h:345!",
        "Oops - BUG[#1]:", "CPU: 1 UID: 0 PID: 97 Comm: sh Not tainted 7.2.13+ #1 PREEMPT",
        "ERA: 90000000002f8a10 kmem_cache_free+0x3d0/0x3e0",
        "---[ end trace 0000000000000000 ]---",
    ))
    [finding] = report.findings
    assert (finding.kind, finding.file, finding.line) == ("bug", "include/linux/page-flags.h", 345)
    assert finding.headline() == "kernel BUG at include/linux/page-flags.h:345!"
    assert finding.excerpt.splitlines()[0].endswith(PAGE_DUMP[1]) and "page dumped because" in finding.excerpt


def test_only_the_last_page_dump_leads_the_warn_after_it() -> None:
    """A storm of dumps (docs/findings.md #4, 4K/4-level, HVO off), then another CPU's WARN: the
    storm's dumps stay findings of their own; only the dump right before the WARN is its lead."""
    storm = [PAGE_DUMP[1], "invalid mapping:0000000000000400"] * 3
    report = dmesg.parse(console(
        *BOOT_LINES[:2], *PAGE_DUMP[:2], *storm, "------------[ cut here ]------------",
        "WARNING: mm/slub.c:6635 at free_large_kmalloc+0xbc/0x130, CPU#1: hvoh/38",
        X86_TRACE[2], X86_TRACE[3], X86_TRACE[4], "---[ end trace 0000000000000000 ]---",
    ))
    kinds = [f.kind for f in report.findings]
    assert kinds == ["page-dump", "page-dump", "page-dump", "warn"], kinds
    warn = report.findings[-1]
    assert warn.headline().startswith("WARNING: mm/slub.c:6635") and "Call Trace:" in warn.excerpt
    assert warn.excerpt.count("page: refcount") == 1
    assert "invalid mapping" in report.findings[1].excerpt  # dump_mapping()'s line is the dump's


def test_a_page_dump_inside_bad_page_state_is_that_report() -> None:
    report = dmesg.parse(read("x86_64-7.2.13-hvo-on-4G-nodes.console.log"))
    assert {f.kind for f in report.findings} == {"bug"}


# --- hostile console text -------------------------------------------------------------------


def test_a_line_of_megabytes_is_cut_to_its_head_and_tail() -> None:
    head, tail = "[    1.000000] A" + "a" * 3000, "b" * 3000 + "Z"
    [line] = dmesg._split(head + "x" * (4 << 20) + tail + "\n")
    assert len(line.raw) < 3 * dmesg.LINE_KEEP
    assert line.raw.startswith(head[: dmesg.LINE_KEEP]) and line.raw.endswith(tail[-dmesg.LINE_KEEP :])
    assert f"{len(head) + (4 << 20) + len(tail) - 2 * dmesg.LINE_KEEP} characters cut" in line.raw


def test_a_report_after_megabytes_of_garbage_on_its_line_is_found() -> None:
    """User output without a newline, then the kernel's record: it ends the console line."""
    garbage = os.urandom(4 << 20).decode("latin-1").replace("\n", "").replace("\r", "")
    text = garbage + console("WARNING: mm/sparse.c:365 at sparse_init+0x5c/0x2d0, CPU#0: swapper/0/0")
    [finding] = dmesg.parse(text).findings
    # The check it is comes from the source at mm/sparse.c:365 (tests/test_source_checks.py).
    assert (finding.kind, finding.function, finding.file, finding.line) == (
        "warn", "sparse_init", "mm/sparse.c", 365)


@pytest.mark.parametrize(("prefix", "piece"), [
    # each made a regexp of the parser scan the rest of the line again at every repeat
    ("", "BUG: "), ("", "WARNING: ["), ("", "Unable to handle kernel "), ("", "kernel BUG at "),
    ("", "HugeTLB: allocating "), ("", "INFO: task "), ("", "UBSAN: "), ("", "BUG a (Tainted: "),
    ("", "---[ end Kernel panic - not syncing: "), ("", "WARNING: x still has"), ("Oops ", "-"),
    # ... or from every character of one long word
    ("WARNING: at ", "a"), ("BUG: KASAN: x in ", "a"),
    # terminal escapes left open, as in the fault suite's garbage
    ("", "\x1b[1;"), ("", "\x1b]0;"), ("", "\x1b"),
])
def test_long_lines_of_repeated_marker_text_parse(prefix: str, piece: str) -> None:
    line = prefix + piece * ((1 << 20) // len(piece))
    report = dmesg.parse("\n".join([line] * 4))
    assert len(report.findings) <= 4
    assert all(len(ln) < 3 * dmesg.LINE_KEEP for f in report.findings for ln in f.excerpt.splitlines())


def test_random_bytes_and_escapes_are_no_finding() -> None:
    """What tests/faults/garbage.sh writes to the console, offline: none of it is a finding, and
    the cleaning of escapes and control bytes leaves no marker behind."""
    escapes = ("\x1b[2J\x1b[H\x1b]0;hvo-fault\x07\x1b[?1049h\x1b[31;1;5m\x1b(0\x1b[6n"
               "\x1b]52;c;aHZvLWZhdWx0\x07\x1bP+q544e\x1b\\\x1bc\r\x00\x1b[0m\x1b(B\x1b[?1049l\n")
    noise = "".join(os.urandom(30000).decode(errors="replace") + escapes for _ in range(10))
    assert dmesg.parse(noise + console(*BOOT_LINES) + noise).findings == []
