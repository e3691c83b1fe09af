"""Read a kernel console or dmesg: complaints (WARN, BUG, Oops, panic, ...) and HugeTLB lines.

Pure: text in, data out. No I/O, no QEMU. Which statement a finding is (a named check) is not
read here but from the kernel's source at its file:line (harness/source_lines.py,
harness/checks.py). Every pattern follows a printk format of the kernel
(lib/bug.c, kernel/panic.c, arch/*/kernel/traps.c, arch/*/mm/fault.c, mm/hugetlb*.c, ...); the
comment above each regexp names the format strings and the files they come from.

Tolerated around the kernel text: printk timestamps "[    1.234567] ", caller ids "[    T1] ",
log levels "<4>" (dmesg -r), "dmesg -x" facility prefixes, CRLF and stray CR, ANSI escapes,
NULs, and user output that shares a line with kernel text (markers are searched anywhere).
A console line longer than a kernel record can be is cut to its head and tail (LINE_KEEP).

Every regexp costs a bounded amount of work per character of the line on any input (random
bytes, open terminal escapes, one marker repeated a million times): no unbounded ".*" between
two parts of a pattern that is searched, since a search retries it from every occurrence of
the first part, each time over the rest of the line; such gaps are bounded by what the kernel
can print there, or the second part is searched for in code.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Any

from harness.results import Finding

EXCERPT_MAX_LINES = 60  # an excerpt never has more lines than this
PANIC_CONTEXT_LINES = 5  # lines kept before "Kernel panic - not syncing"
ABSORB_WINDOW = 40  # lines after "kernel BUG at"/a fault line in which the Oops header follows
CUT_LOOKBACK = 10  # lines before a header searched for "cut here" (WARN(cond, fmt) text between)
SCAN_LIMIT = 400  # lines after a header searched for "---[ end trace"
NO_TRACE_LINES = 20  # lines kept after a header when no end marker and no call trace follow
# A one-line complaint (an unwinder's WARNING, a list corruption) keeps a call trace only when
# one starts within this many lines after it (dump_stack()'s "CPU:" and "Hardware name:" first).
NOTE_TRACE_LOOKAHEAD = 4
# Lines from "invoked oom-killer" to its "Out of memory: Killed process": dump_header() prints
# show_mem() and then one line per task (dump_tasks()) between them.
OOM_REPORT_LINES = 5000
# kernel/printk/internal.h PRINTK_MESSAGE_MAX: a kernel record on the console (prefix and text)
# is at most 2048 characters. A longer console line holds user output (no newline for MBs) and
# at most a record at each end: the first and last LINE_KEEP characters are kept.
LINE_KEEP = 2048


# --------------------------------------------------------------------------------------------
# Public records
# --------------------------------------------------------------------------------------------


@dataclass
class HugeTLBReport:
    """What the kernel said about HugeTLB while booting, keyed by size label ('2M', '1G', ...)."""

    # size label -> pages pre-allocated at boot ("HugeTLB: registered 2.00 MiB page size,
    # pre-allocated 4 pages")
    registered: dict[str, int] = field(default_factory=dict)
    # size label -> KiB of vmemmap HVO frees per huge page ("HugeTLB: 28 KiB vmemmap can be
    # freed for a 2.00 MiB page")
    freeable_kib: dict[str, int] = field(default_factory=dict)
    # size label -> the kernel's own line(s) ("HugeTLB: unsupported hugepagesz=16G"; a following
    # "HugeTLB: hugepages=1 does not follow a valid hugepagesz, ignoring" is appended after "\n")
    unsupported: dict[str, str] = field(default_factory=dict)
    # {"line": str, "size": label | None, "node": int | None} per boot allocation failure
    allocation_failures: list[dict[str, Any]] = field(default_factory=list)
    # every HugeTLB-related kernel line verbatim, without timestamps, in console order
    lines: list[str] = field(default_factory=list)


@dataclass
class ConsoleReport:
    findings: list[Finding] = field(default_factory=list)
    hugetlb: HugeTLBReport = field(default_factory=HugeTLBReport)


# --------------------------------------------------------------------------------------------
# Size labels
# --------------------------------------------------------------------------------------------

# string_get_size(..., STRING_UNITS_2) gives "2.00 MiB", "32.0 MiB", "1.00 GiB", "512 MiB";
# old memfmt() gave "2 MB", "1 GB"; hstate names "hugepages-2048kB"; memparse() input "16G",
# "1g", "2048K", "0x40000000"; old x86 setup_hugepagesz() "16384 M".
_SIZE_RE = re.compile(
    r"^\s*(?:hugepages-)?(?P<num>0[xX][0-9a-fA-F]+|\d+(?:\.\d+)?)\s*"
    r"(?P<unit>[kKmMgGtTpPeE]?)(?:i?[bB])?\s*$"
)
_SHIFTS = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "E": 60}
_LABEL_UNITS = (("E", 60), ("P", 50), ("T", 40), ("G", 30), ("M", 20), ("K", 10))


def size_label_from_kernel(text: str) -> str:
    """'2.00 MiB' -> '2M', '1.00 GiB' -> '1G', '32.0 MiB' -> '32M', '16G' -> '16G',
    '2048 kB' -> '2M', 'hugepages-1048576kB' -> '1G'. All units are binary, as the kernel's
    are here. Raises ValueError on text that is not a size."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    num, unit = m["num"], m["unit"].upper()
    value = float(int(num, 16)) if num[:2].lower() == "0x" else float(num)
    nbytes = round(value * (1 << _SHIFTS[unit]))
    for suffix, shift in _LABEL_UNITS:
        if nbytes >= 1 << shift and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift}{suffix}"
    return f"{nbytes}B"


def _label(text: str) -> str:
    try:
        return size_label_from_kernel(text)
    except ValueError:
        return text.strip()


# --------------------------------------------------------------------------------------------
# Line cleaning
# --------------------------------------------------------------------------------------------

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST), and two-byte escapes (ESC c, ESC 7, ...).
_ANSI_RE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_CTRL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# printk prefix: "<4>" (dmesg -r), "[    1.234567]" (printk.time), "[    T1]"/"[  C0]"
# (CONFIG_PRINTK_CALLER, with or without a space after the time stamp).
_STAMP_RE = re.compile(r"(?:<\d{1,3}>)?\[\s*\d+\.\d+\](?:\s?\[\s*[CT]\d+\])?\s?")
_LEAD_RE = re.compile(
    r"^(?:"
    r"(?:kern|user|mail|daemon|auth|syslog|lpr|news|uucp|cron|authpriv|ftp|local[0-7])\s*:"
    r"\s*(?:emerg|alert|crit|err|warn|notice|info|debug)\s*:\s?"  # dmesg -x
    r"|<\d{1,3}>"  # dmesg -r without time stamps
    r"|\[\s*[CT]\d+\]\s?"  # caller id without time stamps
    r"|\[[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}\]\s?"  # dmesg -T
    r"|[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ kernel: "  # syslog/journal
    r")+"
)


