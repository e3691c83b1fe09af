"""The judge never turns a fault into a PASS: one test per route to a wrong verdict (issue 9).

Inputs are what the harness recorded from real boots (tests/data/README.md), each with one
crafted change that stands for a real fault: a WARN the console log level hid, a value the
guest did not report, a release that left pages behind, a marker that never reached the log.
No QEMU: these run in `make test`'s fast part."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from harness import judge, pipeline
from harness.guest import GuestOutcome
from harness.plan import make_plan
from harness.profiles import get_profile
from harness.results import Run
from harness.structpage import Member, StructPage

DATA = Path(__file__).parent / "data"
RISCV = get_profile("riscv64")
# The recorded loongarch64 boots were booted directly, on one node (before EFI kernels went
# through firmware, on two: qemu.boot_profile); judged with the profile they were booted with.
LOONGARCH = replace(get_profile("loongarch64"), node_mem_mib=(8192,))
# Debian's riscv64 7.2.13 (CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP=y): struct page as pahole reads
# the BTF carved out of its Image (tests/test_structpage.py measures it for real).
RISCV_MEMBERS = (Member("flags", 0, 8), Member("union {struct {...}, callback_head}", 8, 40),
                 Member("union {page_type, _mapcount}", 48, 4), Member("_refcount", 52, 4),
                 Member("memcg_data", 56, 8))
RISCV_FACTS = judge.KernelFacts(4096, StructPage(64, "BTF in vmlinuz", RISCV_MEMBERS), True)
# Debian's loong64 7.2.13: HVO built in, yet 0 KiB freed and no sysctl; struct page is 80 bytes in
# the DWARF of its -dbg vmlinux, `void *virtual` past 64 (tests/test_structpage.py).
LOONGARCH_STRUCT_PAGE = StructPage(80, "DWARF of linux-image-7.2.13+deb14-loong64-dbg 7.2.13-1",
                                   (*RISCV_MEMBERS, Member("virtual", 64, 8)))
LOONGARCH_FACTS = judge.KernelFacts(16384, LOONGARCH_STRUCT_PAGE, True)
DONE = GuestOutcome("done", "guest finished its scenarios", 5.0, 30.0, 0)

# A WARN as the kernel logs it (kernel/panic.c __warn, 7.2 format), at KERN_WARNING.
WARN_LINES = (
    "------------[ cut here ]------------",
    "WARNING: mm/hugetlb.c:1234 at alloc_fresh_hugetlb_folio+0x1c/0x80, CPU#0: sh/1",
    "Call Trace:",
    "[<ffffffff80012345>] alloc_fresh_hugetlb_folio+0x1c/0x80",
    "---[ end trace 0000000000000000 ]---",
)


@dataclass
class Boot:
    """A recorded boot's three channels."""

    console: str
    results: str
    dmesg: str = ""


def recorded_riscv() -> Boot:
    stem = DATA / "riscv64-7.2.13-kmsg-hvo-on"
    return Boot(*(Path(f"{stem}.{ext}").read_text() for ext in ("console.log", "results.ktap", "dmesg.log")))


def judged(boot: Boot, outcome: GuestOutcome = DONE, profile=RISCV, facts=RISCV_FACTS,
           hvo: str = "on") -> judge.Judgement:
    report, _ = pipeline.read_results(boot.results, boot.console)
    log = pipeline.read_kernel_log(boot.dmesg, boot.console)
    return judge.judge(profile, make_plan(profile, facts.page_size, hvo), facts, log, report, outcome)


def scenario(judgement: judge.Judgement, name: str):
    return next(s for s in judgement.scenarios if s.name == name)


def edit_line(text: str, contains: str, old: str, new: str) -> str:
    """Replace old by new in the one line holding `contains` (which must exist)."""
    lines = text.split("\n")
    hits = [i for i, line in enumerate(lines) if contains in line]
    assert len(hits) == 1, (contains, len(hits))
    assert old in lines[hits[0]], (old, lines[hits[0]])
    lines[hits[0]] = lines[hits[0]].replace(old, new)
    return "\n".join(lines)


