"""virtme-ng (`vng`) as a second boot backend: the same scenarios and judging, booted by vng.

vng boots a kernel on the host's own userspace: the guest's root is the host's / over virtio
9p (read-only, with tmpfs overlays), its init is vng's, and `vng --exec` runs one command as
root. That command is guest_scripts/vng-init.sh under the harness's static busybox: it lays out
busybox and the hvoh helper on a tmpfs as the initramfs has them and runs
guest_scripts/scenarios.sh. Results and dmesg go over the same virtio-serial ports as with the
QEMU backend (added with --qemu-opts); with --verbose the kernel console and the script's
stdout (the hvo-init markers) both reach vng's terminal, which guest.run reads. So guest.run,
protocol.parse and judge.judge are the QEMU backend's, unchanged.

Where it fits: x86_64 (vng runs the host's userspace in the guest) and a kernel built from a
tree with kconfigs/vng.config (`--tree --variant debug+vng`): a distribution kernel has 9p as a
module, and vng would need the host's modules for it. This module builds argv and checks that a
boot fits; it does not run guests (guest.py does)."""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

from harness import qemu
from harness.errors import HarnessError
from harness.initramfs import GUEST_SCRIPTS
from harness.profiles import ArchProfile

BACKENDS = ("qemu", "vng")
# The only arch whose guests can run this host's userspace.
VNG_ARCH = "x86_64"
GUEST_WRAPPER = GUEST_SCRIPTS / "vng-init.sh"
SCENARIOS = GUEST_SCRIPTS / "scenarios.sh"
# Built-in options without which a vng guest cannot start (kconfigs/vng.config has them all):
# its root is 9p over virtio, its script runs on virtio-serial ports.
REQUIRED_CONFIG = ("CONFIG_NET_9P", "CONFIG_NET_9P_VIRTIO", "CONFIG_9P_FS", "CONFIG_VIRTIO_CONSOLE")
_FIX = "use --backend qemu"


def check_backend(backend: str, profiles: Iterable[ArchProfile], from_tree: bool) -> None:
    """A backend that fits the request, else one error line naming why and the fix."""
    if backend not in BACKENDS:
        raise HarnessError(f"unknown backend {backend!r}: choose {' or '.join(BACKENDS)}")
    if backend != "vng":
        return
    if platform.machine() != VNG_ARCH:
        raise HarnessError(
            f"--backend vng runs this host's userspace in an {VNG_ARCH} guest, and this host is "
            f"{platform.machine()}: {_FIX}"
        )
    others = [p.name for p in profiles if p.name != VNG_ARCH]
    if others:
        raise HarnessError(
            f"--backend vng boots {VNG_ARCH} only (the guest runs this host's {VNG_ARCH} "
            f"userspace), not {', '.join(others)}: give --arch {VNG_ARCH}, or {_FIX}"
        )
    if not from_tree:
        raise HarnessError(
            "--backend vng needs a kernel built from a tree with the vng fragment (9p root, "
            "virtio-serial script ports built in): add --tree --variant debug+vng, or "
            f"{_FIX}"
        )


def check_kernel(profile: ArchProfile, config: dict[str, str] | None, variant: str | None) -> None:
    """The kernel has what vng's guest needs built in, else one error line naming the fix."""
    label = f"{profile.name} {variant}" if variant else profile.name
    if config is None:
        raise HarnessError(f"--backend vng: no .config for the {label} kernel: build it with --tree "
                           "--variant debug+vng")
    missing = [option for option in REQUIRED_CONFIG if config.get(option) != "y"]
    if missing:
        raise HarnessError(
            f"--backend vng: the {label} kernel lacks {', '.join(missing)}=y (vng's guest mounts "
            "the host's root over 9p): build it with the vng fragment, e.g. --variant debug+vng"
        )


def vng_path() -> str:
    """The vng command: on PATH, else next to this Python (the project's venv)."""
    found = shutil.which("vng") or shutil.which("vng", path=str(Path(sys.executable).parent))
    if found is None:
        raise HarnessError(
            "vng (virtme-ng) not found: install the project with its vng extra, "
            "`.venv/bin/pip install -e '.[vng]'`"
        )
    return found