@dataclass(frozen=True)
class _Line:
    raw: str  # as printed, minus CR/ANSI/control bytes: what excerpts show
    msg: str  # the kernel's text: prefixes and anything before a mid-line time stamp dropped


# A line is cut only when the note saying so is shorter than what it replaces.
_CUT_ABOVE = 2 * LINE_KEEP + 64


def _cut(raw: str) -> str:
    """A line of at most 2 * LINE_KEEP characters and a note saying how many were cut between.

    Every record the kernel prints ends in a newline, so on a console line of user output (a
    program writing MBs without one) a whole kernel record can only end the line, and one the
    user output broke into can start it; the middle is user output, unless user output broke
    into a record there too."""
    cut = len(raw) - 2 * LINE_KEEP
    return f"{raw[:LINE_KEEP]} [... {cut} characters cut ...] {raw[-LINE_KEEP:]}"


def _split(text: str) -> list[_Line]:
    """Console lines, cleaned and cut to a bounded length (_cut). Empty lines are dropped: serial
    consoles end lines with "\r\r\n", which universal-newline reading (open(),
    Path.read_text()) turns into a blank line after every line, and an empty kernel line carries
    nothing."""
    out: list[_Line] = []
    for piece in text.split("\n"):
        # Cleaning is one linear pass; cutting after it keeps the text around escape sequences.
        raw = _CTRL_RE.sub("", _ANSI_RE.sub("", piece.replace("\r", ""))).rstrip()
        if len(raw) > _CUT_ABOVE:
            raw = _cut(raw)
        m = _STAMP_RE.search(raw)
        msg = raw[m.end() :] if m else raw
        msg = _LEAD_RE.sub("", msg, count=1)
        if msg.strip():
            out.append(_Line(raw, msg))
    return out


# --------------------------------------------------------------------------------------------
# Symbols and program counters
# --------------------------------------------------------------------------------------------

# %pS: "sparse_init+0x5c/0x2d0", "func+0x1/0x2 [module]", "func+0x1/0x2 [module <build-id>]";
# %pB is the same shape. Optimised clones keep their suffix: "foo.isra.0+0x..", "foo.cold+0x..".
# A symbol starts where a word starts: searched without that, a long word is scanned again from
# each of its characters. Module name and build id together are well under 128 characters.
_SYM = (
    r"(?<![\w.$])(?P<sym>[A-Za-z_.$][\w.$]*)\+0x[0-9a-fA-F]+(?:/0x[0-9a-fA-F]+)?"
    r"(?:\s+\[[^\]]{1,128}\])?"
)
_SYM_RE = re.compile(_SYM)
_BARE_FUNC_RE = re.compile(r"^(?P<func>[A-Za-z_][\w.]*)(?:\(\))?(?:[\s,]|$)")

# The line naming the faulting PC, per architecture, in the order they are tried.
_PC_RES = (
    # x86: "RIP: 0010:func+0x5c/0x2d0" (show_ip), x86_32 "EIP: func+..", older
    # "RIP: 0010:[<ffffffff81234567>]  [<ffffffff81234567>] func+..", old fault "IP: func+.."
    re.compile(r"\b[RE]?IP:\s*(?:[0-9a-fA-F]{4}:)?(?:\[<[0-9a-fA-F]+>\]\s*)*" + _SYM),
    # old x86_64 executive summary: "RIP  [<ffffffff81234567>] func+.."
    re.compile(r"\bRIP\s+\[<[0-9a-fA-F]+>\]\s*" + _SYM),
    # riscv "epc : func+.." (__show_regs), MIPS "epc   : ffffffff80123456 func+..",
    # LoongArch "  ERA: 9000000000123456 func+.." (older "era   : ...")
    re.compile(r"(?<![\w])(?:epc|ERA|era)\s*:\s*(?:[0-9a-fA-F]{8,}\s+)?" + _SYM),
    # arm64 "pc : func+.." (__show_regs)
    re.compile(r"(?<![\w])pc\s*:\s*(?:[0-9a-fA-F]{8,}\s+)?" + _SYM),
    # arm "PC is at func+.."
    re.compile(r"\bPC is at " + _SYM),
    # powerpc "NIP [c000000000123456] func+.."
    re.compile(r"\bNIP\s*\[[0-9a-fA-F]+\]\s*" + _SYM),
    # s390 "Krnl PSW : 0704c00180000000 000000000012345a (func+..)"
    re.compile(r"Krnl PSW\s*:\s*[0-9a-fA-F]+ [0-9a-fA-F]+ \(" + _SYM),
)


def _pc_function(lines: list[_Line], start: int, end: int) -> str | None:
    for j in range(start, end):
        for pc_re in _PC_RES:
            m = pc_re.search(lines[j].msg)
            if m:
                return m["sym"]
    return None


def _first_function(text: str) -> str | None:
    m = _SYM_RE.search(text)
    if m:
        return m["sym"]
    m = _BARE_FUNC_RE.match(text.strip())
    if m and not re.fullmatch(r"0[xX][0-9a-fA-F]+", m["func"]):
        return m["func"]
    return None


# --------------------------------------------------------------------------------------------
# Markers
# --------------------------------------------------------------------------------------------

_FILE = r"(?P<file>[\w./+-]+\.\w+):(?P<line>\d+)"
# riscv and LoongArch with CONFIG_DEBUG_BUGVERBOSE_DETAILED store WARN_CONDITION_STR(cond_str)
# __FILE__ as the bug entry's file: "[!IS_ALIGNED(...)] mm/sparse.c" ("[] mm/sparse.c" for BUG()).
# The condition is the macro argument's text; 1024 characters is far more than any has.
_COND = r"(?:\[.{0,1024}\] )?"

# include/asm-generic/bug.h CUT_HERE; one dash each side is enough ("-+" rescans a long rule).
_CUT_RE = re.compile(r"-\[ cut here \]-")
_END_TRACE_RE = re.compile(r"---\[ end trace\b")  # kernel/panic.c print_oops_end_marker
_SEP_RE = re.compile(r"^\s*={20,}\s*$")  # KASAN/KFENCE/old UBSAN/lockdep separators
# kernel/panic.c panic(): "Kernel panic - not syncing: %s" and, at the end,
# "---[ end Kernel panic - not syncing: %s ]---"
# (the reason is vsnprintf()ed into a 1024-byte buffer; it may hold "]", as in "[module]")
_END_PANIC_RE = re.compile(
    r"---\[ end Kernel panic - not syncing: ?(?P<reason>(?:[^\]]|\](?!---)){0,1024})\]---"
)
_PANIC_RE = re.compile(r"Kernel panic - not syncing: ?(?P<reason>.*)")