def insert_records_after(dmesg: str, marker: str, texts: tuple[str, ...], level: int = 4) -> str:
    """Kernel records (as /dev/kmsg streams them) after the record holding `marker`; later
    records are renumbered so the stream has no gap."""
    lines = dmesg.rstrip("\n").split("\n")
    index = next(i for i, line in enumerate(lines) if marker in line)
    seq, usec = (int(x) for x in lines[index].split(",")[1:3])
    new = [f"{level},{seq + 1 + k},{usec + 1 + k},-;{text}" for k, text in enumerate(texts)]
    rest = []
    for line in lines[index + 1:]:
        prefix, old_seq, tail = line.split(",", 2)
        rest.append(f"{prefix},{int(old_seq) + len(texts)},{tail}")
    return "\n".join([*lines[: index + 1], *new, *rest]) + "\n"


RUNTIME_2M_NODE1 = "runtime size_kb=2048 node=1 sysctl=1"
RUNTIME_2M_NODE1_NAME = "2M/runtime/node1/hvo-on-sysctl"


def test_the_recorded_boot_passes() -> None:
    """The baseline every crafted fault below departs from."""
    judgement = judged(recorded_riscv())
    assert judgement.verdict == "pass", judgement.verdict_reason
    assert not judgement.findings


# Route 1: the pytest `boot` item passed every verdict but error or findings.


def test_pytest_boot_item_fails_on_a_verdict_without_findings(pytester: pytest.Pytester) -> None:
    # Every scenario reported, then the guest hung: verdict fail, no finding.
    hung = judged(recorded_riscv(), GuestOutcome("timeout", "no end after 300 s", 5.0, 300.0, None))
    assert hung.verdict == "fail" and not hung.findings
    assert "then hung" in hung.verdict_reason
    run = Run(arch="riscv64", kernel=None, accel=None, cmdline="", boot_seconds=5.0,  # type: ignore[arg-type]
              verdict="fail", hvo=hung.hvo, findings=[], scenarios=hung.scenarios,
              console_log="/nonexistent/riscv64.console.log", verdict_reason=hung.verdict_reason)
    pytester.makeconftest(f"""
import pickle
from harness import pytest_plugin

def pytest_collection_finish(session):
    key = pytest_plugin.BootKey("riscv64", pytest_plugin.KernelSpec(), "on")
    pytest_plugin.boots_of(session.config)._runs[key] = pickle.loads({__import__("pickle").dumps(run)!r})
""")
    result = pytester.runpytest("--hvo-arch", "riscv64", "--hvo-setting", "on", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=sum(s.status == "pass" for s in hung.scenarios),
                           skipped=sum(s.status == "skip" for s in hung.scenarios))
    result.stdout.fnmatch_lines(["*boot fail: the guest reported all its scenarios, then hung*"])


# Route 2: the console obeys the log level; the /dev/kmsg stream does not.


def hidden_warn(boot: Boot) -> Boot:
    """A WARN during one run-time scenario that the console (loglevel=1) did not show."""
    return replace(boot, dmesg=insert_records_after(boot.dmesg, f"scenario {RUNTIME_2M_NODE1}", WARN_LINES))


def test_a_warn_the_console_hid_fails_its_scenario() -> None:
    judgement = judged(hidden_warn(recorded_riscv()))
    assert judgement.verdict == "fail"
    assert [f.kind for f in judgement.findings] == ["warn"]
    assert judgement.findings[0].function == "alloc_fresh_hugetlb_folio"
    failed = [s.name for s in judgement.scenarios if s.status == "fail"]
    assert failed == [RUNTIME_2M_NODE1_NAME], failed


