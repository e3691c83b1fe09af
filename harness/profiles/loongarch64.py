"""loongarch64 on QEMU's virt machine, booted directly (QEMU >= 10)."""

from harness.profiles import GIB, LLVM_19, MIB, ArchProfile, CpuModel, KernelBuild

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
    # One node: Debian's loong64 kernel sees a single NUMA node on QEMU's virt machine even when
    # given two ("1 NUMA nodes"), and then refuses hugepages= naming node 1 as a whole.
    node_mem_mib=(8192,),
    smp=2,
    # The huge page is one PMD: 2M with 4K pages, 32M with 16K pages (Debian's loong64).
    huge_sizes_by_page_size={4096: (2 * MIB, 1 * GIB), 16384: (32 * MIB,)},
    image_formats=("elf", "efi-zboot", "loongarch-efi"),
    # bookworm has no LoongArch gcc: clang-19 from bookworm-backports builds the kernel. The
    # ELF (not the EFI image, CONFIG_EFI_STUB=n) is what QEMU's virt machine boots directly.
    build=KernelBuild(
        target="vmlinux.elf",
        image="arch/loongarch/boot/vmlinux.elf",
        toolchains=(LLVM_19,),
        page_sizes=("16k", "4k", "4k4l"),
    ),
    # Triage (harness/triage.py): virt is the only machine; another CPU and size of the node.
    triage_cpus=(CpuModel("max", "every feature QEMU emulates"),),
    triage_node_layouts=((8192,), (6144,)),
)