# kernel/panic.c __warn():
#   7.2 (and 6.19+): "WARNING: %s:%d at %pS, CPU#%d: %s/%d" / "WARNING: at %pS, CPU#%d: %s/%d"
#   4.x-6.18: "WARNING: CPU: %d PID: %d at %s:%d %pS" / "WARNING: CPU: %d PID: %d at %pS"
#   3.x: "WARNING: CPU: %d PID: %d at %s:%d %pS()"; 2.6: "WARNING: at %s:%d %pS()"
_WARN_CPU_RE = re.compile(r"WARNING: CPU: \d+ PID: \d+ at (?P<where>.*)")
_WARN_NEW_RE = re.compile(r"WARNING: (?P<where>" + _COND + r"[\w./+-]+\.\w+:\d+ at .*)")
_WARN_AT_RE = re.compile(r"WARNING: at (?P<where>.*)")
_WHERE_NEW_RE = re.compile(r"^" + _COND + _FILE + r" at (?P<rest>.*)")
_WHERE_OLD_RE = re.compile(r"^(?:" + _COND + _FILE + r"\s+)?(?P<rest>.*)")

# lib/bug.c __report_bug(): "kernel BUG at %s:%u!" and, without CONFIG_DEBUG_BUGVERBOSE,
# "kernel BUG at %pB [verbose debug info unavailable]" (before 6.x "Kernel BUG at %pB ...");
# old powerpc xmon "kernel BUG in %s at %s:%d!"
_BUG_AT_RE = re.compile(r"kernel BUG at " + _COND + _FILE + r"!")
_BUG_IN_AT_RE = re.compile(r"kernel BUG in (?P<func>[\w.]+) at " + _FILE + r"!")
# (%pB is a symbol, offsets and "[module]": 600 characters bound it with room to spare)
_BUG_NOVERBOSE_RE = re.compile(
    r"[Kk]ernel BUG at (?P<rest>.{0,600}?)\s*\[verbose debug info unavailable\]"
)

# mm/kasan/report.c "BUG: KASAN: %s in %pS" (4.x: "BUG: KASAN: %s on address %p");
# mm/kmsan/report.c "BUG: KMSAN: %s in %pSb"; kernel/kcsan/report.c "BUG: KCSAN: %s in %ps / %ps";
# mm/kfence/report.c "BUG: KFENCE: out-of-bounds %s in %pS", "use-after-free %s in %pS",
# "memory corruption in %pS", "invalid %s in %pS", "invalid free in %pS".
_SANITIZER_RE = re.compile(r"BUG: (?P<tool>KASAN|KMSAN|KCSAN|KFENCE): (?P<what>.*)")

# Faults. x86 arch/x86/mm/fault.c show_fault_oops(): "BUG: kernel NULL pointer dereference,
# address: %px", "BUG: unable to handle page fault for address: %px"; < 5.1 "BUG: unable to handle
# kernel NULL pointer dereference at %p" / "... kernel paging request at %p"; powerpc "BUG: Kernel
# NULL pointer dereference on read at 0x%08lx", "BUG: Unable to handle kernel data access ...".
_X86_FAULT_RE = re.compile(
    r"BUG: (?:[Uu]nable to handle (?:page fault|kernel\b)|[Kk]ernel NULL pointer dereference)"
)
# arm/arm64 die_kernel_fault() and riscv die_kernel_fault(): "Unable to handle kernel %s at
# virtual address %016lx"; LoongArch no_context(): "CPU %d Unable to handle kernel paging request
# at virtual address %0*lx, era == %0*lx, ra == %0*lx". (%s is a few words: "paging request",
# "execute from non-executable memory", ...)
_VA_FAULT_RE = re.compile(r"Unable to handle kernel (?P<what>.{1,100}?) at virtual address\b")
# arch/x86/kernel/traps.c: "PANIC: double fault, error_code: 0x%lx" then die("double fault");
# "BUG: %s stack guard page was hit at %px (stack is %px..%px)" (%s: "TASK", "IRQ", ...; before
# 5.x without it) then die("stack guard page").
_DOUBLE_FAULT_RE = re.compile(r"PANIC: double fault\b")
_STACK_GUARD_RE = re.compile(r"BUG: (?:\w+ )?stack guard page was hit at\b")

# kernel/watchdog.c: "BUG: soft lockup - CPU#%d stuck for %us! [%s:%d]" (pr_fmt "watchdog: ");
# "Watchdog detected hard LOCKUP on cpu %d" (newer "CPU%u: Watchdog detected hard LOCKUP ...");
# kernel/workqueue.c: "BUG: workqueue lockup - pool"; kernel/rcu/tree_stall.h (pr_fmt "rcu: "):
# "INFO: %s detected stalls on CPUs/tasks:", "INFO: %s self-detected stall on CPU";
# tree_exp.h "INFO: %s detected expedited stalls on CPUs/tasks: {";
# tasks.h "INFO: %s detected stalls on tasks:".
_STALL_RES = (
    re.compile(r"BUG: soft lockup - CPU#\d+ stuck\b"),
    re.compile(r"Watchdog detected hard LOCKUP on cpu \d+"),
    re.compile(r"BUG: workqueue lockup\b"),
    re.compile(r"INFO: \S+ (?:self-)?detected (?:expedited )?stalls?\b"),
)
# kernel/hung_task.c: "INFO: task %s:%d blocked%s for more than %ld seconds." (%s: "" or
# " in I/O wait"; before 6.x "INFO: task %s:%d blocked for more than %ld seconds."). The comm
# is at most TASK_COMM_LEN (16) bytes; 64 allows for a longer one in some later kernel.
_HUNG_RE = re.compile(
    r"INFO: task .{1,64}?:\d+ blocked(?: [\w/ ]{1,32}?)? for more than \d+ seconds"
)
# kernel/sched/core.c __might_resched(): "BUG: sleeping function called from invalid context at
# %s:%d"; __schedule_bug(): "BUG: scheduling while atomic: %s/%d/0x%08x".
_SLEEPING_RE = re.compile(r"BUG: sleeping function called from invalid context at " + _FILE)
# mm/page_alloc.c bad_page(): "BUG: Bad page state in process %s  pfn:%05lx" and
# "BUG: Bad page state: %lu messages suppressed"; mm/memory.c "BUG: Bad page map in process ...".
# The "suppressed" line counts reports already made: searched after "BUG: " in code, as one
# pattern "BUG: .*suppressed" would rescan the line from every "BUG: " on it.
_BUG_COLON_RE = re.compile(r"\bBUG: ")
_SUPPRESSED_RE = re.compile(r"\d+ messages suppressed")
_BUG_GENERIC_RE = re.compile(r"\bBUG: \S")
# mm/slub.c slab_bug(): "BUG %s (%s): %pV", e.g. "BUG kmalloc-64 (Not tainted): Object already free"
# (print_tainted()'s flags are under 40 characters)
_SLUB_RE = re.compile(r"\bBUG [\w.:-]+ \((?:Not tainted|Tainted: [^)]{0,80})\): ")
# lib/ubsan.c: "UBSAN: %s in %s:%d:%d"; before 5.10 "UBSAN: Undefined behaviour in %s:%d:%d".
# (%s is ubsan_prologue()'s reason: "array-index-out-of-bounds", "shift-out-of-bounds", ...)
_UBSAN_RE = re.compile(r"UBSAN: (?P<what>.{1,80}?) in " + _FILE)
# kernel/locking/lockdep.c and friends print "WARNING: <what>" between "=====" lines; all of
# 7.2's are here ("%s/%d still has locks held!" is comm/pid), and 5.x's "lock held at task exit".
_LOCKDEP_RE = re.compile(
    r"WARNING: (?:possible circular locking dependency detected"
    r"|possible recursive locking detected|inconsistent lock state"
    r"|possible irq lock inversion dependency detected|suspicious RCU usage"
    r"|bad unlock balance detected!|held lock freed!|lock held when returning to user space!"
    r"|\S+-safe -> \S+-unsafe lock order detected|.{1,80}? still has locks held!"
    r"|Nested lock was not taken|lock held at task exit time!|chain_key collision"
    r"|bad contention detected!)"
)

