"""Triage's classification of a variation boot against the original, on crafted Run records;
the CLI's one-line errors on results it cannot triage. The real triage of a real failing boot is
in tests/test_repro.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from harness import triage
from harness.results import Accel, Finding, Hvo, KernelInfo, Run, Scenario
from tests.cli import one_error_line, run_cli

DATA = Path(__file__).parent / "data"
BAD_PAGE = Finding("bug", None, None, None, "[   20.1] BUG: Bad page state in process sh  pfn:40040")
WARN = Finding("warn", "vmemmap_remap_pte", "mm/hugetlb_vmemmap.c", 223, "WARNING: mm/hugetlb_vmemmap.c:223")


def scenario(size: str, mode: str, node: int, status: str, hvo: str = "on",
             reason: str = "crafted") -> Scenario:
    return Scenario(size=size, mode=mode, node=node, hvo=hvo, requested=1, allocated=1,  # type: ignore[arg-type]
                    status=status, reason=reason, boot_hvo=hvo)  # type: ignore[arg-type]


def run(verdict: str, findings: list[Finding], scenarios: list[Scenario], hvo: str = "on",
        reason: str = "crafted") -> Run:
    return Run(arch="x86_64", kernel=KernelInfo("vmlinuz", "7.2.13", "0" * 64, {"type": "debian"}),
               accel=Accel("tcg", "crafted"), cmdline="", boot_seconds=1.0,
               verdict=verdict, hvo=Hvo(hvo, "active" if hvo == "on" else "off", "crafted"),  # type: ignore[arg-type]
               findings=findings, scenarios=scenarios, console_log="console.log", verdict_reason=reason)


def finding_one() -> Run:
    """docs/findings.md #1 in miniature: the boot-time 1G page on node 0 and what follows it fail."""
    return run("fail", [BAD_PAGE] * 60, [
        scenario("2M", "boot", 0, "pass"),
        scenario("1G", "boot", 0, "fail", reason="kernel complained: 60 x BUG: Bad page state"),
        scenario("1G", "boot", 1, "pass"),
        scenario("1G", "runtime", 0, "fail", reason="allocated 0 of 1 1G pages on node 0"),
    ])


def test_same_findings_and_failing_scenarios_are_same() -> None:
    variation = run("fail", [BAD_PAGE] * 57, finding_one().scenarios)  # counts differ: rate limits
    assert triage.classify(finding_one(), variation).outcome == "same"


def test_failing_scenarios_passing_without_the_findings_is_gone() -> None:
    variation = run("pass", [], [scenario(s.size, s.mode, s.node, "pass") for s in finding_one().scenarios])
    result = triage.classify(finding_one(), variation)
    assert result.outcome == "gone", result
    assert "2 of 2 pass" in result.scenarios


def test_hvo_off_meets_the_same_boot_time_scenarios() -> None:
    # A boot with HVO off names its boot-time scenarios hvo-off-cmdline: still the same pages.
    variation = run("pass", [], [
        scenario(s.size, s.mode, s.node, "pass", hvo="off" if s.mode == "boot" else "on")
        for s in finding_one().scenarios], hvo="off")
    assert triage.classify(finding_one(), variation).outcome == "gone"


def test_a_cpu_without_the_size_is_not_applicable_never_gone() -> None:
    # qemu64 has no pdpe1gb: the kernel refuses 1G, the judge skips the 1G scenarios, nothing fails.
    skipped = "1G not supported here: \"HugeTLB: unsupported hugepagesz=1G\""
    variation = run("pass", [], [
        scenario("2M", "boot", 0, "pass"),
        scenario("1G", "boot", 0, "skip", reason=skipped),
        scenario("1G", "boot", 1, "skip", reason=skipped),
        scenario("1G", "runtime", 0, "skip", reason=skipped),
    ])
    result = triage.classify(finding_one(), variation)
    assert result.outcome == "not applicable", result
    assert "unsupported hugepagesz=1G" in result.detail


def test_a_layout_without_the_node_is_not_applicable() -> None:
    variation = run("pass", [], [scenario("2M", "boot", 0, "pass"), scenario("1G", "boot", 1, "pass")])
    result = triage.classify(finding_one(), variation)
    assert result.outcome == "not applicable", result
    assert "absent" in result.detail


def test_some_failing_scenarios_skipped_and_the_rest_passing_is_not_gone() -> None:
    variation = run("pass", [], [scenario("1G", "boot", 0, "pass"), scenario("1G", "runtime", 0, "skip")])
    assert triage.classify(finding_one(), variation).outcome == "not applicable"


def test_a_test_bed_error_is_never_gone() -> None:
    # QEMU killed mid-boot: no findings, the scenarios it reached passed. Still says nothing.
    variation = run("error", [], [scenario("2M", "boot", 0, "pass"), scenario("1G", "boot", 0, "pass")],
                    reason="QEMU was killed by signal 9 (SIGKILL) before the guest finished")
    result = triage.classify(finding_one(), variation)
    assert result.outcome == "error"
    assert "SIGKILL" in result.detail


