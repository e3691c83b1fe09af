"""Kconfig variants, the requested-option check and toolchain lookup (no build here: the
real builds are in test_build_tree.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import kbuild
from harness.errors import HarnessError
from harness.profiles import ARCH_NAMES, get_profile


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_every_arch_has_its_fragments(arch: str) -> None:
    profile = get_profile(arch)
    for page_size in profile.build.page_sizes:
        variant = kbuild.resolve_variant(profile, f"debug+{page_size}")
        assert all(f.is_file() for f in variant.fragments), variant.fragments
        assert variant.name == f"debug+{page_size}"


def test_default_page_size_is_the_profiles_first() -> None:
    assert kbuild.resolve_variant(get_profile("loongarch64"), "debug").name == "debug+16k"
    assert kbuild.resolve_variant(get_profile("x86_64"), None).name == "base+4k"


def test_page_size_the_arch_lacks_is_an_error() -> None:
    with pytest.raises(HarnessError, match=r"x86_64 has no 16k page size.*it has 4k"):
        kbuild.resolve_variant(get_profile("x86_64"), "debug+16k")


def test_unknown_variant_word_names_the_choices() -> None:
    with pytest.raises(HarnessError, match=r"unknown variant word 'kasan'.*debug"):
        kbuild.resolve_variant(get_profile("riscv64"), "kasan")


def test_all_page_sizes_expands_per_arch() -> None:
    assert kbuild.page_size_variants(get_profile("loongarch64"), "debug") == [
        "debug+16k", "debug+4k", "debug+4k4l"]
    assert kbuild.page_size_variants(get_profile("riscv64"), "debug+4k") == ["debug+4k"]


def test_later_fragment_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "a.config", tmp_path / "b.config"
    first.write_text("CONFIG_A=y\nCONFIG_B=y\n")
    second.write_text("# CONFIG_A is not set\nCONFIG_C=64\n")
    wanted = kbuild.requested_options((first, second))
    assert wanted == {"CONFIG_A": ("n", second), "CONFIG_B": ("y", first), "CONFIG_C": ("64", second)}


def test_option_that_did_not_stick_is_named(tmp_path: Path) -> None:
    fragment = tmp_path / "mine.config"
    fragment.write_text("CONFIG_NUMA=y\nCONFIG_DEBUG_VM=y\nCONFIG_SLUB_TINY=n\n")
    config = {"CONFIG_NUMA": "y", "CONFIG_SLUB_TINY": "n"}
    with pytest.raises(HarnessError, match=r"CONFIG_DEBUG_VM=y from .*mine.config did not stick.*not set"):
        kbuild.check_config(config, (fragment,))
    kbuild.check_config({**config, "CONFIG_DEBUG_VM": "y"}, (fragment,))


def test_loongarch_has_no_gcc_toolchain() -> None:
    with pytest.raises(HarnessError, match=r"loongarch64 kernels build with llvm.*not gcc"):
        kbuild.find_toolchain(get_profile("loongarch64"), "gcc")


def test_missing_cross_compiler_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(HarnessError, match=r"riscv64-linux-gnu-gcc not found.*gcc-riscv64-linux-gnu"):
        kbuild.find_toolchain(get_profile("riscv64"), None)
    with pytest.raises(HarnessError, match=r"clang-19 not found.*clang-19 \(bookworm-backports\)"):
        kbuild.find_toolchain(get_profile("loongarch64"), None)
