"""What HVO should free per huge page, and how that compares with claims and measurements.

The rules (mm/hugetlb_vmemmap.h, include/linux/mmzone.h in 7.2, after the series that shares
one read-only tail vmemmap page per node and order):
- a huge page of S bytes has S / PAGE_SIZE struct pages, i.e. V = S / PAGE_SIZE * sizeof(struct
  page) bytes of vmemmap;
- HVO keeps the first vmemmap page (the head struct page, HUGETLB_VMEMMAP_RESERVE_SIZE =
  PAGE_SIZE) and frees the rest: V - PAGE_SIZE, if positive;
- only if sizeof(struct page) is a power of two (the mask encoding of compound_info needs it)
  and CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP is set; orders whose vmemmap is under two pages
  (VMEMMAP_TAIL_MIN_ORDER) have nothing to free.
sizeof(struct page) is the kernel's own, measured by harness/structpage.py; when it was not
measured the rules give no number (None), never one for an assumed size.
Measurements use /proc/vmstat nr_memmap_pages + nr_memmap_boot_pages, which count every
vmemmap page the kernel holds: allocating a huge page with HVO frees all its vmemmap pages
and takes one new head page, so the sum drops by exactly V / PAGE_SIZE - 1. The shared tail
page is not counted there (it is an ordinary page), so the match is exact."""

from __future__ import annotations

from dataclasses import dataclass

from harness.structpage import StructPage


@dataclass(frozen=True)
class Expectation:
    # None: the rules cannot say (struct page not measured); `reason` says why.
    kib_per_page: int | None
    # Why the rules give 0 or None (empty when they give a positive number).
    reason: str = ""


def is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def expected_freeable(
    huge_size: int, page_size: int, struct_page: StructPage, hvo_built: bool | None
) -> Expectation:
    """vmemmap KiB HVO frees per huge page of HUGE_SIZE bytes, for the kernel's measured
    STRUCT_PAGE."""
    if hvo_built is False:
        return Expectation(0, "CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP is not set")
    if struct_page.size is None:
        return Expectation(None, struct_page.measured)
    if not is_power_of_two(struct_page.size):
        return Expectation(0, struct_page.not_power_of_two())
    vmemmap = huge_size // page_size * struct_page.size
    if vmemmap < 2 * page_size:
        return Expectation(0, f"the vmemmap of a {huge_size >> 10} KiB page fits in one page")
    return Expectation((vmemmap - page_size) // 1024)


def vmemmap_pages(counters: dict[str, str]) -> int | None:
    """nr_memmap_pages + nr_memmap_boot_pages, or None when the kernel lacks either."""
    try:
        return int(counters["memmap_pages"]) + int(counters["memmap_boot_pages"])
    except (KeyError, ValueError):
        return None


def kib_per_page(
    before: dict[str, str], after: dict[str, str], pages: int, page_size: int
) -> float | None:
    """vmemmap freed per huge page between two counter readings (negative: pages were added)."""
    start, end = vmemmap_pages(before), vmemmap_pages(after)
    if start is None or end is None or pages <= 0:
        return None
    return round((start - end) * page_size / 1024 / pages, 3)


def memfree_kib_per_page(
    before: dict[str, str], after: dict[str, str], pages: int, huge_kib: int
) -> float | None:
    """MemFree change per page beyond the huge page itself: the savings, plus noise."""
    try:
        delta = int(after["memfree_kb"]) - int(before["memfree_kb"])
    except (KeyError, ValueError):
        return None
    if pages <= 0:
        return None
    return round((delta + pages * huge_kib) / pages, 1)
