"""Human-readable views of results records: the terminal table and the findings list."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from harness.dmesg import ConsoleReport
from harness.results import Results, Run, run_unit, summarize

_STATUS_STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow", "error": "bold magenta"}


def _vmemmap_cell(run: Run, index: int) -> str:
    vm = run.scenarios[index].vmemmap
    if vm.expected_kib_per_page is None:
        return ""
    fmt = lambda v: "-" if v is None else f"{v:g}"  # noqa: E731
    return f"{fmt(vm.expected_kib_per_page)}/{fmt(vm.claimed_kib_per_page)}/{fmt(vm.measured_kib_per_page)}"


def _kernel_cell(run: Run) -> str:
    """Which kernel a row is: the Debian release and version ('trixie 6.12.117-1'), the
    variant of a tree build, or the image's release."""
    source = run.kernel.source
    if source.get("type") == "debian":
        label = run.kernel.label or source.get("suite") or "sid"
        version = source.get("version")
        return f"{label} {version}" if version and version != label else label
    return run.variant or run.kernel.release or source.get("type", "")


def results_table(results: Results) -> Table:
    table = Table(title="hvo-harness: arch x scenario", show_lines=False)
    for column in ("arch", "kernel", "boot", "scenario", "status", "alloc", "vmemmap KiB/page e/c/m"):
        table.add_column(column, no_wrap=True)
    table.add_column("reason", overflow="fold", ratio=1)
    for run in results.runs:
        boot = f"hvo={run.hvo.requested}"
        kernel = _kernel_cell(run)
        if run.verdict == "skip":
            # Not booted: one row, so that the table says what was left out and why.
            table.add_row(run.arch, kernel, boot, "-", f"[{_STATUS_STYLE['skip']}]skip[/]", "", "",
                          run.verdict_reason)
        for index, scenario in enumerate(run.scenarios):
            style = _STATUS_STYLE.get(scenario.status, "")
            table.add_row(
                run.arch, kernel, boot, scenario.name, f"[{style}]{scenario.status}[/]",
                f"{scenario.allocated}/{scenario.requested}", _vmemmap_cell(run, index),
                scenario.reason,
            )
    return table


def run_summaries(results: Results) -> list[str]:
    """One line per boot: verdict, why, HVO state, findings, accelerator."""
    lines = []
    for run in results.runs:
        style = _STATUS_STYLE.get(run.verdict, "")
        name = " ".join(part for part in (run.arch, run_unit(run), f"hvo={run.hvo.requested}") if part)
        if run.verdict == "skip":
            lines.append(f"[b]{name}[/]: [{style}]skip[/] - {run.verdict_reason}. Not booted.")
            continue
        findings = summarize(run.findings) or "no findings"
        accel = run.accel.used + (f" ({run.accel.kvm_reason})" if run.accel.kvm_reason else "")
        lines.append(
            f"[b]{name}[/]: [{style}]{run.verdict}[/] - "
            f"{run.verdict_reason}. HVO {run.hvo.state}: {run.hvo.reason}. {findings}. "
            f"boot {run.boot_seconds} s, accel {accel}. console: {run.console_log}"
        )
    return lines


def print_results(results: Results, console: Console | None = None) -> None:
    # A wide table even when piped to a file or CI log: rows are long.
    out = console or Console(width=None if sys.stdout.isatty() else 220)
    out.print(results_table(results))
    for line in run_summaries(results):
        out.print(line, highlight=False)


def print_console_report(report: ConsoleReport, console: Console | None = None) -> None:
    out = console or Console()
    if report.findings:
        for finding in report.findings:
            out.print(f"[bold red]{finding.kind}[/] {finding.summary()}", highlight=False)
            out.print(finding.excerpt, markup=False, highlight=False)
    else:
        out.print("no findings")
    hugetlb = report.hugetlb
    for label, count in hugetlb.registered.items():
        freeable = hugetlb.freeable_kib.get(label)
        extra = f", {freeable} KiB vmemmap freeable per page" if freeable is not None else ""
        out.print(f"HugeTLB {label}: pre-allocated {count}{extra}", highlight=False)
    for label, line in hugetlb.unsupported.items():
        out.print(f"HugeTLB {label}: unsupported: {line}", markup=False, highlight=False)
    for failure in hugetlb.allocation_failures:
        out.print(f"HugeTLB allocation failure: {failure['line']}", markup=False, highlight=False)
