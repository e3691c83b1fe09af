"""Bad input gives one clear error line naming the fix, and exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
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
        (["run", "--timeout", "abc"], "--timeout: invalid float value"),
        (["run", "--no-such-option"], "unrecognized arguments"),
        (["frobnicate"], "invalid choice"),
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


# Output paths, and every check that needs no download, before any download, build or boot.


def _cold(tmp_path: Path) -> dict[str, str]:
    """An empty cache and no way out to the network: a check that comes after a download fails
    here with a download error (or hangs), not with its own line."""
    cache = tmp_path / "cold-cache"
    return {**os.environ, "HVO_HARNESS_CACHE": str(cache), "http_proxy": "http://127.0.0.1:9",
            "https_proxy": "http://127.0.0.1:9"}


def _fast_error(args: list[str], env: dict[str, str]) -> str:
    started = time.monotonic()
    line = one_error_line(run_cli(*args, env=env, timeout=120))
    assert time.monotonic() - started < 10, "a cheap check came after something slow"
    downloaded = [p for p in Path(env["HVO_HARNESS_CACHE"]).rglob("*") if p.is_file()]
    assert not downloaded, downloaded
    return line


@pytest.mark.parametrize("where", ["missing-dir", "directory"])
def test_parse_json_path_that_cannot_be_written(tmp_path: Path, where: str) -> None:
    log = tmp_path / "console.log"
    log.write_text("[    0.000000] Linux version 7.2.13\n")
    target = tmp_path / "no-such-dir" / "f.json" if where == "missing-dir" else tmp_path
    line = one_error_line(run_cli("parse", str(log), "--json", str(target)))
    assert "--json" in line and str(target) in line


def test_run_json_directory_is_refused_before_any_boot(tmp_path: Path) -> None:
    json_dir = tmp_path / "results-dir"
    json_dir.mkdir()
    out = tmp_path / "out"
    line = _fast_error(["run", "--arch", "loongarch64", "--hvo", "on", "--json", str(json_dir),
                        "--out", str(out)], _cold(tmp_path))
    assert "--json" in line and str(json_dir) in line and "directory" in line
    assert not (tmp_path / "results-dir.tmp").exists()
    assert not out.exists()  # refused before --out was even made


def test_run_json_in_a_missing_directory(tmp_path: Path) -> None:
    target = tmp_path / "nowhere" / "r.json"
    line = _fast_error(["run", "--arch", "loongarch64", "--json", str(target),
                        "--out", str(tmp_path / "out")], _cold(tmp_path))
    assert "--json" in line and str(target.parent) in line


def test_out_that_is_a_file(tmp_path: Path) -> None:
    out = tmp_path / "a-file"
    out.write_text("the user's\n")
    line = _fast_error(["run", "--arch", "loongarch64", "--out", str(out)], _cold(tmp_path))
    assert "--out" in line and str(out) in line
    assert out.read_text() == "the user's\n"


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only file system (root writes through permission bits, not through this)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("below", ["", "sub/dir"])
def test_out_on_a_read_only_file_system(tmp_path: Path, read_only_dir: Path, below: str) -> None:
    out = read_only_dir / below if below else read_only_dir
    line = _fast_error(["run", "--arch", "loongarch64", "--out", str(out)], _cold(tmp_path))
    assert "--out" in line and "Read-only file system" in line


def test_json_on_a_read_only_file_system(tmp_path: Path, read_only_dir: Path) -> None:
    line = _fast_error(["run", "--arch", "loongarch64", "--json", str(read_only_dir / "r.json"),
                        "--out", str(tmp_path / "out")], _cold(tmp_path))
    assert "--json" in line and "Read-only file system" in line


def test_mistyped_kernel_path_fails_before_downloads(tmp_path: Path) -> None:
    line = _fast_error(["run", "--arch", "riscv64", "--kernel", str(tmp_path / "Imgae"),
                        "--out", str(tmp_path / "out")], _cold(tmp_path))
    assert "does not exist" in line and "Imgae" in line


def test_wrong_arch_kernel_fails_before_downloads(tmp_path: Path) -> None:
    riscv = artefacts.ensure_debian_kernel(get_profile("riscv64")).image
    line = _fast_error(["run", "--arch", "x86_64", "--kernel", str(riscv),
                        "--out", str(tmp_path / "out")], _cold(tmp_path))
    assert "riscv64" in line and "x86_64" in line


def test_missing_config_fails_before_downloads(tmp_path: Path) -> None:
    riscv = artefacts.ensure_debian_kernel(get_profile("riscv64")).image
    line = _fast_error(["run", "--arch", "riscv64", "--kernel", str(riscv), "--config",
                        str(tmp_path / "dot-config"), "--out", str(tmp_path / "out")], _cold(tmp_path))
    assert "--config" in line and "dot-config" in line


@pytest.mark.parametrize("value", ["nan", "inf", "-5", "0"])
def test_timeout_must_be_a_positive_number_of_seconds(tmp_path: Path, value: str) -> None:
    line = _fast_error(["run", "--arch", "loongarch64", "--timeout", value,
                        "--out", str(tmp_path / "out")], _cold(tmp_path))
    assert f"--timeout {value}" in line and "seconds" in line


def test_jobs_must_be_at_least_one(tmp_path: Path) -> None:
    line = _fast_error(["run", "--arch", "loongarch64", "--jobs", "0",
                        "--out", str(tmp_path / "out")], _cold(tmp_path))
    assert "--jobs 0" in line


@pytest.mark.parametrize("value", ["on,on", "off, off", "on,off,on"])
def test_each_hvo_setting_once(tmp_path: Path, value: str) -> None:
    line = _fast_error(["run", "--arch", "loongarch64", "--hvo", value,
                        "--out", str(tmp_path / "out")], _cold(tmp_path))
    assert "--hvo" in line and "each setting once" in line


@pytest.mark.parametrize(("value", "names"), [
    ("debian:nosuch", "no Debian suite 'nosuch'"),
    ("debian:", "no Debian suite ''"),
    ("debian:linux-image-6.12.107+deb13-amd64=", "give both a package and a version"),
    ("debian:=6.12.107-1", "give both a package and a version"),
    ("debian:busybox-static=1:1.37.0-6", "not a kernel package"),
    ("debian:trixie,,debian:sid", "empty item"),
    ("debian:trixie,", "empty item"),
    ("debian:sid,debian:trixie,debian:sid", "debian:sid twice"),
    ("debian,debian:sid", "debian:sid twice"),
    ("debian:trixie,vmlinuz", "goes alone"),
    ("debian:linux-image-6.12.107+deb13-amd64=6.12.107-1", "give --arch x86_64"),
])
def test_malformed_kernel_spec_fails_before_downloads(tmp_path: Path, value: str, names: str) -> None:
    """--kernel's Debian forms are checked as text, before apt, a download or --out."""
    out = tmp_path / "out"
    line = _fast_error(["run", "--arch", "riscv64", "--kernel", value, "--out", str(out)], _cold(tmp_path))
    assert names in line and "--kernel" in line, line
    assert not out.exists()


def test_fetch_kernel_spec_is_checked_too(tmp_path: Path) -> None:
    line = _fast_error(["fetch", "--arch", "x86_64", "--kernel", "debian:stable"], _cold(tmp_path))
    assert "no Debian suite 'stable'" in line and "debian:trixie" in line


def test_unknown_package_version_names_madison(tmp_path: Path) -> None:
    """A PACKAGE=VERSION that apt does not have: one line, the versions it has, and how to list
    them (needs the lists: the real cache, and apt-get update once)."""
    line = one_error_line(run_cli("run", "--arch", "x86_64", "--hvo", "on", "--kernel",
                                  "debian:linux-image-6.12.107+deb13-amd64=6.12.999-1",
                                  "--out", str(tmp_path / "out")))
    assert "has no linux-image-6.12.107+deb13-amd64:amd64 6.12.999-1" in line
    assert "madison linux-image-6.12.107+deb13-amd64" in line
