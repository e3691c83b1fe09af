"""images.detect()/prepare() on Debian sid's real kernels (fetched into the cache if absent)."""

from __future__ import annotations

import bz2
import gzip
import lzma
import random
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from harness import images
from harness.artefacts import DebianKernel, ensure_busybox, ensure_debian_kernel
from harness.errors import HarnessError
from harness.profiles import ARCH_NAMES, get_profile

# What Debian ships per arch (see docs and NOTES): x86 bzImage, RISC-V Image with a PE stub,
# and for loong64 an EFI zboot image whose zstd payload is a LoongArch EFI kernel.
SHIPPED_FORMAT = {"x86_64": "bzimage", "riscv64": "riscv-image", "loongarch64": "efi-zboot"}


@pytest.fixture(scope="module")
def kernels() -> dict[str, DebianKernel]:
    return {name: ensure_debian_kernel(get_profile(name)) for name in ARCH_NAMES}


def _other_arch(name: str) -> str:
    return next(other for other in ARCH_NAMES if other != name)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_detects_debian_kernel(kernels: dict[str, DebianKernel], arch: str) -> None:
    assert images.detect(kernels[arch].image) == (SHIPPED_FORMAT[arch], arch)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_prepare_gives_bootable_image(kernels: dict[str, DebianKernel], arch: str) -> None:
    kernel = kernels[arch]
    image = images.prepare(kernel.image, get_profile(arch))
    assert image.original == kernel.image
    assert image.arch == arch
    assert image.format == SHIPPED_FORMAT[arch]
    assert image.sha256 == kernel.image_sha256
    assert image.path.is_file()
    if image.format != "efi-zboot":
        assert image.path == kernel.image
        assert image.payload_format is None
        return
    # The zboot payload is unpacked into the cache and is itself a kernel of the same arch.
    assert image.path != kernel.image
    assert kernel.image_sha256 in image.path.name
    assert image.payload_format == "loongarch-efi"
    assert images.detect(image.path) == ("loongarch-efi", arch)
    # Makefile.zboot pads the payload to the in-memory size its own header gives at 0x10.
    payload = image.path.read_bytes()
    assert len(payload) == struct.unpack_from("<I", payload, 0x10)[0]
    # A second prepare() reuses the cached payload.
    assert images.prepare(kernel.image, get_profile(arch)).path == image.path


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_wrong_arch_names_both(kernels: dict[str, DebianKernel], arch: str) -> None:
    other = _other_arch(arch)
    with pytest.raises(HarnessError) as caught:
        images.prepare(kernels[arch].image, get_profile(other))
    message = str(caught.value)
    assert str(kernels[arch].image) in message
    assert f"{arch} kernel" in message
    assert f"--arch {other} was asked" in message
    assert "\n" not in message


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_truncated_copy_is_refused(kernels: dict[str, DebianKernel], arch: str, tmp_path: Path) -> None:
    truncated = tmp_path / "vmlinuz"
    truncated.write_bytes(kernels[arch].image.read_bytes()[:4096])
    for call in (images.detect, lambda path: images.prepare(path, get_profile(arch))):
        with pytest.raises(HarnessError) as caught:
            call(truncated)
        message = str(caught.value)
        assert str(truncated) in message
        assert "not a kernel image of a known format" in message
        assert "truncated" in message
        assert "\n" not in message


def test_corrupt_zboot_payload_is_refused(kernels: dict[str, DebianKernel], tmp_path: Path) -> None:
    data = bytearray(kernels["loongarch64"].image.read_bytes())
    offset, size = struct.unpack_from("<II", data, 8)
    middle = offset + size // 2
    data[middle : middle + 4096] = bytes(4096)
    corrupt = tmp_path / "vmlinuz"
    corrupt.write_bytes(bytes(data))
    # The headers are intact, so detect() still names it; prepare() must unpack and fail.
    assert images.detect(corrupt) == ("efi-zboot", "loongarch64")
    with pytest.raises(HarnessError) as caught:
        images.prepare(corrupt, get_profile("loongarch64"))
    assert str(corrupt) in str(caught.value)
    assert "not a kernel image of a known format" in str(caught.value)


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-vmlinuz"
    for call in (images.detect, lambda path: images.prepare(path, get_profile("x86_64"))):
        with pytest.raises(HarnessError) as caught:
            call(missing)
        assert str(caught.value).startswith(f"kernel image {missing} does not exist")


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="not a regular file"):
        images.prepare(tmp_path, get_profile("x86_64"))