def test_a_warn_with_every_marker_hidden_from_the_console() -> None:
    boot = hidden_warn(recorded_riscv())
    # loglevel=1: the markers (KERN_WARNING from /dev/kmsg) are not on the console either.
    boot.console = "\n".join(ln for ln in boot.console.split("\n") if "hvo-harness: scenario" not in ln)
    assert failed_names(judged(boot)) == [RUNTIME_2M_NODE1_NAME]


def failed_names(judgement: judge.Judgement) -> list[str]:
    return [s.name for s in judgement.scenarios if s.status == "fail"]


def test_a_taint_without_a_report_fails_its_scenario() -> None:
    boot = recorded_riscv()
    boot.results = edit_line(boot.results, f"{RUNTIME_2M_NODE1} released", "tainted_after=0",
                             "tainted_after=512")
    judgement = judged(boot)
    assert failed_names(judgement) == [RUNTIME_2M_NODE1_NAME]
    assert "W (warning)" in scenario(judgement, RUNTIME_2M_NODE1_NAME).reason


def test_a_taint_from_before_the_scenarios_fails_the_boot_time_pages() -> None:
    boot = recorded_riscv()
    boot.results = edit_line(boot.results, "# hvo: env ", "tainted=0", "tainted=32")
    judgement = judged(boot)
    failed = failed_names(judgement)
    assert failed and all("/boot/" in name for name in failed)
    assert "B (bad page)" in scenario(judgement, failed[0]).reason


# Route 3: an unmeasured saving passed.


def test_a_config_that_denies_the_kernel_its_hvo_is_an_error_never_a_kernel_fail() -> None:
    # The kernel registered hugetlb_optimize_vmemmap and claims savings, so HVO is built in;
    # a config without CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP=y is not this kernel's (an SSH read
    # cut short gave one: every HVO scenario failed on "HVO's rules give 0 KiB").
    judgement = judged(recorded_riscv(), facts=replace(RISCV_FACTS, hvo_built=False))
    assert judgement.verdict == "error", judgement.verdict_reason
    assert "CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP" in judgement.verdict_reason
    assert "not this kernel's" in judgement.verdict_reason
    optimized = [s for s in judgement.scenarios if s.hvo == "on" and s.allocated]
    assert optimized and all(s.status == "skip" and "not this kernel's" in s.reason for s in optimized)
    # Without HVO nothing depends on the config: those are judged as ever.
    plain = [s for s in judgement.scenarios if s.hvo == "off" and s.allocated]
    assert plain and all(s.status == "pass" for s in plain)


def test_an_unmeasured_saving_is_not_a_pass() -> None:
    boot = recorded_riscv()
    boot.results = re.sub(r"memmap_pages=\d+ memmap_boot_pages=\d+",
                          "memmap_pages=absent memmap_boot_pages=absent", boot.results)
    judgement = judged(boot)
    assert not [s for s in judgement.scenarios if s.status == "pass"]


def test_a_changed_struct_page_size_changes_the_expectation() -> None:
    """The recorded riscv64 kernel frees 28 KiB per 2M page, what a 64-byte struct page gives.
    Judged as if its struct page were 128 bytes, the rules give 60 KiB: the kernel's claim
    and the measurement then fail against it, so the size in use is the one given."""
    bigger = replace(RISCV_FACTS, struct_page=StructPage(128, "DWARF of vmlinux", RISCV_MEMBERS))
    judgement = judged(recorded_riscv(), facts=bigger)
    on_2m = [s for s in judgement.scenarios if s.size == "2M" and s.hvo == "on"]
    assert on_2m and all(s.status == "fail" and s.vmemmap.expected_kib_per_page == 60 for s in on_2m)
    assert "HVO's rules give 60 KiB (4096-byte pages, sizeof(struct page) = 128 (DWARF of vmlinux))" \
        in on_2m[0].reason
    baseline = [s for s in judged(recorded_riscv()).scenarios if s.size == "2M" and s.hvo == "on"]
    assert all(s.status == "pass" and s.vmemmap.expected_kib_per_page == 28 for s in baseline)


