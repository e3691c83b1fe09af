"""The guest's results channel: KTAP with `# hvo: ...` data lines, parsed into plain data.

Pure: text in, data out. The guest (guest_scripts/scenarios.sh) reports what it saw; the
host's oracle judges it. Format of a data line:
    # hvo: <kind> [size_kb=K] [node=N] [sysctl=V] [phase] key=value key=value ...
where kind is env, env-counters, boot, runtime or sysctl, and phase is one of before, after,
released for run-time allocations."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

_DATA = re.compile(r"^# hvo: (?P<kind>[\w-]+)(?P<rest>.*)$")
_RESULT = re.compile(r"^(?P<ok>ok|not ok) (?P<number>\d+) (?P<name>[^#]*?)\s*(?:# (?P<directive>.*))?$")
_PLAN = re.compile(r"^1\.\.(?P<count>\d+)$")
_PHASES = ("before", "after", "released")


@dataclass
class GuestScenario:
    """Everything the guest said about one allocation (boot-time or run-time) on one node."""

    mode: str  # "boot" | "runtime"
    size_kb: int
    node: int
    sysctl: str | None  # hugetlb_optimize_vmemmap during a run-time pass ("absent" if none)
    data: dict[str, str] = field(default_factory=dict)  # key=value without a phase
    phases: dict[str, dict[str, str]] = field(default_factory=dict)  # phase -> key=value
    ok: bool | None = None
    directive: str | None = None

    @property
    def key(self) -> tuple[str, int, int, str | None]:
        return (self.mode, self.size_kb, self.node, self.sysctl)

    @property
    def label(self) -> str:
        """As the guest names it: 'runtime size_kb=2048 node=0 sysctl=1'."""
        name = f"{self.mode} size_kb={self.size_kb} node={self.node}"
        return name if self.sysctl is None else f"{name} sysctl={self.sysctl}"


@dataclass
class GuestReport:
    env: dict[str, str] = field(default_factory=dict)
    scenarios: list[GuestScenario] = field(default_factory=list)
    sysctl_sets: list[dict[str, str]] = field(default_factory=list)
    planned: int | None = None
    # KTAP result lines ("ok N ..." / "not ok N ..."), matched to a scenario or not.
    results: int = 0
    done: bool = False
    # Lines of the console channel no good copy of arrived (both copies failed their CRC).
    garbled: int = 0
    # Lines that are neither KTAP nor data: a guest-side error (the shell's stderr) or noise.
    stray: list[str] = field(default_factory=list)


def _pairs(words: list[str]) -> tuple[dict[str, str], list[str]]:
    pairs, bare = {}, []
    for word in words:
        if "=" in word:
            key, value = word.split("=", 1)
            pairs[key] = value
        else:
            bare.append(word)
    return pairs, bare


def parse(text: str) -> GuestReport:
    report = GuestReport()
    by_key: dict[tuple[str, int, int, str | None], GuestScenario] = {}
    for raw in text.splitlines():
        line = raw.strip("\r\n\x00 ")
        if not line or line == "KTAP version 1":
            continue
        if match := _PLAN.match(line):
            report.planned = int(match["count"])
            continue
        if match := _RESULT.match(line):
            report.results += 1
            words = match["name"].split()
            scenario = _scenario_for(words, by_key, report)
            if scenario is not None:
                scenario.ok = match["ok"] == "ok"
                scenario.directive = match["directive"]
            continue
        match = _DATA.match(line)
        if match is None:
            report.stray.append(line)
            continue
        kind = match["kind"]
        try:
            words = shlex.split(match["rest"])
        except ValueError:
            words = match["rest"].split()
        if kind == "done":
            report.done = True
        elif kind in ("env", "env-counters"):
            report.env.update(_pairs(words)[0])
        elif kind == "sysctl":
            report.sysctl_sets.append(_pairs(words)[0])
        elif kind in ("boot", "runtime"):
            scenario = _scenario_for([kind, *words], by_key, report)
            if scenario is None:
                report.stray.append(line)
                continue
            pairs, bare = _pairs(words)
            for name in ("size_kb", "node", "sysctl"):
                pairs.pop(name, None)
            phase = next((word for word in bare if word in _PHASES), None)
            target = scenario.phases.setdefault(phase, {}) if phase else scenario.data
            target.update(pairs)
        else:
            report.stray.append(line)
    return report


def _scenario_for(
    words: list[str],
    by_key: dict[tuple[str, int, int, str | None], GuestScenario],
    report: GuestReport,
) -> GuestScenario | None:
    if not words or words[0] not in ("boot", "runtime"):
        return None
    pairs, _ = _pairs(words[1:])
    try:
        key = (words[0], int(pairs["size_kb"]), int(pairs["node"]), pairs.get("sysctl"))
    except (KeyError, ValueError):
        return None
    if key not in by_key:
        by_key[key] = GuestScenario(mode=key[0], size_kb=key[1], node=key[2], sysctl=key[3])
        report.scenarios.append(by_key[key])
    return by_key[key]
