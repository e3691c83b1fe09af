"""A reproducer bundle booted again through the harness, and whether it reproduced.

rerun() is the one way to boot a bundle (harness/bundle.py) again: `hvo-harness repro`, triage
(harness/triage.py) and bisect call it, with Overrides for what they vary. It builds the
PreparedKernel from the bundle's kernel file and config, the GuestEnvironment from its
initramfs, the profile from the recorded fields, and boots with the same hvo, append and
timeout through pipeline.boot, which judges the boot (and writes a bundle of its own if it
fails). compare() says whether a rerun reproduced the original: the same verdict and the same
findings, findings compared by (kind, function, check), never by addresses or excerpts (a finding that
names neither function nor check by its headline with the numbers masked)."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from harness import bundle as bundles
from harness import finding_groups, images, kconfig, pipeline, qemu
from harness.errors import HarnessError
from harness.profiles import ArchProfile, CpuModel
from harness.results import Finding, KernelInfo, Run, Scenario

# (kind, function, check, headline): the headline, numbers masked, only when the finding names
# neither a function nor a check (`BUG: Bad page state in process sh`: harness/finding_groups.py).
FindingKey = tuple[str, str | None, str | None, str | None]
# A scenario across boots: size, mode, node and, for run-time pages, the HVO in force. Boot-time
# pages leave HVO out, so that a boot with HVO off (triage's hvo-off) meets the same scenario.
ScenarioKey = tuple[str, str, int, str]


@dataclass(frozen=True)
class Overrides:
    """What a rerun changes from the bundle's boot; None (or empty) keeps the recorded value."""

    smp: int | None = None
    cpu: CpuModel | None = None
    machine: str | None = None
    node_mem_mib: tuple[int, ...] | None = None
    tcg_thread: str | None = None
    # "kvm" or "tcg" in place of the recorded accelerator.
    accel: str | None = None
    hvo: str | None = None
    # Another kernel in place of the bundle's: a --kernel value (e.g. "debian:trixie") for
    # pipeline.prepare_kernel, or a kernel already prepared (bisect builds its own).
    kernel: str | pipeline.PreparedKernel | None = None
    append: str | None = None
    timeout: float | None = None


def finding_key(finding: Finding) -> FindingKey:
    headline = None if finding.function or finding.check else finding_groups.finding_key(finding)[3]
    return (finding.kind, finding.function, finding.check, headline)


def scenario_key(scenario: Scenario) -> ScenarioKey:
    return (scenario.size, scenario.mode, scenario.node,
            scenario.hvo if scenario.mode == "runtime" else "boot")


def key_text(key: ScenarioKey) -> str:
    size, mode, node, hvo = key
    return f"{size}/{mode}/node{node}" + (f"/hvo-{hvo}" if mode == "runtime" else "")


def profile_for(bundle: bundles.Bundle, overrides: Overrides) -> ArchProfile:
    profile = bundle.profile()
    changes: dict[str, object] = {}
    if overrides.smp is not None:
        changes["smp"] = overrides.smp
    if overrides.cpu is not None:
        changes["cpu"] = overrides.cpu.model
        if overrides.cpu.lacks_sizes:
            # The sizes this CPU cannot map are not the arch's here: the judge skips them with
            # the kernel's refusal, as for any size an arch cannot have.
            changes["huge_sizes_by_page_size"] = {
                page: tuple(s for s in sizes if s not in overrides.cpu.lacks_sizes)
                for page, sizes in profile.huge_sizes_by_page_size.items()
            }
    if overrides.machine is not None:
        changes["machine"] = overrides.machine
    if overrides.node_mem_mib is not None:
        changes["node_mem_mib"] = tuple(overrides.node_mem_mib)
    if overrides.tcg_thread is not None:
        changes["tcg_thread"] = overrides.tcg_thread
    return replace(profile, **changes)  # type: ignore[arg-type]


def kernel_from_bundle(bundle: bundles.Bundle, profile: ArchProfile) -> pipeline.PreparedKernel:
    """The bundle's kernel as the pipeline takes it: its file, config and recorded info."""
    recorded = bundle.spec["kernel"]
    image = images.prepare(bundle.kernel, profile)
    # struct page as measured for the original boot: the same image (its sha256 is checked on
    # load), and its vmlinux or -dbg package may not be at hand where the bundle is rerun.
    info = KernelInfo(str(bundle.kernel), recorded.get("release"), recorded["sha256"],
                      {**recorded["source"], "bundle": str(bundle.path)}, recorded.get("label"),
                      recorded.get("struct_page"))
    config = kconfig.read(bundle.config) if bundle.config else None
    # The same variant and file label: the rerun's files are named as the original's.
    return pipeline.PreparedKernel(image, info, config, bundle.spec.get("variant"),
                                   bundle.spec.get("file_label"))


def accel_for(bundle: bundles.Bundle, profile: ArchProfile, wanted: str | None) -> qemu.AccelChoice:
    recorded = bundle.spec["accel"]
    used = wanted or recorded["used"]
    if used == "tcg":
        reason = recorded["kvm_reason"] if wanted is None else "TCG asked for in place of KVM"
        return qemu.AccelChoice("tcg", reason or "TCG, as the bundle's boot")
    choice = qemu.choose_accel(profile, True)
    if choice.used != "kvm":
        raise HarnessError(f"{bundle.path}: the boot is to run under KVM, which does not work here "
                           f"({choice.kvm_reason}): rerun it on a host with KVM")
    return choice


