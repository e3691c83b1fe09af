"""sizeof(struct page) read from the kernel under test (harness/structpage.py), and Debian's
-dbg vmlinux it may come from (artefacts.ensure_debug_vmlinux).

Parsing runs on pahole output recorded from real kernels (tests/data/README.md); the
measurements of Debian's kernels are real (pahole on their BTF and DWARF) and marked boot:
the loong64 one fetches a 1 GB -dbg package the first time."""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import pytest

from harness import artefacts, pipeline, structpage
from harness.cache import cache_root
from harness.errors import DebugInfoUnavailable
from harness.profiles import get_profile
from harness.structpage import Member, StructPage

DATA = Path(__file__).parent / "data"
LOONG64_RELEASE, LOONG64_VERSION = "7.2.13+deb14-loong64", "7.2.13-1"


# --------------------------------------------------------------------------------------------
# pahole's output


def test_pahole_output_of_debian_amd64_btf_is_parsed() -> None:
    size, members = structpage.parse_pahole((DATA / "pahole-struct-page-amd64-7.2.13-btf.txt").read_text())
    assert size == 64
    assert members == (
        Member("flags", 0, 8),
        Member("union {struct {...}, struct {...}, struct {...}, struct {...}, callback_head}", 8, 40),
        Member("union {page_type, _mapcount}", 48, 4),
        Member("_refcount", 52, 4),
        Member("memcg_data", 56, 8),
    )


def test_pahole_dwarf_output_with_alignment_attributes_is_parsed() -> None:
    """DWARF gives members __attribute__((__aligned__(N))); a tinyconfig tree build has no
    memcg_data and pads to 64 (CONFIG_HAVE_ALIGNED_STRUCT_PAGE)."""
    text = (DATA / "pahole-struct-page-x86_64-7.2.13-debug-dwarf.txt").read_text()
    size, members = structpage.parse_pahole(text)
    assert size == 64
    assert [m.name for m in members] == ["flags", "union {struct {...}, struct {...}, struct {...}, "
                                         "struct {...}, callback_head}", "union {page_type, _mapcount}",
                                         "_refcount"]
    assert members[-1] == Member("_refcount", 52, 4)


def test_pahole_output_of_debian_loong64_dwarf_is_parsed() -> None:
    """Debian's loong64 7.2.13 (-dbg DWARF): CONFIG_KFENCE=y makes LoongArch define
    WANT_PAGE_VIRTUAL (arch/loongarch/include/asm/page.h), so `void *virtual` follows
    memcg_data at 64, and the 16-byte alignment (HAVE_ALIGNED_STRUCT_PAGE) pads 72 to 80."""
    text = (DATA / "pahole-struct-page-loong64-7.2.13-dbg-dwarf.txt").read_text()
    size, members = structpage.parse_pahole(text)
    assert size == 80
    assert members[-2:] == (Member("memcg_data", 56, 8), Member("virtual", 64, 8))
    page = StructPage(size, "DWARF of linux-image-7.2.13+deb14-loong64-dbg 7.2.13-1", members)
    assert page.not_power_of_two() == (
        "sizeof(struct page) = 80 (DWARF of linux-image-7.2.13+deb14-loong64-dbg 7.2.13-1): not a power "
        "of two; past 64 bytes: virtual (offset 64, 8 bytes), then 8 bytes of padding")


def test_pahole_output_without_struct_page_is_an_error() -> None:
    with pytest.raises(ValueError, match="no struct page"):
        structpage.parse_pahole("struct folio {\n\tint x; /* 0 4 */\n};\n")


def test_the_reason_names_what_lies_past_the_power_of_two() -> None:
    page = StructPage(72, "DWARF of vmlinux", (Member("flags", 0, 8), Member("memcg_data", 56, 8),
                                               Member("_last_cpupid", 64, 4)))
    assert page.past_power_of_two() == (64, (Member("_last_cpupid", 64, 4),))
    assert page.not_power_of_two() == ("sizeof(struct page) = 72 (DWARF of vmlinux): not a power of two; "
                                       "past 64 bytes: _last_cpupid (offset 64, 4 bytes), then 4 bytes "
                                       "of padding")
    assert StructPage.from_json(page.to_json()) == page
    unknown = StructPage(None, why="no BTF")
    assert unknown.to_json() == {"size": None, "why": "no BTF"}
    assert StructPage.from_json(unknown.to_json()) == unknown


# --------------------------------------------------------------------------------------------
# BTF carved out of a kernel's bytes


def _btf(types: bytes, strings: bytes) -> bytes:
    header = struct.pack("<5I", 24, 0, len(types), len(types), len(strings))
    return b"\x9f\xeb\x01\x00" + header + types + strings


