"""Results as a report to read or attach: report.md and one self-contained report.html.

Per run: the verdict and its reason, the HVO state, the findings and the scenario table; for
the whole file, the vmemmap savings (expected / claimed / measured KiB per huge page) per build
and huge page size, as a table and, in HTML, as inline SVG charts.

Everything that comes from a results file is untrusted: reasons and findings quote the guest's
console, which anything running in the guest can write to. In HTML every value is escaped on
the way in (`element()` escapes whatever is not already `Markup`), and the page's Content
Security Policy allows no scripts at all, so a slip cannot run one. In Markdown, table cells
and inline text escape what would break a table or start markup, and excerpts go in fences
longer than any run of backticks inside them.
"""

from __future__ import annotations

import html
import math
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from string import Template

from harness.finding_groups import FindingGroup, group_findings
from harness.results import Finding, Results, Run, Scenario, run_unit

MARKDOWN_NAME = "report.md"
HTML_NAME = "report.html"
_SAVINGS_FIELDS = ("expected", "claimed", "measured")
_SIZE = re.compile(r"^(\d+)([KMGT]?)$")
_UNIT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


# --- what the report shows, whatever its format ------------------------------------------


def run_title(run: Run) -> str:
    return f"{build_label(run)} hvo={run.hvo.requested}"


def build_label(run: Run) -> str:
    """The arch and what was booted on it: 'riscv64/debug+4k', 'x86_64/trixie' (a Debian
    release, so that a release matrix's runs of one arch stay apart), 'x86_64'."""
    unit = run_unit(run)
    return f"{run.arch}{'/' + unit if unit else ''}"


def _size_bytes(size: str) -> int:
    match = _SIZE.match(size.upper())
    return int(match.group(1)) * _UNIT[match.group(2)] if match else 0


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


@dataclass(frozen=True)
class Spread:
    """The values one quantity took over a group of scenarios: one number when they agree."""

    low: float
    high: float

    def text(self) -> str:
        return f"{self.low:g}" if self.low == self.high else f"{self.low:g} to {self.high:g}"


@dataclass(frozen=True)
class SavingsGroup:
    """vmemmap KiB freed per huge page for one build, huge page size and HVO setting, over
    every scenario (node, boot/runtime, boot HVO) that got as far as a number."""

    build: str
    size: str
    hvo: str  # HVO in force for the allocations: "on" | "off"
    expected: Spread | None
    claimed: Spread | None
    measured: Spread | None
    scenarios: int

    def spread(self, name: str) -> Spread | None:
        spread: Spread | None = getattr(self, name)
        return spread

    @property
    def consistent(self) -> bool:
        """What the judge requires: expected = measured, and with HVO on also = claimed (with
        HVO off the kernel still claims what it *could* free)."""
        names = _SAVINGS_FIELDS if self.hvo == "on" else ("expected", "measured")
        spreads = [self.spread(name) for name in names]
        values = {(s.low, s.high) for s in spreads if s is not None}
        return None not in spreads and len(values) == 1 and all(s.low == s.high for s in spreads if s)


def _spread(values: list[float | None]) -> Spread | None:
    numbers = [v for v in values if v is not None]
    return Spread(min(numbers), max(numbers)) if numbers else None


def savings_groups(results: Results) -> list[SavingsGroup]:
    """Groups by huge page size (smallest first), then build (in run order), HVO on first."""
    collected: dict[tuple[str, str, str], list[Scenario]] = {}
    for run in results.runs:
        for scenario in run.scenarios:
            vm = scenario.vmemmap
            if (vm.expected_kib_per_page, vm.claimed_kib_per_page, vm.measured_kib_per_page) == (None,) * 3:
                continue
            collected.setdefault((build_label(run), scenario.size, scenario.hvo), []).append(scenario)
    builds = list(dict.fromkeys(build_label(run) for run in results.runs))
    ordered = sorted(collected, key=lambda k: (_size_bytes(k[1]), k[1], builds.index(k[0]), k[2] != "on"))
    return [
        SavingsGroup(
            build, size, hvo,
            *(_spread([getattr(s.vmemmap, f"{name}_kib_per_page") for s in collected[(build, size, hvo)]])
              for name in _SAVINGS_FIELDS),
            scenarios=len(collected[(build, size, hvo)]),
        )
        for build, size, hvo in ordered
    ]


