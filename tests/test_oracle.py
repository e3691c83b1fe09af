"""HVO's arithmetic (mm/hugetlb_vmemmap.h) and counter deltas."""

from harness import oracle
from harness.profiles import GIB, MIB
from harness.structpage import Member, StructPage

# Debian's amd64 7.2.13, as pahole reads its BTF (tests/data/pahole-struct-page-amd64-7.2.13-btf.txt).
MEMBERS_64 = (Member("flags", 0, 8), Member("union {struct {...}, callback_head}", 8, 40),
              Member("union {page_type, _mapcount}", 48, 4), Member("_refcount", 52, 4),
              Member("memcg_data", 56, 8))
PAGE_64 = StructPage(64, "BTF in vmlinuz", MEMBERS_64)


def test_expected_savings_follow_the_kernel_rules() -> None:
    assert oracle.expected_freeable(2 * MIB, 4096, PAGE_64, True).kib_per_page == 28
    assert oracle.expected_freeable(1 * GIB, 4096, PAGE_64, True).kib_per_page == 16380
    # 16K pages (LoongArch): 2048 struct pages = 128 KiB of vmemmap, one 16K page kept.
    assert oracle.expected_freeable(32 * MIB, 16384, PAGE_64, True).kib_per_page == 112


def test_a_changed_struct_page_size_changes_the_expectation() -> None:
    """The size is the kernel's, not a constant: 512 struct pages of S bytes per 2M page,
    one 4K page kept."""
    for size, kib in ((32, 12), (64, 28), (128, 60)):
        page = StructPage(size, "DWARF of vmlinux")
        assert oracle.expected_freeable(2 * MIB, 4096, page, True).kib_per_page == kib


def test_no_savings_without_hvo_or_a_power_of_two_struct_page() -> None:
    off = oracle.expected_freeable(2 * MIB, 4096, PAGE_64, False)
    assert off.kib_per_page == 0 and "CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP" in off.reason
    # Debian's loong64 7.2.13 as its -dbg DWARF gives it (tests/data/pahole-struct-page-loong64-*).
    odd = StructPage(80, "DWARF of linux-image-7.2.13+deb14-loong64-dbg 7.2.13-1",
                     (*MEMBERS_64, Member("virtual", 64, 8)))
    rule = oracle.expected_freeable(32 * MIB, 16384, odd, True)
    assert rule.kib_per_page == 0
    # The reason is the kernel's: the size, where it was read, what lies past 64 bytes.
    assert rule.reason == ("sizeof(struct page) = 80 (DWARF of linux-image-7.2.13+deb14-loong64-dbg "
                           "7.2.13-1): not a power of two; past 64 bytes: virtual (offset 64, "
                           "8 bytes), then 8 bytes of padding")
    other = StructPage(72, "BTF in vmlinuz", (*MEMBERS_64, Member("_last_cpupid", 64, 4)))
    assert oracle.expected_freeable(2 * MIB, 4096, other, True).reason == (
        "sizeof(struct page) = 72 (BTF in vmlinuz): not a power of two; past 64 bytes: _last_cpupid "
        "(offset 64, 4 bytes), then 4 bytes of padding")
    # A huge page whose vmemmap fits in one base page has nothing to free.
    assert oracle.expected_freeable(64 * 4096, 4096, PAGE_64, True).kib_per_page == 0


def test_an_unmeasured_struct_page_gives_no_number() -> None:
    """Never a number for an assumed size: None, and the reason says what is missing."""
    unknown = StructPage(None, why="no vmlinux beside Image; no BTF in Image; what would give it: ...")
    rule = oracle.expected_freeable(2 * MIB, 4096, unknown, True)
    assert rule.kib_per_page is None
    assert rule.reason.startswith("struct page not measured: no vmlinux beside Image")
    # Without HVO built in nothing is freed whatever the size.
    assert oracle.expected_freeable(2 * MIB, 4096, unknown, False).kib_per_page == 0


def test_counter_deltas_per_page() -> None:
    # Debian x86_64, 4 run-time 2M pages (NOTES.md): 7 vmemmap pages freed per page.
    before = {"memmap_pages": "8222", "memmap_boot_pages": "24546"}
    after = {"memmap_pages": "8210", "memmap_boot_pages": "24530"}
    assert oracle.kib_per_page(before, after, 4, 4096) == 28
    assert oracle.kib_per_page(before, {"memmap_pages": "absent"}, 4, 4096) is None