UNMEASURED = StructPage(None, why="no vmlinux beside vmlinuz; no BTF in vmlinuz; what would give it: ...")


def test_an_unmeasured_struct_page_never_passes_a_savings_check() -> None:
    """No size, no expectation: HVO-on savings are skips naming why (never a pass against an
    assumed 64); HVO-off ones still must free nothing, which needs no size."""
    judgement = judged(recorded_riscv(), facts=replace(RISCV_FACTS, struct_page=UNMEASURED))
    on = [s for s in judgement.scenarios if s.hvo == "on" and s.size in ("2M", "1G")]
    off = [s for s in judgement.scenarios if s.hvo == "off" and s.size in ("2M", "1G")]
    assert on and all(s.status == "skip" for s in on), [(s.name, s.status, s.reason) for s in on]
    assert all(s.vmemmap.expected_kib_per_page is None for s in on)
    assert "the kernel claims 28 = measured 28 KiB per page, but no savings check: struct page not " \
           "measured: no vmlinux beside vmlinuz" in next(s for s in on if s.size == "2M").reason
    assert off and all(s.status == "pass" for s in off)
    assert judgement.verdict == "pass"  # skips with a reason, no failure


def test_an_unmeasured_struct_page_still_fails_a_claim_the_counters_contradict() -> None:
    boot = recorded_riscv()
    # The kernel claims 24 KiB per 2M page; the counters measure 28.
    boot.dmesg = boot.dmesg.replace("28 KiB vmemmap can be freed for a 2.00 MiB page",
                                    "24 KiB vmemmap can be freed for a 2.00 MiB page")
    boot.console = boot.console.replace("28 KiB vmemmap can be freed for a 2.00 MiB page",
                                        "24 KiB vmemmap can be freed for a 2.00 MiB page")
    judgement = judged(boot, facts=replace(RISCV_FACTS, struct_page=UNMEASURED))
    failed = [s for s in judgement.scenarios if s.status == "fail"]
    assert failed and all(s.size == "2M" and s.hvo == "on" for s in failed)
    assert "the kernel claims 24" in failed[0].reason


def test_hvo_state_does_not_say_savings_were_claimed_when_none_were() -> None:
    boot = recorded_riscv()
    drop = "vmemmap can be freed"
    boot.dmesg = "\n".join(ln for ln in boot.dmesg.split("\n") if drop not in ln)
    boot.console = "\n".join(ln for ln in boot.console.split("\n") if drop not in ln)
    assert "claimed" not in judged(boot).hvo.reason


# Route 4: missing or garbled guest values counted as success.


@pytest.mark.parametrize(("contains", "old", "new", "key"), [
    ("boot size_kb=2048 node=0 touch_rc", "touch_rc=0 ", "", "touch_rc"),
    (f"{RUNTIME_2M_NODE1} after", "write_rc=0", "write_rc=zero", "write_rc"),
    (f"{RUNTIME_2M_NODE1} released", "release_rc=0", "release_rc=", "release_rc"),
    (f"{RUNTIME_2M_NODE1} released", "nr=0 ", "", "nr"),
])
def test_a_missing_or_garbled_value_fails_naming_it(contains: str, old: str, new: str, key: str) -> None:
    boot = recorded_riscv()
    boot.results = edit_line(boot.results, contains, old, new)
    judgement = judged(boot)
    failed = [s for s in judgement.scenarios if s.status == "fail"]
    assert len(failed) == 1
    assert failed[0].reason.startswith("guest report incomplete:") and key in failed[0].reason


def recorded_loongarch() -> Boot:
    return Boot((DATA / "loongarch64-7.2.13-framed-hvo-on.console.log").read_text(), "")


def test_the_recorded_console_channel_boot_is_judged() -> None:
    judgement = judged(recorded_loongarch(), profile=LOONGARCH, facts=LOONGARCH_FACTS)
    assert judgement.verdict == "pass", judgement.verdict_reason
    assert [s.status for s in judgement.scenarios if s.size == "32M"] == ["skip"] * 2