# Any other "WARNING: <text>" the kernel prints (checked after __warn's headers and lockdep's):
# arch/x86/kernel/dumpstack_64.c (and _32.c) "WARNING: stack recursion on stack type %d";
# arch/x86/kernel/unwind_orc.c (and arch/loongarch's) orc_warn() = "WARNING: " fmt, e.g.
# "WARNING: can't access registers at %pB", "WARNING: WARNING: bad lookup idx: ... ip=%pB",
# "WARNING: Corrupt .orc_unwind table.  Disabling unwinder."; arch/x86/kernel/unwind_frame.c
# "WARNING: kernel stack frame pointer at %p in %s:%d has bad value %p"; kernel/workqueue.c
# "WARNING: Flushing system-wide workqueues will be prohibited in near future." (dump_stack()
# after it); and WARN()'s own text when it says "WARNING:", which is part of that WARN.
_WARN_TEXT_RE = re.compile(r"\bWARNING: (?P<text>\S.*)")
# Not kernel complaints: arch/x86/kernel/cpu/bugs.c's advice on the CPU, its microcode and the
# mitigations chosen ("Speculative Return Stack Overflow: WARNING: See https://kernel.org/...",
# "RETBleed: WARNING: Spectre v2 mitigation leaves CPU vulnerable to RETBleed attacks, ..."),
# printed by ordinary boots on the host CPU under KVM, each after its section's pr_fmt (all of
# 7.2's sections are named); arch/arm64/kernel/proton-pack.c "WARNING: Unprivileged eBPF is
# enabled, data leaks possible ..."; drivers/firmware/efi/libstub efi_warn(), "EFI stub:
# WARNING: Failed to measure data for event %d: 0x%lx" and the like, printed to the firmware's
# console about the firmware before the kernel runs; and the init of `run --backend vng`, which
# writes its own "virtme-ng-init: WARNING: failed to run: ..." (or virtme-init's) to the log.
_NOT_A_COMPLAINT_RE = re.compile(
    r"(?:\b(?:mitigations|MDS|TAA|MMIO Stale Data|Register File Data Sampling|SRBDS|GDS|L1TF"
    r"|RETBleed|ITS|Transient Scheduler Attacks|Speculative Store Bypass|Speculation prctl"
    r"|Speculative Return Stack Overflow|VMSCAPE|EFI stub|virtme-init|virtme-ng-init)"
    r"|\bSpectre V[12] |\bL1D Flush ): WARNING: |\bWARNING: Unprivileged eBPF is enabled\b"
)
# include/linux/debug_locks.h DEBUG_LOCKS_WARN_ON(c): WARN(1, "DEBUG_LOCKS_WARN_ON(%s)", #c).
_DEBUG_LOCKS_RE = re.compile(r"\bDEBUG_LOCKS_WARN_ON\(")
# lib/list_debug.c through CHECK_DATA_CORRUPTION() (include/linux/bug.h), which prints its text
# with WARN(1, ...) or, with CONFIG_BUG_ON_DATA_CORRUPTION, with pr_err() before BUG():
# "list_add corruption. prev is NULL.", "list_add corruption. next->prev should be prev (%px),
# but was %px. (next=%px).", "list_add double add: new=%px, prev=%px, next=%px.",
# "list_del corruption, %px->next is NULL", "list_del corruption, %px->next is LIST_POISON1 (%px)",
# "list_del corruption. prev->next should be %px, but was %px. (prev=%px)".
_LIST_CORRUPTION_RE = re.compile(r"\blist_(?:add|del) corruption[.,] |\blist_add double add: ")

# mm/debug.c dump_page(): __dump_page() "page does not match folio" (the snapshot of a page
# whose folio is not consistent), then __dump_folio() "page: refcount:%d mapcount:%d
# mapping:%p index:%#lx pfn:%#lx" (before 5.x "page:%px refcount:..." / "page:%p count:%d
# mapcount:%d mapping:%p index:%#lx"), or "page:%p is uninitialized and poisoned"; then "head:",
# "memcg:", "[anon |ksm ]flags:", "page_type:", "raw:" lines and "page dumped because: %s". A
# report prints it inside its block (bad_page()'s "BUG: Bad page state") or just before its
# header (VM_BUG_ON_PAGE(), VM_WARN_ON_ONCE_PAGE(): dump_page(), then BUG()/WARN()); one with
# no report around it (the kernel hung or faulted before the header) is a finding of its own.
_PAGE_DUMP_RE = re.compile(
    r"^(?:page does not match folio\s*$|page:\s?(?:[0-9a-fA-Fx]+ )?(?:refcount|count):-?\d+ mapcount:"
    r"|page:[0-9a-fA-Fx]+ is uninitialized and poisoned)"
)
_PAGE_DUMP_BODY_RE = re.compile(
    r"^(?:page:|head: |memcg:|(?:anon |ksm )?flags: |page_type: |raw: |page dumped because: "
    r"|aops:|ino:|invalid (?:mapping|inode|dentry)|page_owner "
    r"|\s*(?:PFN|page last |prep_new_page|get_page_from_freelist))"
)
# Lines a report's header may follow the page dump it starts with by (VM_BUG_ON_PAGE()'s).
PAGE_DUMP_LOOKAHEAD = 40