def _status_counts(run: Run) -> str:
    statuses = [s.status for s in run.scenarios]
    return " / ".join(str(statuses.count(status)) for status in ("pass", "fail", "skip"))


def _kernel_text(run: Run) -> str:
    source = run.kernel.source
    kind = source.get("type")
    if kind == "tree":
        what = f"tree {source.get('tree')} at {source.get('describe') or source.get('commit') or '?'}"
        if source.get("dirty"):
            what += " (uncommitted changes)"
        if source.get("patches"):
            what += f" + {len(source['patches'])} patch file(s)"
    elif kind == "debian":
        packages = source.get("packages", [])
        suite = f"{source['suite']}: " if source.get("suite") else ""
        what = f"Debian {suite}" + (", ".join(f"{p.get('name')} {p.get('version')}" for p in packages)
                                    or f"none for this arch ({source.get('spec') or 'asked for'})")
    else:
        what = f"image {run.kernel.path}"
    digest = f"sha256 {run.kernel.sha256[:16]}" if run.kernel.sha256 else "no image"
    return f"{run.kernel.release or 'release unknown'}; {what}; {digest}"


def _accel_text(run: Run) -> str:
    return run.accel.used + (f" ({run.accel.kvm_reason})" if run.accel.kvm_reason else "")


def _where(group: FindingGroup) -> str:
    finding = group.example
    if not finding.file:
        return "-"
    return f"{finding.file}:{finding.line}" if finding.line else finding.file


def _headline(group: FindingGroup) -> str:
    return group.example.headline()


def struct_page_text(run: Run) -> str | None:
    """sizeof(struct page) as the kernel has it ('64 bytes (BTF in the image)'), or why it was
    not measured; None when the results predate the measurement."""
    measured = run.kernel.struct_page
    if not measured:
        return None
    if measured.get("size"):
        return f"{measured['size']} bytes ({measured.get('origin')})"
    return str(measured.get("why") or "not measured")


def statement_heading(finding: Finding) -> str | None:
    """What the source says of a finding: where the statement is, or why it is not at hand."""
    source = finding.source
    if not source:
        return None
    if source.get("status") != "found":
        return f"Source: {source.get('status')} - {source.get('why', '')}"
    inside = f" in {source['function']}" if source.get("function") else ""
    where = f"{source.get('file')}:{source.get('line')}"
    return f"Statement that fired, {where}{inside} ({source.get('origin')}):"


def statement_text(finding: Finding) -> str | None:
    """The source lines of the statement, numbered; their common indentation removed."""
    source = finding.source
    if not source or source.get("status") != "found" or not source.get("lines"):
        return None
    entries = source["lines"]
    texts = textwrap.dedent("\n".join(str(e.get("text", "")).expandtabs(8) for e in entries)).splitlines()
    numbered = zip(entries, texts, strict=False)
    return "\n".join(f"{entry.get('line'):>5}  {text.rstrip()}" for entry, text in numbered)


def trace_heading(finding: Finding) -> str | None:
    trace = finding.trace
    if not trace:
        return None
    if trace.get("status") != "decoded":
        return f"Trace not decoded: {trace.get('why', '')}"
    partly = f" Decoded in part: {trace['why']}." if trace.get("why") else ""
    return f"Decoded trace (against {trace.get('vmlinux')}, {trace.get('origin')}):{partly}"


def trace_text(finding: Finding) -> str | None:
    trace = finding.trace
    if not trace or trace.get("status") != "decoded":
        return None
    return str(trace.get("text", ""))


