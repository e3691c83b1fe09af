"""From what the guest reported and the kernel log showed to statuses and a verdict.

Pure: plain data in, records out. A verdict is guilty until proven innocent: every value the
guest reports is read strictly (absent or malformed fails the scenario, naming the key), every
count is compared with what was asked, every kernel report in the log fails the scenario it
came during, a taint flag that appeared with no report read fails it too, and a scenario
passes only when every check that applies was made and held."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from harness import dmesg, oracle
from harness.guest import GuestOutcome
from harness.kmsg import KernelLog
from harness.plan import Plan
from harness.profiles import ArchProfile, size_label
from harness.protocol import GuestReport, GuestScenario
from harness.results import Finding, Hvo, Scenario, summarize
from harness.structpage import StructPage

# The guest writes this to /dev/kmsg as each scenario starts (guest_scripts/scenarios.sh).
# Greedy, stripped afterwards: a lazy group before `\s*$` is quadratic on a long blank run.
_MARKER = re.compile(r"hvo-harness: scenario (?P<name>(?:boot|runtime) [^\r\n]*)")
_BOOT_SEGMENT = "boot"
_NUMBER = re.compile(r"-?\d+")
# A line the kernel printed (printk.time=1 is on every harness command line).
_KERNEL_LINE = re.compile(r"\[\s*\d+\.\d{6}\]")

# kernel/panic.c taint_flags[]: bit -> (letter, what it means).
TAINT_FLAGS = {
    0: ("P", "proprietary module"), 1: ("F", "module force-loaded"), 2: ("S", "CPU out of spec"),
    3: ("R", "module force-unloaded"), 4: ("M", "machine check"), 5: ("B", "bad page"),
    6: ("U", "user request"), 7: ("D", "kernel died (oops or BUG)"), 8: ("A", "ACPI table overridden"),
    9: ("W", "warning"), 10: ("C", "staging driver"), 11: ("I", "firmware workaround"),
    12: ("O", "out-of-tree module"), 13: ("E", "unsigned module"), 14: ("L", "soft lockup"),
    15: ("K", "live patch"), 16: ("X", "auxiliary"), 17: ("T", "struct randomization"),
    18: ("N", "in-kernel test"), 19: ("J", "fwctl"),
}
# Taints that say which code was loaded, not that something went wrong while it ran.
_PROVENANCE_TAINTS = frozenset({0, 1, 3, 10, 12, 13, 15, 16, 17})


def taint_names(mask: int) -> str:
    """'W (warning), B (bad page)' for the bits of mask."""
    names = [f"{TAINT_FLAGS[bit][0]} ({TAINT_FLAGS[bit][1]})" if bit in TAINT_FLAGS else f"bit {bit}"
             for bit in range(mask.bit_length()) if mask >> bit & 1]
    return ", ".join(names)


def _trouble(mask: int) -> int:
    return mask & ~sum(1 << bit for bit in _PROVENANCE_TAINTS)


@dataclass(frozen=True)
class KernelFacts:
    page_size: int
    # The kernel's own struct page (harness/structpage.py); its size None: not measured.
    struct_page: StructPage
    hvo_built: bool | None  # CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP; None: no config known

    @property
    def struct_page_size(self) -> int | None:
        return self.struct_page.size


@dataclass
class Judgement:
    scenarios: list[Scenario]
    findings: list[Finding]
    hvo: Hvo
    verdict: str
    verdict_reason: str
    hugetlb: dmesg.HugeTLBReport


class Incomplete(Exception):
    """A value the guest should have reported is absent or not what it must be."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _need(data: dict[str, str], key: str, where: str = "") -> int:
    value = data.get(key)
    if value is None or not _NUMBER.fullmatch(value):
        raise Incomplete(f"{where}{key}" if value is None else f"{where}{key}={value!r}")
    return int(value)


def _check_counters(data: dict[str, str], where: str) -> None:
    """The vmemmap counters of one reading: numbers, or 'absent' (the kernel has none)."""
    for key in ("memmap_pages", "memmap_boot_pages"):
        if data.get(key) != "absent":
            _need(data, key, where)


