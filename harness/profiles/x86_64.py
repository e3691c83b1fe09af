"""x86_64 on QEMU's pc machine."""

from harness.profiles import GIB, LLVM_19, MIB, ArchProfile, CpuModel, KernelBuild, Toolchain

PROFILE = ArchProfile(
    name="x86_64",
    debian_arch="amd64",
    kernel_arch="x86",
    clang_target="x86_64-linux-gnu",
    elf_machine=62,  # EM_X86_64
    qemu_binary="qemu-system-x86_64",
    qemu_package="qemu-system-x86",
    machine="pc",
    # "max" gives TCG every feature it emulates (1G pages need pdpe1gb). Without ERMS/FSRM
    # the kernel clears pages with "rep stosq" instead of "rep stosb", which TCG runs one
    # byte at a time: faulting in a 1G page took 1.7 s with ERMS and 0.3 s without.
    cpu="max,erms=off,fsrm=off",
    bios=None,
    console="ttyS0",
    # A fixed physical layout: with KASLR the kernel image lands at random and can take the
    # only free 1G range of node 0, so run-time 1G allocations would pass or fail by chance.
    extra_cmdline=("nokaslr",),
    # Two nodes, each with room for 1G pages after releases scatter unmovable vmemmap pages.
    node_mem_mib=(6144, 6144),
    smp=2,
    huge_sizes_by_page_size={4096: (2 * MIB, 1 * GIB)},
    image_formats=("bzimage", "elf"),
    build=KernelBuild(
        target="bzImage",
        image="arch/x86/boot/bzImage",
        toolchains=(
            Toolchain("gcc", (), "gcc", (("gcc", "gcc"), ("ld", "binutils"))),
            LLVM_19,
        ),
        page_sizes=("4k",),
    ),
    # Triage (harness/triage.py): the CPU models, machine types and node layouts it tries.
    triage_cpus=(
        CpuModel("EPYC", "a named AMD model with pdpe1gb (1G pages) and, like the default, no ERMS"),
        # /work/shared/NOTES.md: without pdpe1gb the kernel refuses hugepagesz=1G.
        CpuModel("qemu64", "QEMU's baseline model: no pdpe1gb, so no 1G pages", lacks_sizes=(1 * GIB,)),
    ),
    triage_machines=("q35",),
    # Where the boot-time 1G pages land depends on the node sizes (docs/findings.md #1).
    triage_node_layouts=((6144, 6144), (5120, 5120), (4096, 4096)),
)