def test_the_hvo_inactive_reason_is_the_measured_struct_page() -> None:
    """HVO inactive on Debian's loong64 kernel: the reason is the size the kernel's own debug
    info gives, where it was read, and what lies past 64 bytes; another size, another reason."""
    judgement = judged(recorded_loongarch(), profile=LOONGARCH, facts=LOONGARCH_FACTS)
    assert judgement.hvo.state == "inactive"
    assert ("sizeof(struct page) = 80 (DWARF of linux-image-7.2.13+deb14-loong64-dbg 7.2.13-1): not a "
            "power of two; past 64 bytes: virtual (offset 64, 8 bytes), then 8 bytes of padding"
            ) in judgement.hvo.reason
    native = [s for s in judgement.scenarios if s.size == "32M" and s.hvo == "on"]
    assert native and all(s.status == "skip" and "sizeof(struct page) = 80" in s.reason for s in native)
    other_page = StructPage(72, "BTF in vmlinuz", (*RISCV_MEMBERS, Member("_last_cpupid", 64, 4)))
    other = judged(recorded_loongarch(), profile=LOONGARCH,
                   facts=replace(LOONGARCH_FACTS, struct_page=other_page)).hvo.reason
    assert "sizeof(struct page) = 72 (BTF in vmlinuz)" in other
    assert "past 64 bytes: _last_cpupid (offset 64, 4 bytes), then 4 bytes of padding" in other


def test_hvo_inactive_with_an_unmeasured_struct_page_says_so() -> None:
    unknown = StructPage(None, why="no BTF in vmlinuz; what would give it: a -dbg package")
    judgement = judged(recorded_loongarch(), profile=LOONGARCH,
                       facts=replace(LOONGARCH_FACTS, struct_page=unknown))
    assert judgement.hvo.state == "inactive"
    assert "sizeof(struct page)" in judgement.hvo.reason
    assert "not measured: no BTF in vmlinuz; what would give it: a -dbg package" in judgement.hvo.reason
    assert "= 64" not in judgement.hvo.reason and "= 72" not in judgement.hvo.reason


def corrupt_framed(console: str, contains: str, old: str, new: str, copies: int) -> str:
    """Kernel output cut into the first `copies` framed copies of a results line."""
    lines = console.split("\n")
    hits = [i for i, line in enumerate(lines) if contains in line and line.startswith("hvo-result:")]
    assert len(hits) == 2, hits  # the guest sends each line twice
    for i in hits[:copies]:
        lines[i] = lines[i].replace(old, new)
    return "\n".join(lines)


@pytest.mark.parametrize("copies", [1, 2])
def test_kernel_text_inside_a_console_results_line_is_never_read_as_a_value(copies: int) -> None:
    boot = recorded_loongarch()
    # Kernel output cut into a framed results line on the shared console: its CRC fails.
    boot.console = corrupt_framed(boot.console, "boot size_kb=32768 node=0 touch_rc", "touch_rc=0",
                                  "touch_rc=[    2.5] x86/fpu: 0", copies)
    judgement = judged(boot, profile=LOONGARCH, facts=LOONGARCH_FACTS)
    boot_32m = scenario(judgement, "32M/boot/node0/hvo-on-cmdline")
    if copies == 1:
        # The second copy is read instead: the channel's own damage is not a kernel FAIL.
        assert boot_32m.status == "skip" and judgement.verdict == "pass", boot_32m.reason
    else:
        assert boot_32m.status == "fail" and "guest report incomplete" in boot_32m.reason
        assert judgement.verdict == "fail"


