"""Reading a kernel .config: the facts the oracle needs (page size, HVO options)."""

from __future__ import annotations

import re
from pathlib import Path

_SET = re.compile(r"^(CONFIG_\w+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_\w+) is not set$")

# Page-size options across arches (x86 has only 4K; riscv 4K; loongarch 4K/16K/64K).
_PAGE_SIZE_OPTIONS = {
    "CONFIG_PAGE_SIZE_4KB": 4096,
    "CONFIG_4KB_PAGES": 4096,
    "CONFIG_PAGE_SIZE_16KB": 16384,
    "CONFIG_16KB_PAGES": 16384,
    "CONFIG_PAGE_SIZE_64KB": 65536,
    "CONFIG_64KB_PAGES": 65536,
}


def read(path: Path) -> dict[str, str]:
    """CONFIG_X -> value ('y', 'm', '"text"', '123'); unset options map to 'n'."""
    options: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        if match := _SET.match(line):
            options[match[1]] = match[2]
        elif match := _UNSET.match(line):
            options[match[1]] = "n"
    return options


def page_size(options: dict[str, str]) -> int | None:
    for option, size in _PAGE_SIZE_OPTIONS.items():
        if options.get(option) == "y":
            return size
    shift = options.get("CONFIG_PAGE_SHIFT")
    return 1 << int(shift) if shift and shift.isdigit() else None


def enabled(options: dict[str, str], name: str) -> bool | None:
    """True/False from the config; None when the option is not mentioned at all."""
    value = options.get(name)
    if value is None:
        return None
    return value in ("y", "m")