def test_other_findings_are_fails_differently() -> None:
    variation = run("fail", [WARN], [
        scenario("2M", "boot", 0, "fail"), scenario("1G", "boot", 0, "pass"),
        scenario("1G", "runtime", 0, "pass"),
    ])
    result = triage.classify(finding_one(), variation)
    assert result.outcome == "fails differently"
    assert "new findings: WARN at vmemmap_remap_pte" in result.detail
    assert "findings absent" in result.detail


def test_another_bug_without_a_function_is_not_the_same_finding() -> None:
    # Both are kind "bug" with no function: told apart by their headlines, numbers masked.
    atomic = Finding("bug", None, None, None, "[   20.2] BUG: scheduling while atomic: sh/77/0x00000002")
    variation = run("fail", [atomic], finding_one().scenarios)
    result = triage.classify(finding_one(), variation)
    assert result.outcome == "fails differently", result
    assert "new findings: BUG: scheduling while atomic" in result.detail
    other_pfn = Finding("bug", None, None, None, "[   21.7] BUG: Bad page state in process sh  pfn:140040")
    assert triage.classify(finding_one(), run("fail", [other_pfn], finding_one().scenarios)).outcome == "same"


def test_the_failure_gone_but_another_scenario_failing_is_not_gone() -> None:
    variation = run("fail", [], [scenario("1G", "boot", 0, "pass"), scenario("1G", "runtime", 0, "pass"),
                                 scenario("2M", "runtime", 1, "fail")])
    assert triage.classify(finding_one(), variation).outcome == "fails differently"


def rows(*outcomes: tuple[str, str]) -> list[triage.Row]:
    return [triage.Row(name, "what", outcome, "detail", if_gone=f"{name} matters")
            for name, outcome in outcomes]


def test_conclusions() -> None:
    same = triage.conclude(rows(("as-recorded", "same"), ("one-vcpu", "same"), ("kvm", "not applicable")))
    assert same == ("Fails the same way under every variation tried (as-recorded, one-vcpu) "
                    "(not applicable: kvm).")
    gone = triage.conclude(rows(("as-recorded", "same"), ("hvo-off", "gone"), ("one-vcpu", "same")))
    assert gone.startswith("Gone with hvo-off (hvo-off: hvo-off matters); "
                           "it still fails under as-recorded, one-vcpu")
    flaky = triage.conclude(rows(("as-recorded", "gone"), ("hvo-off", "gone")))
    assert "does not reproduce reliably" in flaky


def test_triage_of_results_without_bundles_is_one_error_line(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    shutil.copy(DATA / "results-x86_64-7.2.13-tinyconfig-debug-hvo-on.json", results)
    before = results.read_bytes()
    line = one_error_line(run_cli("triage", str(results)))
    assert "x86_64-hvo-on has no reproducer bundle" in line
    assert results.read_bytes() == before


def test_triage_of_a_passing_boot_is_one_error_line(tmp_path: Path) -> None:
    document = json.loads((DATA / "results-x86_64-7.2.13-tinyconfig-debug-hvo-on.json").read_text())
    document["runs"][0]["verdict"] = "pass"
    results = tmp_path / "results.json"
    results.write_text(json.dumps(document))
    line = one_error_line(run_cli("triage", str(results), "--boot", "x86_64-hvo-on"))
    assert "--boot x86_64-hvo-on passed: triage takes a failing boot" in line
    line = one_error_line(run_cli("triage", str(results), "--boot", "riscv64-hvo-on"))
    assert "no such boot in the results: choose from x86_64-hvo-on" in line


def test_repro_of_a_directory_that_is_no_bundle_is_one_error_line(tmp_path: Path) -> None:
    line = one_error_line(run_cli("repro", str(tmp_path)))
    assert "is not a usable reproducer bundle: no repro.json in it" in line


def test_the_report_shows_the_triage_table_and_conclusion() -> None:
    from harness import report_page
    from harness.results import Results

    original = finding_one()
    table = [triage.Row("hvo-off", "hugetlb_free_vmemmap=off", "gone", "the failing scenarios pass",
                        verdict="pass", findings="none", scenarios="2 of 2 pass", if_gone="it needs HVO"),
             triage.Row("kvm", "-accel kvm", "not applicable", "KVM probe: <failed>")]
    report = triage.Triage("x86_64-hvo-on", table, "/tmp/t")
    original.triage = report.as_dict()
    results = Results(runs=[original])
    markdown = report_page.render_markdown(results, "results.json")
    assert "### Triage (2 variations)" in markdown
    assert "| hvo-off | pass | gone |" in markdown
    assert "Conclusion: Gone with hvo-off (hvo-off: it needs HVO) (not applicable: kvm)." in markdown
    html = report_page.render_html(results, "results.json")
    assert "KVM probe: &lt;failed&gt;" in html and "<failed>" not in html
