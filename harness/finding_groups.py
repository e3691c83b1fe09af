"""What a finding is, apart from the boot it came from: its identity and groups of equals.

A console's text carries timestamps, addresses, pfns and pids that differ on every boot, so
findings are matched and grouped by identity, never by text. Comparisons, reports and the
KCIDB export all use these, so a finding is the same thing in each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.results import Finding

# (kind, function, file, headline): headline only when the finding names no function or file.
FindingKey = tuple[str, str | None, str | None, str | None]

# Parts of a kernel message that change from boot to boot: addresses, pfns, numbers, pids.
_VOLATILE = re.compile(r"\b(?:pfn:?\s*)?(?:0x)?[0-9a-f]*\d[0-9a-f]*\b", re.IGNORECASE)


def finding_key(finding: Finding) -> FindingKey:
    """A finding that names a function or file is that (kind, function, file): its line moves
    between kernel versions. One that names neither (e.g. `BUG: Bad page state`) is told apart
    by its headline with the numbers masked."""
    if finding.function or finding.file:
        return (finding.kind, finding.function, finding.file, None)
    return (finding.kind, None, None, _VOLATILE.sub("#", finding.headline()).strip())


def describe_finding_key(key: FindingKey) -> str:
    kind, function, file, headline = key
    if headline is not None:
        return f"{kind.upper()}: {headline}"
    return f"{kind.upper()} at {function or '?'}" + (f" ({file})" if file else "")


@dataclass
class FindingGroup:
    """Findings of one identity in one boot: how many, and the most telling one."""

    key: FindingKey
    count: int
    # The one with the longest excerpt: when two CPUs report at once their lines interleave,
    # and only one of the two excerpts gets the trace.
    example: Finding


def group_findings(findings: list[Finding]) -> list[FindingGroup]:
    """Groups in order of first appearance: 60 reports of one bad page are one story."""
    groups: dict[FindingKey, FindingGroup] = {}
    for finding in findings:
        key = finding_key(finding)
        group = groups.get(key)
        if group is None:
            groups[key] = FindingGroup(key, 1, finding)
            continue
        group.count += 1
        if len(finding.excerpt) > len(group.example.excerpt):
            group.example = finding
    return list(groups.values())
