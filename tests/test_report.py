"""`report`: report.md and report.html from real results, with planted hostile console text."""

from __future__ import annotations

import copy
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from harness.report import boot_name
from harness.report_page import (
    md_fence,
    md_inline,
    render_html,
    render_markdown,
    savings_groups,
    write_reports,
)
from harness.results import Results, from_json
from tests.cli import run_cli
from tests.recorded import RISCV, X86, both_arches, document

SCRIPT = "<script>alert('pwned')</script>"


def hostile() -> dict[str, Any]:
    """Both runs, with console-borne text that tries to be markup: in a finding's excerpt and
    headline, a scenario's reason, the verdict's reason, a variant and a function name."""
    doc = both_arches()
    riscv, x86 = doc["runs"]
    riscv["findings"][0]["excerpt"] = f"[    0.1] WARNING: {SCRIPT} at evil+0x1/0x2\n{SCRIPT}"
    riscv["findings"][1]["function"] = '"><img src=x onerror=alert(1)>'
    riscv["variant"] = "debug<b>"
    x86["scenarios"][0]["reason"] = f'pipe | and `tick` and {SCRIPT} and " onmouseover="alert(1)'
    x86["verdict_reason"] = f"verdict {SCRIPT}"
    # A size reaches the chart's attributes (its aria-label) as well as its text.
    for scenario in x86["scenarios"]:
        if scenario["size"] == "2M":
            scenario["size"] = '2M" onload="alert(1)'
    return doc


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += attrs

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parsed(page: str) -> _PageParser:
    parser = _PageParser()
    parser.feed(page)
    parser.close()
    return parser


def test_html_escapes_planted_markup() -> None:
    page = render_html(from_json(hostile()), "r.json")
    parser = parsed(page)
    assert "script" not in parser.tags
    assert "img" not in parser.tags
    assert "b" not in parser.tags
    assert not [name for name, _ in parser.attributes if name.startswith("on")]
    assert "<script" not in page.lower()
    # The text is all there, as text.
    text = "".join(parser.text)
    assert f"WARNING: {SCRIPT} at evil+0x1/0x2" in text
    assert '"><img src=x onerror=alert(1)>' in text
    assert 'and " onmouseover="alert(1)' in text
    assert 'aria-label="2M&quot; onload=&quot;alert(1) huge pages: vmemmap KiB freed per page"' in page
    assert "riscv64/debug<b> hvo=on" in text
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page


def test_html_is_one_self_contained_page() -> None:
    page = render_html(from_json(both_arches()), "r.json")
    parser = parsed(page)
    assert parser.tags.count("html") == 1
    for tag in ("script", "link", "img", "iframe", "object", "embed"):
        assert tag not in parser.tags
    references = [(name, value) for name, value in parser.attributes if name in ("src", "href")]
    assert references and all(value and value.startswith("#") for _, value in references)
    assert "@import" not in page and "url(" not in page
    # What the page's policy allows: no scripts, nothing fetched, inline styles only.
    assert "default-src 'none'; style-src 'unsafe-inline'" in page


def test_html_has_each_run_its_findings_and_scenarios() -> None:
    results = from_json(both_arches())
    page = render_html(results, "r.json")
    text = " ".join("".join(parsed(page).text).split())
    for run in results.runs:
        assert " ".join(run.verdict_reason.split()) in text
        assert f"{run.hvo.state} - {run.hvo.reason}" in text
        for scenario in run.scenarios:
            assert scenario.name in text
            assert " ".join(scenario.reason.split()) in text
    assert "mm/hugetlb_vmemmap.c:223" in text
    assert "vmemmap_remap_pte" in text
    assert "BUG: Bad page state in process sh pfn:1400" in text  # the x86 headline
    assert "the longest of 60" in text
    assert "Findings (60)" in text and "Findings (2)" in text
    assert "Scenarios (8 / 6 / 4 pass / fail / skip)" in text  # riscv64
    assert "Scenarios (11 / 1 / 6 pass / fail / skip)" in text  # x86_64


def _svg_bars(page: str) -> list[str]:
    """The bar titles of the savings charts: '<build> HVO <on|off>, <size>, <field>: <value> KiB'."""
    return re.findall(r"<rect [^>]*><title>([^<]*)</title></rect>", page)


def test_chart_bars_are_the_savings_per_arch_variant_and_size() -> None:
    page = render_html(from_json(both_arches()), "r.json")
    assert page.count("<svg ") == 2  # 2M and 1G; 16G was never allocated
    assert "2M huge pages" in page and "1G huge pages" in page and "16G huge pages" not in page
    bars = _svg_bars(page)
    # 2 builds x 2 HVO settings x 2 sizes x 3 quantities, every one measured.
    assert len(bars) == 24
    assert "riscv64/debug+4k HVO on, 2M, measured: 28 KiB" in bars
    assert "x86_64 HVO on, 1G, expected: 16380 KiB" in bars
    assert "x86_64 HVO off, 1G, measured: 0 KiB" in bars
    assert "x86_64 HVO off, 1G, claimed: 16380 KiB" in bars
    assert "HVO on ≠" not in page and "HVO off ≠" not in page
    assert 'class="no"' not in page