def test_a_console_results_line_with_a_forged_value_and_its_own_crc_is_read() -> None:
    """The CRC check is not a blanket rejection: a line whose CRC matches is data."""
    boot = recorded_loongarch()

    def forge(match: re.Match[str]) -> str:
        payload = f"{match[1]} # hvo: boot size_kb=32768 node=0 allocated=1 free=1 mark_rc=0 tainted_before=0"
        return f"hvo-result: {zlib.crc32(payload.encode()):08x} {payload}"

    boot.console = re.sub(r"hvo-result: \w+ (\d+) # hvo: boot size_kb=32768 node=0 allocated=2 .*", forge,
                          boot.console)
    judgement = judged(boot, profile=LOONGARCH, facts=LOONGARCH_FACTS)
    assert "allocated 1 of 2" in scenario(judgement, "32M/boot/node0/hvo-on-cmdline").reason


# Route 5: the release was not verified.


@pytest.mark.parametrize(("contains", "old", "new"), [
    ("boot size_kb=1048576 node=0 released", "nr=0 surplus=0", "nr=1 surplus=0"),
    (f"{RUNTIME_2M_NODE1} released", "surplus=0", "surplus=2"),
])
def test_a_release_that_left_pages_fails(contains: str, old: str, new: str) -> None:
    boot = recorded_riscv()
    boot.results = edit_line(boot.results, contains, old, new)
    failed = [s for s in judged(boot).scenarios if s.status == "fail"]
    assert len(failed) == 1 and "releasing left" in failed[0].reason


# Route 6: boot-time scenarios touched only the free pages but said all were touched.


def test_boot_time_pages_that_were_not_all_free_fail() -> None:
    boot = recorded_riscv()
    boot.results = edit_line(boot.results, "boot size_kb=2048 node=0 allocated", "free=2", "free=1")
    failed = [s for s in judged(boot).scenarios if s.status == "fail"]
    assert [s.name for s in failed] == ["2M/boot/node0/hvo-on-cmdline"]


def test_fewer_pages_touched_than_allocated_fails() -> None:
    boot = recorded_riscv()
    boot.results = edit_line(boot.results, "boot size_kb=2048 node=0 touch_rc", "touched=2", "touched=1")
    failed = [s for s in judged(boot).scenarios if s.status == "fail"]
    assert [s.name for s in failed] == ["2M/boot/node0/hvo-on-cmdline"]
    assert "touched 1 of the 2" in failed[0].reason


# Route 8: attribution, nodes, sysctl.


def test_a_runtime_warn_with_no_marker_at_all_fails_the_runtime_scenario() -> None:
    boot = hidden_warn(recorded_riscv())
    # No marker reached the log (a failed /dev/kmsg write): neither stream nor console has one.
    boot.dmesg = "\n".join(ln for ln in boot.dmesg.split("\n") if "hvo-harness: scenario" not in ln)
    boot.console = "\n".join(ln for ln in boot.console.split("\n") if "hvo-harness: scenario" not in ln)
    judgement = judged(boot)
    assert scenario(judgement, RUNTIME_2M_NODE1_NAME).status == "fail"


def test_a_guest_that_sees_fewer_nodes_fails_the_missing_ones() -> None:
    boot = recorded_riscv()
    boot.results = edit_line(boot.results, "# hvo: env ", "nodes=0,1", "nodes=0")
    boot.results = "\n".join(ln for ln in boot.results.split("\n") if "node=1" not in ln)
    judgement = judged(boot)
    node1 = [s for s in judgement.scenarios if s.node == 1]
    assert node1 and all(s.status == "fail" for s in node1)
    assert "NUMA nodes 0" in node1[0].reason
    assert judgement.verdict == "fail" and "NUMA nodes 0" in judgement.verdict_reason


