"""artefacts.ensure_package: any Debian package, unpacked once into the harness's package cache
(the SSH target's sshd guest is built from such packages, tests/sshd_guest.py)."""

from __future__ import annotations

import pytest

from harness import artefacts
from harness.errors import HarnessError


def test_a_package_is_unpacked_once_with_its_index_record() -> None:
    first = artefacts.ensure_package("busybox-static", "amd64")
    assert first.package.name == "busybox-static" and first.package.arch == "amd64"
    assert first.record["Package"] == "busybox-static"
    assert first.record["Version"] == first.package.version
    assert first.record["SHA256"] == first.package.sha256
    assert (first.path / "usr/bin/busybox").is_file()
    # The same version again: the same tree, not a second download.
    again = artefacts.ensure_package("busybox-static", "amd64", first.package.version)
    assert again.path == first.path and again.package == first.package


def test_a_package_debian_does_not_have_is_one_error_naming_it() -> None:
    with pytest.raises(HarnessError, match=r"no busybox-static:amd64 9999:0-1"):
        artefacts.ensure_package("busybox-static", "amd64", "9999:0-1")
    with pytest.raises(HarnessError, match=r"Debian sid has no hvo-no-such-package:amd64"):
        artefacts.ensure_package("hvo-no-such-package", "amd64")
