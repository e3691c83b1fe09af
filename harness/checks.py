"""Named checks: which kernel statement a finding is, from what is at its file:line.

A named check is data: the file, the function the statement is in (by the source, so an
inlined helper is itself and not the caller the kernel printed), and the statement's shape.
A finding gets a check's name only when the source of the kernel that printed it
(harness/source_lines.py) has that statement at that line: never from the function name, as
another kernel version has other code at that line, and a WARN in an inlined helper prints its
caller's name (7.2's mminit_validate_memmodel_limits() has WARN_ON_ONCE(1) at mm/sparse.c:142
and :149 and is inlined into sparse_init())."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from harness.results import Finding


@dataclass(frozen=True)
class NamedCheck:
    name: str
    file: str  # as the kernel prints __FILE__: relative to the tree's top
    function: str  # the function the statement is in, by the source
    # The statement, searched in its lines joined with runs of white space made one space.
    statement: re.Pattern[str]
    # Finding kinds it can be: the macro decides (WARN_ON -> "warn", BUG_ON -> "bug").
    kinds: tuple[str, ...]
    what: str  # one line for people: what it means when it fires


SPARSE_INIT_MEMMAP_ALIGNMENT = NamedCheck(
    name="sparse_init-memmap-alignment",
    file="mm/sparse.c",
    function="sparse_init",
    # 7.2 (the series "Eliminate fake head pages from vmemmap optimization"), in sparse_init():
    #   if (compound_info_has_mask()) {
    #           VM_WARN_ON_ONCE(!IS_ALIGNED((unsigned long) pfn_to_page(0),
    #                               MAX_FOLIO_VMEMMAP_ALIGN));
    # Any WARN/BUG flavour of that condition is the same check (an earlier version of the
    # series had BUG_ON and WARN_ON).
    statement=re.compile(
        r"\b(?:VM_)?(?:WARN|BUG)_ON(?:_ONCE)?\s?\(\s?!\s?IS_ALIGNED\s?\(\s?\(\s?unsigned long\s?\)\s?"
        r"pfn_to_page\s?\(\s?0\s?\)\s?,\s?MAX_FOLIO_VMEMMAP_ALIGN\s?\)\s?\)"
    ),
    kinds=("warn", "bug"),
    what="pfn_to_page(0) is not aligned to MAX_FOLIO_VMEMMAP_ALIGN: tail pages would decode "
         "the wrong head (compound_info_has_mask())",
)

NAMED_CHECKS: tuple[NamedCheck, ...] = (SPARSE_INIT_MEMMAP_ALIGNMENT,)
SPARSE_INIT_CHECK = SPARSE_INIT_MEMMAP_ALIGNMENT.name


def statement_text(source: dict[str, object]) -> str:
    """The statement's lines from a finding's source, as one line of code."""
    lines = source.get("lines") or []
    return re.sub(r"\s+", " ", " ".join(str(entry["text"]) for entry in lines)).strip()  # type: ignore[index, union-attr]


def matching_check(finding: Finding) -> NamedCheck | None:
    """The named check whose statement is at the finding's file:line, by its source."""
    source = finding.source
    if not source or source.get("status") != "found":
        return None
    text = statement_text(source)
    for check in NAMED_CHECKS:
        if (finding.kind in check.kinds and source.get("file") == check.file
                and source.get("function") == check.function and check.statement.search(text)):
            return check
    return None


def assign(finding: Finding) -> Finding:
    """FINDING with the check its source shows, or none: no source, no label."""
    check = matching_check(finding)
    return replace(finding, check=check.name if check else None)


def assign_all(findings: list[Finding]) -> list[Finding]:
    return [assign(finding) for finding in findings]
