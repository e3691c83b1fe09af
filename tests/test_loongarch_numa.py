"""loongarch64's two boot paths. LoongArch takes its NUMA nodes from ACPI's SRAT, which only
firmware hands the kernel: EFI kernels (Debian's vmlinuz) boot through Debian's UEFI firmware for
QEMU's virt machine on two nodes; ELF kernels (the tree builds, CONFIG_EFI_STUB=n) boot directly,
on one node of the same memory (a kernel booted so sees one node whatever QEMU offers)."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from harness import artefacts, images, qemu
from harness.errors import HarnessError
from harness.images import KernelImage
from harness.profiles import ArchProfile, get_profile, with_node_memory
from harness.results import Run

LOONGARCH = get_profile("loongarch64")
TCG = qemu.AccelChoice("tcg", "a unit test boots nothing")


@pytest.fixture(scope="module")
def debian_image() -> KernelImage:
    """Debian sid's loong64 vmlinuz (EFI zboot), made bootable as the pipeline makes it."""
    return images.prepare(artefacts.ensure_debian_kernel(LOONGARCH).image, LOONGARCH)


def elf_image(path: Path) -> KernelImage:
    """A tree build's vmlinux.elf as images.prepare describes it (only the format matters here)."""
    return KernelImage(path, path, "elf", "loongarch64", "0" * 64)


def numa_options(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == "-numa"]


def argv_for(profile: ArchProfile, image: KernelImage, tmp_path: Path) -> list[str]:
    files = qemu.GuestFiles(image.path, tmp_path / "initramfs.cpio", tmp_path / "r.ktap", tmp_path / "d.log")
    return qemu.build_argv(profile, files, "console=ttyS0", TCG)


def test_debian_efi_kernel_boots_through_the_firmware_on_two_nodes(debian_image: KernelImage,
                                                                   tmp_path: Path) -> None:
    assert (debian_image.format, debian_image.payload_format) == ("efi-zboot", "loongarch-efi")
    profile = qemu.boot_profile(LOONGARCH, debian_image)
    assert LOONGARCH.firmware is not None
    firmware = artefacts.ensure_firmware(LOONGARCH.firmware)
    assert firmware.package.name == "qemu-efi-loongarch64" and firmware.path.name == "QEMU_EFI.fd"
    assert profile.bios == str(firmware.path)
    assert profile.node_mem_mib == (4096, 4096)
    argv = argv_for(profile, debian_image, tmp_path)
    assert argv[argv.index("-bios") + 1] == str(firmware.path)
    assert argv[argv.index("-kernel") + 1] == str(debian_image.path)  # the payload, vmlinux.efi
    assert numa_options(argv) == ["node,nodeid=0,memdev=mem0,cpus=0", "node,nodeid=1,memdev=mem1,cpus=1"]


def test_elf_kernel_boots_directly_on_one_node_of_the_same_memory(tmp_path: Path) -> None:
    image = elf_image(tmp_path / "vmlinux.elf")
    profile = qemu.boot_profile(LOONGARCH, image)
    assert profile.bios is None
    assert profile.node_mem_mib == (8192,)
    argv = argv_for(profile, image, tmp_path)
    assert "-bios" not in argv
    assert numa_options(argv) == ["node,nodeid=0,memdev=mem0,cpus=0-1"]
    assert argv[argv.index("-m") + 1] == "8192M"


def test_node_mem_is_kept_through_firmware_and_summed_without(debian_image: KernelImage,
                                                              tmp_path: Path) -> None:
    asked = with_node_memory(LOONGARCH, "3072,5120")
    assert qemu.boot_profile(asked, debian_image).node_mem_mib == (3072, 5120)
    assert qemu.boot_profile(asked, elf_image(tmp_path / "vmlinux.elf")).node_mem_mib == (8192,)


def test_boot_profile_applied_again_is_the_same(debian_image: KernelImage, tmp_path: Path) -> None:
    """repro and triage boot a bundle's recorded profile, which boot_profile already made."""
    for image in (debian_image, elf_image(tmp_path / "vmlinux.elf")):
        once = qemu.boot_profile(LOONGARCH, image)
        assert qemu.boot_profile(once, image) == once


def test_a_bundles_own_firmware_is_kept(debian_image: KernelImage, tmp_path: Path) -> None:
    bundled = str(tmp_path / "bundle" / "firmware" / "QEMU_EFI.fd")
    profile = qemu.boot_profile(replace(LOONGARCH, bios=bundled), debian_image)
    assert profile.bios == bundled and profile.node_mem_mib == (4096, 4096)


