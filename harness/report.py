"""Human-readable views of results records: the terminal table and the findings list.

The table is read in a terminal of 100 columns and in CI logs, so each boot is a block: a
heading with its verdict, one line per scenario (the reason cut to fit), each reason that
repeats in the boot said once below it under a mark, then the findings with the statement
that fired. The full texts are in the results JSON and `hvo-harness report`."""

from __future__ import annotations

import sys
import textwrap

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.dmesg import ConsoleReport
from harness.finding_groups import group_findings
from harness.results import Finding, Results, Run, run_unit

_STATUS_STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow", "error": "bold magenta"}
# Piped to a file or a CI log: as wide as a terminal that is not a tty is taken to be.
PIPE_WIDTH = 100
# Lines of a finding's statement shown in the terminal; the report shows them all.
_STATEMENT_LINES = 3


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


def boot_name(run: Run) -> str:
    return " ".join(part for part in (run.arch, run_unit(run), f"hvo={run.hvo.requested}") if part)


def reason_marks(run: Run) -> dict[str, int]:
    """The reasons that more than one scenario of the boot gives, numbered in order: each is
    printed once under the boot's table, and its rows show only the mark."""
    counts: dict[str, int] = {}
    for scenario in run.scenarios:
        counts[scenario.reason] = counts.get(scenario.reason, 0) + 1
    repeated = [reason for reason, count in counts.items() if count > 1 and reason]
    return {reason: number for number, reason in enumerate(repeated, 1)}


_SCENARIO_COLUMNS = ("scenario", "status", "pages", "KiB e/c/m")
# What rich puts around SIMPLE_HEAD columns with padding (0, 1) and no outer edge or padding:
# one space of padding on each inner side and a one-column separator between columns.
_COLUMN_GAP = 3


def scenario_table(run: Run, width: int = PIPE_WIDTH) -> Table:
    """One line per scenario: name, status, pages allocated/requested, vmemmap KiB per page
    expected/claimed/measured, and the reason (or its mark) cut with an ellipsis to what is
    left of WIDTH. The other columns keep their full width: a name is never cut."""
    marks = reason_marks(run)
    rows = []
    for index, scenario in enumerate(run.scenarios):
        mark = marks.get(scenario.reason)
        rows.append((scenario.name, scenario.status, f"{scenario.allocated}/{scenario.requested}",
                     _vmemmap_cell(run, index),
                     f"see [{mark}]" if mark else " ".join(scenario.reason.split())))
    widths = [max(len(column), *(len(row[i]) for row in rows)) for i, column in enumerate(_SCENARIO_COLUMNS)]
    reason_width = max(8, width - sum(widths) - _COLUMN_GAP * len(widths))
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))
    for column, column_width in zip(_SCENARIO_COLUMNS, widths, strict=True):
        table.add_column(column, no_wrap=True, min_width=column_width)
    table.add_column("reason", no_wrap=True, overflow="ellipsis", max_width=reason_width)
    for name, status, pages, vmemmap, reason in rows:
        table.add_row(escape(name), _verdict_markup(status), pages, vmemmap, escape(reason))
    return table


def _verdict_markup(verdict: str) -> str:
    return f"[{_STATUS_STYLE.get(verdict, '')}]{verdict}[/]"


def run_summaries(results: Results) -> list[str]:
    """One line per boot: verdict and why (a skipped boot: why it was not booted)."""
    lines = []
    for run in results.runs:
        style = _STATUS_STYLE.get(run.verdict, "")
        name, reason = escape(boot_name(run)), escape(run.verdict_reason)
        if run.verdict == "skip":
            lines.append(f"[b]{name}[/]: [{style}]skip[/] - {reason}. Not booted.")
            continue
        lines.append(f"[b]{name}[/]: [{style}]{run.verdict}[/] - {reason}")
    return lines


def boot_facts(run: Run) -> str:
    """The kernel, HVO's state, the boot time and accelerator (or, for a kernel the harness did
    not boot, the target it ran on and whether its settings were put back), and the console
    log: one paragraph, wrapped by the caller."""
    accel = run.accel.used + (f" ({run.accel.kvm_reason})" if run.accel.kvm_reason else "")
    how = f"boot {run.boot_seconds} s, ended {run.ended}, accel {accel}"
    target = run.target or {}
    if target.get("address"):
        # Run.target: a machine that was running already (harness/targets/), no boot time.
        how = f"target {target.get('type')} {target['address']} (its running kernel), ended {run.ended}"
        wrong = target.get("not_restored") or []
        if wrong:
            how += f", settings NOT restored ({len(wrong)} setting{'s' if len(wrong) != 1 else ''})"
        elif target.get("restored"):
            how += ", settings restored"
    return (f"kernel {_kernel_cell(run)} ({run.kernel.release or 'release unknown'}); "
            f"HVO {run.hvo.state}: {run.hvo.reason}; {how}{memory_fact(run)}; console {run.console_log}")


def memory_fact(run: Run) -> str:
    """', memory ...': what the guest's RAM was (Run.memory), where the harness chose it."""
    memory = run.memory or {}
    if memory.get("backing") == "pool":
        reused = memory.get("reused") or []
        kind = "reused" if reused and all(reused) else "new" if not any(reused) else "partly reused"
        return f", memory: {kind} pool files"
    if memory.get("backing") == "fresh":
        return f", memory: fresh RAM ({memory.get('why') or 'no reason recorded'})"
    return ""


