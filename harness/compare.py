"""Regressions between two results files: what got worse from a base run to a new one.

Runs are matched by (arch, variant, HVO requested) and scenarios within them by name
(`SIZE/MODE/nodeN/hvo-ON|OFF-VIA`), so a new kernel is compared with the base kernel booted the
same way. When either file is a release matrix (two runs of one arch, variant and setting: e.g.
trixie's and sid's kernels) the Debian release joins the key, so trixie is compared with trixie
and sid with sid; a file with one kernel per arch is matched across releases as across sid's
versions (the nightly case), and a change of release is listed.

A run with verdict skip (not booted: e.g. the suite has no kernel for the arch) is a regression
when the base run was booted, whatever its verdict: what was tested no longer is, and a skip
must not hide a failure that went away with the boot. It is no change when the base was also a
skip (the arch was not runnable before either). A skip in the base followed by a boot is judged
by the new verdict: pass an improvement, fail or error a regression, as a scenario's skip ->
fail is. Findings are matched by what they are (kind, function, file), never by their text,
which carries timestamps, addresses and pfns that differ on every boot.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from harness.errors import HarnessError
from harness.finding_groups import describe_finding_key, finding_key
from harness.results import Results, Run, Scenario

# (arch, variant, hvo requested)
RunKey = tuple[str, str | None, str]
Severity = Literal["regression", "improvement", "change"]

_VERDICT_RANK = {"pass": 0, "fail": 1, "error": 2}  # "skip" is judged apart (_compare_skip)
_SAVINGS_FIELDS = ("expected", "claimed", "measured")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_REASON_LIMIT = 160


@dataclass(frozen=True)
class Change:
    """One difference between base and new; `where` names the run (and scenario) it is in."""

    severity: Severity
    # What kind of difference: run-gone, run-new, scenario-gone, scenario-new, status, verdict,
    # hvo-state, vmemmap, finding-new, finding-gone, kernel (another release, a "change").
    kind: str
    where: str
    what: str


@dataclass
class Comparison:
    changes: list[Change] = field(default_factory=list)
    runs_matched: int = 0
    scenarios_matched: int = 0

    def of(self, severity: Severity) -> list[Change]:
        return [change for change in self.changes if change.severity == severity]

    @property
    def regressions(self) -> list[Change]:
        return self.of("regression")

    @property
    def improvements(self) -> list[Change]:
        return self.of("improvement")


def run_release(run: Run) -> str | None:
    """A Debian kernel's release label ('trixie'); files from before labels hold sid's."""
    if run.kernel.label:
        return run.kernel.label
    source = run.kernel.source
    return (source.get("suite") or "sid") if source.get("type") == "debian" else None


def run_key(run: Run, with_release: bool = False) -> RunKey:
    """(arch, variant, HVO requested); WITH_RELEASE: a Debian kernel's release in the variant's
    place (a Debian kernel has no variant), to tell a release matrix's runs apart."""
    unit = run.variant or (run_release(run) if with_release else None)
    return (run.arch, unit, run.hvo.requested)


def _is_matrix(results: Results) -> bool:
    keys = [run_key(run) for run in results.runs]
    return len(set(keys)) != len(keys)


def run_label(key: RunKey) -> str:
    arch, variant, hvo = key
    return f"{arch}{'/' + variant if variant else ''} hvo={hvo}"


def _runs_by_key(results: Results, label: str, with_release: bool) -> dict[RunKey, Run]:
    runs: dict[RunKey, Run] = {}
    for run in results.runs:
        key = run_key(run, with_release)
        if key in runs:
            raise HarnessError(
                f"{label} has two runs of {run_label(key)}: compare needs one run per arch, "
                "variant and HVO setting (split the file, or give each build its own --variant)"
            )
        runs[key] = run
    return runs