def test_other_arches_boot_as_their_profiles_say(tmp_path: Path) -> None:
    x86, riscv = get_profile("x86_64"), get_profile("riscv64")
    bzimage = KernelImage(tmp_path / "bzImage", tmp_path / "bzImage", "bzimage", "x86_64", "0" * 64)
    image = KernelImage(tmp_path / "Image", tmp_path / "Image", "riscv-image", "riscv64", "0" * 64)
    assert qemu.boot_profile(x86, bzimage) == x86
    assert qemu.boot_profile(riscv, image) == riscv  # OpenSBI, two nodes from the device tree


def test_direct_boot_layouts_are_one_node_of_the_total() -> None:
    """What triage varies on a direct boot: the listed layouts as the kernel gets them."""
    assert [qemu.guest_node_layout(LOONGARCH, layout) for layout in LOONGARCH.triage_node_layouts] \
        == [(8192,), (6144,)]
    through_firmware = replace(LOONGARCH, bios="QEMU_EFI.fd")
    assert [qemu.guest_node_layout(through_firmware, layout) for layout in LOONGARCH.triage_node_layouts] \
        == [(4096, 4096), (3072, 3072)]


def test_firmware_comes_from_the_cache_the_second_time(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    assert LOONGARCH.firmware is not None
    first = artefacts.ensure_firmware(LOONGARCH.firmware)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no apt-get, apt-cache or dpkg-deb
    assert shutil.which("apt-get") is None
    assert artefacts.ensure_firmware(LOONGARCH.firmware) == first


def test_missing_firmware_file_names_the_fetch(debian_image: KernelImage, tmp_path: Path) -> None:
    profile = replace(qemu.boot_profile(LOONGARCH, debian_image), bios=str(tmp_path / "gone.fd"))
    with pytest.raises(HarnessError) as error:
        argv_for(profile, debian_image, tmp_path)
    assert str(error.value) == (f"firmware {tmp_path / 'gone.fd'} not found: run `hvo-harness fetch "
                                "--arch loongarch64` (Debian package qemu-efi-loongarch64)")


# --- real boots of Debian's loong64 kernel ----------------------------------------------------


def kernel_log(run: Run) -> str:
    return Path(run.hugetlb["kernel_log"]["path"]).read_text()


@pytest.mark.boot
@pytest.mark.parametrize("hvo", ["on", "off"])
def test_debian_kernel_runs_its_scenarios_on_two_nodes(hvo_boot, hvo: str) -> None:  # type: ignore[no-untyped-def]
    run = hvo_boot("loongarch64", hvo)
    assert run.ended == "done", run.verdict_reason
    assert "-bios" in run.qemu_argv
    assert {s.node for s in run.scenarios} == {0, 1}
    for node in (0, 1):
        native = [s for s in run.scenarios if s.size == "32M" and s.node == node]
        assert {s.mode for s in native} == {"boot", "runtime"}, node
        # hugepages=0:2,1:2 is taken on node 1 too, and the run-time pages land there.
        assert all(s.allocated == s.requested > 0 for s in native), [(s.name, s.reason) for s in native]


@pytest.mark.boot
def test_debian_kernel_log_shows_two_nodes(hvo_boot) -> None:  # type: ignore[no-untyped-def]
    log = kernel_log(hvo_boot("loongarch64", "on"))
    # ACPI's SRAT from the firmware names both nodes, and the kernel sets both up.
    assert re.search(r"SRAT: Node 1 PXM 1 \[mem", log), log[:4000]
    assert re.search(r"NODE_DATA\(1\) allocated", log), log[:4000]


@pytest.mark.boot
def test_debian_kernel_is_still_hvo_inactive_with_its_reason(hvo_boot) -> None:  # type: ignore[no-untyped-def]
    """Two nodes change where pages go, not what the kernel is: HVO stays inactive (its 80-byte
    struct page, docs/findings.md #2), so no 32M scenario with HVO on passes or fails."""
    run = hvo_boot("loongarch64", "on")
    assert run.hvo.state == "inactive" and "not a power of two" in run.hvo.reason
    assert run.findings == []
    for scenario in run.scenarios:
        if scenario.size == "32M" and scenario.hvo == "on":
            assert scenario.status == "skip" and "HVO inactive" in scenario.reason, scenario.name
