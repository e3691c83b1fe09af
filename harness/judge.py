"""From what the guest reported and the console showed to statuses and a verdict.

Pure: plain data in, records out. Every status carries its reason; nothing passes unless
every check that applies was made and held (a number the kernel cannot give is said so)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness import dmesg, oracle
from harness.guest import GuestOutcome
from harness.plan import Plan
from harness.profiles import ArchProfile, size_label
from harness.protocol import GuestReport, GuestScenario
from harness.results import Finding, Hvo, Scenario, summarize

# The guest writes this to /dev/kmsg as each scenario starts (guest_scripts/scenarios.sh).
_MARKER = re.compile(r"hvo-harness: scenario (?P<name>(?:boot|runtime) [^\r\n]*?)\s*$")
_BOOT_SEGMENT = "boot"


@dataclass(frozen=True)
class KernelFacts:
    page_size: int
    struct_page_size: int
    hvo_built: bool | None  # CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP; None: no config known


@dataclass
class Judgement:
    scenarios: list[Scenario]
    findings: list[Finding]
    hvo: Hvo
    verdict: str
    verdict_reason: str
    hugetlb: dmesg.HugeTLBReport


def segment_console(text: str) -> dict[str, str]:
    """Console text split at the guest's scenario markers: 'boot' is all before the first."""
    segments: dict[str, list[str]] = {_BOOT_SEGMENT: []}
    current = _BOOT_SEGMENT
    for line in text.splitlines():
        if match := _MARKER.search(line):
            current = _segment_key(match["name"].split())
            segments.setdefault(current, [])
        segments[current].append(line)
    return {name: "\n".join(lines) for name, lines in segments.items()}


def _segment_key(words: list[str]) -> str:
    pairs = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    return f"{words[0]}:{pairs.get('size_kb')}:{pairs.get('node')}:{pairs.get('sysctl')}"


def _scenario_segment(guest: GuestScenario) -> str:
    return f"{guest.mode}:{guest.size_kb}:{guest.node}:{guest.sysctl}"


def judge(
    profile: ArchProfile,
    plan: Plan,
    facts: KernelFacts,
    console: str,
    guest: GuestReport,
    outcome: GuestOutcome,
) -> Judgement:
    full = dmesg.parse(console)
    by_segment = {
        name: dmesg.parse(text).findings for name, text in segment_console(console).items()
    }
    hugetlb = full.hugetlb
    hvo = hvo_state(plan, facts, guest, hugetlb)
    supported = set(profile.huge_sizes_by_page_size.get(facts.page_size, ()))

    scenarios: list[Scenario] = []
    seen: set[tuple[str, int, int, str | None]] = set()
    for report in guest.scenarios:
        seen.add(report.key)
        findings = by_segment.get(_scenario_segment(report), [])
        if report.mode == "boot":
            findings = by_segment.get(_BOOT_SEGMENT, []) + findings
        scenarios.append(
            _judge_scenario(report, plan, facts, hvo, hugetlb, supported, findings)
        )
    missing = [key for key in _planned_keys(plan, guest) if key not in seen]
    for mode, size_kb, node, sysctl in missing:
        scenarios.append(
            Scenario(
                size=size_label(size_kb * 1024), mode=mode, node=node,  # type: ignore[arg-type]
                hvo=_scenario_hvo(plan.hvo, mode, sysctl), requested=_requested(plan, mode, size_kb),
                allocated=0, status="fail",
                reason=f"never ran: the guest stopped first ({outcome.reason})",
                boot_hvo=plan.hvo, hvo_via="cmdline" if mode == "boot" or sysctl is None else "sysctl",
            )
        )
    verdict, reason = _verdict(outcome, guest, full.findings, scenarios)
    return Judgement(scenarios, full.findings, hvo, verdict, reason, hugetlb)


