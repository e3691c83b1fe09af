"""HVO's arithmetic (mm/hugetlb_vmemmap.h) and counter deltas."""

from harness import oracle
from harness.profiles import GIB, MIB


def test_expected_savings_follow_the_kernel_rules() -> None:
    assert oracle.expected_freeable(2 * MIB, 4096, 64, True).kib_per_page == 28
    assert oracle.expected_freeable(1 * GIB, 4096, 64, True).kib_per_page == 16380
    # 16K pages (LoongArch): 2048 struct pages = 128 KiB of vmemmap, one 16K page kept.
    assert oracle.expected_freeable(32 * MIB, 16384, 64, True).kib_per_page == 112


def test_no_savings_without_hvo_or_a_power_of_two_struct_page() -> None:
    off = oracle.expected_freeable(2 * MIB, 4096, 64, False)
    assert off.kib_per_page == 0 and "CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP" in off.reason
    odd = oracle.expected_freeable(2 * MIB, 4096, 72, True)
    assert odd.kib_per_page == 0 and "power of two" in odd.reason
    # A huge page whose vmemmap fits in one base page has nothing to free.
    assert oracle.expected_freeable(64 * 4096, 4096, 64, True).kib_per_page == 0


def test_counter_deltas_per_page() -> None:
    # Debian x86_64, 4 run-time 2M pages (NOTES.md): 7 vmemmap pages freed per page.
    before = {"memmap_pages": "8222", "memmap_boot_pages": "24546"}
    after = {"memmap_pages": "8210", "memmap_boot_pages": "24530"}
    assert oracle.kib_per_page(before, after, 4, 4096) == 28
    assert oracle.kib_per_page(before, {"memmap_pages": "absent"}, 4, 4096) is None