# mm/page_alloc.c warn_alloc(): "%s: %pV, mode:%#x(%pGg), nodemask=%*pbl" (+ cpuset, mems) and
# then dump_stack() and show_mem(), from __alloc_pages_slowpath() "page allocation failure:
# order:%u", mm/sparse-vmemmap.c "vmemmap alloc failure: order:%u" and mm/vmalloc.c "vmalloc
# error: size %lu, ..."; 2.6 "page allocation failure. order:%d", 4.x "vmalloc: allocation
# failure: %lu bytes".
_ALLOC_FAILURE_RE = re.compile(
    r": (?:page allocation failure[.:] order:\d|vmemmap alloc failure: order:\d"
    r"|vmalloc error: size \d|vmalloc: allocation failure)"
)
# mm/oom_kill.c dump_header(): "%s invoked oom-killer: gfp_mask=%#x(%pGg), order=%d,
# oom_score_adj=%d" (3.x/4.x the same up to "gfp_mask="), then dump_stack(), show_mem() and
# dump_tasks(); then __oom_kill_process() "%s: Killed process %d (%s) total-vm:..." (%s: "Out
# of memory", "Memory cgroup out of memory", "Out of memory (oom_kill_allocating_task)"; 4.x
# first "Out of memory: Kill process %d (%s) score %u or sacrifice child"), or out_of_memory()
# "Out of memory and no killable processes...". The closing line joins the report before it.
_OOM_RE = re.compile(r"\binvoked oom-killer: gfp_mask=")
_OOM_VERDICT_RE = re.compile(
    r"\b(?:Out of memory(?: \([\w ]{1,40}\))?|Memory cgroup out of memory): Kill(?:ed)? process \d"
    r"|\bOut of memory and no killable processes\b"
)

# Die headers, all ending in "[#N]":
#   x86 __die_header(): >= 6.10 "Oops: %s: %04lx [#%d]...", e.g. "Oops: invalid opcode: 0000 [#1]",
#     "Oops: Oops: 0002 [#1]"; before "%s: %04lx [#%d]...", e.g. "Oops: 0002 [#1] SMP",
#     "invalid opcode: 0000 [#1]", "general protection fault, ...: 0000 [#1]"
#   riscv die(): "%s [#%d]", e.g. "Oops [#1]", "Kernel BUG [#1]", "Oops - illegal instruction [#1]"
#   LoongArch/MIPS die(): "%s[#%d]:", e.g. "Oops[#1]:", "Oops - BUG[#1]:", "Kernel ade access[#1]:"
#   arm64 die(): "Internal error: %s: %016lx [#%d] ...", e.g. "Internal error: Oops - BUG: ..."
#   s390 die(): "%s: %04x ilc:%d [#%d]"
_DIE_NR_RE = re.compile(r"\[#\d+\]")
_DIE_HEAD_RE = re.compile(
    r"\bOops\b|\bInternal error\b|\bKernel BUG\s*$|\bKernel bug detected\s*$"
    r"|: [0-9a-fA-F]{4,16}(?: ilc:\d)?\s*$"
)

# Lines that make up a stack trace, to end a report that has no end marker.
_CALL_TRACE_RE = re.compile(r"\b(?:Call Trace|Call trace|Backtrace|Stack backtrace)\s*:")
_FRAME_RE = re.compile(
    r"^\s*(?:\[<?[0-9a-fA-F]+>?\]\s*)*(?:\? )?[A-Za-z_.$][\w.$]*\+0x[0-9a-fA-F]+"
    r"|</?(?:TASK|IRQ|NMI|EOI|SOFTIRQ)>"
    r"|^\s*\[<[0-9a-fA-F]+>\]"
    r"|^\s*[A-Z][A-Z0-9]{1,3}:\s"  # register dumps inside a trace (RIP: 0033:..., RSP: ...)
    r"|^\s*Code:"
)
_TASK_END_RE = re.compile(r"</TASK>")

# Cheap pre-filter: a line with none of these is no marker at all.
_ANY_RE = re.compile(
    r"BUG|WARN|Oops|\[#\d|Kernel panic|cut here|end trace|Unable to handle|INFO: |UBSAN"
    r"|LOCKUP|PANIC|Internal error|list_(?:add|del) |alloc(?:ation)? failure|vmalloc error"
    r"|oom-killer|ut of memory|page:|page does not match folio"
)


@dataclass
class _Hit:
    # "event" | "pre" | "die" | "end" | "cut" | "panic-end", or
    # "note": a complaint a WARN/BUG report may carry (WARN()'s text, CHECK_DATA_CORRUPTION()'s
    #   message before its BUG(), an unwinder's warning while a trace is dumped): a finding of
    #   its own only where no report takes it in (_take_in());
    # "verdict": the OOM killer's closing line, which joins the "invoked oom-killer" before it.
    role: str
    kind: str = ""
    function: str | None = None
    file: str | None = None
    line: int | None = None
    reason: str | None = None
    separated: bool = False  # report closed by a "=====" line rather than "---[ end trace"
    trap: bool = False  # a WARN*()/BUG*() assertion (or the Oops it raised), not a report


def _where(text: str) -> tuple[str | None, int | None, str | None]:
    m = _WHERE_NEW_RE.match(text)
    if not m:
        m = _WHERE_OLD_RE.match(text)
    assert m is not None  # _WHERE_OLD_RE matches any text
    file = m["file"]
    line = int(m["line"]) if m["line"] else None
    return file, line, _first_function(m["rest"])


