"""`compare`: regressions between two results files, planted into copies of real results."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from harness.compare import Comparison, compare, format_comparison
from harness.errors import HarnessError
from harness.results import from_json, load
from tests.cli import run_cli
from tests.recorded import RISCV, X86, both_arches, document


def scenario(doc: dict[str, Any], arch: str, name: str) -> dict[str, Any]:
    run = next(r for r in doc["runs"] if r["arch"] == arch)
    for entry in run["scenarios"]:
        size, mode, node, hvo, via = (entry[k] for k in ("size", "mode", "node", "hvo", "hvo_via"))
        if f"{size}/{mode}/node{node}/hvo-{hvo}-{via}" == name:
            return entry
    raise AssertionError(f"{arch} has no scenario {name}")


def compared(base: dict[str, Any], new: dict[str, Any]) -> Comparison:
    return compare(from_json(base), from_json(new))


def kinds(changes: list[Any]) -> list[tuple[str, str]]:
    return [(change.kind, change.where) for change in changes]


def write(tmp_path: Path, name: str, doc: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_identical_files_have_no_changes() -> None:
    base = both_arches()
    comparison = compared(base, copy.deepcopy(base))
    assert comparison.changes == []
    assert comparison.runs_matched == 2
    assert comparison.scenarios_matched == 36
    assert format_comparison(comparison, "a", "b").endswith("result: no regressions")


def test_removed_scenario_is_a_regression() -> None:
    base = both_arches()
    new = copy.deepcopy(base)
    x86 = next(r for r in new["runs"] if r["arch"] == "x86_64")
    gone = scenario(new, "x86_64", "1G/runtime/node1/hvo-on-sysctl")
    x86["scenarios"].remove(gone)
    comparison = compared(base, new)
    assert kinds(comparison.regressions) == [
        ("scenario-gone", "x86_64 hvo=on 1G/runtime/node1/hvo-on-sysctl"),
    ]
    assert comparison.scenarios_matched == 35


def test_removed_run_is_a_regression() -> None:
    base = both_arches()
    new = copy.deepcopy(base)
    new["runs"] = [r for r in new["runs"] if r["arch"] != "riscv64"]
    comparison = compared(base, new)
    assert kinds(comparison.regressions) == [("run-gone", "riscv64/debug+4k hvo=on")]
    # The other way round the run is new: listed, but not a regression.
    reverse = compared(new, base)
    assert reverse.regressions == []
    assert kinds(reverse.changes) == [("run-new", "riscv64/debug+4k hvo=on")]


def test_a_run_of_another_variant_is_not_the_same_run() -> None:
    base = document(RISCV)
    new = copy.deepcopy(base)
    new["runs"][0]["variant"] = "debug+16k"
    comparison = compared(base, new)
    assert ("run-gone", "riscv64/debug+4k hvo=on") in kinds(comparison.regressions)
    assert ("run-new", "riscv64/debug+16k hvo=on") in kinds(comparison.changes)


@pytest.mark.parametrize("field", ["expected", "claimed", "measured"])
@pytest.mark.parametrize("new_value", [24, 32])
def test_changed_saving_is_a_regression_up_or_down(field: str, new_value: int) -> None:
    base = document(X86)
    new = copy.deepcopy(base)
    scenario(new, "x86_64", "2M/boot/node0/hvo-on-cmdline")["vmemmap"][f"{field}_kib_per_page"] = new_value
    comparison = compared(base, new)
    assert kinds(comparison.regressions) == [("vmemmap", "x86_64 hvo=on 2M/boot/node0/hvo-on-cmdline")]
    assert comparison.regressions[0].what == f"vmemmap {field} 28 -> {new_value} KiB/page"


def test_new_finding_is_a_regression() -> None:
    base = document(RISCV)
    new = copy.deepcopy(base)
    planted = copy.deepcopy(new["runs"][0]["findings"][0])
    planted.update(kind="bug", function="free_vmemmap_page_list", line=301,
                   excerpt="[    1.000000] kernel BUG at mm/hugetlb_vmemmap.c:301!")
    new["runs"][0]["findings"].append(planted)
    comparison = compared(base, new)
    assert kinds(comparison.regressions) == [("finding-new", "riscv64/debug+4k hvo=on")]
    assert "BUG at free_vmemmap_page_list (mm/hugetlb_vmemmap.c)" in comparison.regressions[0].what
    # Gone again: an improvement, which does not fail.
    reverse = compared(new, base)
    assert reverse.regressions == []
    assert kinds(reverse.improvements) == [("finding-gone", "riscv64/debug+4k hvo=on")]


def test_the_same_finding_with_other_text_and_line_is_not_new() -> None:
    """Timestamps, addresses and line numbers differ between boots and kernels; the finding
    is still the WARN in vmemmap_remap_pte."""
    base = document(RISCV)
    new = copy.deepcopy(base)
    for finding in new["runs"][0]["findings"]:
        finding["line"] = 230
        finding["excerpt"] = finding["excerpt"].replace("[    0.16", "[    9.99").replace("0x112", "0x118")
    assert compared(base, new).changes == []


def test_nameless_findings_are_told_apart_by_headline_without_numbers() -> None:
    base = document(X86)
    new = copy.deepcopy(base)
    findings = new["runs"][0]["findings"]
    for finding in findings:  # another boot: other pfns and timestamps
        finding["excerpt"] = finding["excerpt"].replace("pfn:1400", "pfn:2a00").replace("[    7.", "[   12.")
    assert compared(base, new).changes == []
    findings.append({"kind": "bug", "function": None, "file": None, "line": None, "check": None,
                     "excerpt": "[   12.5] BUG: kernel NULL pointer dereference, address: 0000000000000008"})
    comparison = compared(base, new)
    assert kinds(comparison.regressions) == [("finding-new", "x86_64 hvo=on")]
    assert "NULL pointer dereference" in comparison.regressions[0].what


def test_pass_to_fail_is_a_regression_and_fail_to_pass_an_improvement() -> None:
    base = document(X86)
    new = copy.deepcopy(base)
    passed = scenario(new, "x86_64", "2M/runtime/node1/hvo-off-sysctl")
    passed.update(status="fail", reason="3 of 4 pages allocated")
    failed = scenario(new, "x86_64", "1G/boot/node0/hvo-on-cmdline")
    failed.update(status="pass", reason="1 pages touched and read back")
    comparison = compared(base, new)
    assert kinds(comparison.regressions) == [("status", "x86_64 hvo=on 2M/runtime/node1/hvo-off-sysctl")]
    assert comparison.regressions[0].what == "pass -> fail: 3 of 4 pages allocated"
    assert kinds(comparison.improvements) == [("status", "x86_64 hvo=on 1G/boot/node0/hvo-on-cmdline")]


@pytest.mark.parametrize(("old", "new", "severity"), [
    ("pass", "skip", "regression"),   # coverage lost, e.g. HVO became inactive
    ("skip", "fail", "regression"),
    ("skip", "pass", "improvement"),
    ("fail", "skip", "change"),
])
def test_status_transitions(old: str, new: str, severity: str) -> None:
    base = document(X86)
    scenario(base, "x86_64", "2M/runtime/node0/hvo-on-sysctl")["status"] = old
    changed = copy.deepcopy(base)
    scenario(changed, "x86_64", "2M/runtime/node0/hvo-on-sysctl")["status"] = new
    changes = compared(base, changed).changes
    assert [(c.severity, c.kind) for c in changes] == [(severity, "status")]


def test_failed_scenarios_of_a_boot_that_errored_are_errors() -> None:
    base = document(X86)
    base["runs"][0]["verdict"] = "pass"
    base["runs"][0]["findings"] = []
    scenario(base, "x86_64", "1G/boot/node0/hvo-on-cmdline")["status"] = "pass"
    new = copy.deepcopy(base)
    new["runs"][0].update(verdict="error", verdict_reason="interrupted", ended="interrupted")
    scenario(new, "x86_64", "1G/boot/node0/hvo-on-cmdline")["status"] = "fail"
    comparison = compared(base, new)
    assert [(c.kind, c.what.split(":")[0]) for c in comparison.regressions] == [
        ("verdict", "verdict pass -> error"), ("status", "pass -> error"),
    ]


def test_hvo_becoming_inactive_is_a_regression() -> None:
    base = document(RISCV)
    new = copy.deepcopy(base)
    new["runs"][0]["hvo"] = {"requested": "on", "state": "inactive",
                             "reason": "CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP is not set"}
    comparison = compared(base, new)
    assert kinds(comparison.regressions) == [("hvo-state", "riscv64/debug+4k hvo=on")]


def test_console_text_cannot_reach_the_terminal_raw() -> None:
    base = document(X86)
    new = copy.deepcopy(base)
    scenario(new, "x86_64", "2M/boot/node0/hvo-on-cmdline").update(status="fail", reason="\x1b[2Jgone\nnext")
    text = format_comparison(compared(base, new), "a", "b")
    assert "\x1b" not in text
    assert "pass -> fail: ?[2Jgone next" in text


def test_two_runs_with_one_key_are_refused() -> None:
    doubled = document(X86)
    doubled["runs"].append(copy.deepcopy(doubled["runs"][0]))
    with pytest.raises(HarnessError, match="two runs of x86_64 hvo=on"):
        compared(doubled, document(X86))


def test_cli_exit_status_and_list(tmp_path: Path) -> None:
    base = both_arches()
    base_path = write(tmp_path, "base.json", base)
    same = run_cli("compare", str(base_path), str(write(tmp_path, "same.json", base)))
    assert same.returncode == 0, same.stderr
    assert same.stdout.strip().endswith("result: no regressions")

    new = copy.deepcopy(base)
    x86 = next(r for r in new["runs"] if r["arch"] == "x86_64")
    x86["scenarios"].remove(scenario(new, "x86_64", "16G/boot/node0/hvo-on-cmdline"))
    scenario(new, "riscv64", "1G/runtime/node1/hvo-on-sysctl")["vmemmap"]["measured_kib_per_page"] = 16376.0
    regressed = run_cli("compare", str(base_path), str(write(tmp_path, "new.json", new)))
    assert regressed.returncode == 1, regressed.stderr
    lines = regressed.stdout.splitlines()
    assert "regressions (2):" in lines
    assert "  - x86_64 hvo=on 16G/boot/node0/hvo-on-cmdline: scenario gone (was skip)" in lines
    assert ("  - riscv64/debug+4k hvo=on 1G/runtime/node1/hvo-on-sysctl: "
            "vmemmap measured 16380 -> 16376 KiB/page") in lines
    assert lines[-1] == "result: 2 regressions"

    # Back to the base: the saving changes again (a regression either way); the scenario that
    # comes back is only listed.
    back = run_cli("compare", str(write(tmp_path, "new.json", new)), str(base_path))
    assert back.returncode == 1, back.stdout
    assert "  - x86_64 hvo=on 16G/boot/node0/hvo-on-cmdline: new scenario (skip)" in back.stdout.splitlines()
    assert back.stdout.strip().endswith("result: 1 regression")


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file"),
    ("not json {", "is not JSON"),
    ('{"version": {"major": 5, "minor": 3}, "tests": []}', "is not an hvo-harness/1 results document"),
    ('{"schema": "hvo-harness/2", "runs": []}', "results document (schema 'hvo-harness/2')"),
    ("[1, 2]", "is not an hvo-harness/1 results document (a JSON list)"),
])
def test_cli_bad_input_is_one_error_line(tmp_path: Path, content: str | None, message: str) -> None:
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    done = run_cli("compare", str(RISCV), str(bad))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"hvo-harness: error: {bad}")
    assert message in done.stderr


def test_a_document_that_breaks_the_schema_names_where(tmp_path: Path) -> None:
    broken = document(RISCV)
    broken["runs"][0]["scenarios"][3]["status"] = "maybe"
    with pytest.raises(HarnessError, match=r"breaks the hvo-harness/1 schema at runs/0/scenarios/3/status"):
        load(write(tmp_path, "broken.json", broken))
