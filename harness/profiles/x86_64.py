"""x86_64 on QEMU's pc machine."""

from harness.profiles import GIB, MIB, ArchProfile

PROFILE = ArchProfile(
    name="x86_64",
    debian_arch="amd64",
    kernel_arch="x86",
    clang_target="x86_64-linux-gnu",
    elf_machine=62,  # EM_X86_64
    qemu_binary="qemu-system-x86_64",
    qemu_package="qemu-system-x86",
    machine="pc",
    # "max" gives TCG every feature it emulates (1G pages need pdpe1gb).
    cpu="max",
    bios=None,
    console="ttyS0",
    extra_cmdline=(),
    # Two nodes, each large enough for a boot-time and a run-time 1G page.
    node_mem_mib=(4096, 4096),
    smp=2,
    huge_sizes_by_page_size={4096: (2 * MIB, 1 * GIB)},
    image_formats=("bzimage", "elf"),
)
