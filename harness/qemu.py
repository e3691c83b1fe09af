"""QEMU command lines from an arch profile, and the KVM probe.

This module builds argv and decides the accelerator; it does not run guests (guest.py does)."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from harness import artefacts
from harness.errors import HarnessError
from harness.images import KernelImage
from harness.profiles import ArchProfile

# Names of the virtio-serial ports the guest looks up in /sys/class/virtio-ports/*/name.
RESULTS_PORT = "org.hvo-harness.results"
DMESG_PORT = "org.hvo-harness.dmesg"

# Host machine (uname -m) that can run each profile's guests under KVM.
_KVM_HOST_MACHINE = {"x86_64": "x86_64", "riscv64": "riscv64", "loongarch64": "loongarch64"}


@dataclass(frozen=True)
class AccelChoice:
    used: str  # "kvm" | "tcg"
    kvm_reason: str | None  # why not KVM; None when KVM is used


@dataclass(frozen=True)
class GuestFiles:
    kernel: Path
    initramfs: Path
    results: Path  # the results port is written here by QEMU
    dmesg: Path


def qemu_path(profile: ArchProfile) -> str:
    path = shutil.which(profile.qemu_binary)
    if path is None:
        raise HarnessError(
            f"{profile.qemu_binary} not found: run `make deps` "
            f"(Debian package {profile.qemu_package} from bookworm-backports)"
        )
    return path


def build_argv(
    profile: ArchProfile,
    files: GuestFiles,
    cmdline: str,
    accel: AccelChoice,
    memory: list[Path] | None = None,
) -> list[str]:
    """The whole QEMU command line; printed in results so a failure can be rerun by hand.

    MEMORY: a memory file per NUMA node (guest_memory.take's pool), shared with QEMU so that
    what the guest writes stays in it for the next boot; None: fresh RAM for each node."""
    tcg = f"tcg,thread={profile.tcg_thread}" if profile.tcg_thread and accel.used == "tcg" else None
    argv = [qemu_path(profile), "-machine", profile.machine, "-accel", tcg or accel.used]
    if profile.cpu:
        argv += ["-cpu", "host" if accel.used == "kvm" else profile.cpu]
    if profile.bios:
        if not Path(profile.bios).exists():
            fix = (f"run `hvo-harness fetch --arch {profile.name}` (Debian package "
                   f"{profile.firmware.package})" if profile.firmware
                   else f"run `make deps` ({profile.qemu_package})")
            raise HarnessError(f"firmware {profile.bios} not found: {fix}")
        argv += ["-bios", profile.bios]
    nodes = len(profile.node_mem_mib)
    # One socket per node: CPUs that share a core or cache must share a node, else the
    # kernel warns (x86: topology_sane() in smpboot.c) and the WARN would be ours, not its.
    sockets = nodes if profile.smp % nodes == 0 else 1
    smp = f"{profile.smp},sockets={sockets},cores={profile.smp // sockets},threads=1"
    argv += ["-smp", smp, "-m", f"{profile.memory_mib}M"]
    per_socket = profile.smp // sockets
    for node, mib in enumerate(profile.node_mem_mib):
        cpus = [cpu for cpu in range(profile.smp) if cpu // per_socket == node]
        if memory is None:
            argv += ["-object", f"memory-backend-ram,id=mem{node},size={mib}M"]
        else:
            argv += ["-object", f"memory-backend-file,id=mem{node},size={mib}M,"
                                f"mem-path={memory[node]},share=on"]
        numa = f"node,nodeid={node},memdev=mem{node}"
        if cpus:
            numa += f",cpus={cpus[0]}-{cpus[-1]}" if len(cpus) > 1 else f",cpus={cpus[0]}"
        argv += ["-numa", numa]
    argv += [
        "-kernel", str(files.kernel),
        "-initrd", str(files.initramfs),
        "-append", cmdline,
        # The console is the serial port on stdio, driven by pexpect; nothing else on stdio.
        "-display", "none", "-serial", "stdio", "-monitor", "none",
        "-nic", "none", "-no-reboot",
        *port_args(profile, files),
    ]
    argv += list(profile.extra_qemu_args)
    return argv


_MEMORY_FILE = re.compile(
    r"^memory-backend-file,id=(?P<id>[^,]+),size=(?P<size>[^,]+),mem-path=[^,]*,share=on$")


def on_fresh_ram(argv: list[str]) -> list[str]:
    """ARGV with each node's memory pool file (build_argv's memory=) made fresh RAM again: the
    same guest, for a command shown to or run by anyone but the harness (an upstream report,
    a LAVA job, a script to boot by hand), since the pool's files are the harness's own."""
    fresh = []
    for arg in argv:
        match = _MEMORY_FILE.match(arg)
        fresh.append(f"memory-backend-ram,id={match['id']},size={match['size']}" if match else arg)
    return fresh


def guest_node_layout(profile: ArchProfile, layout: tuple[int, ...]) -> tuple[int, ...]:
    """The NUMA layout (MiB per node) a boot of PROFILE gives the kernel for LAYOUT: LAYOUT, or,
    where a kernel booted without firmware sees no NUMA nodes (profile.direct_boot_numa False,
    bios None), one node of the same total. Offering QEMU nodes the kernel cannot see would ask
    hugepages= of a node 1 it does not have, which the kernel refuses as a whole."""
    if profile.bios is None and not profile.direct_boot_numa and len(layout) > 1:
        return (sum(layout),)
    return layout


def boot_profile(profile: ArchProfile, image: KernelImage) -> ArchProfile:
    """PROFILE as IMAGE boots: through the profile's firmware when the file QEMU boots is of a
    format the firmware takes (the firmware is fetched into the cache once), else as the profile
    says; with the node layout that boot gives the kernel (guest_node_layout). A profile that
    names its -bios already (a bundle's, with its own copy of the firmware) keeps it, so the
    result is the same when it is applied again (repro, triage)."""
    bios = profile.bios
    booted = image.payload_format or image.format
    if bios is None and profile.firmware is not None and booted in profile.firmware.formats:
        bios = str(artefacts.ensure_firmware(profile.firmware).path)
    chosen = replace(profile, bios=bios)
    return replace(chosen, node_mem_mib=guest_node_layout(chosen, profile.node_mem_mib))


def port_args(profile: ArchProfile, files: GuestFiles) -> list[str]:
    """The virtio-serial results and dmesg ports, each written to its file (both backends)."""
    return [
        "-device", f"{profile.virtio_serial_device},id=hvoserial",
        "-chardev", f"file,id=hvoresults,path={_option_value(files.results)}",
        "-device", f"virtserialport,bus=hvoserial.0,chardev=hvoresults,name={RESULTS_PORT}",
        "-chardev", f"file,id=hvodmesg,path={_option_value(files.dmesg)}",
        "-device", f"virtserialport,bus=hvoserial.0,chardev=hvodmesg,name={DMESG_PORT}",
    ]


def _option_value(path: Path) -> str:
    """A path inside a QEMU key=value option list, where a comma must be written twice."""
    return str(path).replace(",", ",,")


def kernel_cmdline(profile: ArchProfile, *parts: str) -> str:
    # panic=-1 reboots at once on panic and -no-reboot turns that into a QEMU exit; the host
    # watches the console too, as some kernels halt instead (see guest.py).
    # Nothing here may change how the kernel under test behaves: init_on_alloc=0 once made
    # Debian's kernel 2x faster on 1G pages under TCG, and hid docs/findings.md #1 with it.
    base = [f"console={profile.console}", "panic=-1", "printk.time=1"]
    return " ".join([*base, *profile.extra_cmdline, *[p for p in parts if p]])


_kvm_cache: dict[str, AccelChoice] = {}


def choose_accel(profile: ArchProfile, want_kvm: bool = True) -> AccelChoice:
    """KVM if it really runs a guest here, else TCG with the reason. Probed once per process."""
    if not want_kvm:
        return AccelChoice("tcg", "KVM not wanted (--accel tcg)")
    if _KVM_HOST_MACHINE.get(profile.name) != platform.machine():
        return AccelChoice("tcg", f"host is {platform.machine()}, guest is {profile.name}")
    if profile.name not in _kvm_cache:
        _kvm_cache[profile.name] = _probe_kvm(profile)
    return _kvm_cache[profile.name]


# What QEMU prints when KVM stops a guest that the probe let through (the probe runs firmware
# only: on some hosts the firmware runs under KVM and the kernel then stops at once).
_KVM_BOOT_FAILURE_MARKERS = ("KVM internal error", "error: failed to set MSR", "kvm run failed")


def kvm_boot_failure(console: str) -> str | None:
    """The console line with which QEMU said KVM cannot run this guest, or None. Such a boot
    says nothing about the kernel: it is the emulator's failure, never a kernel FAIL."""
    marker = next((m for m in _KVM_BOOT_FAILURE_MARKERS if m in console), None)
    return _first_line_with(console, marker) if marker else None


def kvm_failed_in_boot(profile: ArchProfile, line: str) -> AccelChoice:
    """TCG from now on in this process, with the reason, after KVM stopped a boot (line)."""
    choice = AccelChoice("tcg", f"KVM stopped the guest while it booted ({line}); booted again under TCG")
    _kvm_cache[profile.name] = choice
    return choice


# What a kernel booted without an initramfs prints once it got through its boot under KVM.
_KERNEL_REACHED_ROOT = re.compile(r"VFS: Unable to mount root|Kernel panic - not syncing|Run /init")
_KERNEL_PROBE_SECONDS = 20.0
_kernel_probed: set[str] = set()


def confirm_kvm(profile: ArchProfile, kernel: Path, accel: AccelChoice) -> AccelChoice:
    """KVM only if it boots this kernel to its root mount, once per arch and process.

    The firmware probe (_probe_kvm) is not enough: on some hosts the firmware runs under KVM
    and a kernel then stops at once ("KVM internal error") or hangs without a console line."""
    accel = accel_now(profile, accel)
    if accel.used != "kvm" or profile.name in _kernel_probed:
        return accel
    argv = [
        qemu_path(profile), "-machine", f"{profile.machine},accel=kvm", "-cpu", "host",
        "-m", "512M", "-kernel", str(kernel), "-append", kernel_cmdline(profile),
        "-display", "none", "-serial", "stdio", "-monitor", "none", "-nic", "none", "-no-reboot",
    ]
    text = ""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                              timeout=_KERNEL_PROBE_SECONDS)
        text = (proc.stdout or "") + (proc.stderr or "")
    except subprocess.TimeoutExpired as expired:
        text = _as_text(expired.stdout) + _as_text(expired.stderr)
    _kernel_probed.add(profile.name)
    if _KERNEL_REACHED_ROOT.search(text) and kvm_boot_failure(text) is None:
        return accel
    line = kvm_boot_failure(text) or (
        f"no root-mount line within {_KERNEL_PROBE_SECONDS:.0f} s"
        if text.strip() else f"no console output within {_KERNEL_PROBE_SECONDS:.0f} s")
    choice = AccelChoice("tcg", f"KVM probe with the kernel under test: {line}")
    _kvm_cache[profile.name] = choice
    return choice