def segment_log(text: str) -> tuple[dict[str, str], list[str]]:
    """Kernel log text split at the guest's scenario markers: 'boot' is all before the first.
    Also the segment keys in the order their markers came."""
    segments: dict[str, list[str]] = {_BOOT_SEGMENT: []}
    order: list[str] = []
    current = _BOOT_SEGMENT
    for line in text.splitlines():
        if "hvo-harness: scenario" in line and (match := _MARKER.search(line)):
            current = _segment_key(match["name"].split())
            if current not in segments:
                order.append(current)
            segments.setdefault(current, [])
        segments[current].append(line)
    return {name: "\n".join(lines) for name, lines in segments.items()}, order


def _segment_key(words: list[str]) -> str:
    pairs = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    return f"{words[0]}:{pairs.get('size_kb')}:{pairs.get('node')}:{pairs.get('sysctl')}"


def _scenario_segment(guest: GuestScenario) -> str:
    return f"{guest.mode}:{guest.size_kb}:{guest.node}:{guest.sysctl}"


def judge(
    profile: ArchProfile,
    plan: Plan,
    facts: KernelFacts,
    log: KernelLog,
    guest: GuestReport,
    outcome: GuestOutcome,
) -> Judgement:
    full = dmesg.parse(log.text)
    segments, _ = segment_log(log.text)
    by_segment = {name: dmesg.parse(text).findings for name, text in segments.items()}
    hugetlb = full.hugetlb
    hvo = hvo_state(plan, facts, guest, hugetlb)
    contradiction = config_contradiction(facts, guest, hugetlb)
    supported = set(profile.huge_sizes_by_page_size.get(facts.page_size, ()))

    scenarios: list[Scenario] = []
    seen: set[tuple[str, int, int, str | None]] = set()
    # A scenario whose marker is not in the log cannot be told apart from the one before it:
    # both answer for what the log shows in the segment they share.
    current = _BOOT_SEGMENT
    sharers: dict[str, list[str]] = {}
    assigned: list[tuple[GuestScenario, str, bool]] = []
    for report in guest.scenarios:
        seen.add(report.key)
        unmarked = False
        if report.data.get("sysfs") != "absent":  # a size the kernel lacks is never marked
            own = _scenario_segment(report)
            unmarked = own not in segments
            current = current if unmarked else own
        assigned.append((report, current, unmarked))
        sharers.setdefault(current, []).append(report.label)
    env_taint = guest.env.get("tainted")
    for report, segment, unmarked in assigned:
        findings = list(by_segment.get(segment, []))
        if report.mode == "boot" and segment != _BOOT_SEGMENT:
            # Boot-time pages were allocated (and optimized) while the kernel booted.
            findings = by_segment.get(_BOOT_SEGMENT, []) + findings
        shared = [name for name in sharers[segment] if name != report.label] if unmarked else []
        scenarios.append(_not_ok_fails(report, _judge_scenario(report, plan, facts, hvo, hugetlb,
                                                               supported, findings, shared, env_taint,
                                                               contradiction)))
    missing = [key for key in planned_keys(plan, guest) if key not in seen]
    nodes = guest.env.get("nodes")
    for mode, size_kb, node, sysctl in missing:
        if guest.done and nodes is not None and str(node) not in nodes.split(","):
            why = (f"the guest kernel has NUMA nodes {nodes or 'none'}, the plan {plan.nodes} "
                   f"(QEMU was given {plan.nodes})")
        elif guest.done:
            why = "the guest finished without reporting it"
        else:
            why = f"the guest stopped first ({outcome.reason})"
        scenarios.append(
            Scenario(
                size=size_label(size_kb * 1024), mode=mode,  # type: ignore[arg-type]
                node=node, hvo=_scenario_hvo(plan.hvo, mode, sysctl),  # type: ignore[arg-type]
                requested=_requested(plan, mode, size_kb), allocated=0, status="fail",
                reason=f"never ran: {why}", boot_hvo=plan.hvo,
                hvo_via="cmdline" if mode == "boot" or sysctl in (None, "absent") else "sysctl",
            )
        )
    holes = log.holes()
    if holes is not None:
        # Nothing passes on a log with holes: a report may be in them. (A failure stands.)
        for judged in scenarios:
            if judged.status == "pass":
                judged.status, judged.reason = "skip", f"{holes}: a kernel report for it cannot be ruled out"
    printed = _KERNEL_LINE.search(log.text) is not None
    verdict, reason = _verdict(outcome, guest, full.findings, scenarios, len(planned_keys(plan, guest)),
                               plan.nodes, printed)
    if holes is not None and verdict == "pass":
        verdict, reason = "error", f"{holes}: a kernel report there cannot be ruled out"
    if contradiction is not None and verdict == "pass":
        # Bad input, not a kernel failure; a failure found without the config stands.
        verdict, reason = "error", contradiction
    return Judgement(scenarios, full.findings, hvo, verdict, reason, hugetlb)