def statement_lines(finding: Finding, limit: int | None = _STATEMENT_LINES) -> list[str]:
    """The statement that fired, 'file:line  text' per source line, or why it is not at hand;
    nothing for a finding from before the source was read (Finding.source None)."""
    source = finding.source
    if not source:
        return []
    if source.get("status") != "found":
        return [f"source: {source.get('status', '?')}: {source.get('why', '')}"]
    lines = source.get("lines") or []
    shown = [f"{source.get('file')}:{entry.get('line')}  {str(entry.get('text', '')).strip()}"
             for entry in lines[:limit]]
    if limit is not None and len(lines) > limit:
        shown.append(f"(+{len(lines) - limit} more lines in the report)")
    return shown


def trace_line(finding: Finding) -> str | None:
    """The decoded call trace in one line (its first frames), or why it was not decoded."""
    trace = finding.trace
    if not trace:
        return None
    if trace.get("status") != "decoded":
        return f"trace: not decoded: {trace.get('why', '')}"
    frames = trace.get("frames") or []
    shown = " < ".join(
        f"{frame.get('function')} ({frame.get('file')}:{frame.get('line')})" if frame.get("file")
        else str(frame.get("function")) for frame in frames[:3])
    return f"trace: {len(frames)} frames decoded: {shown}" + (" < ..." if len(frames) > 3 else "")


def _wrapped(out: Console, text: str, indent: str, style: str = "") -> None:
    width = max(out.width, 40)
    for line in textwrap.wrap(" ".join(text.split()), width=width, initial_indent=indent,
                              subsequent_indent=" " * len(indent) + "    ") or [indent]:
        out.print(f"[{style}]{escape(line)}[/]" if style else escape(line), highlight=False,
                  no_wrap=True, overflow="crop")


def _cropped(out: Console, text: str) -> None:
    """A line that is cut at the terminal's width rather than wrapped: source and traces."""
    line = text if len(text) <= out.width else text[: out.width - 1] + "…"
    out.print(escape(line), highlight=False, no_wrap=True, overflow="crop")


def print_run(run: Run, out: Console) -> None:
    style = _STATUS_STYLE.get(run.verdict, "")
    name = boot_name(run)
    if run.verdict == "skip":
        _wrapped(out, f"{name}: skip - {run.verdict_reason}. Not booted.", "", style)
        out.print()
        return
    _wrapped(out, f"{name}: {run.verdict.upper()} - {run.verdict_reason}", "", style)
    _wrapped(out, boot_facts(run), "  ")
    if run.scenarios:
        out.print(scenario_table(run, out.width))
        for reason, number in reason_marks(run).items():
            _wrapped(out, f"[{number}] {reason}", "  ")
    else:
        out.print("  no scenarios ran", highlight=False)
    groups = group_findings(run.findings)
    if groups:
        out.print(f"  findings ({len(run.findings)}):", highlight=False)
    for group in groups:
        finding = group.example
        count = f"{group.count} x " if group.count > 1 else ""
        _wrapped(out, f"{count}{finding.summary()}", "  - ")
        for line in statement_lines(finding):
            _cropped(out, "      " + line)
        trace = trace_line(finding)
        if trace:
            _cropped(out, "      " + trace)
    out.print()


def print_results(results: Results, console: Console | None = None) -> None:
    """Each boot's block (print_run), then one line per boot: the verdicts at a glance."""
    out = console or Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)
    for run in results.runs:
        print_run(run, out)
    for line in run_summaries(results):
        out.print(line, highlight=False, no_wrap=True, overflow="ellipsis")


def _statement_block(finding: Finding) -> list[str]:
    """For `hvo-harness parse`: the statement that fired, as read from the kernel's source
    (Finding.source): its lines with their numbers and the function they are in, or why not."""
    source = finding.source
    if not source:
        return []
    if source.get("status") != "found":
        return [f"statement: {source.get('status')}: {source.get('why', '')}"]
    function = source.get("function") or "outside any function"
    printed = f" (the kernel printed {finding.function})" if finding.function and \
        finding.function.split(".")[0] != function else ""
    head = (f"statement at {source['file']}:{source['line']} in {function}(){printed}, "
            f"{source.get('origin')}; check: {finding.check or 'none'}")
    return [head, *(f"  {entry['line']:>5} | {entry['text']}" for entry in source.get("lines", []))]


def _trace_block(finding: Finding) -> list[str]:
    """For `hvo-harness parse`: the decoded call trace (Finding.trace), a frame per line."""
    trace = finding.trace
    if not trace:
        return []
    if trace.get("status") != "decoded":
        return [f"trace: not decoded: {trace.get('why', '')}"]
    lines = [f"trace decoded with {trace.get('origin')} ({trace.get('vmlinux')}):"]
    for frame in trace.get("frames", []):
        where = f"{frame.get('file')}:{frame.get('line')}" if frame.get("file") else "?"
        mark = "  (inlined)" if frame.get("inlined") else ""
        lines.append(f"  {frame['function']} at {where}{mark}")
    if trace.get("why"):
        lines.append(f"  {trace['why']}")
    return lines


def print_console_report(report: ConsoleReport, console: Console | None = None) -> None:
    # Console lines are long; folding them at 80 columns in a pipe makes the excerpt unreadable.
    out = console or Console(width=None if sys.stdout.isatty() else 220)
    if report.findings:
        for finding in report.findings:
            out.print(f"[bold red]{finding.kind}[/] {finding.summary()}", highlight=False)
            out.print(finding.excerpt, markup=False, highlight=False)
            for line in _statement_block(finding) + _trace_block(finding):
                out.print(line, markup=False, highlight=False)
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
