"""Kernel images recognised by their content, and made bootable for QEMU.

Why by content: a file called vmlinuz may be an x86 bzImage, a RISC-V Image with a PE stub,
or an EFI zboot wrapper around a compressed kernel (Debian's loong64 vmlinuz), and QEMU takes
some of these and refuses others. Each format is told apart by the header the kernel's own
build writes (arch/x86/boot/header.S, arch/riscv/include/asm/image.h,
arch/loongarch/kernel/head.S, drivers/firmware/efi/libstub/zboot-header.S), and the arch comes
from the image itself, so a kernel given for the wrong --arch is caught before QEMU runs.

Formats (the names are what ArchProfile.image_formats lists):
- 'bzimage': x86 boot protocol, "HdrS" at 0x202 (it also starts with "MZ" for the EFI stub).
- 'riscv-image': RISC-V Image header, "RSC\\x05" at 0x38 ("MZ" too when it has an EFI stub).
- 'loongarch-efi': LoongArch EFI kernel (vmlinux.efi): "MZ", LINUX_PE_MAGIC at 0x38 and a
  PE header whose Machine is LoongArch64; QEMU's loongarch64 virt boots it directly.
- 'efi-zboot': "MZ" then "zimg"; QEMU 10 only unpacks gzip ones, so the payload is always
  decompressed into the cache (keyed by the image's sha256) and detected again.
- 'elf': an ELF vmlinux; the arch comes from e_machine.
"""

from __future__ import annotations

import bz2
import lzma
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import zstandard

from harness.cache import cache_dir, sha256_file
from harness.errors import HarnessError
from harness.profiles import ARCH_NAMES, ArchProfile, get_profile

# include/linux/pe.h: at 0x38 of the MS-DOS header of EFI-bootable Linux images.
LINUX_PE_MAGIC = 0x818223CD
# include/linux/pe.h IMAGE_FILE_MACHINE_*: the PE Machine of each profile's EFI kernels.
PE_MACHINES = {0x8664: "x86_64", 0x5064: "riscv64", 0x6264: "loongarch64"}
PE_MACHINE_NAMES = {0x014C: "i386", 0xAA64: "arm64", 0x01C2: "arm", 0x5032: "riscv32"}
# How deep zboot payloads may nest before the file is taken as corrupt.
_MAX_NESTING = 3
_HEAD_SIZE = 64 * 1024

KNOWN_FORMATS = "bzImage, RISC-V Image, LoongArch EFI, EFI zboot, ELF vmlinux"


@dataclass(frozen=True)
class KernelImage:
    """A kernel image as given, and the file QEMU is to boot for it."""

    path: Path  # what QEMU boots: the original, or its unpacked payload in the cache
    original: Path
    format: str  # the format of the original, e.g. 'efi-zboot'
    arch: str | None  # profile name read from the content
    sha256: str  # of the original
    # The format of path when it is an unpacked payload (e.g. 'loongarch-efi'), else None.
    payload_format: str | None = None


class _NotAKernel(Exception):
    """Why a file is not a kernel image of a known format (completed into a HarnessError)."""


@dataclass(frozen=True)
class _Found:
    format: str
    arch: str | None
    # What the content says about an arch the harness does not boot, for messages.
    foreign: str | None = None
    # efi-zboot only: the compression, payload offset and payload size.
    compression: str | None = None
    payload: tuple[int, int] | None = None


