"""riscv64 on QEMU's virt machine with OpenSBI."""

from harness.profiles import GIB, LLVM_19, MIB, ArchProfile, CpuModel, KernelBuild, Toolchain

PROFILE = ArchProfile(
    name="riscv64",
    debian_arch="riscv64",
    kernel_arch="riscv",
    clang_target="riscv64-linux-gnu",
    elf_machine=243,  # EM_RISCV
    qemu_binary="qemu-system-riscv64",
    qemu_package="qemu-system-misc",
    machine="virt",
    cpu="rv64",
    bios="/usr/share/qemu/opensbi-riscv64-generic-fw_dynamic.bin",
    console="ttyS0",
    extra_cmdline=(),
    node_mem_mib=(8192, 8192),
    smp=2,
    # Sv39 and up: PMD (2M) and PUD (1G) leaves; 64K NAPOT sizes are not HugeTLB-HVO relevant.
    huge_sizes_by_page_size={4096: (2 * MIB, 1 * GIB)},
    image_formats=("riscv-image", "elf"),
    build=KernelBuild(
        target="Image",
        image="arch/riscv/boot/Image",
        toolchains=(
            Toolchain("gcc", ("CROSS_COMPILE=riscv64-linux-gnu-",), "riscv64-linux-gnu-gcc",
                      (("riscv64-linux-gnu-gcc", "gcc-riscv64-linux-gnu"),
                       ("riscv64-linux-gnu-ld", "binutils-riscv64-linux-gnu"))),
            LLVM_19,
        ),
        page_sizes=("4k",),
    ),
    # Triage (harness/triage.py): virt is the only machine; another CPU and node layout.
    triage_cpus=(CpuModel("max", "every extension QEMU emulates"),),
    triage_node_layouts=((8192, 8192), (6144, 6144)),
)
