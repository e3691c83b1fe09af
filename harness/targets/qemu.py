"""The QEMU target: the kernel under test booted by QEMU with the harness's initramfs.

The plan goes onto the kernel command line (hvo.* words, hugepagesz=/hugepages=); the guest's
init runs guest_scripts/scenarios.sh and sends its report and /dev/kmsg over two virtio-serial
ports (or framed on the console, where the guest has none). harness/qemu.py builds the argv and
chooses the accelerator, harness/guest.py runs QEMU and says how it ended; this module puts
them behind harness.targets.Target, so pipeline.run_target() judges its boots as any target's.
Boot files in --out are named by boot_stem(): '<stem>.console.log', '.results.ktap',
'.dmesg.log', '.kernel.log', '.<name>.sh' (the argv, to boot again by hand), and
repro/<stem>/ for a boot judged fail or error (harness/bundle.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from harness import bundle, guest, guest_memory, judge, kconfig, kmsg, protocol, qemu, structpage
from harness.plan import Plan
from harness.profiles import ArchProfile
from harness.results import Accel, Run
from harness.targets import TargetFacts, TargetOutput

if TYPE_CHECKING:
    from harness.pipeline import GuestEnvironment, PreparedKernel, UnavailableKernel

Progress = Callable[[str], None]


def kernel_facts(profile: ArchProfile, kernel: PreparedKernel) -> judge.KernelFacts:
    config = kernel.config or {}
    page_size = kconfig.page_size(config) or min(profile.huge_sizes_by_page_size)
    hvo_built = None
    if kernel.config is not None:
        hvo_built = config.get("CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP") == "y"
    # Measured where the kernel was prepared; a kernel prepared elsewhere (repro's) is measured
    # here, once: its info then carries it into the results.
    if kernel.info.struct_page is None:
        structpage.fill(profile, kernel.image, kernel.info, kernel.config)
    return judge.KernelFacts(page_size, structpage.StructPage.from_json(kernel.info.struct_page), hvo_built)


def boot_stem(profile: ArchProfile, kernel: PreparedKernel | UnavailableKernel, hvo: str) -> str:
    """The name of a boot's files in --out: '<arch>[-<kernel label>][-<variant>]-hvo-<on|off>'
    ('x86_64-trixie-hvo-on' in a release matrix, 'riscv64-debug-hvo-on' for a tree build)."""
    parts = [profile.name, kernel.file_label, kernel.variant, "hvo", hvo]
    return "-".join(part for part in parts if part)


def read_results(port_text: str, console: str) -> tuple[protocol.GuestReport, str]:
    """The guest's report: from the results port, or, where the guest has none, from the
    console, where only framed lines whose CRC holds are taken (kernel text can cut into a
    line on a shared console; such a line is dropped and counted, never half read)."""
    report = protocol.parse(port_text)
    if report.env or "hvo-init: error: no virtio-serial port" not in console:
        return report, "virtio-serial"
    lines, missing = kmsg.numbered_lines(console, kmsg.RESULT_TAG)
    report = protocol.parse("\n".join(lines))
    report.garbled = len(missing)
    return report, "console (no virtio-serial port in the guest)"


def read_kernel_log(port_text: str, console: str) -> kmsg.KernelLog:
    """The kernel log to judge: the guest's /dev/kmsg stream (from the dmesg port, else framed
    on the console) merged with the console."""
    stream = kmsg.parse_stream(port_text, framed=False) if port_text.strip() else \
        kmsg.parse_stream(console, framed=True)
    return kmsg.merge(console, stream)


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return ""


@dataclasses.dataclass
class _Boot:
    """The last boot run() made: what its reproducer bundle records."""

    stem: str
    profile: ArchProfile
    env: GuestEnvironment
    cmdline: str
    argv: list[str]
    files: qemu.GuestFiles
    console_log: Path
    kernel_log: Path
    by_hand: list[str]  # the argv on fresh RAM (<stem>.<name>.sh, repro.sh)


class QemuTarget:
    """One boot of KERNEL with hugetlb_free_vmemmap=HVO (harness.targets.Target).

    APPEND: the user's own kernel arguments, after the plan's; TIMEOUT: seconds before a guest
    that has not ended is called hung and ended; FRESH_MEMORY: boot on fresh RAM, not on the
    memory pool's files (guest_memory.py), as `--fresh-memory` asks."""

    name = "qemu"

    def __init__(self, profile: ArchProfile, kernel: PreparedKernel, env: GuestEnvironment, hvo: str,
                 append: str = "", timeout: float = 300.0, progress: Progress | None = None,
                 fresh_memory: bool = False) -> None:
        self.fresh_memory = fresh_memory
        self.arch_profile = profile
        self.kernel = kernel
        self.env = env
        self.hvo = hvo
        self.append = append
        self.timeout = timeout
        self.progress = progress
        # The profile as the kernel boots (firmware, NUMA nodes): set by prepare().
        self.profile = profile
        self.last: _Boot | None = None

    # -- what the subclass (vng.py) changes -------------------------------------------------------

    def _accel(self) -> qemu.AccelChoice:
        # KVM that stopped an earlier boot of this arch is not tried again (qemu.accel_now),
        # and KVM is used only once it has booted this kernel (qemu.confirm_kvm).
        if self.env.accel.used == "kvm":
            return qemu.confirm_kvm(self.arch_profile, self.kernel.image.path, self.env.accel)
        return qemu.accel_now(self.arch_profile, self.env.accel)

    def _check(self, profile: ArchProfile) -> None:
        """What the kernel must have for this target to boot it (nothing for plain QEMU)."""

    def _argv(self, profile: ArchProfile, files: qemu.GuestFiles, cmdline: str,
              memory: list[Path] | None = None) -> list[str]:
        return qemu.build_argv(profile, files, cmdline, self.env.accel, memory)

    def _why_fresh_memory(self, profile: ArchProfile) -> str | None:
        """Why this boot gets fresh RAM and not the pool's files; None: it may have them."""
        if self.fresh_memory:
            return "--fresh-memory"
        return profile.fresh_memory

    def _via(self) -> str:
        return self.env.accel.used

    # -- Target -----------------------------------------------------------------------------------

    def prepare(self) -> TargetFacts:
        confirmed = self._accel()
        if self.env.accel != confirmed:
            self.env = dataclasses.replace(self.env, accel=confirmed)
        # Through firmware or directly, as the image's format boots, with that boot's NUMA nodes.
        self.profile = qemu.boot_profile(self.arch_profile, self.kernel.image)
        self._check(self.profile)
        facts = kernel_facts(self.profile, self.kernel)
        base_cmdline = qemu.kernel_cmdline(self.profile, self.append)
        return TargetFacts(self.profile, facts, self.kernel.info, base_cmdline, self.hvo,
                           self._accel_record(), self.kernel.variant)

    def _accel_record(self) -> Accel:
        return Accel(self.env.accel.used, self.env.accel.kvm_reason)  # type: ignore[arg-type]

    def run(self, plan: Plan, facts: TargetFacts, out_dir: Path,
            stop: threading.Event | None = None) -> TargetOutput:
        profile = self.profile
        stem = boot_stem(profile, self.kernel, self.hvo)
        console_log = out_dir / f"{stem}.console.log"
        files = qemu.GuestFiles(
            self.kernel.image.path, self.env.initramfs, out_dir / f"{stem}.results.ktap",
            out_dir / f"{stem}.dmesg.log"
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        cmdline = qemu.kernel_cmdline(profile, *plan.kernel_args(), self.append)
        with guest_memory.take(profile.node_mem_mib, self._why_fresh_memory(profile)) as backing:
            while True:
                for stale in (files.results, files.dmesg):
                    stale.unlink(missing_ok=True)
                argv = self._argv(profile, files, cmdline, backing.files)
                # By hand, on fresh RAM: the pool's files are the harness's, for its own boots.
                by_hand = qemu.on_fresh_ram(argv)
                memory_note = "" if backing.files is None else (
                    "# The harness booted it on its memory pool's files (guest_memory.py); this\n"
                    "# boots the same guest on fresh RAM.\n")
                (out_dir / f"{stem}.{self.name}.sh").write_text(
                    "#!/bin/sh\n# Reproduce this boot by hand (the console is on stdio).\n"
                    + memory_note + shlex.join(by_hand) + "\n"
                )
                if self.progress:
                    label = self.kernel.file_label
                    name = f"{profile.name} {label}" if label else profile.name
                    self.progress(f"{name}: booting with hugetlb_free_vmemmap={self.hvo} ({self._via()})")
                outcome = guest.run(argv, console_log, self.timeout, stop=stop)
                console = _read_text(console_log)
                stopped_by_kvm = qemu.kvm_boot_failure(console) if self.env.accel.used == "kvm" else None
                if stopped_by_kvm is None or (stop is not None and stop.is_set()):
                    break
                # The probe let KVM through, and KVM then stopped the guest: an emulator
                # failure, not the kernel's. Boot again under TCG (the reason goes into the
                # run's accel) rather than call the kernel hung or failed.
                if self.progress:
                    self.progress(f"{stem}: {stopped_by_kvm}: KVM cannot run this guest here; "
                                  "booting under TCG")
                accel = qemu.kvm_failed_in_boot(self.arch_profile, stopped_by_kvm)
                self.env = dataclasses.replace(self.env, accel=accel)
        port_text = _read_text(files.results)
        report, channel = read_results(port_text, console)
        log = read_kernel_log(_read_text(files.dmesg), console)
        kernel_log = out_dir / f"{stem}.kernel.log"
        # A full disk is reported by the results write that follows.
        with contextlib.suppress(OSError):
            kernel_log.write_text(log.text)
        self.last = _Boot(stem, profile, self.env, cmdline, argv, files, console_log, kernel_log, by_hand)
        return TargetOutput(
            port_text, log, outcome, channel,
            files={"console_log": str(console_log), "results_log": str(files.results),
                   "kernel_log": str(kernel_log)},
            report=report, cmdline=cmdline, accel=self._accel_record(), argv=argv,
            details={"qemu_exit": {"status": outcome.exit_status, "signal": outcome.exit_signal,
                                   "console_bytes": outcome.console_bytes}},
            memory=backing.record(),
        )

    def reproducer(self, run: Run, out_dir: Path) -> Path | None:
        """The boot's bundle at <out_dir>/repro/<stem>/ (harness/bundle.py), whoever booted it
        (run, triage, bisect); OSError when it cannot be written."""
        boot = self.last
        assert boot is not None, "run() first"
        record = bundle.BootRecord(boot.stem, boot.profile, self.kernel, boot.env, self.hvo, self.append,
                                   self.timeout, self.name, boot.cmdline, boot.argv, boot.files,
                                   boot.console_log, boot.kernel_log, boot.by_hand)
        return bundle.write(record, run, out_dir)