def test_a_failed_sysctl_write_fails_that_pass() -> None:
    boot = recorded_riscv()
    # echo 0 > hugetlb_optimize_vmemmap failed: the sysctl still reads 1 in that pass.
    boot.results = re.sub(r"(runtime size_kb=\d+ node=\d sysctl=0 before .*)sysctl_now=0 sysctl_rc=0",
                          r"\1sysctl_now=1 sysctl_rc=1", boot.results)
    boot.results = boot.results.replace("sysctl set=0 rc=0 now=0", "sysctl set=0 rc=1 now=1")
    judgement = judged(boot)
    failed = [s for s in judgement.scenarios if s.status == "fail"]
    assert failed and all(s.hvo_via == "sysctl" and s.hvo == "off" for s in failed)
    assert "writing 0 to /proc/sys/vm/hugetlb_optimize_vmemmap failed" in failed[0].reason


# Route 9: QEMU's exit status.


def test_a_kernel_that_resets_before_printing_is_a_fail_not_a_set_up_error() -> None:
    outcome = GuestOutcome("exited", "QEMU exited with status 0 before the guest finished", None, 1.0, 0)
    judgement = judged(Boot("", ""), outcome)
    assert judgement.verdict == "fail"
    assert "before its first line" in judgement.verdict_reason


def test_qemu_refusing_to_start_is_a_set_up_error() -> None:
    outcome = GuestOutcome("exited", "QEMU exited with status 1: qemu-system-riscv64: -foo: invalid option",
                           None, 0.1, 1)
    assert judged(Boot("qemu-system-riscv64: -foo: invalid option\n", ""), outcome).verdict == "error"


# Route 10: KTAP not ok and the plan count.


def test_ktap_not_ok_fails_the_scenario() -> None:
    boot = recorded_riscv()
    boot.results = boot.results.replace("\nok 8 runtime", "\nnot ok 8 runtime")
    failed = [s for s in judged(boot).scenarios if s.status == "fail"]
    assert [s.name for s in failed] == [RUNTIME_2M_NODE1_NAME]


def test_a_ktap_plan_that_does_not_add_up_fails_the_boot() -> None:
    boot = recorded_riscv()
    boot.results = boot.results.replace("\n1..18\n", "\n1..19\n")
    judgement = judged(boot)
    assert judgement.verdict == "fail" and "plan" in judgement.verdict_reason


def test_a_refused_size_whose_result_line_was_cut_is_no_skip() -> None:
    """Results cut after a refused size's first data line: the refusal is half-told."""
    boot = recorded_riscv()
    lines = boot.results.split("\n")
    cut = next(i for i, line in enumerate(lines) if "boot size_kb=16777216 node=0 sysfs=absent" in line)
    boot.results = "\n".join(lines[: cut + 1])
    judgement = judged(boot, GuestOutcome("done", "guest finished its scenarios", 5.0, 30.0, 0))
    refused = scenario(judgement, "16G/boot/node0/hvo-on-cmdline")
    assert refused.status == "fail" and "did not finish" in refused.reason


def test_qemu_giving_up_after_the_guest_started_is_the_test_beds_error() -> None:
    """QEMU's own non-zero exit (an emulator error) mid-run, no kernel report: not the kernel's."""
    boot = recorded_riscv()
    outcome = GuestOutcome("exited", "QEMU exited with status 1: \"qemu-system-riscv64: fatal: ...\"",
                           5.0, 20.0, 1)
    judgement = judged(boot, outcome)
    assert judgement.verdict == "error", judgement.verdict_reason


def test_taints_that_only_say_what_was_loaded_fail_nothing() -> None:
    """P (proprietary) and O (out-of-tree module) say which code runs, not that it went wrong."""
    boot = recorded_riscv()
    boot.results = edit_line(boot.results, f"{RUNTIME_2M_NODE1} released", "tainted_after=0",
                             "tainted_after=4097")
    assert judged(boot).verdict == "pass"


# Route: a kernel log with holes. A report may be in what the log lost; nothing there passes.


def drop_records(dmesg: str, contains: str) -> str:
    """The stream without the records holding `contains`: as when the ring buffer overran
    before the reader took them (their sequence numbers leave a gap)."""
    return "".join(line for line in dmesg.splitlines(keepends=True) if contains not in line)


