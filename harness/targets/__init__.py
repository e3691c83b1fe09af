"""Targets: the ways a plan is run on a kernel, each bringing back the same three things.

A target takes the plan (harness/plan.py: the huge page sizes, the pages per node, the sysctl
passes) and brings back the guest's KTAP report (guest_scripts/scenarios.sh's output, parsed
by harness/protocol.py), the kernel log of the run (harness/kmsg.py's KernelLog) and how the
run ended (harness/guest.py's GuestOutcome). judged_run() turns those into the results' Run:
the same judge, the same annotation of findings and the same record whichever target ran;
the judge and everything after it (report, compare, export) never ask which one it was: the
target is named in Run.hugetlb["backend"] and, where it keeps a record, in Run.target.

Targets today:
- qemu.py: QEMU with the harness's initramfs (harness/qemu.py's argv, harness/guest.py's run);
- vng.py: virtme-ng on this host's userspace (harness/vng.py's argv), otherwise as qemu.py;
- ssh.py: a machine that is already running, reached over SSH, whose own command line says
  what was allocated at boot;
- lava.py: a job `hvo-harness export lava` wrote, run through LAVA's dispatcher (`lava-run`),
  the report and kernel log read out of the dispatcher's log (`export lava --run`).
The booting targets (qemu, vng) put the plan on the kernel command line; pipeline.boot() makes
them (BOOT_TARGETS) and runs each through pipeline.run_target(); ssh.run_ssh() runs the SSH
target through it too, for `run --target`, with the plan the running kernel allows (the
boot-time pages its command line asked for: TargetFacts.boot_pages), and lava.run_job() the
LAVA target. Adding a target is adding a module here that satisfies Target.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from harness import annotate, judge, kmsg, protocol
from harness.guest import GuestOutcome
from harness.plan import Plan
from harness.profiles import ArchProfile
from harness.results import Accel, KernelInfo, Run


@dataclass
class TargetFacts:
    """What a target says of the kernel the plan will run on, before it runs: enough to make
    the plan (arch, page size, NUMA nodes) and to judge it (the kernel's facts)."""

    profile: ArchProfile  # the arch's profile, node_mem_mib as the target has them
    facts: judge.KernelFacts
    kernel: KernelInfo
    # The kernel command line the plan runs under: a running target's own. A booting target
    # puts the plan's words on it when it boots, so its whole line is TargetOutput.cmdline.
    cmdline: str
    hvo: str  # hugetlb_free_vmemmap= of that command line: "on" | "off"
    accel: Accel
    # The build variant of a kernel built from a tree ("debug+4k"): Run.variant.
    variant: str | None = None
    # A running target's boot-time pages per size (bytes) and node, as its own command line
    # asked for them: the plan's boot_pages (a size not in it: none). None for a booting
    # target, which puts the plan's on the command line it boots.
    boot_pages: dict[int, int] | None = None


@dataclass
class TargetOutput:
    """What a target brings back from one run of a plan."""

    report_text: str  # the guest's KTAP report, as scenarios.sh wrote it
    kernel_log: kmsg.KernelLog
    outcome: GuestOutcome
    # Where the report came from ("virtio-serial", "ssh: <dir>/results.ktap").
    channel: str
    # Files the run left on the host: "console_log", "results_log", "kernel_log".
    files: dict[str, str] = field(default_factory=dict)
    # Run.target: the target's own record (its address, what it changed and restored, ...);
    # None for the harness's own guests (qemu, vng), whose details are argv and `hugetlb`.
    record: dict[str, Any] | None = None
    # The report as the target read it, where it took more than report_text (a guest without
    # virtio-serial frames it on the console: GuestReport.garbled counts the lines dropped);
    # None: protocol.parse(report_text).
    report: protocol.GuestReport | None = None
    # The whole kernel command line, where the target set it (a boot: the plan's words on
    # it); None: TargetFacts.cmdline.
    cmdline: str | None = None
    # The accelerator the run ended up under, where it is not prepare()'s (KVM stopped the
    # guest and it was booted again under TCG); None: TargetFacts.accel.
    accel: Accel | None = None
    # The command that ran the guest (Run.qemu_argv; repeated by hand from <stem>.<name>.sh).
    argv: list[str] = field(default_factory=list)
    # More of the run for Run.hugetlb (QEMU's exit status: "qemu_exit").
    details: dict[str, Any] = field(default_factory=dict)
    # Run.memory: what the guest's RAM was (guest_memory.Backing.record(): the pool's files,
    # reused or new, or fresh RAM and why); None where the target's memory is not the
    # harness's to choose (a running machine).
    memory: dict[str, Any] | None = None


class Target(Protocol):
    """A way to run a plan on a kernel.

    prepare() connects (SSH), or checks what a boot needs (the accelerator QEMU can use), and
    reports the facts of the kernel the plan will run on; the caller makes the plan
    from them (plan.make_plan) and gives it to run(), which runs every scenario of it and
    brings back the report, the kernel log of the run (and only of the run) and how it ended.
    run() leaves the target as it found it, also when `stop` is set (Ctrl-C) or it raises;
    what it could not put back is said in TargetOutput.record. A set-up problem (no route,
    a refused key, no root) is a HarnessError: one line naming the fix. reproducer() writes,
    for a run judged fail or error, what reruns it (a bundle directory), or gives None where
    the target has nothing of the kind; OSError when it cannot be written.

    Optional: finish(run) -> Run, the target's last word on its judged run, before the
    reproducer (the SSH target: boot-time pages its command line did not ask for are skips
    naming the reboot, and the kernel's log since boot judges those it did). A target without
    it (qemu, vng) has its run as judged_run() judged it."""

    name: str  # "qemu", "vng", "ssh"

    def prepare(self) -> TargetFacts: ...

    def run(self, plan: Plan, facts: TargetFacts, out_dir: Path,
            stop: threading.Event | None = None) -> TargetOutput: ...

    def reproducer(self, run: Run, out_dir: Path) -> Path | None: ...


def judged_run(target: str, facts: TargetFacts, plan: Plan, output: TargetOutput,
               progress: Callable[[str], None] | None = None) -> Run:
    """The results' Run of one target run: the same judge, the same record, whichever ran.

    Findings get their source lines and decoded traces (annotate.findings_of_boot) from what
    is known of the kernel (a tree build's tree, a Debian kernel's banner), never from which
    target ran it."""
    report = protocol.parse(output.report_text) if output.report is None else output.report
    verdict = judge.judge(facts.profile, plan, facts.facts, output.kernel_log, report, output.outcome)
    findings = annotate.findings_of_boot(facts.kernel, output.kernel_log.text, verdict.findings, progress)
    outcome = output.outcome
    accel = output.accel or facts.accel
    return Run(
        arch=facts.profile.name,
        variant=facts.variant,
        kernel=facts.kernel,
        accel=accel,
        cmdline=facts.cmdline if output.cmdline is None else output.cmdline,
        boot_seconds=round(outcome.boot_seconds, 2) if outcome.boot_seconds else None,
        verdict=verdict.verdict,  # type: ignore[arg-type]
        hvo=verdict.hvo,
        findings=findings,
        scenarios=verdict.scenarios,
        console_log=output.files.get("console_log", ""),
        verdict_reason=verdict.verdict_reason,
        ended=outcome.ended,
        qemu_argv=list(output.argv),
        results_log=output.files.get("results_log"),
        hugetlb={
            "registered": verdict.hugetlb.registered,
            "freeable_kib": verdict.hugetlb.freeable_kib,
            "unsupported": verdict.hugetlb.unsupported,
            "allocation_failures": verdict.hugetlb.allocation_failures,
            "page_size": facts.facts.page_size,
            "guest_env": report.env,
            "seconds": round(outcome.seconds, 2),
            "results_channel": output.channel,
            "results_garbled": report.garbled,
            "backend": target,
            "kernel_log": {"path": output.files.get("kernel_log", ""), **output.kernel_log.as_dict()},
            **output.details,
        },
        target=None if output.record is None else {"type": target, **output.record},
        memory=output.memory,
    )