def _classify(msg: str) -> _Hit | None:
    if not _ANY_RE.search(msg):
        return None
    # Each of these two regexps scans up to 1024 characters after its first words: a line
    # without the closing text (most lines that hold the first words, in garbage) skips it.
    m = _END_PANIC_RE.search(msg) if "]---" in msg else None
    if m:
        return _Hit("panic-end", "panic", reason=m["reason"].strip())
    m = _PANIC_RE.search(msg)
    if m:
        reason = m["reason"].strip()
        return _Hit("event", "panic", function=_sym_or_none(reason), reason=reason)
    if _END_TRACE_RE.search(msg):
        return _Hit("end")
    if _CUT_RE.search(msg):
        return _Hit("cut")
    for warn_re in (_WARN_CPU_RE, _WARN_NEW_RE, _WARN_AT_RE):
        m = warn_re.search(msg)
        if m:
            file, line, func = _where(m["where"].strip())
            return _Hit("event", "warn", function=func, file=file, line=line, trap=True)
    m = _BUG_IN_AT_RE.search(msg)
    if m:
        return _Hit(
            "pre", "bug", function=m["func"], file=m["file"], line=int(m["line"]), trap=True
        )
    m = _BUG_AT_RE.search(msg)
    if m:
        return _Hit("pre", "bug", file=m["file"], line=int(m["line"]), trap=True)
    m = _BUG_NOVERBOSE_RE.search(msg) if "[verbose debug info unavailable]" in msg else None
    if m:
        return _Hit("pre", "bug", function=_first_function(m["rest"]), trap=True)
    m = _SANITIZER_RE.search(msg)
    if m:
        what = m["what"]
        func = None
        if " in " in what:
            func = _first_function(what.split(" in ", 1)[1])
        return _Hit("event", m["tool"].lower(), function=func, separated=True)
    if _X86_FAULT_RE.search(msg) or _VA_FAULT_RE.search(msg):
        return _Hit("pre", "paging-request")
    if _STACK_GUARD_RE.search(msg):
        return _Hit("pre", "bug")
    if _DOUBLE_FAULT_RE.search(msg):
        return _Hit("pre", "oops")
    for stall_re in _STALL_RES:
        if stall_re.search(msg):
            return _Hit("event", "stall")
    if _HUNG_RE.search(msg):
        return _Hit("event", "hung-task")
    m = _DIE_NR_RE.search(msg)
    if m and (_DIE_HEAD_RE.search(msg[: m.start()]) or msg[m.end() :].startswith(":")):
        head = msg[: m.start()]
        return _Hit("die", "bug" if re.search(r"\bBUG\b|\bbug\b", head) else "oops", trap=True)
    m = _SLEEPING_RE.search(msg)
    if m:
        return _Hit("event", "bug", file=m["file"], line=int(m["line"]))
    m = _BUG_COLON_RE.search(msg)
    if m and _SUPPRESSED_RE.search(msg, m.end()):
        return None
    if _BUG_GENERIC_RE.search(msg) or _SLUB_RE.search(msg):
        return _Hit("event", "bug")
    m = _UBSAN_RE.search(msg)
    if m:
        return _Hit("event", "ubsan", file=m["file"], line=int(m["line"]), separated=True)
    if _LOCKDEP_RE.search(msg):
        return _Hit("event", "lockdep")
    if _ALLOC_FAILURE_RE.search(msg):
        return _Hit("event", "alloc-failure")
    if _OOM_RE.search(msg):
        return _Hit("event", "oom")
    if _OOM_VERDICT_RE.search(msg):
        return _Hit("verdict", "oom")
    if _LIST_CORRUPTION_RE.search(msg):
        return _Hit("note", "list-corruption")
    if _PAGE_DUMP_RE.match(msg):
        # "page does not match folio" is the first line of a dump whose "page:" line follows.
        return _Hit("note", "page-dump", reason="mismatch" if msg.startswith("page does not") else None)
    if _DEBUG_LOCKS_RE.search(msg):
        return _Hit("note", "warn")
    m = _WARN_TEXT_RE.search(msg)
    if m and not _NOT_A_COMPLAINT_RE.search(msg):
        # Only a symbol (%pB) names a function here: the first word of the text is none.
        return _Hit("note", "warn", function=_sym_or_none(m["text"]))
    return None


def _sym_or_none(text: str) -> str | None:
    m = _SYM_RE.search(text)
    return m["sym"] if m else None


# --------------------------------------------------------------------------------------------
# Events -> findings
# --------------------------------------------------------------------------------------------


@dataclass
class _Event:
    kind: str
    header: int
    function: str | None = None
    file: str | None = None
    line: int | None = None
    reason: str | None = None
    separated: bool = False
    trap: bool = False
    needs_pc: bool = False  # take the function from the RIP/epc/ERA/pc line after the header
    die: int | None = None  # the Oops header this event raised, when it is a separate line
    short: bool = False  # a one-line complaint (a note on its own): a trace right after, or none
    lead: int | None = None  # a note printed just before the report, which it starts with
    verdict: int | None = None  # the OOM killer's closing line, when after the block
    start: int = 0
    end: int = 0


_NEEDS_PC = {"bug", "oops", "paging-request", "stall", "warn"}


def _events(lines: list[_Line]) -> tuple[list[_Event], dict[int, _Hit]]:
    hits: dict[int, _Hit] = {}
    for i, ln in enumerate(lines):
        hit = _classify(ln.msg)
        if hit is not None:
            hits[i] = hit

    events: list[_Event] = []
    pre_open: _Event | None = None  # a "kernel BUG at"/fault event still waiting for its Oops
    last_panic: str | None = None
    for i, hit in hits.items():
        if hit.role in ("end", "cut", "note", "verdict"):
            continue  # notes and verdicts: _take_in(), once the reports' blocks are known
        if hit.role == "die":
            if pre_open is not None and i - pre_open.header <= ABSORB_WINDOW:
                # "kernel BUG at ..."/a fault line and the Oops header it causes: one event.
                pre_open.die = i
            else:
                events.append(_Event(hit.kind, i, trap=hit.trap, needs_pc=True, die=i))
            pre_open = None
            continue
        if hit.role == "panic-end":
            if last_panic is not None and last_panic == hit.reason:
                continue  # the closing line of the panic already reported
            hit = _Hit("event", "panic", reason=hit.reason)
        ev = _Event(
            hit.kind,
            i,
            function=hit.function,
            file=hit.file,
            line=hit.line,
            reason=hit.reason,
            separated=hit.separated,
            trap=hit.trap,
            needs_pc=hit.kind in _NEEDS_PC and hit.function is None,
        )
        events.append(ev)
        pre_open = ev if hit.role == "pre" else None
        if hit.kind == "panic":
            last_panic = hit.reason
    return events, hits


def _is_marker(hits: dict[int, _Hit], j: int) -> bool:
    """A line that is a report's own header or end: a note is none (it can sit between a WARN's
    "cut here" and its header)."""
    hit = hits.get(j)
    return hit is not None and hit.role not in ("cut", "note", "verdict")


def _find_start(ev: _Event, lines: list[_Line], hits: dict[int, _Hit], floor: int) -> int:
    if ev.kind == "panic":
        return max(floor, ev.header - PANIC_CONTEXT_LINES)
    if ev.kind in ("stall", "hung-task"):
        return ev.header
    for j in range(ev.header - 1, max(floor, ev.header - CUT_LOOKBACK) - 1, -1):
        hit = hits.get(j)
        if hit is not None and hit.role == "cut":
            return j
        if _is_marker(hits, j):
            break
    for j in range(ev.header - 1, max(floor, ev.header - 2) - 1, -1):
        if _SEP_RE.match(lines[j].msg):
            return j
    return ev.header


def _trace_end(lines: list[_Line], j: int, limit: int) -> int:
    """The last line of the call trace whose "Call Trace:" line is j."""
    last = j
    for k in range(j + 1, limit):
        if not _FRAME_RE.search(lines[k].msg):
            break
        last = k
    return last


