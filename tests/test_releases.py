"""Kernel releases as a choice: a release matrix of Debian suites booted through the CLI, and a
suite with no kernel for an arch recorded as a skip with its reason (no boot, exit 0).

These are real boots of Debian's trixie, sid and experimental kernels (HVO on only, to keep
the cost at three boots); verdicts are recorded as the kernels give them, not required to pass:
6.12 (trixie) predates the series the seeds carry."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest

from harness import compare, kcidb_export, report, report_page
from harness.results import Results, Run, load
from tests.cli import run_cli

pytestmark = pytest.mark.boot

RELEASES = ("trixie", "sid", "experimental")


@pytest.fixture(scope="module")
def release_matrix(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("releases")
    proc = run_cli("run", "--arch", "x86_64", "--kernel", ",".join(f"debian:{r}" for r in RELEASES),
                   "--hvo", "on", "--out", str(out), timeout=1800)
    # 0 or 1: the kernels' verdicts are theirs; 2 would be a set-up error of the harness.
    assert proc.returncode in (0, 1), proc.stderr
    return out, proc.stdout


def test_three_releases_each_booted_and_labelled(release_matrix: tuple[Path, str]) -> None:
    out, _ = release_matrix
    results = load(out / "results.json")  # validated against the hvo-harness/1 schema
    assert results.complete
    assert [run.kernel.label for run in results.runs] == list(RELEASES)
    for run, release in zip(results.runs, RELEASES, strict=True):
        source = run.kernel.source
        assert source["type"] == "debian" and source["suite"] == release
        assert source["version"] == source["packages"][0]["version"]
        assert all(p["sha256"] and p["version"] for p in source["packages"])
        assert run.arch == "x86_64" and run.hvo.requested == "on"
        # Booted: a finished verdict (pass or a kernel's fail, never the test bed's error).
        assert run.verdict in ("pass", "fail"), (release, run.verdict, run.verdict_reason)
        assert run.boot_seconds is not None and run.scenarios
    versions = {run.kernel.source["version"] for run in results.runs}
    assert len(versions) == 3, versions  # three different kernels, not one booted thrice
    assert any(v.startswith("6.12.") for v in versions)


def test_release_matrix_logs_do_not_overwrite_each_other(release_matrix: tuple[Path, str]) -> None:
    out, _ = release_matrix
    results = load(out / "results.json")
    logs = [Path(run.console_log) for run in results.runs]
    assert [p.name for p in logs] == [f"x86_64-{r}-hvo-on.console.log" for r in RELEASES]
    for path, run in zip(logs, results.runs, strict=True):
        assert run.kernel.release and run.kernel.release in path.read_text(errors="replace")
        assert (out / path.name.replace(".console.log", ".qemu.sh")).is_file()


def test_run_table_names_each_boots_release(release_matrix: tuple[Path, str]) -> None:
    """Each boot's block is headed by its release, and its facts line names the release and
    the Debian version, before the boot's scenario rows (one line each)."""
    out, stdout = release_matrix
    results = load(out / "results.json")
    lines = stdout.splitlines()
    for run in results.runs:
        label = run.kernel.label
        head = next(i for i, line in enumerate(lines) if line.startswith(f"x86_64 {label} hvo=on: "))
        facts = next(line for line in lines[head:] if line.startswith("  kernel "))  # the header may wrap
        assert facts.startswith(f"  kernel {label} {run.kernel.source['version']} ("), lines[head:head + 4]
        rows = [line for line in lines[head:] if "/boot/node0/" in line]
        assert rows and all(len(line) <= report.PIPE_WIDTH for line in rows), rows
    # The closing lines, one per boot: the verdict in lower case (a block's header has it upper).
    summaries = [line for line in lines if re.match(r"x86_64 \S+ hvo=on: (pass|fail|error|skip) ", line)]
    assert [line.split(":")[0] for line in summaries] == [f"x86_64 {r} hvo=on" for r in RELEASES]


def test_compare_keeps_releases_apart(release_matrix: tuple[Path, str]) -> None:
    """A release matrix compared with itself: every run matched with its own release."""
    out, _ = release_matrix
    results = load(out / "results.json")
    comparison = compare.compare(results, results)
    assert comparison.runs_matched == 3 and not comparison.changes
    # The markdown report and the KCIDB export keep them apart too.
    markdown = report_page.render_markdown(results, "results.json")
    for release in RELEASES:
        assert f"## x86_64/{release} hvo=on:" in markdown
    exported = kcidb_export.export(results)
    assert len({b["id"] for b in exported["builds"]}) == 3
    assert len({c["id"] for c in exported["checkouts"]}) == 3


