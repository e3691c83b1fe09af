"""The virtme-ng target: the kernel under test booted by `vng` on this host's userspace.

The same plan, guest scripts, results ports and judging as the QEMU target (qemu.py); only the
command differs: harness/vng.py builds it (x86_64, a kernel built from a tree with the vng
fragment) and says where vng does not fit. Its hand-run script is '<stem>.vng.sh'."""

from __future__ import annotations

from pathlib import Path

from harness import qemu, vng
from harness.profiles import ArchProfile
from harness.targets.qemu import QemuTarget


class VngTarget(QemuTarget):
    """One boot through vng (harness.targets.Target); see QemuTarget for the arguments."""

    name = "vng"

    def _accel(self) -> qemu.AccelChoice:
        # KVM as chosen for the arch, never again once it stopped a boot of it (the kernel
        # probe, qemu.confirm_kvm, boots with the QEMU target's own argv and is that target's).
        return qemu.accel_now(self.arch_profile, self.env.accel)

    def _check(self, profile: ArchProfile) -> None:
        vng.check_kernel(profile, self.kernel.config, self.kernel.variant)

    def _argv(self, profile: ArchProfile, files: qemu.GuestFiles, cmdline: str,
              memory: list[Path] | None = None) -> list[str]:
        assert memory is None, "vng lays out the guest's memory itself"
        env = self.env
        assert env.busybox is not None and env.helper is not None
        return vng.build_argv(profile, files, cmdline, env.accel, env.busybox, env.helper)

    def _why_fresh_memory(self, profile: ArchProfile) -> str | None:
        return "virtme-ng lays out the guest's memory itself (no memory files)"

    def _via(self) -> str:
        return f"{self.env.accel.used}, vng"
