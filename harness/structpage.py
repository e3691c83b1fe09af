"""sizeof(struct page) and its members, read from the kernel under test with pahole.

Why from the kernel: HVO frees vmemmap only when sizeof(struct page) is a power of two
(mm/hugetlb_vmemmap.h), and what it frees per huge page is S / PAGE_SIZE * sizeof(struct page)
- PAGE_SIZE. The size depends on the arch and the config (LAST_CPUPID_NOT_IN_PAGE_FLAGS,
WANT_PAGE_VIRTUAL, KMSAN, ...), so a table per arch would be a guess; the kernel's own type
information is not.

Where the type information is, in order of cost:
1. a vmlinux beside the image (a tree build's O= directory: DWARF, kconfigs/debuginfo.config);
2. BTF inside the image (CONFIG_DEBUG_INFO_BTF): the raw BTF blob is carved out of the
   kernel's bytes (the image itself, an EFI zboot payload decompressed by images.py, or the
   vmlinux the kernel's scripts/extract-vmlinux takes out of a bzImage);
3. for a Debian kernel, the DWARF of the vmlinux in linux-image-<release>-dbg at the image's
   version (artefacts.ensure_debug_vmlinux: about 1 GB, fetched once).
pahole (Debian: dwarves) reads each. A measurement is cached per image sha256 under
cache_dir('struct-page'), so later runs need none of these files. Where none is at hand the
result says "not measured", why, and what would give it; nothing falls back to a size
assumed for the arch.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import artefacts
from harness.cache import cache_dir
from harness.errors import DebugInfoUnavailable, HarnessError
from harness.images import KernelImage
from harness.profiles import ArchProfile
from harness.results import KernelInfo

Progress = Callable[[str], None]

# include/uapi/linux/btf.h: struct btf_header {u16 magic 0xeb9f; u8 version 1; u8 flags;
# u32 hdr_len; u32 type_off; u32 type_len; u32 str_off; u32 str_len}, little-endian on every
# arch this harness boots.
_BTF_MAGIC = b"\x9f\xeb\x01\x00"
_BTF_HEADER = struct.Struct("<5I")
_BTF_HEADER_LEN = 24
# Bumped when what is cached changes shape or meaning: older entries are then measured again.
_CACHE_VERSION = 1
WHAT_WOULD_GIVE_IT = ("a vmlinux with debug info beside the image (a tree build: kconfigs/"
                      "debuginfo.config), a kernel built with CONFIG_DEBUG_INFO_BTF=y, or for a "
                      "Debian kernel its linux-image-<release>-dbg package")


@dataclass(frozen=True)
class Member:
    """A top-level member of struct page; an anonymous union or struct is one member, named
    by what it holds ('union {page_type, _mapcount}')."""

    name: str
    offset: int
    size: int

    def text(self) -> str:
        return f"{self.name} (offset {self.offset}, {self.size} bytes)"


@dataclass(frozen=True)
class StructPage:
    """sizeof(struct page) of one kernel (size None: not measured, `why` says why and what
    would give it), where it was read and its top-level members."""

    size: int | None
    origin: str = ""
    members: tuple[Member, ...] = ()
    why: str = ""

    @property
    def measured(self) -> str:
        """'sizeof(struct page) = 72 (DWARF of linux-image-X-dbg 7.2.13-1)', or why not."""
        if self.size is None:
            return f"struct page not measured: {self.why}"
        return f"sizeof(struct page) = {self.size} ({self.origin})"

    def past_power_of_two(self) -> tuple[int, tuple[Member, ...]]:
        """The largest power of two below the size, and the members that end beyond it: what
        makes the size not a power of two (72 = 64 + _last_cpupid and its padding)."""
        if self.size is None or self.size <= 0:
            return 0, ()
        below = 1 << (self.size.bit_length() - 1)
        if below == self.size:
            return below, ()
        return below, tuple(m for m in self.members if m.offset + m.size > below)

    def not_power_of_two(self) -> str:
        """Why HVO cannot work with this size, in the kernel's own terms."""
        below, beyond = self.past_power_of_two()
        names = "; ".join(m.text() for m in beyond) or "no member (padding)"
        end = max((m.offset + m.size for m in self.members), default=self.size)
        padding = (f", then {self.size - end} bytes of padding" if self.size is not None and end < self.size
                   else "")
        return f"{self.measured}: not a power of two; past {below} bytes: {names}{padding}"

    def to_json(self) -> dict[str, Any]:
        """KernelInfo.struct_page (harness/schema/hvo-harness-1.json)."""
        if self.size is None:
            return {"size": None, "why": self.why}
        return {"size": self.size, "origin": self.origin,
                "members": [{"name": m.name, "offset": m.offset, "size": m.size} for m in self.members]}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> StructPage:
        if data is None:
            return cls(None, why=f"not looked at (harness/structpage.py measures it); {WHAT_WOULD_GIVE_IT}")
        if data.get("size") is None:
            return cls(None, why=str(data.get("why", "")))
        members = tuple(Member(str(m["name"]), int(m["offset"]), int(m["size"]))
                        for m in data.get("members", ()))
        return cls(int(data["size"]), str(data.get("origin", "")), members)