# --- Markdown ------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*\[\]|])")
_MD_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def md_inline(value: object) -> str:
    """Text for a table cell or an inline run: one line, no markup, no HTML, no table break.

    Backslash-escapes what would start markup or end a cell (`|`), turns `<`, `>` and `&` into
    entities so raw HTML in console text stays text, and leaves intraword underscores alone
    (`vmemmap_remap_pte` cannot start emphasis, and stays readable in the raw file)."""
    text = " ".join(str(value).split())
    text = _MD_SPECIAL.sub(r"\\\1", text)
    text = _MD_UNDERSCORE.sub(r"\\_", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def md_fence(text: str) -> str:
    """A fenced block that TEXT cannot close: the fence is longer than any backtick run in it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def _md_table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_inline(cell) for cell in row) + " |" for row in rows]
    return lines


def _md_savings(results: Results) -> list[str]:
    groups = savings_groups(results)
    lines = ["## vmemmap savings", "",
             "KiB of vmemmap freed per huge page, over every scenario that got as far as a number "
             "(a range when they differ). With HVO off the kernel still claims what it could free.", ""]
    if not groups:
        return [*lines, "No scenario measured a saving.", ""]
    rows: list[list[object]] = [
        [g.build, g.size, g.hvo, *(_spread_text(g.spread(name)) for name in _SAVINGS_FIELDS), g.scenarios,
         "yes" if g.consistent else "NO"]
        for g in groups
    ]
    header = ["build", "size", "HVO", "expected", "claimed", "measured", "scenarios", "as required"]
    return [*lines, *_md_table(header, rows), ""]


def _spread_text(spread: Spread | None) -> str:
    return "-" if spread is None else spread.text()


def _md_run(run: Run) -> list[str]:
    lines = [
        f"## {md_inline(run_title(run))}: {run.verdict.upper()}", "",
        f"- Verdict: **{md_inline(run.verdict)}** - {md_inline(run.verdict_reason)}",
        f"- HVO: {md_inline(run.hvo.state)} - {md_inline(run.hvo.reason)}",
        f"- Kernel: {md_inline(_kernel_text(run))}",
        f"- Boot: {md_inline(_number(run.boot_seconds))} s, ended {md_inline(run.ended)}, "
        f"accel {md_inline(_accel_text(run))}",
        f"- Command line: {md_inline(run.cmdline)}",
        f"- Console log: {md_inline(run.console_log)}",
    ]
    struct_page = struct_page_text(run)
    if struct_page:
        lines.append(f"- struct page: {md_inline(struct_page)}")
    lines.append("")
    groups = group_findings(run.findings)
    lines += [f"### Findings ({len(run.findings)})", ""]
    if groups:
        rows: list[list[object]] = [
            [group.count, group.example.kind, group.example.function or "-", _where(group),
             group.example.check or "-", _headline(group)]
            for group in groups
        ]
        lines += [*_md_table(["count", "kind", "function", "file:line", "check", "headline"], rows), ""]
        for number, group in enumerate(groups, 1):
            lines += [f"Finding {number} ({md_inline(group.example.summary())}), "
                      f"{'the longest of ' + str(group.count) if group.count > 1 else 'excerpt'}:", "",
                      md_fence(group.example.excerpt), ""]
            lines += _md_decoded(group.example)
    else:
        lines += ["No findings.", ""]
    lines += [f"### Scenarios ({_status_counts(run)} pass / fail / skip)", ""]
    rows = [
        [s.name, s.status.upper(), f"{s.allocated}/{s.requested}",
         *(_number(getattr(s.vmemmap, f"{name}_kib_per_page")) for name in _SAVINGS_FIELDS), s.reason]
        for s in run.scenarios
    ]
    header = ["scenario", "status", "pages", "expected KiB", "claimed KiB", "measured KiB", "reason"]
    return [*lines, *(_md_table(header, rows) if rows else ["No scenarios ran."]), "", *_md_triage(run)]


def _md_decoded(finding: Finding) -> list[str]:
    """The statement that fired and the decoded trace of a finding, when they are known."""
    lines: list[str] = []
    for heading, text in ((statement_heading(finding), statement_text(finding)),
                          (trace_heading(finding), trace_text(finding))):
        if heading:
            lines += [md_inline(heading), ""]
        if text:
            lines += [md_fence(text), ""]
    return lines


_TRIAGE_COLUMNS = ("variation", "verdict", "outcome", "findings", "failing scenarios", "detail")


def _triage_rows(run: Run) -> list[list[object]]:
    """`hvo-harness triage` of the run (harness/triage.py), one row per variation."""
    return [[row.get("name", "?"), row.get("verdict") or "-", row.get("outcome", "?"),
             row.get("findings") or "-", row.get("scenarios") or "-", row.get("detail", "")]
            for row in (run.triage or {}).get("variations", [])]


def _md_triage(run: Run) -> list[str]:
    if not run.triage:
        return []
    return [f"### Triage ({len(_triage_rows(run))} variations)", "",
            *_md_table(list(_TRIAGE_COLUMNS), _triage_rows(run)), "",
            f"Conclusion: {md_inline(run.triage.get('conclusion', ''))}", ""]


def render_markdown(results: Results, source: str) -> str:
    lines = ["# hvo-harness report", "",
             f"Results {md_inline(source)}, harness {md_inline(results.harness_version or '?')}, "
             f"{len(results.runs)} run(s).", ""]
    summary: list[list[object]] = [
        [run_title(run), run.verdict.upper(), run.hvo.state, len(run.findings), _status_counts(run)]
        for run in results.runs
    ]
    lines += [*_md_table(["run", "verdict", "HVO", "findings", "scenarios pass / fail / skip"], summary), ""]
    lines += _md_savings(results)
    for run in results.runs:
        lines += _md_run(run)
    return "\n".join(lines).rstrip("\n") + "\n"


# --- HTML ----------------------------------------------------------------------------------


class Markup(str):
    """Text that is already HTML. Anything else is escaped when it is put into an element."""


def escape(value: object) -> Markup:
    return value if isinstance(value, Markup) else Markup(html.escape(str(value), quote=True))


def element(tag: str, *children: object, **attributes: object) -> Markup:
    """<tag attributes>children</tag>, every child and attribute value escaped unless Markup.

    Attribute names: a trailing '_' is dropped (class_) and '_' becomes '-' (aria_label,
    text_anchor); None leaves the attribute out."""
    attrs = "".join(
        f' {name.rstrip("_").replace("_", "-")}="{html.escape(str(value), quote=True)}"'
        for name, value in attributes.items() if value is not None
    )
    return Markup(f"<{tag}{attrs}>" + "".join(escape(child) for child in children) + f"</{tag}>")


def _join(parts: list[Markup]) -> Markup:
    return Markup("".join(parts))


_PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em;
       color: #1a1a1a; }
h1, h2, h3 { line-height: 1.2; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border: 1px solid #d0d0d0; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.reason { max-width: 40em; }
.pass { color: #1b7a35; font-weight: 600; } .fail { color: #c0182b; font-weight: 700; }
.skip { color: #8a6d00; font-weight: 600; } .error { color: #a3009e; font-weight: 700; }
.no { color: #c0182b; font-weight: 700; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .15em 1em; }
dt { font-weight: 600; } dd { margin: 0; overflow-wrap: anywhere; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: 12px; }
details summary { cursor: pointer; } .charts { display: flex; flex-wrap: wrap; gap: 1.5em; }
.legend span { display: inline-block; width: .9em; height: .9em; margin: 0 .3em 0 1em; vertical-align: -1px; }
code { font-size: 12px; } td.scenario { white-space: nowrap; }
</style>
</head>
<body>
$body
</body>
</html>
""")