def rerun(
    source: Path | bundles.Bundle,
    out_dir: Path,
    overrides: Overrides | None = None,
    progress: pipeline.Progress | None = None,
    stop: threading.Event | None = None,
) -> Run:
    """Boot a bundle (a directory, or one already loaded) again into OUT_DIR, judged."""
    bundle = source if isinstance(source, bundles.Bundle) else bundles.load(source)
    overrides = overrides or Overrides()
    spec = bundle.spec
    profile = profile_for(bundle, overrides)
    if isinstance(overrides.kernel, pipeline.PreparedKernel):
        kernel = overrides.kernel
    elif overrides.kernel is not None:
        kernel = pipeline.prepare_kernel(profile, overrides.kernel)
    else:
        kernel = kernel_from_bundle(bundle, profile)
    guest = bundle.path / "guest"
    env = pipeline.GuestEnvironment(
        bundle.initramfs, accel_for(bundle, profile, overrides.accel),
        guest / "busybox" if (guest / "busybox").is_file() else None,
        guest / "hvoh" if (guest / "hvoh").is_file() else None,
    )
    hvo = overrides.hvo or spec["hvo"]
    append = spec["append"] if overrides.append is None else overrides.append
    timeout = float(overrides.timeout or spec["timeout"])
    return pipeline.boot(profile, kernel, env, hvo, out_dir, append, timeout, progress, stop,
                         spec["backend"])


# --- did it reproduce? -----------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """A rerun against the original boot: verdicts, findings by key, failing scenarios."""

    original_verdict: str
    verdict: str
    # Finding key -> (count in the original, count in the rerun, an example to name it by).
    findings: dict[FindingKey, tuple[int, int, Finding]]
    # Scenario key -> (status in the original, status in the rerun or "absent").
    scenarios: dict[ScenarioKey, tuple[str, str]]

    @property
    def new(self) -> list[FindingKey]:
        return [k for k, (before, now, _) in self.findings.items() if now and not before]

    @property
    def gone(self) -> list[FindingKey]:
        return [k for k, (before, now, _) in self.findings.items() if before and not now]

    @property
    def reproduced(self) -> bool:
        """The same verdict and the same kinds of finding (counts may differ: rate limits)."""
        return self.original_verdict == self.verdict and not self.new and not self.gone

    def lines(self) -> list[str]:
        def named(keys: list[FindingKey]) -> str:
            return "; ".join(self.findings[k][2].summary() for k in keys) or "none"

        same = [k for k, (before, now, _) in self.findings.items() if before and now]
        counts = ", ".join(f"{example.summary()}: {before} then {now}"
                           for before, now, example in (self.findings[k] for k in same))
        lines = [f"verdict: {self.original_verdict} then {self.verdict}"
                 + (" (same)" if self.original_verdict == self.verdict else " (DIFFERENT)"),
                 f"findings in both: {counts or 'none'}",
                 f"new findings: {named(self.new)}",
                 f"gone findings: {named(self.gone)}"]
        failed = {k: v for k, v in self.scenarios.items() if "fail" in v}
        if failed:
            changed = [f"{key_text(k)} {before} -> {now}"
                       for k, (before, now) in failed.items() if before != now]
            lines.append(f"failing scenarios: {sum(1 for b, n in failed.values() if b == n)} fail in both"
                         + (f"; changed: {', '.join(changed)}" if changed else ""))
        return lines


def compare(original_verdict: str, original_findings: list[Finding],
            original_scenarios: dict[ScenarioKey, str], run: Run) -> Comparison:
    before = Counter(finding_key(f) for f in original_findings)
    now = Counter(finding_key(f) for f in run.findings)
    examples = {finding_key(f): f for f in [*original_findings, *run.findings]}
    findings = {k: (before[k], now[k], examples[k]) for k in dict.fromkeys([*before, *now])}
    statuses = {scenario_key(s): s.status for s in run.scenarios}
    scenarios = {k: (status, statuses.get(k, "absent")) for k, status in original_scenarios.items()}
    for key, status in statuses.items():
        scenarios.setdefault(key, ("absent", status))
    return Comparison(original_verdict, run.verdict, findings, scenarios)


def compare_with_bundle(bundle: bundles.Bundle, run: Run) -> Comparison:
    original = bundle.spec["original"]
    scenarios = {(s["size"], s["mode"], s["node"], s["hvo"] if s["mode"] == "runtime" else "boot"):
                 s["status"] for s in original["scenarios"]}
    return compare(original["verdict"], bundle.original_findings(), scenarios, run)


def compare_runs(original: Run, run: Run) -> Comparison:
    return compare(original.verdict, original.findings,
                   {scenario_key(s): s.status for s in original.scenarios}, run)


def summary_line(run: Run) -> str:
    return f"{run.verdict.upper()}: {run.verdict_reason}"