def test_the_largest_well_formed_btf_blob_is_carved() -> None:
    small = _btf(b"\x01" * 12, b"\x00a\x00")
    large = _btf(b"\x02" * 48, b"\x00page\x00")
    # A stray magic whose lengths run past the end is not BTF.
    stray = b"\x9f\xeb\x01\x00" + struct.pack("<5I", 24, 0, 1 << 20, 1 << 20, 8)
    data = b"MZ" + b"\x00" * 100 + small + b"\xff" * 7 + large + stray + b"\x00" * 30
    assert structpage.carve_btf(data) == large
    assert structpage.carve_btf(b"MZ" + stray) is None


# --------------------------------------------------------------------------------------------
# ensure_debug_vmlinux without the network


@pytest.fixture()
def empty_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("HVO_HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(artefacts._Apt, "_updated", set())
    return tmp_path / "cache"


def test_a_cached_debug_vmlinux_needs_no_apt(empty_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    package = artefacts.debug_package_name(LOONG64_RELEASE)
    vmlinux = empty_cache / "debian/dbg" / f"vmlinux-{LOONG64_RELEASE}_{LOONG64_VERSION}"
    vmlinux.parent.mkdir(parents=True)
    vmlinux.write_bytes(b"\x7fELF" + b"\x00" * 60)
    manifest = empty_cache / "debian" / f"manifest-dbg-{package}_{LOONG64_VERSION}.json"
    manifest.write_text(json.dumps({"manifest_version": artefacts.MANIFEST_VERSION, "vmlinux": {
        "path": str(vmlinux.relative_to(empty_cache)), "size": 64}}))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no apt: the manifest answers
    profile = get_profile("loongarch64")
    assert artefacts.ensure_debug_vmlinux(profile, LOONG64_RELEASE, LOONG64_VERSION) == vmlinux
    vmlinux.write_bytes(b"\x7fELF")  # truncated: not trusted, and without apt that is an error
    wanted = re.escape(f"{package} {LOONG64_VERSION}: apt-get not found")
    with pytest.raises(DebugInfoUnavailable, match=wanted):
        artefacts.ensure_debug_vmlinux(profile, LOONG64_RELEASE, LOONG64_VERSION)


def test_a_failed_download_names_the_package_and_version(empty_cache: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Real apt, every download to a closed port on this machine (as tests/test_artefacts.py)."""
    config = tmp_path / "apt.conf"
    config.write_text('Acquire::http::Proxy "http://127.0.0.1:9";\nAcquire::Retries "0";\n')
    monkeypatch.setenv("APT_CONFIG", str(config))
    with pytest.raises(DebugInfoUnavailable) as caught:
        artefacts.ensure_debug_vmlinux(get_profile("loongarch64"), LOONG64_RELEASE, LOONG64_VERSION)
    message = caught.value.reason
    assert message.startswith(f"could not fetch linux-image-{LOONG64_RELEASE}-dbg {LOONG64_VERSION}: ")
    assert "127.0.0.1" in message and "\n" not in message


def test_a_version_no_suite_has_is_named_and_recorded(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    """Real apt lists: no linux-image-<release>-dbg at version 0~0 anywhere. The error names
    package and version; the manifest records it, so the second time asks no apt."""
    profile = get_profile("loongarch64")
    with pytest.raises(DebugInfoUnavailable) as first:
        artefacts.ensure_debug_vmlinux(profile, LOONG64_RELEASE, "0~0")
    assert first.value.reason.startswith(f"Debian (sid, trixie, experimental) has no "
                                         f"linux-image-{LOONG64_RELEASE}-dbg:loong64 0~0 (versions there: ")
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    with pytest.raises(DebugInfoUnavailable) as again:
        artefacts.ensure_debug_vmlinux(profile, LOONG64_RELEASE, "0~0")
    assert again.value.reason == first.value.reason


# --------------------------------------------------------------------------------------------
# Real kernels (pahole on real BTF and DWARF; the loong64 -dbg package is 1 GB the first time)


def _debian(arch: str) -> pipeline.PreparedKernel:
    kernel = pipeline.prepare_kernel(get_profile(arch), "debian")
    assert kernel.info.source["type"] == "debian"
    return kernel


def _measured_now(arch: str) -> tuple[pipeline.PreparedKernel, StructPage]:
    """Measured from the kernel's files, not the struct-page cache."""
    kernel = _debian(arch)
    return kernel, structpage._measure(get_profile(arch), kernel.image, kernel.info, kernel.config, None)


@pytest.mark.boot
def test_debian_amd64_struct_page_from_its_btf() -> None:
    kernel, page = _measured_now("x86_64")
    assert page.size == 64, page.why
    assert page.origin == "BTF in the vmlinux scripts/extract-vmlinux takes out of vmlinuz"
    assert page.past_power_of_two() == (64, ())
    assert kernel.info.struct_page == page.to_json()  # what prepare_kernel recorded


@pytest.mark.boot
def test_debian_riscv64_struct_page_from_btf_carved_out_of_its_image() -> None:
    _, page = _measured_now("riscv64")
    assert page.size == 64, page.why
    assert page.origin == "BTF in vmlinuz"
    assert [m.name for m in page.members][-1] == "memcg_data"


@pytest.mark.boot
def test_debian_loong64_struct_page_from_the_dwarf_of_its_dbg_package() -> None:
    """No BTF in Debian's loong64 kernel (CONFIG_DEBUG_INFO_BTF is not set): the DWARF of
    linux-image-<release>-dbg's vmlinux gives it, and the members past 64 bytes."""
    kernel, page = _measured_now("loongarch64")
    assert kernel.info.release == LOONG64_RELEASE and kernel.info.source["version"] == LOONG64_VERSION
    assert page.origin == f"DWARF of linux-image-{LOONG64_RELEASE}-dbg {LOONG64_VERSION}", page.why
    assert page.size == 80
    assert page.past_power_of_two() == (64, (Member("virtual", 64, 8),))
    assert kernel.config is not None and kernel.config.get("CONFIG_KFENCE") == "y"  # WANT_PAGE_VIRTUAL


@pytest.mark.boot
def test_debian_loong64_dbg_vmlinux_is_fetched_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real -dbg package: only its vmlinux is kept (with DWARF), the .deb is not; the second
    time the manifest answers without apt."""
    profile = get_profile("loongarch64")
    vmlinux = artefacts.ensure_debug_vmlinux(profile, LOONG64_RELEASE, LOONG64_VERSION)
    assert vmlinux.read_bytes()[:4] == b"\x7fELF" and vmlinux.stat().st_size > 100 << 20
    assert not list(vmlinux.parent.glob("*.deb")) and not list(vmlinux.parent.glob(".tmp-*"))
    package = artefacts.debug_package_name(LOONG64_RELEASE)
    manifest = json.loads((cache_root() / "debian" / f"manifest-dbg-{package}_{LOONG64_VERSION}.json")
                          .read_text())["vmlinux"]
    assert manifest["package"]["name"] == package and manifest["package"]["version"] == LOONG64_VERSION
    assert manifest["member"] == f"usr/lib/debug/lib/modules/{LOONG64_RELEASE}/vmlinux"
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    assert artefacts.ensure_debug_vmlinux(profile, LOONG64_RELEASE, LOONG64_VERSION) == vmlinux


@pytest.mark.boot
def test_a_measurement_is_cached_per_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second time needs no vmlinux, no pahole, no apt: the cache answers."""
    kernel = _debian("riscv64")
    entry = cache_root() / "struct-page" / f"{kernel.image.sha256}.json"
    assert json.loads(entry.read_text())["struct_page"] == kernel.info.struct_page
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    assert shutil.which("pahole") is None
    again = structpage.measure(get_profile("riscv64"), kernel.image, kernel.info, kernel.config)
    assert again.to_json() == kernel.info.struct_page and again.size == 64


@pytest.mark.boot
def test_a_kernel_with_no_type_information_is_not_measured(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian's loong64 image given as a path, in a cache that has not measured it: no vmlinux
    beside it, no BTF in it, not a Debian kernel to fetch -dbg for. "Not measured", why, and
    what would give it; and nothing cached, so a later run tries again."""
    image = tmp_path / "vmlinuz"
    shutil.copy(_debian("loongarch64").image.original, image)
    monkeypatch.setenv("HVO_HARNESS_CACHE", str(tmp_path / "cache"))
    kernel = pipeline.prepare_kernel(get_profile("loongarch64"), image)
    page = StructPage.from_json(kernel.info.struct_page)
    assert page.size is None
    assert page.why.startswith("no vmlinux beside vmlinuz; no BTF in vmlinuz's EFI zboot payload; "
                               "not a Debian kernel"), page.why
    assert "what would give it: " in page.why and "CONFIG_DEBUG_INFO_BTF=y" in page.why
    assert not (tmp_path / "cache/struct-page" / f"{kernel.image.sha256}.json").exists()


@pytest.mark.boot
def test_a_tree_builds_struct_page_from_its_vmlinux_dwarf() -> None:
    """A tree build (kconfigs/debuginfo.config) leaves vmlinux with DWARF in its O= directory."""
    profile = get_profile("x86_64")
    spec = pipeline.TreeBuild(variants=("debug",))
    kernel = pipeline.build_kernel(profile, spec, "debug", pipeline.resolve_source(spec))
    page = StructPage.from_json(kernel.info.struct_page)
    assert page.size == 64, page.why
    assert page.origin.startswith("DWARF of ") and page.origin.endswith("/build/vmlinux")


def test_clang_dwarf_with_anonymous_unions_printed_twice() -> None:
    """pahole 1.24 on the clang-built loongarch64 tree kernel's DWARF prints each anonymous union
    twice, the copy without an offset/size: the members are the four of the first print."""
    text = (DATA / "pahole-struct-page-loongarch64-7.2.13-debug16k-clang-dwarf.txt").read_text()
    size, members = structpage.parse_pahole(text)
    assert size == 64
    assert [m.offset for m in members] == [0, 8, 48, 52]
