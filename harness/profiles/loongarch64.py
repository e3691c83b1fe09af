"""loongarch64 on QEMU's virt machine (QEMU >= 10): EFI kernels (Debian's) through UEFI
firmware, ELF kernels (the harness's tree builds) directly."""

from harness.profiles import LLVM_19, MIB, ArchProfile, CpuModel, Firmware, KernelBuild

PROFILE = ArchProfile(
    name="loongarch64",
    debian_arch="loong64",
    kernel_arch="loongarch",
    clang_target="loongarch64-linux-gnu",
    elf_machine=258,  # EM_LOONGARCH
    qemu_binary="qemu-system-loongarch64",
    qemu_package="qemu-system-misc",
    machine="virt",
    cpu="la464",
    bios=None,
    console="ttyS0",
    extra_cmdline=(
        # Without it Debian's kernel oopses in i8042_flush: the virt machine has no i8042.
        "initcall_blacklist=i8042_init",
        # The virt machine's UART, as an early console: a kernel that dies before its serial
        # driver probes (docs/findings.md #4) otherwise prints nothing and looks hung.
        "earlycon=uart,mmio,0x1fe001e0",
    ),
    # Two nodes where the kernel boots through the firmware below; one node of the same 8G
    # where it boots directly (direct_boot_numa).
    node_mem_mib=(4096, 4096),
    smp=2,
    # The huge page is one PMD: 2M with 4K pages, 32M with 16K pages (Debian's loong64). Only
    # that one: LoongArch's HPAGE_SHIFT is its only hugetlb size (no arch_hugetlb_valid_size,
    # no PUD pages), so 1G is refused at every page size and page-table depth ("HugeTLB:
    # unsupported hugepagesz=1G" on debug+4k4l), a skip, never the arch's own size missing.
    huge_sizes_by_page_size={4096: (2 * MIB,), 16384: (32 * MIB,)},
    image_formats=("elf", "efi-zboot", "loongarch-efi"),
    # bookworm has no LoongArch gcc: clang-19 from bookworm-backports builds the kernel. The
    # ELF (not the EFI image, CONFIG_EFI_STUB=n) is what QEMU's virt machine boots directly.
    build=KernelBuild(
        target="vmlinux.elf",
        image="arch/loongarch/boot/vmlinux.elf",
        toolchains=(LLVM_19,),
        page_sizes=("16k", "4k", "4k4l"),
    ),
    # Triage (harness/triage.py): virt is the only machine; another CPU and size of the nodes
    # (a direct boot gets each layout as one node of its total: 8192, 6144).
    triage_cpus=(CpuModel("max", "every feature QEMU emulates"),),
    triage_node_layouts=((4096, 4096), (3072, 3072)),
    # LoongArch's NUMA nodes come from ACPI's SRAT (arch/loongarch/kernel/numa.c), and only
    # firmware hands the kernel ACPI tables: booted directly, Debian's kernel saw one node of
    # two ("1 NUMA nodes") and refused hugepages= naming node 1 as a whole. So EFI kernels
    # (Debian's vmlinuz, whose zboot payload images.py unpacks, or a vmlinux.efi) boot through
    # Debian's EDK2 build for QEMU's virt machine (sid's qemu-efi-loongarch64; bookworm has
    # none), as docs/system/loongarch/virt.rst does. An ELF (vmlinux.elf of the tree builds,
    # CONFIG_EFI_STUB=n) cannot boot through it and boots directly, on one node.
    firmware=Firmware(
        package="qemu-efi-loongarch64",
        path="usr/share/qemu-efi-loongarch64/QEMU_EFI.fd",
        formats=("loongarch-efi",),
    ),
    direct_boot_numa=False,
)