_BAR_COLOURS = {"expected": "#bbbbbb", "claimed": "#4477aa", "measured": "#228833"}


def _status_cell(status: str) -> Markup:
    return element("td", status.upper(), class_=status)


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is at least VALUE: an axis top."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value)


def savings_chart(size: str, groups: list[SavingsGroup]) -> Markup:
    """One inline SVG bar chart: per (build, HVO) three bars, expected / claimed / measured."""
    bar, gap, left, top, plot_height, bottom = 16, 44, 58, 56, 160, 52
    group_width = 3 * bar + gap
    width = left + group_width * len(groups) + 12
    height = top + plot_height + bottom
    axis_top = _nice_ceiling(max((s.high for g in groups for n in _SAVINGS_FIELDS
                                  if (s := g.spread(n)) is not None), default=0.0))

    def y(value: float) -> float:
        return top + plot_height - plot_height * max(0.0, min(value, axis_top)) / axis_top

    title = f"{size} huge pages: vmemmap KiB freed per page"
    parts: list[Markup] = [element("title", title),
                           element("text", title, x=left, y=16, font_size=13, font_weight="bold")]
    for tick in (0.0, axis_top / 2, axis_top):
        parts.append(element("line", x1=left, x2=width - 12, y1=f"{y(tick):.1f}", y2=f"{y(tick):.1f}",
                             stroke="#e2e2e2"))
        parts.append(element("text", f"{tick:g}", x=left - 6, y=f"{y(tick) + 4:.1f}", font_size=10,
                             text_anchor="end"))
    for index, group in enumerate(groups):
        x0 = left + index * group_width + gap / 2
        name = f"{group.build} HVO {group.hvo}"
        bars: list[Markup] = [element("title", f"{name}, {size}: {group.scenarios} scenario(s)")]
        for position, field_name in enumerate(_SAVINGS_FIELDS):
            spread = group.spread(field_name)
            x = x0 + position * bar
            label = _spread_text(spread) if spread else "n/a"
            if spread is not None:
                bars.append(element(
                    "rect", element("title", f"{name}, {size}, {field_name}: {label} KiB"),
                    x=f"{x:.1f}", y=f"{y(spread.high):.1f}", width=bar - 2,
                    height=f"{y(0) - y(spread.high):.1f}", fill=_BAR_COLOURS[field_name],
                ))
                if spread.low != spread.high:  # where the lowest value of a range lies
                    low = f"{y(spread.low):.1f}"
                    bars.append(element("line", x1=f"{x:.1f}", x2=f"{x + bar - 2:.1f}", y1=low, y2=low,
                                        stroke="#000", stroke_width=2))
            label_y = (y(spread.high) if spread else y(0)) - 4
            bars.append(element("text", label, x=f"{x + bar / 2 + 3:.1f}", y=f"{label_y:.1f}", font_size=9,
                                transform=f"rotate(-90 {x + bar / 2 + 3:.1f} {label_y:.1f})"))
        centre = f"{x0 + 1.5 * bar - 1:.1f}"
        # Arch, variant and HVO on lines of their own: a group is narrower than 'riscv64/debug+4k'.
        arch, _, variant = group.build.partition("/")
        mark = "" if group.consistent else " ≠"
        for line, (text, colour) in enumerate(((arch, None), (variant, None),
                                               (f"HVO {group.hvo}{mark}", "#c0182b" if mark else None))):
            short = text if len(text) <= 14 else text[:13] + "…"
            bars.append(element("text", short, x=centre, y=top + plot_height + 14 + 12 * line, font_size=10,
                                text_anchor="middle", fill=colour))
        parts.append(element("g", *bars))
    parts.append(element("line", x1=left, x2=width - 12, y1=y(0), y2=y(0), stroke="#555"))
    return element("svg", *parts, xmlns="http://www.w3.org/2000/svg", width=width, height=height,
                   viewBox=f"0 0 {width} {height}", role="img", aria_label=title,
                   font_family="system-ui, sans-serif")


