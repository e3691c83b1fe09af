"""The guest's initramfs: static busybox, the guest scripts, the helper and an init.

Written as a newc cpio with libarchive, uncompressed (a TCG guest unpacks it faster than it
would decompress it), cached by the content of everything that goes in."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import libarchive

from harness.cache import cache_dir

GUEST_SCRIPTS = Path(__file__).resolve().parent.parent / "guest_scripts"
_DIRECTORIES = ("bin", "dev", "proc", "sys", "tmp", "hvo")


def guest_script_files() -> dict[str, Path]:
    """Archive path -> host path of the guest scripts that go into every initramfs."""
    return {"init": GUEST_SCRIPTS / "init", "hvo/scenarios.sh": GUEST_SCRIPTS / "scenarios.sh"}


def build(busybox: Path, helper: Path, extra: dict[str, Path] | None = None) -> Path:
    """The cpio for these binaries and the current guest scripts; built once per content."""
    files = {**guest_script_files(), "bin/busybox": busybox, "bin/hvoh": helper, **(extra or {})}
    key = hashlib.sha256()
    for archive_path in sorted(files):
        key.update(archive_path.encode() + b"\0" + files[archive_path].read_bytes() + b"\0")
    out = cache_dir("initramfs") / f"{key.hexdigest()[:24]}.cpio"
    if out.exists():
        return out
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    # Fixed times and owners: the same inputs give the same bytes.
    common = {"uid": 0, "gid": 0, "mtime": 0}
    with libarchive.file_writer(str(tmp), "cpio_newc") as archive:
        for directory in _DIRECTORIES:
            archive.add_file_from_memory(
                directory, 0, b"", filetype=stat.S_IFDIR, permission=0o755, **common
            )
        # The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
        archive.add_file_from_memory(
            "dev/console", 0, b"", filetype=stat.S_IFCHR, permission=0o600, rdev=(5, 1),
            **common,
        )
        for archive_path in sorted(files):
            data = files[archive_path].read_bytes()
            archive.add_file_from_memory(
                archive_path, len(data), data, permission=0o755, **common
            )
    tmp.replace(out)
    return out
