"""Bad input gives one clear error line naming the fix, and exit status 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from harness import artefacts
from harness.profiles import get_profile
from tests.cli import one_error_line, run_cli


def test_missing_kernel(tmp_path: Path) -> None:
    line = one_error_line(run_cli("run", "--arch", "x86_64", "--kernel", str(tmp_path / "nope"),
                                  "--out", str(tmp_path)))
    assert "does not exist" in line and "nope" in line


def test_wrong_arch_kernel_names_both_arches(tmp_path: Path) -> None:
    riscv = artefacts.ensure_debian_kernel(get_profile("riscv64")).image
    line = one_error_line(run_cli("run", "--arch", "x86_64", "--kernel", str(riscv),
                                  "--out", str(tmp_path)))
    assert "riscv64" in line and "x86_64" in line


def test_corrupt_image(tmp_path: Path) -> None:
    x86 = artefacts.ensure_debian_kernel(get_profile("x86_64")).image
    truncated = tmp_path / "truncated-bzImage"
    truncated.write_bytes(x86.read_bytes()[:4096])
    garbage = tmp_path / "garbage"
    garbage.write_bytes(os.urandom(65536))
    for image in (truncated, garbage):
        line = one_error_line(run_cli("run", "--arch", "x86_64", "--kernel", str(image),
                                      "--out", str(tmp_path)))
        assert str(image) in line


def test_missing_qemu_names_the_package(tmp_path: Path) -> None:
    x86 = artefacts.ensure_debian_kernel(get_profile("x86_64")).image
    # A PATH with python but without QEMU.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    env = {**os.environ, "PATH": str(bin_dir)}
    line = one_error_line(run_cli("run", "--arch", "x86_64", "--kernel", str(x86),
                                  "--out", str(tmp_path / "out"), env=env))
    assert "qemu-system-x86_64 not found" in line and "qemu-system-x86" in line


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["run", "--arch", "sparc"], "unknown arch 'sparc'"),
        (["run", "--hvo", "maybe"], "--hvo"),
        (["run", "--node-mem", "lots"], "--node-mem"),
        (["parse", "/nonexistent/console.log"], "not a readable file"),
    ],
)
def test_usage_errors(args: list[str], words: str) -> None:
    assert words in one_error_line(run_cli(*args))


# Kernels from a tree: each bad input is one line naming the fix.


def test_bad_fragment_option_is_named(tmp_path: Path) -> None:
    fragment = tmp_path / "typo.config"
    fragment.write_text("CONFIG_HUGETLBFS=y\nCONFIG_HVO_HARNESS_NO_SUCH_OPTION=y\n")
    line = one_error_line(
        run_cli("build", "--arch", "x86_64", "--variant", "debug", "--fragment", str(fragment))
    )
    assert "CONFIG_HVO_HARNESS_NO_SUCH_OPTION=y" in line and "typo.config" in line
    assert "did not stick" in line


def test_missing_cross_compiler_names_the_package(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path))
    line = one_error_line(run_cli("build", "--arch", "riscv64", env=env))
    assert "riscv64-linux-gnu-gcc not found" in line and "gcc-riscv64-linux-gnu" in line


def test_path_that_is_not_a_kernel_tree(tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text("all:\n")
    line = one_error_line(run_cli("build", "--arch", "x86_64", "--tree", str(tmp_path)))
    assert str(tmp_path) in line and "not a Linux kernel tree" in line


def test_patch_that_does_not_apply_is_named(tmp_path: Path) -> None:
    patch = tmp_path / "0001-mm-sparse-stale-context.patch"
    patch.write_text(
        "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
        "From: Someone <someone@example.org>\n"
        "Date: Sun, 22 Nov 2026 00:00:00 +0000\n"
        "Subject: [PATCH] mm/sparse: a change written against another tree\n\n---\n"
        " mm/sparse.c | 2 +-\n 1 file changed, 1 insertion(+), 1 deletion(-)\n\n"
        "diff --git a/mm/sparse.c b/mm/sparse.c\n--- a/mm/sparse.c\n+++ b/mm/sparse.c\n"
        "@@ -1,3 +1,3 @@\n-// this line is not in mm/sparse.c\n+// neither is this one\n"
        " /*\n  * sparse memory mappings.\n--\n2.39.5\n"
    )
    line = one_error_line(
        run_cli("build", "--arch", "riscv64", "--variant", "debug", "--patches", str(patch))
    )
    assert "patch does not apply" in line and "mm/sparse: a change written against another tree" in line


def test_page_size_the_arch_lacks() -> None:
    line = one_error_line(run_cli("build", "--arch", "x86_64", "--variant", "debug+16k"))
    assert "x86_64 has no 16k page size" in line