def _planned_keys(plan: Plan, guest: GuestReport) -> list[tuple[str, int, int, str | None]]:
    """The scenarios the plan asks for, as far as they can be known without the guest."""
    keys: list[tuple[str, int, int, str | None]] = []
    # The nodes the guest kernel really has (a kernel may see fewer than QEMU was given).
    reported = guest.env.get("nodes", "")
    nodes = [int(n) for n in reported.split(",") if n.isdigit()] or list(range(plan.nodes))
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
        oracle.expected_freeable(size, facts.page_size, facts.struct_page_size, facts.hvo_built)
        for size in plan.sizes
    ]
    rule_reasons = sorted({r.reason for r in rules if r.reason})
    sysctl = guest.env.get("sysctl")
    claims = {label: kib for label, kib in hugetlb.freeable_kib.items()}
    if sysctl == "absent":
        if facts.hvo_built:
            listed = ", ".join(f"{kib} KiB for {label}" for label, kib in claims.items())
            why = (f"CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP=y, yet the kernel claims {listed or 'nothing'}"
                   " and registers no sysctl: with the option built in, mm/hugetlb_vmemmap.h gives 0"
                   " only when sizeof(struct page) is not a power of two")
        else:
            why = "; ".join(rule_reasons) or "CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP is not set"
        return Hvo("on", "inactive", f"no /proc/sys/vm/hugetlb_optimize_vmemmap: {why}")
    if claims and not any(claims.values()):
        why = "; ".join(rule_reasons) or "the rules give savings, the kernel claims none"
        listed = ", ".join(f"{kib} KiB for {label}" for label, kib in claims.items())
        return Hvo("on", "inactive", f"the kernel claims {listed}: {why}")
    if sysctl == "0":
        return Hvo("on", "inactive", "hugetlb_optimize_vmemmap is 0 after boot")
    if sysctl is None:
        return Hvo("on", "inactive", "the guest reported nothing (see the verdict)")
    return Hvo("on", "active", "sysctl hugetlb_optimize_vmemmap=1 and savings claimed")


def _int(data: dict[str, str], key: str, default: int = 0) -> int:
    try:
        return int(data.get(key, default))
    except ValueError:
        return default