def test_a_changed_measurement_shows_in_chart_and_table() -> None:
    doc = document(X86)
    doc["runs"][0]["scenarios"][0]["vmemmap"]["measured_kib_per_page"] = 24.0  # 2M/boot/node0
    results = from_json(doc)
    groups = {(g.build, g.size, g.hvo): g for g in savings_groups(results)}
    changed = groups[("x86_64", "2M", "on")]
    assert changed.measured is not None and (changed.measured.low, changed.measured.high) == (24.0, 28.0)
    assert not changed.consistent
    assert groups[("x86_64", "1G", "on")].consistent
    page = render_html(results, "r.json")
    assert "x86_64 HVO on, 2M, measured: 24 to 28 KiB" in _svg_bars(page)
    assert "HVO on ≠" in page
    assert "| x86_64 | 2M | on | 28 | 28 | 24 to 28 | 4 | NO |" in render_markdown(results, "r.json")


def _cells(row: str) -> list[str]:
    """A Markdown table row's cells, split at the pipes that are not escaped."""
    return re.split(r"(?<!\\)\|", row.strip())[1:-1]


def test_markdown_escapes_table_cells_and_fences_excerpts() -> None:
    markdown = render_markdown(from_json(hostile()), "r.json")
    row = next(line for line in markdown.splitlines() if line.startswith("| 2M") and "pipe" in line)
    cells = _cells(row)
    assert len(cells) == 7
    assert cells[-1].strip() == (
        "pipe \\| and \\`tick\\` and &lt;script&gt;alert('pwned')&lt;/script&gt; and "
        "\" onmouseover=\"alert(1)"
    )
    # Every row of every table has as many cells as its header.
    lines = markdown.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("|---"):
            width = len(_cells(lines[index - 1]))
            for body in lines[index + 1:]:
                if not body.startswith("|"):
                    break
                assert len(_cells(body)) == width, body
    # Outside fenced excerpts no raw tag survives; inside them it is code, shown as text.
    outside = re.sub(r"^(`{3,})text\n.*?\n\1$", "", markdown, flags=re.DOTALL | re.MULTILINE)
    assert "<script" not in outside and "<img" not in outside and "<b>" not in outside
    assert f"```text\n[    0.1] WARNING: {SCRIPT} at evil+0x1/0x2\n{SCRIPT}\n```" in markdown


def test_markdown_fence_outlasts_backticks_in_the_excerpt() -> None:
    excerpt = "before\n```\n````not the end\nafter"
    fenced = md_fence(excerpt)
    assert fenced.startswith("`````text\n") and fenced.endswith("\n`````")
    assert md_fence("plain") == "```text\nplain\n```"


@pytest.mark.parametrize(("text", "escaped"), [
    ("vmemmap_remap_pte", "vmemmap_remap_pte"),  # intraword: no emphasis possible, left readable
    ("_start_ *bold* [link](x)", "\\_start\\_ \\*bold\\* \\[link\\](x)"),
    ("a|b\nc", "a\\|b c"),
    ("x & <y>", "x &amp; &lt;y&gt;"),
    ("back\\slash", "back\\\\slash"),
])
def test_md_inline(text: str, escaped: str) -> None:
    assert md_inline(text) == escaped


def test_markdown_has_summary_savings_and_runs() -> None:
    markdown = render_markdown(from_json(both_arches()), "r.json")
    assert "| riscv64/debug+4k hvo=on | FAIL | active | 2 | 8 / 6 / 4 |" in markdown
    assert "| x86_64 hvo=on | FAIL | active | 60 | 11 / 1 / 6 |" in markdown
    assert "| riscv64/debug+4k | 1G | on | 16380 | 16380 | 16380 | 2 | yes |" in markdown
    assert "## riscv64/debug+4k hvo=on: FAIL" in markdown
    assert ("| 1G/boot/node0/hvo-on-cmdline | FAIL | 1/1 | - | - | - | kernel complained: "
            "2 x WARN at vmemmap\\_remap\\_pte (mm/hugetlb\\_vmemmap.c:223) |") not in markdown  # intraword _
    assert ("| 1G/boot/node0/hvo-on-cmdline | FAIL | 1/1 | - | - | - | kernel complained: "
            "2 x WARN at vmemmap_remap_pte (mm/hugetlb_vmemmap.c:223) |") in markdown
    assert "| 2 | warn | vmemmap_remap_pte | mm/hugetlb_vmemmap.c:223 | - |" in markdown