def _scenarios_by_name(run: Run, label: str) -> dict[str, Scenario]:
    scenarios: dict[str, Scenario] = {}
    for scenario in run.scenarios:
        if scenario.name in scenarios:
            raise HarnessError(f"{label}: {run_label(run_key(run))} has scenario {scenario.name} twice")
        scenarios[scenario.name] = scenario
    return scenarios


def _printable(text: str, limit: int = _REASON_LIMIT) -> str:
    """Console text is untrusted: no control characters (terminal escapes) and one short line."""
    text = _CONTROL.sub("?", " ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _effective_status(run: Run, scenario: Scenario) -> str:
    # A scenario 'failed' in a boot the harness could not finish (verdict error) says nothing
    # about the kernel: it is an error, as in the KCIDB export.
    return "error" if run.verdict == "error" and scenario.status == "fail" else scenario.status


def _status_severity(old: str, new: str) -> Severity:
    if old in ("pass", "skip") and new in ("fail", "error"):
        return "regression"
    if old == "pass" and new == "skip":
        return "regression"  # coverage lost: what passed is no longer tested (e.g. HVO inactive)
    if new == "pass":
        return "improvement"
    return "change"


def _same_number(old: float | None, new: float | None) -> bool:
    if old is None or new is None:
        return old is new
    # The counters are exact; the tolerance only absorbs float representation.
    return math.isclose(old, new, rel_tol=0.0, abs_tol=1e-6)


def _number(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def _compare_scenario(where: str, base_run: Run, base: Scenario, new_run: Run, new: Scenario) -> list[Change]:
    changes = []
    old_status, new_status = _effective_status(base_run, base), _effective_status(new_run, new)
    if old_status != new_status:
        changes.append(Change(_status_severity(old_status, new_status), "status", where,
                              f"{old_status} -> {new_status}: {_printable(new.reason)}"))
    for name in _SAVINGS_FIELDS:
        old = getattr(base.vmemmap, f"{name}_kib_per_page")
        value = getattr(new.vmemmap, f"{name}_kib_per_page")
        if _same_number(old, value):
            continue
        # Savings are exact: any change of a number is a regression, up or down; a number that
        # appears where there was none (the scenario now gets that far) is not.
        severity: Severity = "improvement" if old is None else "regression"
        changes.append(Change(severity, "vmemmap", where,
                              f"vmemmap {name} {_number(old)} -> {_number(value)} KiB/page"))
    return changes


def _compare_findings(where: str, base: Run, new: Run) -> list[Change]:
    old_keys = Counter(finding_key(f) for f in base.findings)
    new_keys = Counter(finding_key(f) for f in new.findings)
    changes = [
        Change("regression", "finding-new", where,
               f"new finding: {_printable(describe_finding_key(key))} (x{count})")
        for key, count in new_keys.items() if key not in old_keys
    ]
    changes += [
        Change("improvement", "finding-gone", where,
               f"finding gone: {_printable(describe_finding_key(key))} (x{count} before)")
        for key, count in old_keys.items() if key not in new_keys
    ]
    return changes


def _kernel_name(run: Run) -> str:
    """'trixie 6.12.117-1': the release and the Debian version, else the kernel's release."""
    version = run.kernel.source.get("version") if run.kernel.source.get("type") == "debian" else None
    name = " ".join(str(part) for part in (run_release(run), version) if part)
    return _printable(name or run.kernel.release or "unknown")


def _compare_skip(where: str, base: Run, new: Run) -> list[Change]:
    """Either run was not booted (verdict skip): one change for the run, no scenario-level ones
    (a skip has no scenarios, so each would only repeat it)."""
    if base.verdict == new.verdict == "skip":
        return []
    what = f"verdict {base.verdict} -> {new.verdict}: {_printable(new.verdict_reason)}"
    if new.verdict == "skip":
        return [Change("regression", "verdict", where, what + " (not booted: no longer tested)")]
    return [Change("improvement" if new.verdict == "pass" else "regression", "verdict", where, what)]


def _compare_runs(key: RunKey, base: Run, new: Run, base_label: str, new_label: str,
                  comparison: Comparison) -> None:
    where = run_label(key)
    if run_release(base) != run_release(new):
        comparison.changes.append(Change("change", "kernel", where,
                                         f"kernel {_kernel_name(base)} -> {_kernel_name(new)}"))
    if "skip" in (base.verdict, new.verdict):
        comparison.changes += _compare_skip(where, base, new)
        return
    old_rank, new_rank = _VERDICT_RANK[base.verdict], _VERDICT_RANK[new.verdict]
    if old_rank != new_rank:
        severity: Severity = "regression" if new_rank > old_rank else "improvement"
        comparison.changes.append(Change(severity, "verdict", where,
                                         f"verdict {base.verdict} -> {new.verdict}: "
                                         f"{_printable(new.verdict_reason)}"))
    if base.hvo.state != new.hvo.state:
        severity = ("regression" if base.hvo.state == "active" else
                    "improvement" if new.hvo.state == "active" else "change")
        comparison.changes.append(Change(severity, "hvo-state", where,
                                         f"HVO {base.hvo.state} -> {new.hvo.state}: "
                                         f"{_printable(new.hvo.reason)}"))
    comparison.changes += _compare_findings(where, base, new)

    base_scenarios = _scenarios_by_name(base, base_label)
    new_scenarios = _scenarios_by_name(new, new_label)
    for name, scenario in base_scenarios.items():
        scenario_where = f"{where} {name}"
        if name not in new_scenarios:
            comparison.changes.append(Change("regression", "scenario-gone", scenario_where,
                                             f"scenario gone (was {scenario.status})"))
            continue
        comparison.scenarios_matched += 1
        comparison.changes += _compare_scenario(scenario_where, base, scenario, new, new_scenarios[name])
    for name, scenario in new_scenarios.items():
        if name not in base_scenarios:
            comparison.changes.append(Change("change", "scenario-new", f"{where} {name}",
                                             f"new scenario ({scenario.status})"))


def compare(base: Results, new: Results, base_label: str = "base", new_label: str = "new") -> Comparison:
    """Every difference between BASE and NEW that matters for HVO, each marked as a regression,
    an improvement or a neutral change."""
    comparison = Comparison()
    with_release = _is_matrix(base) or _is_matrix(new)
    base_runs = _runs_by_key(base, base_label, with_release)
    new_runs = _runs_by_key(new, new_label, with_release)
    for key, base_run in base_runs.items():
        new_run = new_runs.get(key)
        if new_run is None:
            comparison.changes.append(Change("regression", "run-gone", run_label(key),
                                             f"run gone (was {base_run.verdict}, "
                                             f"{len(base_run.scenarios)} scenarios)"))
            continue
        comparison.runs_matched += 1
        _compare_runs(key, base_run, new_run, base_label, new_label, comparison)
    for key, new_run in new_runs.items():
        if key not in base_runs:
            comparison.changes.append(Change("change", "run-new", run_label(key),
                                             f"new run ({new_run.verdict}, "
                                             f"{len(new_run.scenarios)} scenarios)"))
    return comparison


def format_comparison(comparison: Comparison, base_label: str, new_label: str) -> str:
    """A plain-text list for a terminal or a CI log: regressions first."""
    lines = [f"compare {base_label} -> {new_label}: {comparison.runs_matched} run(s) and "
             f"{comparison.scenarios_matched} scenario(s) matched"]
    headings: tuple[tuple[Severity, str], ...] = (
        ("regression", "regressions"), ("improvement", "improvements"), ("change", "other changes"),
    )
    for severity, heading in headings:
        changes = comparison.of(severity)
        if changes:
            lines.append(f"{heading} ({len(changes)}):")
            # `where` holds arch, variant and size names from the files: untrusted as well.
            lines += [f"  - {_printable(change.where, 300)}: {change.what}" for change in changes]
    count = len(comparison.regressions)
    lines.append(f"result: {count} regression{'s' if count != 1 else ''}" if count else
                 "result: no regressions")
    return "\n".join(lines)