def _find_end(ev: _Event, lines: list[_Line], hits: dict[int, _Hit], limit: int) -> int:
    if ev.kind == "panic":
        return ev.header
    first = (ev.die if ev.die is not None else ev.header) + 1
    limit = min(limit, ev.header + SCAN_LIMIT)
    if ev.kind == "page-dump":
        # The dump's own lines, up to its "page dumped because:" (and a trace if one follows).
        last = ev.header
        seen_page_line = lines[ev.header].msg.startswith("page:")
        for j in range(first, min(limit, ev.header + EXCERPT_MAX_LINES)):
            msg = lines[j].msg
            if not _PAGE_DUMP_BODY_RE.match(msg):
                break
            if _PAGE_DUMP_RE.match(msg):
                if seen_page_line or not msg.startswith("page:"):
                    break  # the next dump
                seen_page_line = True
            last = j
        for j in range(last + 1, min(limit, last + 1 + NOTE_TRACE_LOOKAHEAD)):
            if _CALL_TRACE_RE.search(lines[j].msg):
                return _trace_end(lines, j, limit)
        return last
    if ev.short:
        for j in range(first, min(limit, first + NOTE_TRACE_LOOKAHEAD)):
            if _CALL_TRACE_RE.search(lines[j].msg):
                return _trace_end(lines, j, limit)
        return ev.header
    for j in range(first, limit):
        hit = hits.get(j)
        if hit is not None and hit.role == "end":
            return j
        if ev.separated and _SEP_RE.match(lines[j].msg):
            return j
    for j in range(first, min(limit, ev.header + EXCERPT_MAX_LINES)):
        if _TASK_END_RE.search(lines[j].msg):
            return j
    # No end marker: keep the header's lines and a call trace if one follows.
    last = first - 1
    in_trace = False
    for j in range(first, limit):
        msg = lines[j].msg
        if _CALL_TRACE_RE.search(msg):
            in_trace = True
            last = j
        elif in_trace:
            if not _FRAME_RE.search(msg):
                break
            last = j
        elif j - ev.header >= NO_TRACE_LINES:
            break
        else:
            last = j
    return max(last, ev.header)


def _bound(events: list[_Event], lines: list[_Line], hits: dict[int, _Hit]) -> None:
    """Each event's block: start and end."""
    floor = 0
    for ev in events:
        ev.start = _find_start(ev, lines, hits, floor)
        if ev.lead is not None:
            ev.start = min(ev.start, ev.lead)
        floor = ev.header + 1
    for k, ev in enumerate(events):
        if k + 1 < len(events):
            nxt = events[k + 1]
            # A panic's excerpt reaches back for context; that context still ends this block.
            limit = nxt.header if nxt.kind == "panic" else nxt.start
        else:
            limit = len(lines)
        limit = max(limit, ev.header + 1)
        ev.end = _find_end(ev, lines, hits, limit)


def _last_dump_before(hits: dict[int, _Hit], i: int, start: int) -> bool:
    """The page dump at I is the one right before START: VM_BUG_ON_PAGE() dumps one page, then
    its BUG. Dumps before that one (a storm of them, another CPU's) are findings of their own, and
    do not push the report's call trace out of its excerpt."""
    later = [j for j in range(i + 1, start) if hits.get(j) is not None and hits[j].kind == "page-dump"]
    return not later or (later == [i + 1] and hits[i].reason == "mismatch")


def _take_in(events: list[_Event], hits: dict[int, _Hit]) -> list[_Event]:
    """Give each note and OOM verdict to the report it belongs to; those no report takes in are
    returned as events of their own (and become markers in hits).

    A note belongs to a report whose block holds it (for a panic, from its own line on: the
    lines before are context, not the panic's), and a list corruption message also to a BUG
    trap that starts within CUT_LOOKBACK lines after it with no other marker between
    (CHECK_DATA_CORRUPTION() with CONFIG_BUG_ON_DATA_CORRUPTION: pr_err(), then BUG()'s "cut
    here" and "kernel BUG at lib/list_debug.c"). A verdict belongs to the last "invoked
    oom-killer" report before it that has none yet, within OOM_REPORT_LINES.

    Blocks are in console order and do not overlap (a block ends before the next one starts,
    or before the next panic's own line), so the one block that can hold a line is found by
    bisection: a console of many reports and notes costs no more than one pass over them."""
    own: list[_Event] = []
    starts = [ev.start for ev in events]
    covers = [ev.header if ev.kind == "panic" else ev.start for ev in events]
    ooms = [ev for ev in events if ev.kind == "oom"]
    oom_headers = [ev.header for ev in ooms]
    for i, hit in hits.items():
        if hit.role == "verdict":
            k = bisect.bisect_left(oom_headers, i) - 1
            oom = ooms[k] if k >= 0 else None
            if oom is not None and oom.verdict is None and i - oom.header <= OOM_REPORT_LINES:
                oom.verdict = i
                continue
        elif hit.role == "note":
            k = bisect.bisect_right(covers, i) - 1
            if k >= 0 and i <= events[k].end:
                continue
            k = bisect.bisect_right(starts, i)
            nxt = events[k] if k < len(events) else None
            leads = (
                (hit.kind == "list-corruption" and nxt is not None and nxt.kind == "bug"
                 and nxt.start - i <= CUT_LOOKBACK)
                or (hit.kind == "page-dump" and nxt is not None and nxt.kind in ("bug", "warn")
                    and nxt.start - i <= PAGE_DUMP_LOOKAHEAD
                    and _last_dump_before(hits, i, nxt.start))
            )
            if (
                leads
                and nxt is not None
                and nxt.trap
                and not any(_is_marker(hits, j) for j in range(i + 1, nxt.start))
            ):
                nxt.lead = i if nxt.lead is None else min(nxt.lead, i)
                continue
            if (hit.kind == "page-dump" and own and own[-1].kind == "page-dump"
                    and own[-1].header == i - 1 == own[-1].end and hits[i - 1].reason == "mismatch"):
                # The same dump's next line ("page does not match folio", then "page: ..."):
                # one finding, its block grown to it.
                own[-1].end = i
                continue
        else:
            continue
        own.append(_Event(hit.kind, i, function=hit.function, short=True, end=i))
    for ev in own:
        hits[ev.header] = _Hit("event", ev.kind, function=ev.function)
    return own


def _findings(lines: list[_Line]) -> list[Finding]:
    events, hits = _events(lines)
    _bound(events, lines, hits)
    own = _take_in(events, hits)
    if own or any(ev.lead is not None for ev in events):
        # Blocks again, for the notes that are findings of their own and for a BUG that starts
        # at the corruption message it took in; no other block changes, as none held a note.
        events = sorted(events + own, key=lambda ev: ev.header)
        _bound(events, lines, hits)
    findings: list[Finding] = []
    for ev in events:
        block = lines[ev.start : ev.end + 1]
        function = ev.function
        if function is None and ev.needs_pc:
            function = _pc_function(lines, ev.header + 1, ev.end + 1)
        shown = block[:EXCERPT_MAX_LINES]
        if ev.verdict is not None and ev.verdict > ev.end:
            # The OOM report's trace, then the line saying what was killed (or that nothing was).
            shown = [*block[: EXCERPT_MAX_LINES - 1], lines[ev.verdict]]
        excerpt = "\n".join(ln.raw for ln in shown)
        findings.append(
            Finding(
                kind=ev.kind,
                function=function,
                file=ev.file,
                line=ev.line,
                excerpt=excerpt,
            )
        )
    return findings


