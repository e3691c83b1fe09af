"""The pytest plugin on real guests, run as a user would: `pytest --hvo-arch ...` in a fresh
pytest process (pytester), with JUnit XML."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.plan import make_plan
from harness.profiles import get_profile

pytestmark = [pytest.mark.boot, pytest.mark.timeout(1800)]


def junit_cases(path: Path) -> list[ET.Element]:
    return list(ET.parse(path).getroot().iter("testcase"))


def test_one_junit_case_per_scenario_and_boot(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """loongarch64 on Debian's kernel (16K pages, HVO inactive): every planned scenario is a
    case with a readable id; nothing passes that HVO could not do."""
    junit = tmp_path / "j.xml"
    result = pytester.runpytest_subprocess("--hvo-arch", "loongarch64", "--hvo-setting", "on", "-p",
                                           "no:cacheprovider", f"--junitxml={junit}", "-rs")
    planned = make_plan(get_profile("loongarch64"), 16384, "on").scenario_names()
    cases = junit_cases(junit)
    assert [c.attrib["name"] for c in cases] == ["boot", *planned]
    # The header counts the HVO items too (they are not collected from files).
    assert f"collected {len(cases)} items" in result.stdout.str()
    assert {c.attrib["classname"] for c in cases} == {"hvo.loongarch64-debian-hvo-on"}
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0, result.stdout.str()
    # HVO is inactive on Debian's loong64 kernel: its HVO-on scenarios are skips with the reason.
    assert "HVO inactive" in result.stdout.str()
    hvo_on = [c for c in cases if "/hvo-on-" in c.attrib["name"]]
    assert hvo_on and all(c.find("skipped") is not None for c in hvo_on)


def test_finding_fails_the_boot_item_with_excerpt_and_log(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """riscv64 debug kernel from linux-source-7.2 (docs/findings.md #3): the boot item fails,
    showing the finding's excerpt, the console log's path and the reproducer."""
    junit = tmp_path / "j.xml"
    result = pytester.runpytest_subprocess(
        "--hvo-arch", "riscv64", "--hvo-tree", "--hvo-variant", "debug", "--hvo-setting", "on",
        "-p", "no:cacheprovider", f"--junitxml={junit}",
    )
    out = result.stdout.str()
    assert "FAILED hvo/riscv64-linux-source-debug-hvo-on::boot" in out
    assert "finding: WARN at vmemmap_remap_pte (mm/hugetlb_vmemmap.c:223)" in out
    assert "WARNING: mm/hugetlb_vmemmap.c:223 at vmemmap_remap_pte" in out
    assert "console log: " in out and ".console.log" in out
    assert "reproduce: sh " in out
    failed = {c.attrib["name"] for c in junit_cases(junit) if c.find("failure") is not None}
    assert "boot" in failed and "2M/runtime/node0/hvo-on-sysctl" not in failed


def test_xdist_keeps_each_kernels_boots_on_one_worker(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """Under `-n 2` every item of a boot runs on the worker that booted it: were a boot's
    items spread, two workers would boot the same guest at once into the same log files
    (as `--dist loadgroup` does with pytest 9.2, pytest-xdist#1386). And a kernel's two boots
    (HVO on and off) share a worker, one after the other, so that the second reuses the
    memory files of the first (harness/guest_memory.py) instead of both booting on fresh
    memory at once."""
    pytest.importorskip("xdist")
    junit = tmp_path / "j.xml"
    result = pytester.runpytest_subprocess("--hvo-arch", "loongarch64", "-n", "2", "-v", "-p",
                                           "no:cacheprovider", f"--junitxml={junit}")
    workers_by_boot: dict[str, set[str]] = {}
    for line in result.stdout.lines:
        match = re.match(r"\[(gw\d+)\] \[ *\d+%\] [A-Z]+ (hvo/[^:]+)::", line)
        if match:
            workers_by_boot.setdefault(match.group(2), set()).add(match.group(1))
    assert set(workers_by_boot) == {"hvo/loongarch64-debian-hvo-on", "hvo/loongarch64-debian-hvo-off"}, \
        result.stdout.str()
    assert all(len(workers) == 1 for workers in workers_by_boot.values()), workers_by_boot
    assert len(set().union(*workers_by_boot.values())) == 1, workers_by_boot
    cases = junit_cases(junit)
    for hvo in ("on", "off"):
        # Each planned scenario once: a boot's items run (and are reported) once.
        planned = make_plan(get_profile("loongarch64"), 16384, hvo).scenario_names()
        label = f"hvo.loongarch64-debian-hvo-{hvo}"
        names = [c.attrib["name"] for c in cases if c.attrib["classname"] == label]
        assert sorted(names) == sorted(["boot", *planned])
    assert len(cases) == 2 * (1 + len(planned))


def test_an_inner_pytester_session_leaves_the_outer_sessions_boots(pytester: pytest.Pytester,
                                                                    request: pytest.FixtureRequest) -> None:
    """An in-process pytester session (tests/test_judge.py) configures the plugin again; the
    outer session's boots must stay its own (a module global was replaced, and every later
    hvo_boot died on the inner config's torn-down _tmp_path_factory)."""
    from harness import pytest_plugin

    outer = pytest_plugin.boots_of(request.config)
    pytester.makepyfile("def test_nothing():\n    pass\n")
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert pytest_plugin.boots_of(request.config) is outer
    assert outer._out_dir().name == "hvo"  # the outer config still gives its base temp


def test_hvo_arch_without_paths_does_not_import_the_testpaths(pytester: pytest.Pytester) -> None:
    """`pytest --hvo-arch A` alone is the HVO matrix: the project's testpaths are not imported
    and then deselected (3 s of imports and assertion rewriting per process, each xdist worker's
    too, before its first boot)."""
    pytester.makeini("[pytest]\ntestpaths = t\n")
    pytester.mkdir("t")
    pytester.makepyfile(**{"t/test_imported.py": "raise SystemExit('t/test_imported.py was imported')\n"})
    result = pytester.runpytest_subprocess("--hvo-arch", "loongarch64", "--hvo-setting", "on",
                                           "-p", "no:cacheprovider", "--collect-only", "-q")
    out = result.stdout.str() + result.stderr.str()
    assert "was imported" not in out and result.ret == 0, out
    assert "hvo/loongarch64-debian-hvo-on::boot" in out
    # Paths given are collected as they always were.
    given = pytester.runpytest_subprocess("--hvo-arch", "loongarch64", "--hvo-setting", "on",
                                          "-p", "no:cacheprovider", "--collect-only", "-q", "t")
    assert "was imported" in given.stdout.str() + given.stderr.str()


def test_xdist_splits_only_the_kernels_after_each_workers_first(pytester: pytest.Pytester) -> None:
    """Under -n 2 the two largest kernels (collection order) each stay on one worker; a later,
    smaller kernel's boots are a unit each, to fill whichever worker is free first."""
    from harness import pytest_plugin

    config = pytester.parseconfigure("--hvo-arch", "all", "--tx", "2*popen", "--dist", "loadscope",
                                     "-p", "no:cacheprovider")
    scheduler = pytest_plugin.pytest_xdist_make_scheduler(config, None)
    order = ["riscv64", "x86_64", "loongarch64"]
    scopes = {f"{arch}-{hvo}": scheduler._split_scope(f"hvo/{arch}-debian-hvo-{hvo}::boot")
              for arch in order for hvo in ("on", "off")}
    assert scopes["riscv64-on"] == scopes["riscv64-off"] == "hvo/riscv64-debian"
    assert scopes["x86_64-on"] == scopes["x86_64-off"] == "hvo/x86_64-debian"
    assert scopes["loongarch64-on"] == "hvo/loongarch64-debian-hvo-on"
    assert scopes["loongarch64-off"] == "hvo/loongarch64-debian-hvo-off"
    # The same answer on every later call (mark_test_complete asks again).
    assert scheduler._split_scope("hvo/riscv64-debian-hvo-on::2M/boot/node0") == "hvo/riscv64-debian"