def test_runs_without_scenarios_or_savings_still_report() -> None:
    doc = document(RISCV)
    run = doc["runs"][0]
    run.update(verdict="error", verdict_reason="interrupted", ended="interrupted", scenarios=[], findings=[])
    results = from_json(doc)
    markdown, page = render_markdown(results, "r.json"), render_html(results, "r.json")
    for text in (markdown, page):
        assert "No scenario measured a saving." in text
        assert "No scenarios ran." in text
        assert "No findings." in text
    assert "<svg" not in page


def test_write_reports(tmp_path: Path) -> None:
    results = from_json(both_arches())
    markdown_path, html_path = write_reports(results, "r.json", tmp_path / "new" / "dir")
    assert markdown_path.read_text() == render_markdown(results, "r.json")
    assert html_path.read_text() == render_html(results, "r.json")


def test_cli_report_end_to_end(tmp_path: Path) -> None:
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(hostile()))
    out = tmp_path / "report"
    done = run_cli("report", str(results_path), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(out / "report.md"), str(out / "report.html")]
    page = (out / "report.html").read_text()
    assert "<script" not in page.lower()
    assert "Results results.json" in page
    assert "## x86_64 hvo=on: FAIL" in (out / "report.md").read_text()

    # Without --out the reports go beside the results file.
    beside = run_cli("report", str(results_path))
    assert beside.returncode == 0, beside.stderr
    assert (tmp_path / "report.md").is_file() and (tmp_path / "report.html").is_file()


def test_cli_report_bad_input(tmp_path: Path) -> None:
    done = run_cli("report", str(tmp_path / "missing.json"))
    assert done.returncode == 2
    assert done.stderr.startswith("hvo-harness: error: ") and done.stderr.count("\n") == 1
    assert not (tmp_path / "report.md").exists()


def test_report_of_a_round_trip_is_the_same() -> None:
    """The report reads records, not JSON: a results file written back by Results.write
    renders the same."""
    results = from_json(both_arches())
    again = from_json(copy.deepcopy(Results(results.runs, results.harness_version).to_json()))
    assert render_html(again, "r.json") == render_html(results, "r.json")


# --- the terminal table (harness/report.py) --------------------------------------------------

RISCV_STATEMENT = {
    "status": "found", "file": "mm/hugetlb_vmemmap.c", "line": 223, "function": "vmemmap_remap_pte",
    "origin": "linux-source-7.2 7.2.13-1",
    "lines": [{"line": 223, "text": "\t\tVM_WARN_ON_ONCE(!PageTail((const struct page *)addr));"}],
}


def _terminal(doc: dict[str, Any], width: int = 100) -> list[str]:
    from rich.console import Console

    from harness.report import print_results

    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    print_results(from_json(doc), console)
    return console.export_text().splitlines()


def _blocks(lines: list[str], results: Results) -> list[list[str]]:
    """Each boot's lines, from its heading to the next one's (the boots' one-line summaries,
    after the last block, are cut off)."""
    starts = [next(i for i, line in enumerate(lines) if line.startswith(f"{boot_name(run)}: "))
              for run in results.runs]
    return [lines[start:end] for start, end in zip(starts, [*starts[1:], len(lines)], strict=True)]


def test_table_fits_100_columns_one_line_per_scenario() -> None:
    doc = both_arches()
    lines = _terminal(doc)
    assert lines and max(len(line) for line in lines) <= 100, max(lines, key=len)
    results = from_json(doc)
    for run, block in zip(results.runs, _blocks(lines, results), strict=True):
        for scenario in run.scenarios:
            rows = [line.split() for line in block if line.startswith(scenario.name + " ")]
            assert len(rows) == 1, (scenario.name, rows)
            assert rows[0][1:3] == [scenario.status, f"{scenario.allocated}/{scenario.requested}"]


def test_table_says_a_repeated_reason_once_per_boot() -> None:
    text = "\n".join(_terminal(both_arches()))
    refusal = '16G not supported here: "HugeTLB: unsupported hugepagesz=16G"'
    # Four 16G scenarios per boot, two boots: the refusal said once in each.
    assert text.count(refusal) == 2
    assert text.count("kernel complained: 2 x WARN at vmemmap_remap_pte") == 1  # 6 riscv64 rows