# --------------------------------------------------------------------------------------------
# pahole's output


# '\tatomic_t _refcount; /*    52     4 */', bit fields '/*  0: 0  4 */'.
_OFFSET_SIZE = re.compile(r"/\*\s*(\d+)(?::\s*\d+)?\s+(\d+)\s*\*/\s*$")
_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:\[[^\]]*\]\s*)*(?::\s*\d+\s*)?;")
_SIZE = re.compile(r"/\*\s*size:\s*(\d+),")
# DWARF gives members and aggregates alignment attributes: '_mapcount __attribute__((__aligned__(4)));'.
_ATTRIBUTE = re.compile(r"__attribute__\s*\(\((?:[^()]|\([^()]*\))*\)\)")


def parse_pahole(text: str, name: str = "page") -> tuple[int, tuple[Member, ...]]:
    """The size and top-level members of `struct NAME` in pahole's C output.

    Raises ValueError when the text holds no such struct or no size for it."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == f"struct {name} {{"), None)
    if start is None:
        raise ValueError(f"pahole printed no struct {name}")
    members: list[Member] = []
    # Open aggregates (union {, struct {): their kind and the names of what they hold.
    stack: list[tuple[str, list[str]]] = []
    for line in lines[start + 1:]:
        if line.startswith("}"):
            break  # the end of struct NAME
        stripped = line.strip()
        if not stripped or stripped.startswith("/*"):
            continue  # holes, cacheline marks, the size line
        if stripped.endswith("{"):
            stack.append((stripped.split()[0], []))
            continue
        declaration = _ATTRIBUTE.sub("", stripped.split("/*")[0])
        label = _NAME.search(declaration)
        if stripped.startswith("}"):
            kind, held = stack.pop()
            member_name = label.group(1) if label else f"{kind} {{{', '.join(held)}}}"
        elif label is not None:
            member_name = label.group(1)
        else:
            continue
        if stack:
            # Inside an aggregate, which is named by what it holds; an anonymous one nested in
            # it is only 'struct {...}', so the name stays short.
            stack[-1][1].append(f"{member_name.split()[0]} {{...}}" if member_name.endswith("}")
                                else member_name)
            continue
        found = _OFFSET_SIZE.search(stripped)
        if found is None and stripped.startswith("}"):
            # pahole 1.24 on clang's DWARF prints an anonymous union a second time, with offsets
            # from 0 and no offset/size of its own (LoongArch tree builds): not a member.
            continue
        if found is None:
            raise ValueError(f"pahole gave no offset and size for {member_name!r}: {stripped!r}")
        members.append(Member(member_name, int(found.group(1)), int(found.group(2))))
    else:
        raise ValueError(f"pahole's struct {name} does not end")
    size = _SIZE.search("\n".join(lines[start:]))
    if size is None:
        raise ValueError(f"pahole printed no size for struct {name}")
    return int(size.group(1)), tuple(members)


def run_pahole(path: Path, formats: str) -> str:
    """`pahole -F FORMATS -C page PATH`'s output; HarnessError with pahole's reason on failure.
    pahole's stderr is kept apart: it warns about BTF kinds newer than it knows."""
    if shutil.which("pahole") is None:
        raise HarnessError("pahole not found: install it with `make deps` (Debian: dwarves)")
    done = subprocess.run(["pahole", "-F", formats, "-C", "page", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0 or "struct page {" not in done.stdout:
        errors = [line for line in done.stderr.splitlines() if "Unknown kind" not in line]
        reason = (errors or [f"exit status {done.returncode}, no struct page"])[-1].strip()
        raise HarnessError(f"pahole -F {formats} -C page {path.name}: {reason[:200]}")
    return done.stdout


# --------------------------------------------------------------------------------------------
# Where the type information is


def carve_btf(data: bytes) -> bytes | None:
    """The largest well-formed BTF blob in DATA (vmlinux's .BTF; modules' and bpf programs'
    are smaller), or None. Checked: the header's length, type_off 0, the type section ending
    where the string section starts, and the whole inside DATA."""
    best: tuple[int, int] | None = None
    at = data.find(_BTF_MAGIC)
    while at >= 0:
        if at + _BTF_HEADER_LEN <= len(data):
            hdr_len, type_off, type_len, str_off, str_len = _BTF_HEADER.unpack_from(data, at + 4)
            total = hdr_len + str_off + str_len
            if (hdr_len == _BTF_HEADER_LEN and type_off == 0 and str_off == type_len
                    and str_len > 0 and at + total <= len(data)
                    and data[at + hdr_len + str_off] == 0  # the string section starts with ""
                    and (best is None or total > best[1])):
                best = (at, total)
        at = data.find(_BTF_MAGIC, at + 1)
    return None if best is None else data[best[0]:best[0] + best[1]]


def _beside_vmlinux(image: KernelImage) -> Path | None:
    """A vmlinux in the build directory the image came from (O=: arch/<arch>/boot/<image>),
    or the image itself when it is an ELF vmlinux."""
    # The O= directory's vmlinux first: an ELF image such as loongarch's vmlinux.elf is a
    # stripped copy (strip -s), without the DWARF.
    for parent in list(image.original.resolve().parents)[:5]:
        if (parent / "vmlinux").is_file() and (parent / ".config").is_file():
            return parent / "vmlinux"
    return image.original if image.format == "elf" else None


@contextlib.contextmanager
def _kernel_bytes(image: KernelImage, progress: Progress | None) -> Iterator[tuple[bytes, str]]:
    """The kernel's uncompressed bytes and how they were had: the image QEMU boots (a RISC-V
    Image, a decompressed zboot payload), or for a bzImage what scripts/extract-vmlinux of
    the kernel source takes out of it."""
    if image.format != "bzimage":
        yield image.path.read_bytes(), (f"{image.original.name}'s EFI zboot payload"
                                        if image.path != image.original else image.original.name)
        return
    script = artefacts.ensure_linux_source(progress=progress) / "scripts/extract-vmlinux"
    with tempfile.TemporaryDirectory(prefix="hvo-struct-page-") as tmp:
        out = Path(tmp) / "vmlinux"
        with open(out, "wb") as stream:
            done = subprocess.run(["bash", str(script), str(image.original)], stdout=stream,
                                  stderr=subprocess.PIPE, text=False, check=False)
        if done.returncode != 0:
            reason = done.stderr.decode(errors="replace").strip().splitlines()
            raise HarnessError(f"scripts/extract-vmlinux {image.original.name}: "
                               f"{(reason or ['failed'])[-1]}")
        yield out.read_bytes(), f"the vmlinux scripts/extract-vmlinux takes out of {image.original.name}"


def _from_pahole(path: Path, formats: str, origin: str) -> StructPage:
    size, members = parse_pahole(run_pahole(path, formats))
    return StructPage(size, origin, members)


def _debian_debug_package(info: KernelInfo) -> tuple[str, str] | None:
    """(release, version) of a Debian kernel, for its -dbg package; None for other kernels."""
    source = info.source
    if source.get("type") != "debian" or not info.release or not source.get("version"):
        return None
    return info.release, str(source["version"])


def _measure(profile: ArchProfile, image: KernelImage, info: KernelInfo, config: dict[str, str] | None,
             progress: Progress | None) -> StructPage:
    tried: list[str] = []
    # 1. A vmlinux beside the image: DWARF (a tree build with debug info), else its BTF.
    vmlinux = _beside_vmlinux(image)
    if vmlinux is None:
        tried.append(f"no vmlinux beside {image.original.name}")
    else:
        for formats, what in (("dwarf", "DWARF"), ("btf", "BTF")):
            try:
                return _from_pahole(vmlinux, formats, f"{what} of {vmlinux}")
            except (HarnessError, ValueError) as error:
                tried.append(f"{what} of {vmlinux}: {error}")
    # 2. BTF in the image.
    if config is not None and config.get("CONFIG_DEBUG_INFO_BTF") != "y":
        tried.append("no BTF in the image (CONFIG_DEBUG_INFO_BTF is not set)")
    else:
        try:
            with _kernel_bytes(image, progress) as (data, where):
                blob = carve_btf(data)
            if blob is None:
                tried.append(f"no BTF in {where}")
            else:
                with tempfile.NamedTemporaryFile(prefix="hvo-struct-page-", suffix=".btf") as raw:
                    raw.write(blob)
                    raw.flush()
                    return _from_pahole(Path(raw.name), "btf", f"BTF in {where}")
        except (HarnessError, ValueError, OSError) as error:
            tried.append(f"BTF in the image: {error}")
    # 3. Debian's -dbg package.
    debian = _debian_debug_package(info)
    if debian is None:
        tried.append("not a Debian kernel (no linux-image-<release>-dbg to fetch)")
    else:
        release, version = debian
        package = artefacts.debug_package_name(release)
        try:
            path = artefacts.ensure_debug_vmlinux(profile, release, version, progress=progress)
            return _from_pahole(path, "dwarf", f"DWARF of {package} {version}")
        except DebugInfoUnavailable as error:
            tried.append(error.reason)
        except (HarnessError, ValueError) as error:
            tried.append(f"DWARF of {package} {version}: {error}")
    return StructPage(None, why=f"{'; '.join(tried)}; what would give it: {WHAT_WOULD_GIVE_IT}")


def _cache_path(sha256: str) -> Path:
    return cache_dir("struct-page") / f"{sha256}.json"


def measure(profile: ArchProfile, image: KernelImage, info: KernelInfo,
            config: dict[str, str] | None = None, progress: Progress | None = None) -> StructPage:
    """struct page of the kernel IMAGE (INFO: what is known of it, CONFIG: its .config if
    known), from the cache when it was measured before."""
    cached = _cache_path(image.sha256)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        data = json.loads(cached.read_text())
        if data.get("cache_version") == _CACHE_VERSION and data["struct_page"].get("size"):
            return StructPage.from_json(data["struct_page"])
    found = _measure(profile, image, info, config, progress)
    if found.size is not None:
        # Only measurements are kept: a "not measured" may be a download that failed today.
        entry = {"cache_version": _CACHE_VERSION, "image_sha256": image.sha256,
                 "image": info.path, "struct_page": found.to_json()}
        tmp = cached.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry, indent=2) + "\n")
        tmp.replace(cached)
    return found


def fill(profile: ArchProfile, image: KernelImage, info: KernelInfo, config: dict[str, str] | None,
         progress: Progress | None = None) -> StructPage:
    """Measure (or take from the cache) and record it in INFO.struct_page."""
    found = measure(profile, image, info, config, progress)
    info.struct_page = found.to_json()
    return found