def _judge_scenario(
    report: GuestScenario,
    plan: Plan,
    facts: KernelFacts,
    hvo: Hvo,
    hugetlb: dmesg.HugeTLBReport,
    supported: set[int],
    findings: list[Finding],
) -> Scenario:
    size = report.size_kb * 1024
    label = size_label(size)
    mode = report.mode
    scenario_hvo = _scenario_hvo(plan.hvo, mode, report.sysctl)
    via = "cmdline" if mode == "boot" or report.sysctl in (None, "absent") else "sysctl"
    data = report.data
    after = report.phases.get("after", {})
    requested = _requested(plan, mode, report.size_kb)
    allocated = _int(data, "allocated") if mode == "boot" else _int(after, "allocated")
    scenario = Scenario(
        size=label, mode=mode,  # type: ignore[arg-type]
        node=report.node, hvo=scenario_hvo,  # type: ignore[arg-type]
        requested=requested, allocated=allocated, status="pass", reason="",
        boot_hvo=plan.hvo, hvo_via=via,
        checks={"guest": data, "phases": report.phases},
    )

    def fail(reason: str) -> Scenario:
        scenario.status, scenario.reason = "fail", reason
        return scenario

    if findings:
        return fail("kernel complained: " + summarize(findings))
    if data.get("sysfs") == "absent":
        refusal = _refusal(report, label, hugetlb)
        if size in supported:
            return fail(f"the kernel has no {label} pages, which the arch can have with "
                        f"{facts.page_size // 1024}K pages: {refusal}")
        scenario.status, scenario.reason = "skip", f"{label} not supported here: {refusal}"
        return scenario
    if report.ok is None:
        return fail("the guest started this scenario but did not finish it")

    # Allocation.
    if allocated < requested:
        failures = [f["line"] for f in hugetlb.allocation_failures if f.get("size") == label]
        detail = f" ({failures[0]})" if failures else ""
        return fail(f"allocated {allocated} of {requested} {label} pages on node {report.node}{detail}")
    if mode == "runtime" and _int(after, "write_rc") != 0:
        return fail(f"writing nr_hugepages failed (rc {after.get('write_rc')})")

    # Touch and kpageflags.
    if "touch_rc" not in data and allocated > 0:
        return fail("the pages were not touched (the helper did not run)")
    if _int(data, "touch_rc") != 0:
        touch = {k: v for k, v in data.items() if k != "touch_rc"}
        bad = [f"{k}={v}" for k, v in touch.items()
               if k in ("readback_errors", "pfn_absent", "head_flags_bad", "tail_flags_bad",
                        "next_page_bad", "wrong_node", "mmap_errno", "mempolicy_errno")
               and v not in ("0", "")]
        return fail("touching the pages failed: " + (" ".join(bad) or str(touch)))

    # vmemmap savings: expected, claimed, measured.
    rule = oracle.expected_freeable(size, facts.page_size, facts.struct_page_size, facts.hvo_built)
    expected = rule.kib_per_page if scenario_hvo == "on" else 0
    claimed = hugetlb.freeable_kib.get(label)
    vm = scenario.vmemmap
    vm.expected_kib_per_page = expected
    vm.claimed_kib_per_page = claimed
    before, released = report.phases.get("before", {}), report.phases.get("released", {})
    if _int(released, "release_rc") != 0:
        return fail(f"releasing the pages failed (rc {released.get('release_rc')})")
    if mode == "runtime":
        vm.measured_kib_per_page = oracle.kib_per_page(before, after, allocated, facts.page_size)
        restored = oracle.kib_per_page(released, after, allocated, facts.page_size)
        vm.measured_by = "nr_memmap_pages + nr_memmap_boot_pages, on allocation"
        vm.memfree_kib_per_page = oracle.memfree_kib_per_page(before, after, allocated, size // 1024)
    else:
        restored = oracle.kib_per_page(released, before, allocated, facts.page_size)
        vm.measured_kib_per_page = restored
        vm.measured_by = "nr_memmap_pages + nr_memmap_boot_pages, restored on release"
    vm.restored_kib_per_page = restored

    if scenario_hvo == "on" and hvo.state == "inactive" and not claimed:
        # Asked for HVO, the kernel cannot do it: never a pass; the reason says why.
        vm.expected_kib_per_page = 0
        scenario.status = "skip"
        scenario.reason = f"HVO inactive: {hvo.reason}"
        return scenario
    if scenario_hvo == "on" and claimed is not None and claimed != rule.kib_per_page:
        return fail(f"the kernel claims {claimed} KiB per {label} page, HVO's rules give "
                    f"{rule.kib_per_page} KiB ({facts.page_size}-byte pages, "
                    f"{facts.struct_page_size}-byte struct page)")
    measured = vm.measured_kib_per_page
    if measured is None:
        scenario.reason = (f"{allocated} pages touched, flags ok; vmemmap not measured: the "
                           "kernel has no nr_memmap_pages/nr_memmap_boot_pages in /proc/vmstat")
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


def _verdict(
    outcome: GuestOutcome, guest: GuestReport, findings: list[Finding], scenarios: list[Scenario]
) -> tuple[str, str]:
    if outcome.ended == "interrupted":
        return "error", outcome.reason
    if outcome.ended == "exited" and not findings and not guest.env:
        return "error", outcome.reason
    if findings:
        return "fail", f"{len(findings)} kernel finding(s): {summarize(findings)}"
    if outcome.ended != "done":
        return "fail", outcome.reason
    if not guest.done:
        return "fail", "the guest did not report all its scenarios (results channel incomplete)"
    failed = [s for s in scenarios if s.status == "fail"]
    if failed:
        return "fail", f"{len(failed)} scenario(s) failed, first: {failed[0].name}: {failed[0].reason}"
    return "pass", "all scenarios passed or were skipped with a reason"
