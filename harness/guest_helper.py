"""Build guest_scripts/hvoh.c as a static binary for an arch, with the kernel's nolibc.

No libc is packaged for riscv64 and loong64 on a bookworm host; nolibc needs only the
kernel's UAPI headers and clang. The source tree is never written to: the UAPI headers are
installed with `make O=` and the nolibc headers are copied, so `make O=` builds of the same
tree still work afterwards (nolibc's own headers_standalone target dirties the tree)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness.cache import cache_dir
from harness.errors import HarnessError
from harness.initramfs import GUEST_SCRIPTS
from harness.profiles import ArchProfile

HELPER_SOURCE = GUEST_SCRIPTS / "hvoh.c"
CLANG = "clang-19"
CLANG_FLAGS = (
    "-nostdlib", "-static", "-ffreestanding", "-fno-stack-protector", "-O2", "-nostdinc",
    "-fuse-ld=lld", "-Wall", "-Wno-unused-function",
)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise HarnessError(f"{name} not found: run `make deps` (clang-19 and lld-19 from bookworm-backports)")
    return path


def _tree_id(tree: Path) -> str:
    """What the sysroot depends on: the tree's version and its nolibc + uapi sources' names."""
    makefile = (tree / "Makefile").read_bytes()[:400]
    nolibc = sorted(p.relative_to(tree).as_posix() for p in (tree / "tools/include/nolibc").rglob("*.h"))
    return hashlib.sha256(makefile + "\n".join(nolibc).encode() + str(tree).encode()).hexdigest()[:16]


def sysroot(tree: Path, profile: ArchProfile) -> Path:
    """UAPI headers (make O= headers_install) plus nolibc's headers, once per tree and arch."""
    if not (tree / "tools/include/nolibc/nolibc.h").exists():
        raise HarnessError(f"{tree} has no tools/include/nolibc: give a Linux source tree (>= 6.x)")
    root = cache_dir("nolibc") / f"{profile.name}-{_tree_id(tree)}"
    if (root / "include" / "nolibc.h").exists():
        return root
    staging = Path(tempfile.mkdtemp(prefix=f"{profile.name}-", dir=root.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="hdr-build-") as build:
            proc = subprocess.run(
                ["make", "-s", "-C", str(tree), f"O={build}", f"ARCH={profile.kernel_arch}",
                 f"INSTALL_HDR_PATH={staging}", "headers_install"],
                capture_output=True, text=True,
            )
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            raise HarnessError(f"headers_install failed for {profile.name} in {tree}: {last}")
        nolibc = tree / "tools/include/nolibc"
        for header in nolibc.rglob("*.h"):
            target = staging / "include" / header.relative_to(nolibc)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(header, target)
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return root


def build(tree: Path, profile: ArchProfile) -> Path:
    """The static helper binary for this arch, cached by source, sysroot and compiler."""
    clang = _tool(CLANG)
    _tool("ld.lld-19")
    include = sysroot(tree, profile) / "include"
    version = subprocess.run([clang, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(
        HELPER_SOURCE.read_bytes() + str(include).encode() + version.encode()
        + " ".join(CLANG_FLAGS).encode()
    ).hexdigest()[:16]
    out = cache_dir("helpers") / f"hvoh-{profile.name}-{key}"
    if out.exists():
        return out
    tmp = out.with_suffix(".tmp")
    proc = subprocess.run(
        [clang, f"--target={profile.clang_target}", *CLANG_FLAGS, "-I", str(include),
         "-include", "nolibc.h", "-o", str(tmp), str(HELPER_SOURCE)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        first_error = next(
            (ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip()
        )
        raise HarnessError(f"building the guest helper for {profile.name} failed: {first_error}")
    tmp.replace(out)
    return out