def _html_savings(results: Results) -> Markup:
    groups = savings_groups(results)
    parts = [element("h2", "vmemmap savings", id="savings"),
             element("p", "KiB of vmemmap freed per huge page, over every scenario that got as far as "
                          "a number (a range when they differ; the black mark is its low end). With HVO "
                          "off the kernel still claims what it could free. ≠: not as the judge requires "
                          "(expected = measured, and with HVO on = claimed).")]
    if not groups:
        return _join([*parts, element("p", "No scenario measured a saving.")])
    legend = _join([Markup(f'<span style="background:{colour}"></span>') + escape(name)
                    for name, colour in _BAR_COLOURS.items()])
    parts.append(element("p", legend, class_="legend"))
    sizes = list(dict.fromkeys(g.size for g in groups))
    charts = [savings_chart(size, [g for g in groups if g.size == size]) for size in sizes]
    parts.append(element("div", *charts, class_="charts"))
    header = element("tr", *(element("th", h) for h in
                             ("build", "size", "HVO", "expected", "claimed", "measured", "scenarios",
                              "as required")))
    rows = [
        element("tr", element("td", g.build), element("td", g.size), element("td", g.hvo),
                *(element("td", _spread_text(g.spread(n)), class_="num") for n in _SAVINGS_FIELDS),
                element("td", g.scenarios, class_="num"),
                element("td", "yes") if g.consistent else element("td", "NO", class_="no"))
        for g in groups
    ]
    parts.append(element("table", element("thead", header), element("tbody", *rows)))
    return _join(parts)


def _html_findings(run: Run) -> Markup:
    groups = group_findings(run.findings)
    heading = element("h3", f"Findings ({len(run.findings)})")
    if not groups:
        return _join([heading, element("p", "No findings.")])
    header = element("tr", *(element("th", h) for h in
                             ("count", "kind", "function", "file:line", "check", "headline and excerpt")))
    rows = []
    for group in groups:
        finding = group.example
        note = f"the longest of {group.count}" if group.count > 1 else "excerpt"
        excerpt = element("details", element("summary", note), element("pre", finding.excerpt))
        rows.append(element(
            "tr", element("td", group.count, class_="num"), element("td", finding.kind),
            element("td", element("code", finding.function) if finding.function else "-"),
            element("td", _where(group)), element("td", finding.check or "-"),
            element("td", element("div", _headline(group)), excerpt, _html_decoded(finding)),
        ))
    return _join([heading, element("table", element("thead", header), element("tbody", *rows))])