def planned_keys(plan: Plan, guest: GuestReport) -> list[tuple[str, int, int, str | None]]:
    """The scenarios the plan asks for: every size on every node QEMU was given, whatever
    the guest kernel saw (a kernel that sees fewer nodes fails the rest, it does not skip)."""
    keys: list[tuple[str, int, int, str | None]] = []
    nodes = range(plan.nodes)
    for size in plan.sizes:
        for node in nodes:
            keys.append(("boot", size // 1024, node, None))
    passes: list[str | None] = [str(v) for v in plan.sysctl_passes]
    if guest.env.get("sysctl") == "absent":
        passes = ["absent"]
    for value in passes:
        for size in plan.sizes:
            for node in nodes:
                keys.append(("runtime", size // 1024, node, value))
    return keys


def _requested(plan: Plan, mode: str, size_kb: int) -> int:
    table = plan.boot_pages if mode == "boot" else plan.runtime_pages
    return table.get(size_kb * 1024, 0)


def _scenario_hvo(boot_hvo: str, mode: str, sysctl: str | None) -> str:
    if mode == "boot" or sysctl in (None, "absent"):
        return boot_hvo
    return "on" if sysctl == "1" else "off"


def hvo_state(plan: Plan, facts: KernelFacts, guest: GuestReport, hugetlb: dmesg.HugeTLBReport) -> Hvo:
    if plan.hvo == "off":
        return Hvo("off", "off", "hugetlb_free_vmemmap=off on the command line")
    rules = [
        oracle.expected_freeable(size, facts.page_size, facts.struct_page, facts.hvo_built)
        for size in plan.sizes
    ]
    rule_reasons = sorted({r.reason for r in rules if r.reason})
    sysctl = guest.env.get("sysctl")
    claims = dict(hugetlb.freeable_kib)
    listed = ", ".join(f"{kib} KiB for {label}" for label, kib in claims.items())
    if sysctl == "absent":
        if facts.hvo_built:
            why = _built_but_absent(facts.struct_page, listed or "nothing")
        else:
            why = "; ".join(rule_reasons) or "CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP is not set"
        return Hvo("on", "inactive", f"no /proc/sys/vm/hugetlb_optimize_vmemmap: {why}")
    if claims and not any(claims.values()):
        why = "; ".join(rule_reasons) or "the rules give savings, the kernel claims none"
        return Hvo("on", "inactive", f"the kernel claims {listed}: {why}")
    if sysctl == "0":
        return Hvo("on", "inactive", "hugetlb_optimize_vmemmap is 0 after boot")
    if sysctl != "1":
        return Hvo("on", "inactive", f"the guest reported sysctl={sysctl!r} (see the verdict)")
    said = f"the kernel claims {listed}" if claims else "the kernel printed no savings line"
    return Hvo("on", "active", f"sysctl hugetlb_optimize_vmemmap=1; {said}")


def config_contradiction(facts: KernelFacts, guest: GuestReport, hugetlb: dmesg.HugeTLBReport) -> str | None:
    """Why the config the facts came from cannot be this kernel's, or None.

    Only a kernel built with CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP registers the sysctl
    (mm/hugetlb_vmemmap.c) or claims a saving (hugetlb_vmemmap_optimizable_size() is 0
    without it); a config lacking the option yet seen beside either was read wrong or belongs
    to another build, and HVO's rules from it would fail the kernel for the harness's mistake."""
    if facts.hvo_built is not False:
        return None
    seen = []
    if guest.env.get("sysctl") not in (None, "absent"):
        seen.append("registered /proc/sys/vm/hugetlb_optimize_vmemmap")
    claims = ", ".join(f"{kib} KiB for {label}" for label, kib in hugetlb.freeable_kib.items() if kib)
    if claims:
        seen.append(f"claims {claims} of vmemmap can be freed")
    if not seen:
        return None
    return ("the kernel config read for this kernel has no CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP=y, "
            f"yet the kernel {' and '.join(seen)}: that config is not this kernel's; "
            "give the kernel's own (--config for a --kernel PATH)")


def _built_but_absent(struct_page: StructPage, listed: str) -> str:
    """Why a kernel with CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP=y registers no sysctl: built in,
    mm/hugetlb_vmemmap.h frees nothing only when sizeof(struct page) is not a power of two.
    The size is the kernel's own, so the reason says where it was read and what is past the
    power of two below it; unmeasured, it says so rather than assume."""
    claims = f"CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP=y, the kernel claims {listed} and registers no sysctl"
    if struct_page.size is None:
        return (f"{claims}; built in, mm/hugetlb_vmemmap.h gives 0 only when sizeof(struct page) "
                f"is not a power of two, and here it was not measured: {struct_page.why}")
    if not oracle.is_power_of_two(struct_page.size):
        return f"{struct_page.not_power_of_two()} ({claims})"
    return (f"{claims}, though {struct_page.measured} is a power of two: HVO's rules give "
            "savings here, the kernel gives none")


def _not_ok_fails(report: GuestScenario, scenario: Scenario) -> Scenario:
    """A step the guest itself saw fail ("not ok") fails the scenario whatever else holds: no
    skip path (a size the kernel lacks, HVO inactive, nothing to measure) may hide it, as none
    may pass it."""
    if report.ok is False and scenario.status != "fail":
        scenario.status = "fail"
        scenario.reason = f"the guest reported not ok ({report.directive or 'no reason given'})"
    return scenario


def _judge_scenario(
    report: GuestScenario,
    plan: Plan,
    facts: KernelFacts,
    hvo: Hvo,
    hugetlb: dmesg.HugeTLBReport,
    supported: set[int],
    findings: list[Finding],
    shared_with: list[str],
    env_taint: str | None,
    contradiction: str | None = None,
) -> Scenario:
    size = report.size_kb * 1024
    label = size_label(size)
    mode = report.mode
    scenario_hvo = _scenario_hvo(plan.hvo, mode, report.sysctl)
    via = "cmdline" if mode == "boot" or report.sysctl in (None, "absent") else "sysctl"
    data = report.data
    requested = _requested(plan, mode, report.size_kb)
    scenario = Scenario(
        size=label, mode=mode,  # type: ignore[arg-type]
        node=report.node, hvo=scenario_hvo,  # type: ignore[arg-type]
        requested=requested, allocated=0, status="pass", reason="",
        boot_hvo=plan.hvo, hvo_via=via,
        checks={"guest": data, "phases": report.phases},
    )

    def fail(reason: str) -> Scenario:
        scenario.status, scenario.reason = "fail", reason
        return scenario

    if findings:
        where = (" (its marker is missing from the kernel log, so it answers for the segment it "
                 f"shares with {', '.join(shared_with[:3])})" if shared_with else "")
        return fail("kernel complained: " + summarize(findings) + where)
    if report.ok is None:
        # Without its KTAP result line nothing the guest said of it is known to be whole.
        return fail("the guest started this scenario but did not finish it")
    if data.get("sysfs") == "absent":
        refusal = _refusal(report, label, hugetlb)
        if size in supported:
            return fail(f"the kernel has no {label} pages, which the arch can have with "
                        f"{facts.page_size // 1024}K pages: {refusal}")
        scenario.status, scenario.reason = "skip", f"{label} not supported here: {refusal}"
        return scenario
    try:
        return _judge_allocation(report, scenario, plan, facts, hvo, hugetlb, fail, env_taint,
                                 contradiction)
    except Incomplete as missing:
        return fail(f"guest report incomplete: {missing.key}")


def _judge_allocation(
    report: GuestScenario,
    scenario: Scenario,
    plan: Plan,
    facts: KernelFacts,
    hvo: Hvo,
    hugetlb: dmesg.HugeTLBReport,
    fail: Callable[[str], Scenario],
    env_taint: str | None,
    contradiction: str | None,
) -> Scenario:
    """The checks of a scenario that ran: every value read strictly (Incomplete otherwise)."""
    data, mode, label = report.data, report.mode, scenario.size
    size = report.size_kb * 1024
    before = report.phases.get("before", {})
    after = report.phases.get("after", {})
    released = report.phases.get("released", {})
    requested = scenario.requested

    # Taint: a flag that appeared during the scenario is a report the log did not show.
    taint_before = _need(data if mode == "boot" else before, "tainted_before",
                         "" if mode == "boot" else "before.")
    taint_after = _need(released, "tainted_after", "released.")
    if mode == "boot" and env_taint is not None and _NUMBER.fullmatch(env_taint):
        # Boot-time pages share the boot's history: a taint from before the first scenario.
        new = _trouble(int(env_taint))
        if new:
            return fail(f"the kernel was tainted {taint_names(new)} before the scenarios, and no "
                        "report of it was read in the kernel log")
    new_taint = _trouble(taint_after & ~taint_before)
    if new_taint:
        return fail(f"the kernel was tainted {taint_names(new_taint)} during this scenario, and no "
                    "report of it was read in the kernel log")

    # Allocation.
    if mode == "boot":
        allocated = _need(data, "allocated")
        free = _need(data, "free")
    else:
        if report.sysctl not in (None, "absent"):
            set_rc = before.get("sysctl_rc")
            now = before.get("sysctl_now")
            if set_rc != "0" or now != report.sysctl:
                return fail(f"writing {report.sysctl} to /proc/sys/vm/hugetlb_optimize_vmemmap failed "
                            f"(rc {set_rc}); it reads {now}")
        nr_before = _need(before, "nr", "before.")
        allocated = _need(after, "allocated", "after.")
        nr_after = _need(after, "nr", "after.")
        if nr_after - nr_before != allocated:
            raise Incomplete(f"after.allocated={allocated} (nr went {nr_before} -> {nr_after})")
        free = allocated
    scenario.allocated = allocated
    if allocated < requested:
        failures = [f["line"] for f in hugetlb.allocation_failures if f.get("size") == label]
        detail = f" ({failures[0]})" if failures else ""
        return fail(f"allocated {allocated} of {requested} {label} pages on node {report.node}{detail}")
    if mode == "runtime" and _need(after, "write_rc", "after.") != 0:
        return fail(f"writing nr_hugepages failed (rc {after.get('write_rc')})")
    if mode == "boot" and free != allocated:
        return fail(f"{allocated - free} of the {allocated} boot-time {label} pages were not free "
                    "when the scenario started: they cannot all be touched")

    # Touch and kpageflags: every allocated page mapped, written, read back, flags right.
    if allocated > 0:
        if _need(data, "touch_rc") != 0:
            touch = {k: v for k, v in data.items() if k != "touch_rc"}
            bad = [f"{k}={v}" for k, v in touch.items()
                   if k in ("readback_errors", "pfn_absent", "head_flags_bad", "tail_flags_bad",
                            "next_page_bad", "wrong_node", "mmap_errno", "mempolicy_errno")
                   and v not in ("0", "")]
            return fail("touching the pages failed: " + (" ".join(bad) or str(touch)))
        mapped, touched = _need(data, "mapped"), _need(data, "touched")
        if mapped != allocated or touched != allocated:
            return fail(f"the helper mapped {mapped} and touched {touched} of the {allocated} pages")
        for key in ("readback_errors", "pfn_absent", "head_flags_bad", "tail_flags_bad",
                    "next_page_bad", "wrong_node"):
            if _need(data, key) != 0:
                return fail(f"touching the pages found {key}={data[key]}")
        tails = _need(data, "tails_checked")
        want_tails = allocated * (size // facts.page_size - 1)
        if tails != want_tails:
            return fail(f"the helper checked {tails} tail pages' flags, {want_tails} make up "
                        f"{allocated} {label} pages")

    # Release: every page given back, none left behind as surplus.
    release_rc = _need(released, "release_rc", "released.")
    if release_rc != 0:
        return fail(f"releasing the pages failed (rc {release_rc})")
    nr_left = _need(released, "nr", "released.")
    surplus = _need(released, "surplus", "released.")
    target = 0 if mode == "boot" else _need(before, "nr", "before.")
    if nr_left != target or surplus != 0:
        return fail(f"releasing left nr_hugepages at {nr_left} (asked {target}) with {surplus} "
                    "surplus pages: pages still in use were not freed")

    # vmemmap savings: expected, claimed, measured.
    rule = oracle.expected_freeable(size, facts.page_size, facts.struct_page, facts.hvo_built)
    scenario_hvo = scenario.hvo
    expected = rule.kib_per_page if scenario_hvo == "on" else 0
    claimed = hugetlb.freeable_kib.get(label)
    vm = scenario.vmemmap
    vm.expected_kib_per_page = expected
    vm.claimed_kib_per_page = claimed
    _check_counters(before, "before.")
    _check_counters(released, "released.")
    if mode == "runtime":
        _check_counters(after, "after.")
        vm.measured_kib_per_page = oracle.kib_per_page(before, after, allocated, facts.page_size)
        restored = oracle.kib_per_page(released, after, allocated, facts.page_size)
        vm.measured_by = "nr_memmap_pages + nr_memmap_boot_pages, on allocation"
        vm.memfree_kib_per_page = oracle.memfree_kib_per_page(before, after, allocated, size // 1024)
    else:
        restored = oracle.kib_per_page(released, before, allocated, facts.page_size)
        vm.measured_kib_per_page = restored
        vm.measured_by = "nr_memmap_pages + nr_memmap_boot_pages, restored on release"
    vm.restored_kib_per_page = restored

    if scenario_hvo == "on" and contradiction is not None:
        # The rules' number would come from a config that is not this kernel's.
        scenario.status = "skip"
        scenario.reason = f"vmemmap savings not judged: {contradiction}"
        return scenario
    if scenario_hvo == "on" and hvo.state == "inactive" and not claimed:
        # Asked for HVO, the kernel cannot do it: never a pass; the reason says why.
        vm.expected_kib_per_page = 0
        scenario.status = "skip"
        scenario.reason = f"HVO inactive: {hvo.reason}"
        return scenario
    if (scenario_hvo == "on" and claimed is not None and rule.kib_per_page is not None
            and claimed != rule.kib_per_page):
        return fail(f"the kernel claims {claimed} KiB per {label} page, HVO's rules give "
                    f"{rule.kib_per_page} KiB ({facts.page_size}-byte pages, "
                    f"{facts.struct_page.measured})")
    measured = vm.measured_kib_per_page
    if measured is None:
        # Not a pass: nothing says the vmemmap went where it should.
        scenario.status = "skip"
        scenario.reason = (f"{allocated} pages touched, flags ok, but vmemmap savings not measurable: "
                           "the kernel has no nr_memmap_pages/nr_memmap_boot_pages in /proc/vmstat")
        return scenario
    if expected is None:
        # HVO on, struct page not measured: no expectation to pass against. What needs no
        # size still holds or fails: the kernel's claim against the measurement, and the
        # release giving back what the allocation freed.
        if claimed is not None and measured != claimed:
            return fail(f"measured {measured:g} KiB of vmemmap freed per {label} page, the kernel "
                        f"claims {claimed} ({vm.measured_by})")
        if restored is not None and restored != measured:
            return fail(f"released pages got {restored:g} KiB of vmemmap back each, allocating "
                        f"them freed {measured:g}")
        said = f"the kernel claims {claimed} = measured" if claimed is not None else "measured"
        scenario.status = "skip"
        scenario.reason = (f"{allocated} pages touched and read back, head/tail flags ok; vmemmap "
                           f"{said} {measured:g} KiB per page, but no savings check: {rule.reason}")
        return scenario
    if measured != expected:
        return fail(f"measured {measured:g} KiB of vmemmap freed per {label} page, expected "
                    f"{expected} ({vm.measured_by})")
    if restored is not None and restored != expected:
        return fail(f"released pages got {restored:g} KiB of vmemmap back each, expected {expected}")
    claim_text = f"claimed {claimed}, " if claimed is not None and scenario_hvo == "on" else ""
    scenario.reason = (f"{allocated} pages touched and read back, head/tail flags ok; vmemmap "
                       f"{claim_text}expected {expected} = measured {measured:g} KiB per page")
    return scenario


def _refusal(report: GuestScenario, label: str, hugetlb: dmesg.HugeTLBReport) -> str:
    """The kernel's own words for refusing a size."""
    parts = []
    if label in hugetlb.unsupported:
        parts.append(f"\"{hugetlb.unsupported[label]}\"")
    errno = report.data.get("mmap_errno")
    if errno:
        parts.append(f"mmap(MAP_HUGETLB|MAP_HUGE_{label}B) failed with {errno}")
    parts.append(f"no hugepages-{report.size_kb}kB in sysfs")
    return "; ".join(parts)


# How QEMU ended, when the test bed rather than the kernel is to blame: never a kernel verdict.
_TEST_BED_ENDS = ("interrupted", "signalled", "log-error", "kvm-stopped")


def _verdict(
    outcome: GuestOutcome, guest: GuestReport, findings: list[Finding], scenarios: list[Scenario],
    planned: int,
    plan_nodes: int,
    printed: bool = True,
) -> tuple[str, str]:
    if outcome.ended in _TEST_BED_ENDS:
        return "error", outcome.reason
    if outcome.ended == "exited" and outcome.exit_status not in (0, None) and not findings:
        # QEMU itself gave up (a bad option, a missing file, an emulator error): its status
        # says so; a guest that resets or powers off makes QEMU exit 0 under -no-reboot.
        return "error", outcome.reason
    if findings:
        return "fail", f"{len(findings)} kernel finding(s): {summarize(findings)}"
    if outcome.ended == "timeout" and guest.done:
        return "fail", f"the guest reported all its scenarios, then hung: {outcome.reason}"
    if outcome.ended == "exited" and not printed:
        return "fail", ("the kernel died before its first line: " + outcome.reason
                        + " (a reset with -no-reboot, e.g. a triple fault, ends QEMU like this)")
    if outcome.ended != "done":
        return "fail", outcome.reason
    if not guest.done:
        return "fail", "the guest did not report all its scenarios (results channel incomplete)"
    nodes = guest.env.get("nodes", "")
    if nodes != ",".join(str(n) for n in range(plan_nodes)):
        return "fail", f"the guest kernel sees NUMA nodes {nodes or 'none'}; QEMU gave it {plan_nodes}"
    if guest.planned is None:
        return "fail", "the guest's report has no KTAP plan line (1..N)"
    if guest.results != guest.planned:
        return "fail", f"the guest reported {guest.results} KTAP results for a plan of {guest.planned}"
    if guest.planned != planned:
        return "fail", f"the guest planned {guest.planned} scenarios, the harness {planned}"
    return scenario_verdict(scenarios)


# The verdict's reason when only scenarios failed: every check of the boot before them held.
_SCENARIOS_FAILED = " scenario(s) failed, first: "


def scenario_verdict(scenarios: list[Scenario]) -> tuple[str, str]:
    """The verdict the scenarios give once every check of the boot as a whole has held."""
    failed = [s for s in scenarios if s.status == "fail"]
    if failed:
        return "fail", f"{len(failed)}{_SCENARIOS_FAILED}{failed[0].name}: {failed[0].reason}"
    return "pass", "all scenarios passed or were skipped with a reason"


def rejudged(verdict: str, reason: str, scenarios: list[Scenario],
             findings: list[Finding]) -> tuple[str, str]:
    """VERDICT after a target took back scenario failures that were not the kernel's: a boot
    that failed on its scenarios alone gets their verdict again; any other stands."""
    if verdict == "fail" and not findings and _SCENARIOS_FAILED in reason:
        return scenario_verdict(scenarios)
    return verdict, reason