# --------------------------------------------------------------------------------------------
# HugeTLB
# --------------------------------------------------------------------------------------------

# A HugeTLB line starts at "HugeTLB"/"Hugetlb" ("HugeTLB: ..." in mm/hugetlb.c, "HugeTLB
# registered ..." in 5.x, "HugeTLB unable to create demote interfaces for %s" in
# mm/hugetlb_sysfs.c, "Hugetlb: Unable to add hstate %s" before 5.x) or at a lower-case token
# followed by ":" ("hugetlb: ..." mm/hugetlb.c, "hugetlb_cma: ..." mm/hugetlb_cma.c,
# "hugetlbfs: ..." fs/hugetlbfs, "hugepagesz: ..." old arch setup_hugepagesz()).
_HUGETLB_LINE_RE = re.compile(
    r"(?:HugeTLB|Hugetlb)\b(?![/.])|(?<![\w/.=-])(?:hugetlb\w*|hugepagesz):"
)
# report_hugepages(): "HugeTLB: registered %s page size, pre-allocated %ld pages";
# <= 5.x "HugeTLB registered %s page size, pre-allocated %ld pages" (memfmt "2 MB" before 4.x).
_REGISTERED_RE = re.compile(
    r"^HugeTLB:? registered (?P<size>.+?) page size, pre-allocated (?P<n>\d+) pages?"
)
# report_hugepages() (6.0+): "HugeTLB: %d KiB vmemmap can be freed for a %s page"
_FREEABLE_RE = re.compile(
    r"^HugeTLB: (?P<kib>\d+) KiB vmemmap can be freed for a (?P<size>.+?) page"
)
# hugepagesz_setup()/default_hugepagesz_setup(): "HugeTLB: unsupported hugepagesz=%s",
# "HugeTLB: unsupported default_hugepagesz=%s", and where the CPU has no huge pages at all
# "HugeTLB: hugepages unsupported, ignoring hugepagesz=%s cmdline" (also default_hugepagesz=);
# old x86/riscv setup_hugepagesz(): "hugepagesz: Unsupported page size %lu M".
_UNSUPPORTED_RE = re.compile(
    r"^HugeTLB: (?:unsupported|hugepages unsupported, ignoring) (?:default_)?hugepagesz="
    r"(?P<size>\S+)"
    r"|^hugepagesz: Unsupported page size (?P<old>\d+\s*[KMGkmg]?)"
)
# hugepages_setup(): "HugeTLB: hugepages=%s does not follow a valid hugepagesz, ignoring",
# "HugeTLB: hugepages unsupported, ignoring hugepages=%s cmdline": the hugepages= that went
# with the hugepagesz= refused just before.
_NOT_FOLLOW_RE = re.compile(
    r"^HugeTLB: (?:hugepages=\S* does not follow a valid hugepagesz"
    r"|hugepages unsupported, ignoring hugepages=)"
)
# hugetlb_hstate_alloc_pages_onenode():
#   "HugeTLB: allocating %u of page size %s failed node%d.  Only allocated %lu hugepages."
# hugetlb_hstate_alloc_pages_errcheck() (and older hugetlb_hstate_alloc_pages()):
#   "HugeTLB: allocating %lu of page size %s failed.  Only allocated %lu hugepages."
_ALLOC_FAIL_RE = re.compile(
    r"^HugeTLB: allocating \d+ of page size (?P<size>.+?) failed(?: node ?(?P<node>\d+))?\."
)
# Other wordings of a failed allocation or reservation, e.g. "hugetlb_cma: reservation failed:
# err %d, node %d", "HugeTLB: unable to allocate vma specific lock"; or "allocat..." with
# "failed" anywhere after it (_allocation_failed(): in code, so no ".*" rescans the line).
_ALLOC_OTHER_RE = re.compile(
    r"(?i)\b(?:unable to allocate|failed to allocate|allocation failed|reservation failed)"
)
_ALLOCAT_RE = re.compile(r"(?i)\ballocat\w* ")
_FAILED_RE = re.compile(r"(?i)\bfailed")


def _allocation_failed(text: str) -> bool:
    if _ALLOC_OTHER_RE.search(text):
        return True
    m = _ALLOCAT_RE.search(text)
    return m is not None and _FAILED_RE.search(text, m.end()) is not None

_ANY_SIZE_RE = re.compile(
    r"\bpage size (?P<a>\d+(?:\.\d+)? ?[KMGT]i?B)\b|\bhugepages-(?P<b>\d+kB)\b"
    r"|\bhugepagesz=(?P<c>\S+)"
)
_ANY_NODE_RE = re.compile(r"\bnode ?(?P<node>\d+)\b")


def _hugetlb(lines: list[_Line]) -> HugeTLBReport:
    rep = HugeTLBReport()
    last_unsupported: str | None = None  # label, while the previous HugeTLB line was that
    for ln in lines:
        m = _HUGETLB_LINE_RE.search(ln.msg)
        if not m:
            continue
        text = ln.msg[m.start() :].rstrip()
        rep.lines.append(text)
        previous_unsupported, last_unsupported = last_unsupported, None

        if m := _REGISTERED_RE.match(text):
            rep.registered[_label(m["size"])] = int(m["n"])
        elif m := _FREEABLE_RE.match(text):
            rep.freeable_kib[_label(m["size"])] = int(m["kib"])
        elif m := _UNSUPPORTED_RE.match(text):
            label = _label(m["size"] or m["old"])
            seen = rep.unsupported.get(label)
            rep.unsupported[label] = text if seen is None else seen + "\n" + text
            last_unsupported = label
        elif _NOT_FOLLOW_RE.match(text):
            if previous_unsupported is not None:
                rep.unsupported[previous_unsupported] += "\n" + text
        elif m := _ALLOC_FAIL_RE.match(text):
            node = int(m["node"]) if m["node"] is not None else None
            rep.allocation_failures.append({"line": text, "size": _label(m["size"]), "node": node})
        elif _allocation_failed(text):
            sm = _ANY_SIZE_RE.search(text)
            size = _label(sm["a"] or sm["b"] or sm["c"]) if sm else None
            nm = _ANY_NODE_RE.search(text)
            node = int(nm["node"]) if nm else None
            rep.allocation_failures.append({"line": text, "size": size, "node": node})
    return rep


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def parse(text: str) -> ConsoleReport:
    """Findings in console order and the HugeTLB boot report, from a console log or dmesg."""
    lines = _split(text)
    return ConsoleReport(findings=_findings(lines), hugetlb=_hugetlb(lines))