def test_compare_old_sid_results_with_a_release_matrix(release_matrix: tuple[Path, str]) -> None:
    """A base from before releases were a choice (sid's run, no label or suite) is matched with
    the matrix's sid run; the other releases are new runs, not regressions."""
    out, _ = release_matrix
    matrix = load(out / "results.json")
    sid = next(run for run in matrix.runs if run.kernel.label == "sid")
    old_source = {k: v for k, v in sid.kernel.source.items() if k not in ("suite", "version", "spec")}
    old = replace(sid, kernel=replace(sid.kernel, label=None, source=old_source))
    comparison = compare.compare(Results(runs=[old]), matrix)
    assert comparison.runs_matched == 1 and not comparison.regressions, comparison.changes
    assert sorted(c.where for c in comparison.changes if c.kind == "run-new") == [
        "x86_64/experimental hvo=on", "x86_64/trixie hvo=on"]
    # One kernel per file: trixie's run is compared with sid's, and the release change is said.
    trixie = Results(runs=[next(run for run in matrix.runs if run.kernel.label == "trixie")])
    kernel_changes = [c for c in compare.compare(trixie, Results(runs=[sid])).changes if c.kind == "kernel"]
    assert [c.what for c in kernel_changes] == [
        f"kernel trixie {trixie.runs[0].kernel.source['version']} -> sid {sid.kernel.source['version']}"]


@pytest.fixture(scope="module")
def riscv_experimental(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("riscv-experimental")
    started = time.monotonic()
    proc = run_cli("run", "--arch", "riscv64", "--kernel", "debian:experimental", "--hvo", "on",
                   "--out", str(out), "--json", str(out / "r.json"), timeout=600)
    assert proc.returncode == 0, proc.stderr  # a skip with a reason is not a failure
    assert "Debian experimental has no linux kernel for riscv64" in proc.stdout
    return out, time.monotonic() - started


def test_suite_without_the_arch_is_a_skip_with_its_reason(riscv_experimental: tuple[Path, float]) -> None:
    out, _ = riscv_experimental
    document = json.loads((out / "r.json").read_text())
    results = load(out / "r.json")
    assert len(results.runs) == 1
    run = results.runs[0]
    assert run.verdict == "skip" and run.arch == "riscv64"
    assert run.verdict_reason == ("Debian experimental has no linux kernel for riscv64 "
                                  "(checked linux-binary-*-riscv64 and linux-image-*-riscv64)")
    assert run.kernel.source["suite"] == "experimental" and run.kernel.label == "experimental"
    assert run.scenarios == [] and run.boot_seconds is None and run.accel.used == "none"
    assert document["runs"][0]["kernel"]["sha256"] is None
    # No boot: no console log, no QEMU command.
    assert not list(out.glob("riscv64*"))


def test_skip_in_every_consumer(riscv_experimental: tuple[Path, float], tmp_path: Path) -> None:
    out, _ = riscv_experimental
    skipped = load(out / "r.json")
    lines = report.run_summaries(skipped)
    assert lines == ["[b]riscv64 experimental hvo=on[/]: [yellow]skip[/] - Debian experimental has no "
                     "linux kernel for riscv64 (checked linux-binary-*-riscv64 and "
                     "linux-image-*-riscv64). Not booted."]
    markdown, html = report_page.write_reports(skipped, "r.json", tmp_path)
    assert "## riscv64/experimental hvo=on: SKIP" in markdown.read_text()
    assert 'class="skip">SKIP' in html.read_text()
    exported = kcidb_export.export(skipped)
    assert [t["status"] for t in exported["tests"]] == ["SKIP"]
    assert [b["status"] for b in exported["builds"]] == ["SKIP"]
    # A skip after a skip is no change; a skip where a boot was is a regression.
    assert compare.compare(skipped, skipped).changes == []
    booted = Results(runs=[_as_booted(skipped.runs[0])])
    regressions = compare.compare(booted, skipped).regressions
    assert [(c.kind, c.where) for c in regressions] == [("verdict", "riscv64 hvo=on")]
    assert "pass -> skip" in regressions[0].what
    assert [c.kind for c in compare.compare(skipped, booted).improvements] == ["verdict"]


def _as_booted(run: Run) -> Run:
    """The same arch and release booted and passed, as a base for compare."""
    return replace(run, verdict="pass", verdict_reason="booted", accel=replace(run.accel, used="tcg"))


def test_plugin_release_matrix_ids_and_a_skipped_arch(pytester: pytest.Pytester) -> None:
    """--hvo-kernel takes the same specs: a release matrix collects one boot per release (ids
    apart), and a suite with no kernel for the arch is one skipped boot item, with no boot."""
    listed = pytester.runpytest_subprocess("--hvo-arch", "x86_64", "--hvo-kernel", "debian:trixie,debian",
                                           "--hvo-setting", "on", "-p", "no:cacheprovider", "--collect-only",
                                           "-q")
    ids = {line.split("::")[0] for line in listed.stdout.lines if line.startswith("hvo/")}
    assert ids == {"hvo/x86_64-debian-trixie-hvo-on", "hvo/x86_64-debian-hvo-on"}, listed.stdout.str()
    started = time.monotonic()
    result = pytester.runpytest_subprocess("--hvo-arch", "riscv64", "--hvo-kernel", "debian:experimental",
                                           "--hvo-setting", "on", "-p", "no:cacheprovider", "-rs")
    assert result.parseoutcomes() == {"skipped": 1}, result.stdout.str()
    assert "Debian experimental has no linux kernel for riscv64" in result.stdout.str()
    assert time.monotonic() - started < 60  # no boot