def test_table_lists_findings_under_their_boot_with_the_statement() -> None:
    doc = both_arches()
    for finding in doc["runs"][0]["findings"]:
        finding["source"] = RISCV_STATEMENT
    for finding in doc["runs"][1]["findings"]:
        finding["source"] = {"status": "no file:line", "why": "the report names no file:line"}
    lines = _terminal(doc)
    riscv_start = next(i for i, line in enumerate(lines) if line.startswith("riscv64"))
    x86_start = next(i for i, line in enumerate(lines) if line.startswith("x86_64"))
    riscv_block, x86_block = lines[riscv_start:x86_start], lines[x86_start:]
    statement = "VM_WARN_ON_ONCE(!PageTail((const struct page *)addr));"
    assert any("2 x WARN at vmemmap_remap_pte" in line for line in riscv_block)
    assert any("mm/hugetlb_vmemmap.c:223" in line and statement in line for line in riscv_block)
    assert not any(statement in line for line in x86_block)
    assert any("60 x BUG: Bad page state in process sh" in line for line in x86_block)
    assert any("source: no file:line" in line for line in x86_block)


# --- the statement, the decoded trace and struct page in report.md / report.html ------------

DECODED_TRACE = {
    "status": "decoded", "vmlinux": "/cache/vmlinux-7.2.13+", "origin": "the tree build's vmlinux",
    "text": "[    0.164976] vmemmap_remap_pte (mm/hugetlb_vmemmap.c:223)\n"
            "[    0.165113] vmemmap_pte_entry (mm/hugetlb_vmemmap.c:251) <script>",
    "frames": [{"function": "vmemmap_remap_pte", "file": "mm/hugetlb_vmemmap.c", "line": 223,
                "inlined": False}],
}


def _with_source_and_trace() -> dict[str, Any]:
    doc = both_arches()
    riscv, x86 = doc["runs"]
    for finding in riscv["findings"]:
        finding.update(source=RISCV_STATEMENT, trace=DECODED_TRACE)
    for finding in x86["findings"]:
        finding.update(source={"status": "no file:line", "why": "the report names no file:line"},
                       trace={"status": "not decoded", "why": "no vmlinux: install linux-image-dbg"})
    riscv["kernel"]["struct_page"] = {"size": 64, "origin": "BTF in the image",
                                      "members": [{"name": "flags", "offset": 0, "size": 8}]}
    x86["kernel"]["struct_page"] = {"size": None, "why": "not measured: no BTF in the image"}
    return doc


def test_markdown_shows_statement_trace_and_struct_page() -> None:
    markdown = render_markdown(from_json(_with_source_and_trace()), "r.json")
    assert "mm/hugetlb\\_vmemmap.c:223" in markdown or "mm/hugetlb_vmemmap.c:223" in markdown
    assert "223  VM_WARN_ON_ONCE(!PageTail((const struct page *)addr));" in markdown
    assert "linux-source-7.2 7.2.13-1" in markdown
    assert "vmemmap_pte_entry (mm/hugetlb_vmemmap.c:251) <script>" in markdown  # in a fence
    assert "Decoded trace (against /cache/vmlinux-7.2.13+, the tree build's vmlinux)" in markdown
    assert "Trace not decoded: no vmlinux: install linux-image-dbg" in markdown
    assert "Source: no file:line - the report names no file:line" in markdown
    assert "struct page: 64 bytes (BTF in the image)" in markdown
    assert "struct page: not measured: no BTF in the image" in markdown


def test_html_shows_statement_trace_and_struct_page() -> None:
    page = render_html(from_json(_with_source_and_trace()), "r.json")
    parser = parsed(page)
    assert "script" not in parser.tags
    text = "".join(parser.text)
    assert "223  VM_WARN_ON_ONCE(!PageTail((const struct page *)addr));" in text
    assert "vmemmap_pte_entry (mm/hugetlb_vmemmap.c:251) <script>" in text
    assert "Trace not decoded: no vmlinux: install linux-image-dbg" in text
    assert "64 bytes (BTF in the image)" in text
    assert "not measured: no BTF in the image" in text


def test_reports_without_the_new_fields_say_nothing_of_them() -> None:
    results = from_json(both_arches())
    markdown, page = render_markdown(results, "r.json"), render_html(results, "r.json")
    for text in (markdown, page):
        assert "struct page:" not in text and "Decoded trace" not in text and "Trace not decoded" not in text


def test_table_prints_console_text_as_it_is() -> None:
    """Reasons and findings quote the guest's console: rich markup in them is text."""
    doc = both_arches()
    riscv, x86 = doc["runs"]
    x86["scenarios"][0]["reason"] = "[/] [b]x[/b]"
    x86["verdict_reason"] = "verdict [/]"
    riscv["findings"][0]["function"] = "[link=x]f[/link]"
    doc["runs"].append({**x86, "verdict": "skip", "verdict_reason": "skipped [/] here", "scenarios": [],
                        "findings": []})
    text = "\n".join(_terminal(doc))
    assert "[/] [b]x[/b]" in text
    assert "verdict [/]" in text and "[link=x]f[/link]" in text and "skipped [/] here" in text