def _html_decoded(finding: Finding) -> Markup:
    """The statement that fired (shown) and the decoded trace (folded), when known."""
    parts: list[Markup] = []
    heading, text = statement_heading(finding), statement_text(finding)
    if heading:
        parts.append(element("div", heading))
    if text:
        parts.append(element("pre", text))
    heading, text = trace_heading(finding), trace_text(finding)
    if heading and text:
        parts.append(element("details", element("summary", heading), element("pre", text)))
    elif heading:
        parts.append(element("div", heading))
    return _join(parts)


def _html_scenarios(run: Run) -> Markup:
    heading = element("h3", f"Scenarios ({_status_counts(run)} pass / fail / skip)")
    if not run.scenarios:
        return _join([heading, element("p", "No scenarios ran.")])
    header = element("tr", *(element("th", h) for h in
                             ("scenario", "status", "pages", "expected KiB", "claimed KiB", "measured KiB",
                              "reason")))
    rows = [
        element("tr", element("td", element("code", s.name), class_="scenario"), _status_cell(s.status),
                element("td", f"{s.allocated}/{s.requested}", class_="num"),
                *(element("td", _number(getattr(s.vmemmap, f"{n}_kib_per_page")), class_="num")
                  for n in _SAVINGS_FIELDS),
                element("td", s.reason, class_="reason"))
        for s in run.scenarios
    ]
    return _join([heading, element("table", element("thead", header), element("tbody", *rows))])


def _html_run(index: int, run: Run) -> Markup:
    facts = [
        ("Verdict", _join([element("span", run.verdict.upper(), class_=run.verdict),
                           escape(f" - {run.verdict_reason}")])),
        ("HVO", f"{run.hvo.state} - {run.hvo.reason}"),
        ("Kernel", _kernel_text(run)),
        ("Boot", f"{_number(run.boot_seconds)} s, ended {run.ended}, accel {_accel_text(run)}"),
        ("Command line", element("code", run.cmdline)),
        ("Console log", element("code", run.console_log)),
    ]
    struct_page = struct_page_text(run)
    if struct_page:
        facts.append(("struct page", struct_page))
    details = element("dl", *(_join([element("dt", name), element("dd", value)]) for name, value in facts))
    heading = element("h2", _join([escape(f"{run_title(run)}: "),
                                   element("span", run.verdict.upper(), class_=run.verdict)]),
                      id=f"run-{index}")
    return _join([heading, details, _html_findings(run), _html_scenarios(run), _html_triage(run)])


def _html_triage(run: Run) -> Markup:
    if not run.triage:
        return Markup("")
    header = element("tr", *(element("th", h) for h in _TRIAGE_COLUMNS))
    rows = [element("tr", element("td", element("code", name)), _status_cell(str(verdict)),
                    *(element("td", cell) for cell in rest))
            for name, verdict, *rest in _triage_rows(run)]
    return _join([element("h3", f"Triage ({len(rows)} variations)"),
                  element("table", element("thead", header), element("tbody", *rows)),
                  element("p", f"Conclusion: {run.triage.get('conclusion', '')}")])


def render_html(results: Results, source: str) -> str:
    header = element("tr", *(element("th", h) for h in
                             ("run", "verdict", "HVO", "findings", "scenarios pass / fail / skip")))
    rows = [
        element("tr", element("td", element("a", run_title(run), href=f"#run-{index}")),
                _status_cell(run.verdict), element("td", run.hvo.state),
                element("td", len(run.findings), class_="num"),
                element("td", _status_counts(run), class_="num"))
        for index, run in enumerate(results.runs)
    ]
    body = _join([
        element("h1", "hvo-harness report"),
        element("p", f"Results {source}, harness {results.harness_version or '?'}, "
                     f"{len(results.runs)} run(s)."),
        element("table", element("thead", header), element("tbody", *rows)),
        _html_savings(results),
        *(_html_run(index, run) for index, run in enumerate(results.runs)),
    ])
    return _PAGE.substitute(title=escape(f"hvo-harness report: {source}"), body=body)


def write_reports(results: Results, source: str, out_dir: Path) -> tuple[Path, Path]:
    """report.md and report.html in OUT_DIR; SOURCE names the results file in them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown_path, html_path = out_dir / MARKDOWN_NAME, out_dir / HTML_NAME
    markdown_path.write_text(render_markdown(results, source))
    html_path.write_text(render_html(results, source))
    return markdown_path, html_path