def accel_now(profile: ArchProfile, accel: AccelChoice) -> AccelChoice:
    """ACCEL, unless it is KVM and KVM has since stopped a boot of this arch (kvm_failed_in_boot)."""
    known = _kvm_cache.get(profile.name)
    if accel.used == "kvm" and known is not None and known.used != "kvm":
        return known
    return accel


# Messages with which QEMU reports that KVM cannot run the guest on this host.
_KVM_FAILURE_MARKERS = (
    "KVM internal error",
    "emulation failure",
    "Could not access KVM kernel module",
    "failed to initialize kvm",
    "kvm_init_vcpu",
    "error: failed to set MSR",
    "Assertion",
)


def _probe_kvm(profile: ArchProfile) -> AccelChoice:
    """Run the firmware under KVM for a moment: /dev/kvm opening is not enough here
    (NOTES: guests stop with "KVM internal error. Suberror: 1" or abort on MSR 0x10a)."""
    if not os.path.exists("/dev/kvm"):
        return AccelChoice("tcg", "no /dev/kvm")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return AccelChoice("tcg", "/dev/kvm is not readable and writable by this user")
    argv = [
        qemu_path(profile), "-machine", f"{profile.machine},accel=kvm", "-cpu", "host",
        "-m", "256M", "-display", "none", "-serial", "none", "-monitor", "none",
        "-nic", "none", "-no-reboot",
    ]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=3)
    except subprocess.TimeoutExpired as expired:
        # Still running after 3 s of firmware: KVM works, unless it already complained.
        text = _as_text(expired.stderr) + _as_text(expired.stdout)
        marker = next((m for m in _KVM_FAILURE_MARKERS if m in text), None)
        if marker is None:
            return AccelChoice("kvm", None)
        return AccelChoice("tcg", f"KVM probe: {_first_line_with(text, marker)}")
    text = (proc.stderr or "") + (proc.stdout or "")
    marker = next((m for m in _KVM_FAILURE_MARKERS if m in text), None)
    line = _first_line_with(text, marker) if marker else (text.strip().splitlines() or [""])[-1]
    return AccelChoice(
        "tcg", f"KVM probe: QEMU exited with {proc.returncode}: {line}".rstrip(": ")
    )


def _as_text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _first_line_with(text: str, marker: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if marker in ln), marker)
