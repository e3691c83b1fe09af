"""`export kcidb`: KCIDB I/O data from real results, checked with kcidb-io's own schema."""

from __future__ import annotations

import copy
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import kcidb_io
import pytest

from harness.errors import HarnessError
from harness.kcidb_export import export
from harness.results import from_json
from tests.cli import run_cli
from tests.recorded import RISCV, X86, both_arches, document


def exported(doc: dict[str, Any], origin: str = "hvo_harness") -> dict[str, Any]:
    return export(from_json(doc), origin)


def official_check(data: dict[str, Any]) -> None:
    """kcidb-io's validation: the newest schema it knows and the v5 release we write; a v5
    consumer (kcidb-submit) checks with these."""
    kcidb_io.schema.LATEST.validate(data)
    kcidb_io.schema.V5_3.validate_exactly(data)
    assert kcidb_io.schema.LATEST.is_compatible_exactly(data)


def by_path(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {test["path"]: test for test in data["tests"]}


@pytest.mark.parametrize("path", [RISCV, X86], ids=["riscv64", "x86_64"])
def test_export_of_real_results_validates(path: Path) -> None:
    data = exported(document(path))
    official_check(data)
    assert data["version"] == {"major": 5, "minor": 3}
    assert len(data["checkouts"]) == 1 and len(data["builds"]) == 1
    assert len(data["tests"]) == 1 + 18


def test_the_validation_is_real() -> None:
    """The schema check rejects what KCIDB would: an ID without its origin, an unknown status."""
    data = exported(document(RISCV))
    broken_id = copy.deepcopy(data)
    broken_id["tests"][0]["id"] = "no-origin-here"
    with pytest.raises(jsonschema.ValidationError):
        official_check(broken_id)
    broken_status = copy.deepcopy(data)
    broken_status["tests"][1]["status"] = "pass"
    with pytest.raises(jsonschema.ValidationError):
        official_check(broken_status)


def test_tree_checkout_and_build() -> None:
    source = document(RISCV)["runs"][0]["kernel"]["source"]
    data = exported(document(RISCV))
    (checkout,) = data["checkouts"]
    (build,) = data["builds"]
    assert checkout["git_commit_hash"] == source["commit"] == "deb43739e7dffa857b5d27acac102ac9308f3789"
    assert checkout["git_commit_name"] == "deb43739e"
    assert checkout["patchset_hash"] == ""
    assert checkout["tree_name"] == "linux-source-7.2_7.2.13-1_all"
    assert checkout["misc"]["tree_state"] == source["tree_state"]
    assert build["checkout_id"] == checkout["id"]
    assert build["architecture"] == "riscv64"
    assert build["config_name"] == "debug+4k"
    assert build["compiler"] == "riscv64-linux-gnu-gcc (Debian 12.2.0-13) 12.2.0"
    assert build["misc"]["config_sha256"] == source["config_sha256"]


def test_patch_series_gives_kcidb_patchset_hash() -> None:
    doc = document(RISCV)
    doc["runs"][0]["kernel"]["source"]["patches"] = [
        {"name": "0001-a.patch", "sha256": "a" * 64}, {"name": "0002-b.patch", "sha256": "b" * 64},
    ]
    expected = hashlib.sha256(f"{'a' * 64}\n{'b' * 64}\n".encode()).hexdigest()
    data = exported(doc)
    official_check(data)
    assert data["checkouts"][0]["patchset_hash"] == expected


def test_debian_kernels_share_a_checkout_by_package_version() -> None:
    """Debian's kernel packages differ per arch; the source version they come from is one."""
    doc = both_arches()
    for run, arch in zip(doc["runs"], ("riscv64", "amd64"), strict=True):
        run["variant"] = None
        run["kernel"]["source"] = {"type": "debian", "packages": [
            {"name": f"linux-binary-7.2.13+deb14-{arch}", "version": "7.2.13-1", "sha256": "c" * 64},
        ]}
    data = exported(doc)
    official_check(data)
    (checkout,) = data["checkouts"]
    assert checkout["tree_name"] == "debian"
    assert checkout["git_commit_name"] == "7.2.13-1"
    assert [b["architecture"] for b in data["builds"]] == ["riscv64", "x86_64"]
    assert {b["config_name"] for b in data["builds"]} == {"debian"}
    assert {b["checkout_id"] for b in data["builds"]} == {checkout["id"]}


def test_one_build_per_arch_and_variant() -> None:
    doc = both_arches()
    off = copy.deepcopy(doc["runs"][0])  # the same riscv64 kernel booted with HVO off
    off["hvo"]["requested"] = "off"
    off["boot_seconds"] = 2.9
    other_variant = copy.deepcopy(doc["runs"][0])
    other_variant["variant"] = other_variant["kernel"]["source"]["variant"] = "debug+16k"
    other_variant["kernel"]["sha256"] = "d" * 64
    doc["runs"] += [off, other_variant]
    data = exported(doc)
    official_check(data)
    assert sorted((b["architecture"], b["config_name"]) for b in data["builds"]) == [
        ("riscv64", "debug+16k"), ("riscv64", "debug+4k"), ("x86_64", "image"),
    ]
    per_build = Counter(test["build_id"] for test in data["tests"])
    riscv_4k = next(b["id"] for b in data["builds"] if b["config_name"] == "debug+4k")
    assert per_build[riscv_4k] == 2 * 19  # both boots of that kernel
    paths = [t["path"] for t in data["tests"] if t["build_id"] == riscv_4k]
    assert paths.count("hvo.boot.hvo-on") == 1 and paths.count("hvo.boot.hvo-off") == 1


def test_scenario_tests_paths_statuses_and_reasons() -> None:
    doc = document(X86)
    data = exported(doc)
    tests = by_path(data)
    run = doc["runs"][0]
    statuses = Counter(s["status"] for s in run["scenarios"])
    scenario_tests = [t for t in data["tests"] if t["path"] != "hvo.boot.hvo-on"]
    assert Counter(t["status"] for t in scenario_tests) == Counter(
        {"PASS": statuses["pass"], "FAIL": statuses["fail"], "SKIP": statuses["skip"]}
    )
    failed = tests["hvo.1G.boot.node0.hvo-on-cmdline"]
    assert failed["status"] == "FAIL"
    assert failed["misc"]["reason"] == run["scenarios"][2]["reason"]
    assert failed["misc"]["reason"].startswith("kernel complained: 60 x BUG: Bad page state")
    assert "number" not in failed
    passed = tests["hvo.2M.runtime.node1.hvo-off-sysctl"]
    assert passed["status"] == "PASS"
    assert passed["misc"]["vmemmap_kib_per_page"]["expected"] == 0
    assert passed["number"] == {"value": 0.0, "unit": "B", "prefix": "binary"}
    saved = tests["hvo.1G.runtime.node0.hvo-on-sysctl"]
    assert saved["number"]["value"] == 16380 * 1024
    skipped = tests["hvo.16G.boot.node0.hvo-on-cmdline"]
    assert skipped["status"] == "SKIP"
    assert "unsupported hugepagesz=16G" in skipped["misc"]["reason"]


def test_boot_test_carries_the_findings() -> None:
    data = exported(document(RISCV))
    boot = by_path(data)["hvo.boot.hvo-on"]
    assert boot["status"] == "FAIL"
    assert boot["duration"] == 2.7
    assert [(f["kind"], f["function"], f["file"], f["line"]) for f in boot["misc"]["findings"]] == [
        ("warn", "vmemmap_remap_pte", "mm/hugetlb_vmemmap.c", 223),
    ] * 2
    # One excerpt per distinct finding, with its count: the longer of the two interleaved ones.
    assert boot["log_excerpt"].startswith("# 2 x WARN at vmemmap_remap_pte (mm/hugetlb_vmemmap.c:223)\n")
    assert "[<ffffffff800b34b4>] vmemmap_remap_pte+0x112/0x11e" in boot["log_excerpt"]
    assert boot["environment"]["misc"]["accel"] == "tcg"


def test_sixty_equal_findings_make_one_excerpt() -> None:
    data = exported(document(X86))
    boot = by_path(data)["hvo.boot.hvo-on"]
    assert len(boot["misc"]["findings"]) == 60
    assert boot["log_excerpt"].count("BUG: Bad page state") == 2  # the count line and the excerpt's
    assert boot["log_excerpt"].startswith("# 60 x BUG: Bad page state in process sh")


def test_a_clean_boot_passes_and_an_errored_one_is_error() -> None:
    doc = document(X86)
    run = doc["runs"][0]
    run["findings"] = []
    for scenario in run["scenarios"]:
        if scenario["status"] == "fail":
            scenario["status"] = "pass"
    run["verdict"] = "pass"
    assert by_path(exported(doc))["hvo.boot.hvo-on"]["status"] == "PASS"

    run.update(verdict="error", verdict_reason="interrupted", ended="interrupted")
    run["scenarios"][0]["status"] = "fail"
    data = exported(doc)
    official_check(data)
    tests = by_path(data)
    assert tests["hvo.boot.hvo-on"]["status"] == "ERROR"
    # A scenario that 'failed' because the boot was cut short says nothing about the kernel.
    assert tests["hvo.2M.boot.node0.hvo-on-cmdline"]["status"] == "ERROR"


def test_a_hang_is_a_failed_boot_even_without_findings() -> None:
    doc = document(X86)
    doc["runs"][0].update(findings=[], ended="timeout", verdict_reason="timeout after 300 s")
    assert by_path(exported(doc))["hvo.boot.hvo-on"]["status"] == "FAIL"


def test_ids_are_deterministic_unique_and_of_their_origin() -> None:
    first, second = exported(both_arches(), "my_lab"), exported(both_arches(), "my_lab")
    assert first == second
    objects = first["checkouts"] + first["builds"] + first["tests"]
    assert all(obj["id"].startswith("my_lab:") and obj["origin"] == "my_lab" for obj in objects)
    assert len({obj["id"] for obj in first["tests"]}) == len(first["tests"]) == 2 * 19


def test_another_boot_of_the_same_kernel_is_new_tests_of_the_same_build() -> None:
    base = exported(document(RISCV))
    again = document(RISCV)
    again["runs"][0]["boot_seconds"] = 3.1  # a second boot: its timings and counters differ
    later = exported(again)
    assert later["builds"][0]["id"] == base["builds"][0]["id"]
    assert later["checkouts"][0]["id"] == base["checkouts"][0]["id"]
    assert not {t["id"] for t in later["tests"]} & {t["id"] for t in base["tests"]}


def test_console_text_with_nul_and_huge_excerpts_stays_valid() -> None:
    doc = document(X86)
    finding = doc["runs"][0]["findings"][0]
    finding["excerpt"] = "BUG: \x00 nul\n" + "x" * 40000
    doc["runs"][0]["scenarios"][0]["reason"] = "reason with \x00 nul"
    data = exported(doc)
    official_check(data)
    excerpt = by_path(data)["hvo.boot.hvo-on"]["log_excerpt"]
    assert len(excerpt.encode()) <= 16384
    assert excerpt.endswith("[... cut at 16 KiB]")


@pytest.mark.parametrize("origin", ["Bad-Origin", "", "has space", "a:b"])
def test_bad_origin_is_refused(origin: str) -> None:
    with pytest.raises(HarnessError, match="KCIDB origins are lower-case letters"):
        exported(document(RISCV), origin)


def test_cli_export_end_to_end(tmp_path: Path) -> None:
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(both_arches()))
    out = tmp_path / "kcidb.json"
    done = run_cli("export", "kcidb", str(results_path), "-o", str(out), "--origin", "ci_lab")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    written = json.loads(out.read_text())
    official_check(written)
    assert written == exported(both_arches(), "ci_lab")

    to_stdout = run_cli("export", "kcidb", str(results_path))
    assert to_stdout.returncode == 0, to_stdout.stderr
    streamed = json.loads(to_stdout.stdout)
    official_check(streamed)
    assert streamed["tests"][0]["id"].startswith("hvo_harness:")


@pytest.mark.parametrize(("arguments", "message"), [
    (["export", "kcidb", "{data}", "--origin", "Bad"], "--origin 'Bad'"),
    (["export", "kcidb", "{missing}"], "no such file"),
    (["export", "kcidb", "{data}", "-o", "/proc/none/k.json"], "cannot write /proc/none/k.json"),
])
def test_cli_export_errors_are_one_line(tmp_path: Path, arguments: list[str], message: str) -> None:
    values = {"data": str(RISCV), "missing": str(tmp_path / "missing.json")}
    done = run_cli(*(argument.format(**values) for argument in arguments))
    assert done.returncode == 2
    assert done.stderr.startswith("hvo-harness: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr
