"""Arch profiles: everything arch-specific, as data.

Adding an arch is adding a module here (plus kconfig fragments); no other module branches on
the arch name. The kernel's tools/testing/kunit/qemu_configs/ is the model.
"""

from dataclasses import dataclass, field, replace
from importlib import import_module

from harness.errors import HarnessError

ARCH_NAMES = ("x86_64", "riscv64", "loongarch64")

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


@dataclass(frozen=True)
class Toolchain:
    """A compiler family for kernel builds, as make variables plus the tools it needs."""

    name: str
    make_vars: tuple[str, ...]
    # The C compiler make calls (ccache goes in front of it when present).
    compiler: str
    # (executable, Debian package that provides it): a missing one is an error naming the package.
    tools: tuple[tuple[str, str], ...]


LLVM_19 = Toolchain(
    "llvm", ("LLVM=-19",), "clang-19",
    (("clang-19", "clang-19 (bookworm-backports)"), ("ld.lld-19", "lld-19 (bookworm-backports)"),
     ("llvm-ar-19", "llvm-19 (bookworm-backports)")),
)


@dataclass(frozen=True)
class KernelBuild:
    """How a kernel for this arch is built from a tree (kbuild.py reads it)."""

    # make target and the bootable image it leaves under O=.
    target: str
    image: str
    # The first is the default; --toolchain picks another by name.
    toolchains: tuple[Toolchain, ...]
    # Page sizes with a kconfigs/page-size/<arch>-<label>.config; the first is the default.
    page_sizes: tuple[str, ...]


@dataclass(frozen=True)
class CpuModel:
    """A QEMU CPU model that triage boots instead of the profile's (harness/triage.py)."""

    # The -cpu value.
    model: str
    # What it changes, said in the triage table.
    note: str
    # Huge page sizes (bytes) this model cannot map, e.g. 1G without pdpe1gb: the kernel
    # refuses them, so a boot on it skips them (never fails them, never passes them).
    lacks_sizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Firmware:
    """UEFI firmware from a Debian package, which QEMU runs (-bios) before a kernel whose image
    format it boots, where the kernel needs what only firmware hands it (LoongArch: the ACPI
    tables, whose SRAT is its only source of NUMA nodes). qemu.boot_profile() chooses it."""

    # The Debian package that ships it (fetched into the cache like the kernels:
    # artefacts.ensure_firmware) and the file in that package QEMU takes with -bios.
    package: str
    path: str
    # images.py format names of the file QEMU boots (for an EFI zboot image, its payload)
    # that go through this firmware; every other format boots directly, as before.
    formats: tuple[str, ...]


@dataclass(frozen=True)
class ArchProfile:
    name: str
    # Debian's name for the arch (package suffix, apt architecture).
    debian_arch: str
    # The kernel's ARCH= for builds and nolibc.
    kernel_arch: str
    # clang --target triple for the static nolibc guest helper.
    clang_target: str
    # ELF e_machine of the arch's kernels and binaries (images.py checks images with it).
    elf_machine: int
    qemu_binary: str
    # The Debian package that ships qemu_binary, named in the error when it is missing.
    qemu_package: str
    machine: str
    cpu: str | None
    # Firmware passed with -bios (None: QEMU's default).
    bios: str | None
    console: str
    # Kernel arguments the arch's QEMU machine needs, with the reason in a comment at the site.
    extra_cmdline: tuple[str, ...]
    # Guest memory in MiB per NUMA node; len() is the node count.
    node_mem_mib: tuple[int, ...]
    smp: int
    # Base page size (bytes) -> huge page sizes (bytes) the arch can have with it.
    huge_sizes_by_page_size: dict[int, tuple[int, ...]]
    # Kernel image formats QEMU boots for this arch, by images.py's format names.
    image_formats: tuple[str, ...]
    build: KernelBuild
    # No sizeof(struct page) here: it depends on the config, and is read from each kernel
    # (harness/structpage.py).
    # Options QEMU must be given for the virtio-serial results channel.
    virtio_serial_device: str = "virtio-serial-pci"
    extra_qemu_args: tuple[str, ...] = field(default_factory=tuple)
    # TCG's thread mode (-accel tcg,thread=single|multi); None: QEMU's default for the target.
    tcg_thread: str | None = None
    # What triage varies besides the generic variations (harness/triage.py): other CPU models,
    # other machine types, other NUMA layouts (MiB per node), each booted once in place of the
    # profile's. Empty: the arch has no alternative (riscv64 and loongarch64 have only virt).
    triage_cpus: tuple[CpuModel, ...] = ()
    triage_machines: tuple[str, ...] = ()
    triage_node_layouts: tuple[tuple[int, ...], ...] = ()
    # Firmware for the image formats that need it (qemu.boot_profile); None: none does.
    firmware: Firmware | None = None
    # Whether a kernel QEMU boots without firmware (bios None) sees QEMU's NUMA nodes. False
    # (LoongArch): it sees all the memory as one node, so such a boot is given one node of
    # the same total (qemu.guest_node_layout), never a node 1 the kernel cannot see.
    direct_boot_numa: bool = True
    # Why this arch's guests boot on fresh RAM by default, not on the memory pool's reused
    # files (harness/guest_memory.py); None: on the pool's files, as every arch does today.
    fresh_memory: str | None = None

    @property
    def memory_mib(self) -> int:
        return sum(self.node_mem_mib)


def get_profile(name: str) -> ArchProfile:
    if name not in ARCH_NAMES:
        raise HarnessError(
            f"unknown arch {name!r}: choose from {', '.join(ARCH_NAMES)} or 'all'"
        )
    module = import_module(f"harness.profiles.{name}")
    return module.PROFILE


def parse_arch_list(text: str) -> list[ArchProfile]:
    """'all', or a comma-separated list of arch names, in the order given."""
    names = ARCH_NAMES if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise HarnessError("--arch is empty: give x86_64, riscv64, loongarch64 or all")
    return [get_profile(name) for name in names]


def with_node_memory(profile: ArchProfile, text: str) -> ArchProfile:
    """The profile with another NUMA layout: 'MIB,MIB' (one number per node)."""
    try:
        sizes = tuple(int(word) for word in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 256:
        raise HarnessError(f"--node-mem {text!r}: give MiB per node, e.g. 4096,4096")
    return replace(profile, node_mem_mib=sizes)


def size_label(size: int) -> str:
    """4096 -> '4K', 2 MiB -> '2M', 1 GiB -> '1G', 16 GiB -> '16G' (the kernel's hugepagesz= form)."""
    for unit, suffix in ((GIB, "G"), (MIB, "M"), (KIB, "K")):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def parse_size(text: str) -> int:
    units = {"K": KIB, "M": MIB, "G": GIB}
    text = text.strip().upper()
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)