class _Reader:
    """Bounded reads from a file: a truncated file is a _NotAKernel, not a struct.error."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        with open(path, "rb") as stream:
            self.head = stream.read(_HEAD_SIZE)

    def read(self, offset: int, length: int, what: str) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise _NotAKernel(
                f"its {what} lies past the end of the file ({offset + length} > {self.size} "
                "bytes): it is truncated or corrupt"
            )
        if offset + length <= len(self.head):
            return self.head[offset : offset + length]
        with open(self.path, "rb") as stream:
            stream.seek(offset)
            return stream.read(length)

    def u16(self, offset: int, what: str) -> int:
        return int(struct.unpack("<H", self.read(offset, 2, what))[0])

    def u32(self, offset: int, what: str) -> int:
        return int(struct.unpack("<I", self.read(offset, 4, what))[0])

    def needs(self, end: int, what: str) -> None:
        if end > self.size:
            raise _NotAKernel(
                f"it looks like {what}, but its headers need {end} bytes and the file has "
                f"{self.size}: it is truncated"
            )


def _elf_arches() -> dict[int, str]:
    return {get_profile(name).elf_machine: name for name in ARCH_NAMES}


def _pe_machine(reader: _Reader, what: str) -> int | None:
    """The PE Machine of an "MZ" file, after checking that its sections are all in the file.

    None when the file has no PE header (e.g. a kernel built without the EFI stub).
    """
    if reader.size < 0x40:
        return None
    pe_offset = reader.u32(0x3C, "PE header offset")
    if pe_offset < 0x40 or pe_offset + 24 > reader.size:
        return None
    if reader.read(pe_offset, 4, "PE signature") != b"PE\0\0":
        return None
    machine = reader.u16(pe_offset + 4, "PE header")
    sections = reader.u16(pe_offset + 6, "PE header")
    optional_size = reader.u16(pe_offset + 20, "PE header")
    table = pe_offset + 24 + optional_size
    reader.needs(table + 40 * sections, what)
    end = 0
    for index in range(sections):
        raw_size, raw_pointer = struct.unpack(
            "<II", reader.read(table + 40 * index + 16, 8, "PE section table")
        )
        if raw_size:
            end = max(end, raw_pointer + raw_size)
    reader.needs(end, what)
    return machine


def _pe_arch(machine: int | None) -> tuple[str | None, str | None]:
    if machine is None:
        return None, None
    arch = PE_MACHINES.get(machine)
    if arch is not None:
        return arch, None
    return None, PE_MACHINE_NAMES.get(machine, f"PE machine {machine:#06x}")


def _detect_elf(reader: _Reader) -> _Found:
    ident = reader.read(0, 16, "ELF ident")
    if ident[4] not in (1, 2) or ident[5] not in (1, 2):
        raise _NotAKernel("it has an ELF magic but a corrupt ELF header")
    wide = ident[4] == 2
    endian = "<" if ident[5] == 1 else ">"
    header = reader.read(0, 64 if wide else 52, "ELF header")
    machine = struct.unpack_from(f"{endian}H", header, 18)[0]
    if wide:
        phoff, shoff = struct.unpack_from(f"{endian}QQ", header, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(f"{endian}HHHH", header, 54)
    else:
        phoff, shoff = struct.unpack_from(f"{endian}II", header, 28)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(f"{endian}HHHH", header, 42)
    if phnum == 0:
        raise _NotAKernel("it is an ELF file without program headers, so nothing to boot")
    if phentsize < (56 if wide else 32):
        raise _NotAKernel("it has an ELF magic but a corrupt ELF header")
    reader.needs(phoff + phentsize * phnum, "an ELF file")
    if shoff:
        reader.needs(shoff + shentsize * shnum, "an ELF file")
    # p_type, p_offset and p_filesz: what each segment is and where its bytes are.
    fields = f"{endian}I4xQ16xQ" if wide else f"{endian}II8xI"
    for index in range(phnum):
        entry = reader.read(phoff + phentsize * index, phentsize, "ELF program header")
        kind, offset, filesz = struct.unpack_from(fields, entry)
        if kind == 3:  # PT_INTERP
            raise _NotAKernel("it is a dynamically linked program, not a kernel")
        reader.needs(offset + filesz, "an ELF file")
    arch = _elf_arches().get(machine) if wide else None
    foreign = None if arch else f"ELF{'64' if wide else '32'} e_machine {machine}"
    return _Found("elf", arch, foreign)


def _detect_bzimage(reader: _Reader) -> _Found:
    # arch/x86/boot/header.S: setup_sects at 0x1f1 (0 means 4), syssize (16-byte units)
    # at 0x1f4, version at 0x206, xloadflags at 0x236 (boot protocol >= 2.12).
    setup_sects = reader.read(0x1F1, 1, "setup header")[0] or 4
    syssize = reader.u32(0x1F4, "setup header")
    reader.needs((setup_sects + 1) * 512 + syssize * 16, "a bzImage")
    version = reader.u16(0x206, "setup header")
    xloadflags = reader.u16(0x236, "setup header") if version >= 0x20C else 0
    if xloadflags & 1:  # XLF_KERNEL_64
        arch, foreign = "x86_64", None
    else:
        arch, foreign = None, "32-bit x86 (no XLF_KERNEL_64)"
    if reader.head[:2] == b"MZ":
        pe_arch, pe_foreign = _pe_arch(_pe_machine(reader, "a bzImage"))
        if pe_arch not in (None, "x86_64") or pe_foreign:
            raise _NotAKernel("it has an x86 setup header but a PE header for another arch")
    return _Found("bzimage", arch, foreign)


def _detect_riscv(reader: _Reader) -> _Found:
    # arch/riscv/include/asm/image.h: flags at 0x18 (bit 0: big endian), image_size at 0x10.
    arch, foreign = "riscv64", None
    if reader.head[:2] == b"MZ":
        machine = _pe_machine(reader, "a RISC-V Image")
        if machine is not None:
            arch, foreign = _pe_arch(machine)
    return _Found("riscv-image", arch, foreign)


def _detect_zboot(reader: _Reader) -> _Found:
    # drivers/firmware/efi/libstub/zboot-header.S: payload offset and size at 8 and 12,
    # the compression name (NUL-terminated) at 0x18.
    offset = reader.u32(8, "zboot header")
    size = reader.u32(12, "zboot header")
    name = reader.read(0x18, 0x20, "zboot header").split(b"\0", 1)[0]
    try:
        compression = name.decode("ascii")
    except UnicodeDecodeError:
        raise _NotAKernel("it has a corrupt EFI zboot header") from None
    if not compression or size == 0 or offset < 0x40:
        raise _NotAKernel("it has a corrupt EFI zboot header")
    reader.needs(offset + size, "an EFI zboot image")
    arch, foreign = _pe_arch(_pe_machine(reader, "an EFI zboot image"))
    return _Found("efi-zboot", arch, foreign, compression=compression, payload=(offset, size))


def _detect_pe_kernel(reader: _Reader) -> _Found:
    machine = _pe_machine(reader, "an EFI kernel image")
    if machine is None:
        raise _NotAKernel("it starts with 'MZ' but has no PE header")
    arch, foreign = _pe_arch(machine)
    if arch == "loongarch64":
        # arch/loongarch/kernel/head.S: kernel entry at 0x8, effective size at 0x10, load
        # offset at 0x18, LINUX_PE_MAGIC at 0x38, then the PE header.
        return _Found("loongarch-efi", arch)
    raise _NotAKernel(
        f"it is an EFI (PE) image for {arch or foreign} without a Linux boot header this harness knows"
    )


def _detect(path: Path) -> _Found:
    reader = _Reader(path)
    head = reader.head
    if reader.size < 0x40:
        raise _NotAKernel(f"it has only {reader.size} bytes")
    if head[:4] == b"\x7fELF":
        return _detect_elf(reader)
    if head[:2] == b"MZ" and head[4:8] == b"zimg":
        return _detect_zboot(reader)
    if len(head) >= 0x206 and head[0x202:0x206] == b"HdrS":
        return _detect_bzimage(reader)
    if head[0x38:0x3C] == b"RSC\x05":
        return _detect_riscv(reader)
    if head[:2] == b"MZ" and struct.unpack_from("<I", head, 0x38)[0] == LINUX_PE_MAGIC:
        return _detect_pe_kernel(reader)
    raise _NotAKernel("no kernel image header was found in it")


def _not_a_kernel(path: Path, reason: str) -> HarnessError:
    return HarnessError(
        f"{path} is not a kernel image of a known format ({KNOWN_FORMATS}): {reason}: "
        "give the vmlinuz, bzImage, Image, vmlinux.efi or vmlinux a kernel build made"
    )


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise HarnessError(
            f"kernel image {path} does not exist: check the path, or omit it to use "
            "Debian's kernel (`hvo-harness fetch`)"
        )
    if not path.is_file():
        raise HarnessError(f"kernel image {path} is not a regular file: give the image file")


def detect(path: Path) -> tuple[str, str | None]:
    """(format, arch profile name or None) of the kernel image at PATH, read from its content.

    The arch is None when the image is for an arch the harness does not boot. A file that
    is missing, truncated, corrupt or not a kernel image raises HarnessError. For an
    'efi-zboot' file the arch is the one its PE header names; prepare() also checks the
    payload.
    """
    found = _found(Path(path))
    return found.format, found.arch


def check(path: Path, profile: ArchProfile) -> tuple[str, str | None]:
    """What prepare() checks without reading the whole file: PATH exists, is a kernel image and
    is for PROFILE's arch (an EFI zboot payload's arch is checked by prepare(), which unpacks
    it). Cheap (a stat and a few header reads), so a run checks this before any download."""
    path = Path(path)
    found = _found(path)
    _check_arch(path, found, profile)
    return found.format, found.arch


def _found(path: Path) -> _Found:
    _check_exists(path)
    try:
        return _detect(path)
    except _NotAKernel as reason:
        raise _not_a_kernel(path, str(reason)) from None


class _Decompressor(Protocol):
    """What zstandard's, zlib's, lzma's and bz2's streaming decompressors have in common."""

    @property
    def eof(self) -> bool: ...

    def decompress(self, data: bytes) -> bytes: ...


def _decompressor(compression: str) -> _Decompressor | None:
    # Streaming decompressors all of them, never the one-shot functions: only a decompressor's
    # eof tells a whole stream from a truncated one (lzma's decompress() returns what there is
    # without complaint; bz2.decompress() raises a bare ValueError).
    if compression == "zstd":
        # zstd22_with_size: the header's size leaves out the appended le32 size.
        return zstandard.ZstdDecompressor().decompressobj()
    if compression == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if compression == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    if compression == "lzma":
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE)
    if compression == "bzip2":
        return bz2.BZ2Decompressor()
    return None


def _decompress(data: bytes, compression: str) -> bytes:
    """Decompress a zboot payload; a truncated or corrupt stream is a _NotAKernel."""
    decompressor = _decompressor(compression)
    if decompressor is None:
        raise _NotAKernel(f"its payload is compressed with {compression!r}, which the harness cannot unpack")
    try:
        out = decompressor.decompress(data)
    except (zstandard.ZstdError, zlib.error, lzma.LZMAError, OSError, EOFError, ValueError):
        raise _NotAKernel(f"its {compression} payload does not decompress") from None
    if not decompressor.eof:
        raise _NotAKernel(f"its {compression} payload ends early")
    return out


def _unpack_zboot(path: Path, found: _Found, key: str) -> Path:
    """The decompressed payload of a zboot image, made once into the cache under KEY."""
    assert found.payload is not None and found.compression is not None
    target = cache_dir("images") / f"{key}.zboot-payload"
    if target.is_file():
        return target
    offset, size = found.payload
    with open(path, "rb") as stream:
        stream.seek(offset)
        data = stream.read(size)
    out = _decompress(data, found.compression)
    # Write beside the target and rename: an interrupted run leaves no half payload.
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".tmp-", delete=False) as tmp:
        tmp.write(out)
    os.replace(tmp.name, target)
    return target


def _a(word: str) -> str:
    """'a riscv64', 'an x86_64', 'an elf': the article messages need."""
    return f"an {word}" if word[:1] in "aeiox" else f"a {word}"


def _check_arch(original: Path, found: _Found, profile: ArchProfile) -> None:
    if found.arch is None and found.format == "efi-zboot" and found.foreign is None:
        return  # a zboot image without a PE header: its payload says which arch it is
    if found.arch is None:
        raise HarnessError(
            f"{original} is {_a(found.format)} kernel for {found.foreign or 'an unknown arch'}, "
            f"which the harness does not boot: give {_a(profile.name)} kernel"
        )
    if found.arch != profile.name:
        raise HarnessError(
            f"{original} is {_a(found.arch)} kernel, but --arch {profile.name} was asked: "
            f"give {_a(profile.name)} kernel or use --arch {found.arch}"
        )


def prepare(path: Path, profile: ArchProfile) -> KernelImage:
    """Check that PATH is a kernel for PROFILE's arch and return what QEMU is to boot.

    bzImage, RISC-V Image, LoongArch EFI and ELF images boot as they are; an EFI zboot image
    is decompressed into the cache (QEMU 10 refuses zstd zboot), and the payload is checked
    the same way. Errors are one-line HarnessErrors naming the path and the fix.
    """
    original = Path(path)
    _check_exists(original)
    digest = sha256_file(original)
    try:
        found = _detect(original)
    except _NotAKernel as reason:
        raise _not_a_kernel(original, str(reason)) from None
    _check_arch(original, found, profile)
    if found.format != "efi-zboot":
        return KernelImage(original, original, found.format, found.arch, digest)

    current, inner = original, found
    for level in range(_MAX_NESTING):
        try:
            key = digest if level == 0 else f"{digest}.{level}"
            current = _unpack_zboot(current, inner, key)
            inner = _detect(current)
        except _NotAKernel as reason:
            raise _not_a_kernel(original, f"{reason} (in its EFI zboot payload)") from None
        if inner.format != "efi-zboot":
            break
    else:
        raise _not_a_kernel(original, "its EFI zboot payloads nest too deep")
    _check_arch(original, inner, profile)
    if found.arch is not None and inner.arch != found.arch:
        raise _not_a_kernel(original, f"its PE header says {found.arch} but its payload is {inner.arch}")
    return KernelImage(
        path=current,
        original=original,
        format=found.format,
        arch=inner.arch,
        sha256=digest,
        payload_format=inner.format,
    )