@pytest.mark.parametrize("prefix", [b"", b"MZ", b"\x7fELF"], ids=["plain", "mz", "elf"])
def test_random_bytes_are_refused(tmp_path: Path, prefix: bytes) -> None:
    noise = tmp_path / "noise"
    noise.write_bytes(prefix + random.Random(1234).randbytes(1 << 20))
    with pytest.raises(HarnessError) as caught:
        images.prepare(noise, get_profile("x86_64"))
    assert str(noise) in str(caught.value)
    assert "not a kernel image of a known format" in str(caught.value)


def test_tiny_and_empty_files_are_refused(tmp_path: Path) -> None:
    for size in (0, 2, 63):
        tiny = tmp_path / f"tiny{size}"
        tiny.write_bytes(b"MZ"[:size] + bytes(max(0, size - 2)))
        with pytest.raises(HarnessError, match="not a kernel image of a known format"):
            images.detect(tiny)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_elf_arch_comes_from_e_machine(arch: str) -> None:
    """Debian's static busybox stands in for an ELF vmlinux: no sid package ships one."""
    busybox = ensure_busybox(get_profile(arch))
    assert images.detect(busybox.path) == ("elf", arch)
    with pytest.raises(HarnessError, match=f"is an? {arch} kernel, but --arch {_other_arch(arch)} was asked"):
        images.prepare(busybox.path, get_profile(_other_arch(arch)))


def test_dynamic_program_is_refused() -> None:
    dynamic = shutil.which("ls")
    assert dynamic is not None
    with pytest.raises(HarnessError, match="dynamically linked program"):
        images.detect(Path(dynamic))


# EFI zboot images made here, one per compression the harness unpacks: the header of
# drivers/firmware/efi/libstub/zboot-header.S ("MZ", "zimg", payload offset and size at 8 and
# 12, the compression name at 0x18) with no PE header, so the payload alone names the arch.
ZBOOT_COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda data: gzip.compress(data, compresslevel=1),
    "zstd": lambda data: zstandard.ZstdCompressor(level=1).compress(data),
    "xz": lambda data: lzma.compress(data, format=lzma.FORMAT_XZ, preset=0),
    "lzma": lambda data: lzma.compress(data, format=lzma.FORMAT_ALONE, preset=0),
    "bzip2": lambda data: bz2.compress(data, compresslevel=1),
}


def _zboot_image(payload: bytes, compression: str) -> bytes:
    header = bytearray(0x40)
    header[0:2] = b"MZ"
    header[4:8] = b"zimg"
    struct.pack_into("<II", header, 8, len(header), len(payload))
    header[0x18 : 0x18 + len(compression)] = compression.encode()
    return bytes(header) + payload


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Unpacked payloads go into a cache of the test's own, not the user's."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("HVO_HARNESS_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("compression", sorted(ZBOOT_COMPRESSORS))
def test_truncated_zboot_payload_is_one_line(compression: str, tmp_path: Path, private_cache: Path) -> None:
    """A payload cut short is refused by name, whatever its compression (xz decompresses what
    there is without complaint, bzip2 raised a bare ValueError)."""
    data = random.Random(7).randbytes(1 << 16) * 16  # compressible, so the stream is long
    stream = ZBOOT_COMPRESSORS[compression](data)
    image = tmp_path / f"vmlinuz-{compression}"
    image.write_bytes(_zboot_image(stream[: len(stream) // 2], compression))
    assert images.detect(image) == ("efi-zboot", None)
    with pytest.raises(HarnessError) as caught:
        images.prepare(image, get_profile("loongarch64"))
    message = str(caught.value)
    assert str(image) in message
    assert f"its {compression} payload ends early" in message
    assert "\n" not in message
    assert not list(private_cache.rglob("*.zboot-payload"))


@pytest.mark.parametrize("compression", ["xz", "lzma", "bzip2"])
def test_whole_zboot_payload_unpacks(
    kernels: dict[str, DebianKernel], compression: str, tmp_path: Path, private_cache: Path
) -> None:
    """The same kernel recompressed whole unpacks and boots as the LoongArch EFI kernel it is:
    the end-of-stream checks refuse only streams that really end early."""
    debian = images.prepare(kernels["loongarch64"].image, get_profile("loongarch64"))
    payload = debian.path.read_bytes()
    image = tmp_path / f"vmlinuz-{compression}"
    image.write_bytes(_zboot_image(ZBOOT_COMPRESSORS[compression](payload), compression))
    prepared = images.prepare(image, get_profile("loongarch64"))
    assert (prepared.arch, prepared.payload_format) == ("loongarch64", "loongarch-efi")
    assert prepared.path.read_bytes() == payload