def test_a_warn_the_log_lost_is_never_a_pass() -> None:
    """A WARN the console did not show (loglevel=1) and the stream lost: the judge sees no
    finding, but the hole where it was is no evidence of its absence."""
    boot = hidden_warn(recorded_riscv())
    boot.dmesg = drop_records(boot.dmesg, "WARNING: mm/hugetlb.c")
    judgement = judged(boot)
    assert not judgement.findings
    assert judgement.verdict == "error", judgement.verdict_reason
    assert "lost records" in judgement.verdict_reason and "cannot be ruled out" in judgement.verdict_reason
    # What passed on the whole log is a skip naming the hole; nothing passes.
    passed = {s.name for s in judged(recorded_riscv()).scenarios if s.status == "pass"}
    assert passed and not [s.name for s in judgement.scenarios if s.status == "pass"]
    assert all("lost records" in (s.reason or "") for s in judgement.scenarios if s.name in passed)


def test_a_lost_warn_does_not_hide_a_failure_that_is_there() -> None:
    """A hole leaves a failure that the log does show a failure."""
    boot = hidden_warn(recorded_riscv())
    boot.dmesg = drop_records(boot.dmesg, "---[ end trace")
    judgement = judged(boot)
    assert judgement.verdict == "fail" and [f.kind for f in judgement.findings] == ["warn"]


def test_a_running_targets_log_cut_before_its_end_record_is_never_a_pass() -> None:
    """An SSH target's kernel log is /dev/kmsg alone, from the run's start record: a reader that
    died before the end record leaves the rest of the run unread, with no console behind it."""
    from harness.targets import ssh

    boot = recorded_riscv()
    token = "0123456789abcdef"
    start = f"12,226,3789000,-;hvo-harness: ssh run {token} start\n"
    lines = boot.dmesg.splitlines(keepends=True)
    # Renumber from the start record on so the stream has no gap; cut after the 2M runtime pass.
    head, tail = lines[:226], lines[226:]
    tail = [f"{ln.split(',', 2)[0]},{int(ln.split(',', 2)[1]) + 1},{ln.split(',', 2)[2]}" for ln in tail]
    complete = "".join([*head, start, *tail, f"12,241,28600000,-;hvo-harness: ssh run {token} end\n"])
    report, _ = pipeline.read_results(boot.results, boot.console)
    plan = make_plan(RISCV, 4096, "on")
    whole = judge.judge(RISCV, plan, RISCV_FACTS, ssh.run_kernel_log(complete, token), report, DONE)
    assert whole.verdict == "pass", whole.verdict_reason  # the baseline
    cut = "".join(line for line in complete.splitlines(keepends=True)
                  if int(line.split(",", 2)[1]) < 232)
    judgement = judge.judge(RISCV, plan, RISCV_FACTS, ssh.run_kernel_log(cut, token), report, DONE)
    assert judgement.verdict == "error", judgement.verdict_reason
    assert "before the run's end record" in judgement.verdict_reason
    assert not [s.name for s in judgement.scenarios if s.status == "pass"]


# Route: the guest's own "not ok" under a skip. What the guest saw fail is never a skip.


def test_a_guest_not_ok_under_a_skip_path_fails() -> None:
    """The guest said "not ok" for a size the kernel lacks (a skip otherwise): its step failed,
    and a skip would hide it."""
    boot = recorded_riscv()
    line = ("ok 5 boot size_kb=16777216 node=0 # SKIP "
            "no /sys/devices/system/node/node0/hugepages/hugepages-16777216kB")
    assert line in boot.results
    boot.results = boot.results.replace(line, "not ok 5 boot size_kb=16777216 node=0 "
                                        "# touch_rc=1 release_rc=0")
    judgement = judged(boot)
    failed = scenario(judgement, "16G/boot/node0/hvo-on-cmdline")
    assert failed.status == "fail" and "not ok" in failed.reason, failed.reason
    assert "touch_rc=1" in failed.reason
    assert judgement.verdict == "fail"