def _command(vng: str) -> list[str]:
    """vng, with its directory on PATH when its virtme-run is not found there (vng runs
    virtme-run through the shell: a venv that is not activated would not have it)."""
    bindir = Path(vng).parent
    if shutil.which("virtme-run") == str(bindir / "virtme-run"):
        return [vng]
    return ["env", f"PATH={bindir}{os.pathsep}{os.environ.get('PATH', '')}", vng]


def node_cpus(profile: ArchProfile) -> tuple[str, list[list[int]]]:
    """The -smp topology and the CPUs of each NUMA node, as qemu.build_argv lays them out:
    one socket per node, so no CPU shares a core or cache with one on another node (x86's
    topology_sane() would WARN)."""
    nodes = len(profile.node_mem_mib)
    sockets = nodes if profile.smp % nodes == 0 else 1
    per_socket = profile.smp // sockets
    smp = f"{profile.smp},sockets={sockets},cores={per_socket},threads=1"
    cpus = [[cpu for cpu in range(profile.smp) if cpu // per_socket == node] for node in range(nodes)]
    return smp, cpus


def guest_command(busybox: Path, helper: Path) -> str:
    """What `vng --exec` runs in the guest (vng runs it with /bin/sh as root)."""
    paths = [busybox, GUEST_WRAPPER, busybox, helper, SCENARIOS]
    return "exec " + shlex.join([str(paths[0]), "sh", *map(str, paths[1:])])


def build_argv(
    profile: ArchProfile,
    files: qemu.GuestFiles,
    cmdline: str,
    accel: qemu.AccelChoice,
    busybox: Path,
    helper: Path,
) -> list[str]:
    """The whole vng command line (files.initramfs is not used: the guest's root is the host's)."""
    if profile.name != VNG_ARCH:
        raise HarnessError(f"--backend vng boots {VNG_ARCH} only, not {profile.name}: {_FIX}")
    smp, cpus = node_cpus(profile)
    argv = [
        *_command(vng_path()),
        "--run", str(files.kernel),
        # The QEMU the QEMU backend runs (a missing one is the same error, naming the package).
        "--qemu", qemu.qemu_path(profile),
        # Everything is built in (vng would look for the host's modules of that release).
        "--skip-modules",
        # Deterministic: 9p always (vng would use virtiofs when virtiofsd is installed).
        "--force-9p",
        # The kernel console on vng's terminal, next to the script's stdout.
        "--verbose",
        "--name", f"hvo-harness-{profile.name}",
        "--cpus", smp,
        "--memory", f"{profile.memory_mib}M",
    ]
    for mib, node in zip(profile.node_mem_mib, cpus, strict=True):
        spec = f"{mib}M"
        if node:
            spec += f",cpus={node[0]}-{node[-1]}" if len(node) > 1 else f",cpus={node[0]}"
        argv += ["--numa", spec]
    if accel.used != "kvm":
        argv.append("--disable-kvm")
    # root=: vng exports / as the 9p tag "/dev/root" and counts on the kernel's block-root
    # fallback to use that name; a kernel without CONFIG_BLOCK (tinyconfig) mounts 9p with an
    # empty source instead ("9p: Bad value for 'source'"). Named, the kernel mounts it as is.
    argv += ["--append", f"{cmdline} root=/dev/root", "--exec", guest_command(busybox, helper)]
    # The results and dmesg ports, as the QEMU backend has them. vng puts these words into a
    # shell command line: shlex.join keeps each one a word.
    qemu_opts = [
        # The profile's machine, as with the QEMU backend (vng asks for q35 under TCG; the last
        # -machine wins): the same memory layout, so the same room for 1G pages per node.
        "-machine", profile.machine,
        *qemu.port_args(profile, files),
        *profile.extra_qemu_args,
    ]
    # With '=': the value starts with '-'; and it must be last (virtme-run takes the rest).
    argv.append("--qemu-opts=" + shlex.join(qemu_opts))
    return argv
