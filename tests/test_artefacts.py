"""The Debian artefact cache: filled once for real, then used without apt or the network."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness import artefacts
from harness.cache import cache_root, sha256_file
from harness.errors import HarnessError, KernelUnavailable
from harness.profiles import ARCH_NAMES, get_profile


@pytest.fixture(scope="module")
def filled() -> dict[str, tuple[artefacts.DebianKernel, artefacts.Busybox]]:
    """The real cache, fetched from Debian sid if absent (what `hvo-harness fetch` does)."""
    for name in ARCH_NAMES:
        firmware = get_profile(name).firmware
        if firmware is not None:
            artefacts.ensure_firmware(firmware)  # fetch fills it too (loongarch64's UEFI)
    return {
        name: (
            artefacts.ensure_debian_kernel(get_profile(name)),
            artefacts.ensure_busybox(get_profile(name)),
        )
        for name in ARCH_NAMES
    }


@pytest.fixture()
def no_apt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A PATH without apt-get, apt-cache, dpkg-deb or tar: any call to them would fail."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("apt-get") is None and shutil.which("apt-cache") is None


@pytest.fixture()
def dead_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Real apt, but every download goes to a closed port on this machine.

    APT_CONFIG is read after apt.conf.d, so its proxy wins over the host's; and the
    once-per-process update memo is cleared so apt really tries.
    """
    config = tmp_path / "apt.conf"
    config.write_text('Acquire::http::Proxy "http://127.0.0.1:9";\nAcquire::Retries "0";\n')
    monkeypatch.setenv("APT_CONFIG", str(config))
    monkeypatch.setattr(artefacts._Apt, "_updated", set())


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_kernel_and_busybox_match_manifest(filled, arch: str) -> None:
    kernel, busybox = filled[arch]
    profile = get_profile(arch)
    assert kernel.arch == arch
    assert kernel.release.endswith(f"-{profile.debian_arch}")
    assert kernel.image.name == "vmlinuz"
    assert kernel.image.parent.name == kernel.release
    assert kernel.config.parent.name == kernel.release
    assert kernel.config.read_text().count("\nCONFIG_") > 1000
    assert sha256_file(kernel.image) == kernel.image_sha256
    names = [p.name for p in kernel.packages]
    assert names == [f"linux-binary-{kernel.release}", f"linux-base-{kernel.release}"]
    assert {p.arch for p in kernel.packages} == {profile.debian_arch}
    assert all(len(p.sha256) == 64 for p in kernel.packages)
    assert busybox.package.name == "busybox-static"
    assert busybox.package.arch == profile.debian_arch
    with open(busybox.path, "rb") as stream:
        head = stream.read(20)
    assert head[:4] == b"\x7fELF"
    assert int.from_bytes(head[18:20], "little") == profile.elf_machine

    manifest = json.loads((cache_root() / "debian" / f"manifest-{arch}.json").read_text())
    assert manifest["arch"] == arch and manifest["debian_arch"] == profile.debian_arch
    assert manifest["kernel"]["release"] == kernel.release
    assert manifest["kernel"]["image_sha256"] == kernel.image_sha256
    assert cache_root() / manifest["kernel"]["image"] == kernel.image
    assert [p["version"] for p in manifest["kernel"]["packages"]] == [p.version for p in kernel.packages]
    assert manifest["busybox"]["package"]["version"] == busybox.package.version
    assert manifest["busybox"]["sha256"] == sha256_file(busybox.path)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_second_call_needs_no_apt(filled, no_apt, arch: str) -> None:
    kernel, busybox = filled[arch]
    profile = get_profile(arch)
    assert artefacts.ensure_debian_kernel(profile) == kernel
    assert artefacts.ensure_busybox(profile) == busybox


@pytest.fixture(scope="module")
def source_tree() -> Path:
    return artefacts.ensure_linux_source()


def test_linux_source_is_unpacked_and_git_visible(source_tree: Path) -> None:
    assert (source_tree / "Makefile").is_file()
    assert (source_tree / "arch/loongarch/kernel/head.S").is_file()
    assert (source_tree / "mm/hugetlb_vmemmap.c").is_file()
    ignored = [line.strip() for line in (source_tree / ".gitignore").read_text().splitlines()]
    assert "/*" not in ignored and "!/debian/" not in ignored
    manifest = json.loads((cache_root() / "debian" / "manifest-source.json").read_text())
    assert cache_root() / manifest["source"]["tree"] == source_tree
    assert manifest["source"]["package"]["name"] == f"linux-source-{manifest['source']['series']}"
    # No half-extracted trees are left beside it.
    assert not list(source_tree.parent.glob(".tmp-*"))


def test_linux_source_offline(source_tree: Path, no_apt) -> None:
    assert artefacts.ensure_linux_source() == source_tree


def test_fetch_summary_offline(filled, no_apt) -> None:
    progress: list[str] = []
    profiles = [get_profile(name) for name in ARCH_NAMES]
    summary = artefacts.fetch(profiles, refresh=False, with_source=False, progress=progress.append)
    assert summary["cache"] == str(cache_root())
    assert set(summary["arches"]) == set(ARCH_NAMES)
    for name, (kernel, busybox) in filled.items():
        entry = summary["arches"][name]
        assert entry["release"] == kernel.release
        assert entry["image_sha256"] == kernel.image_sha256
        assert entry["busybox"] == str(busybox.path)
        assert len(entry["packages"]) == 3
        firmware = get_profile(name).firmware
        if firmware is not None:
            assert entry["firmware"] == str(artefacts.ensure_firmware(firmware).path)
    assert "source" not in summary
    assert progress == []  # nothing was fetched


def test_refresh_without_network_keeps_cache(filled, dead_network) -> None:
    kernel, _ = filled["riscv64"]
    progress: list[str] = []
    again = artefacts.ensure_debian_kernel(get_profile("riscv64"), refresh=True, progress=progress.append)
    assert again == kernel
    assert any("keeping the cached copy" in line for line in progress), progress


def test_no_cache_and_no_network_is_one_line_error(
    dead_network, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HVO_HARNESS_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(HarnessError) as caught:
        artefacts.ensure_busybox(get_profile("loongarch64"))
    message = str(caught.value)
    assert message.startswith("could not fetch busybox-static for loongarch64")
    assert "127.0.0.1" in message  # apt's own reason is kept
    assert "\n" not in message


def test_no_apt_and_no_cache_says_so(no_apt, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HVO_HARNESS_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(HarnessError, match=r"apt-(cache|get) not found"):
        artefacts.ensure_debian_kernel(get_profile("x86_64"))


def test_corrupt_cached_image_is_not_trusted(filled, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A manifest whose image no longer matches its sha256 is a cache miss, not a result."""
    kernel, _ = filled["x86_64"]
    copy = tmp_path / "cache"
    shutil.copytree(cache_root() / "debian", copy / "debian", symlinks=True)
    image = copy / kernel.image.relative_to(cache_root())
    monkeypatch.setenv("HVO_HARNESS_CACHE", str(copy))
    profile = get_profile("x86_64")
    assert artefacts._kernel_from_manifest(profile) is not None
    image.write_bytes(image.read_bytes()[:4096])
    assert artefacts._kernel_from_manifest(profile) is None


@pytest.fixture(scope="module")
def trixie_x86() -> artefacts.DebianKernel:
    """trixie's newest amd64 kernel: image and config in one linux-image-* package."""
    spec = artefacts.parse_kernel_spec("debian:trixie")
    return artefacts.ensure_debian_kernel(get_profile("x86_64"), spec=spec)


def test_trixie_kernel_is_resolved_in_trixie(trixie_x86: artefacts.DebianKernel) -> None:
    kernel = trixie_x86
    assert kernel.suite == "trixie" and kernel.label == "trixie"
    assert kernel.version.startswith("6.12.") and kernel.release.startswith("6.12.")
    assert [p.name for p in kernel.packages] == [f"linux-image-{kernel.release}"]
    assert kernel.image.name == f"vmlinuz-{kernel.release}"
    assert kernel.config.read_text().count("\nCONFIG_") > 1000
    manifest = json.loads((cache_root() / "debian" / "manifest-x86_64-trixie.json").read_text())
    assert manifest["kernel"]["suite"] == "trixie" and manifest["kernel"]["version"] == kernel.version


def test_other_suites_need_no_apt_the_second_time(trixie_x86: artefacts.DebianKernel, no_apt) -> None:
    spec = artefacts.parse_kernel_spec("debian:trixie")
    assert artefacts.ensure_debian_kernel(get_profile("x86_64"), spec=spec) == trixie_x86


def test_a_suite_without_the_arch_is_recorded_not_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = artefacts.parse_kernel_spec("debian:experimental")
    with pytest.raises(KernelUnavailable) as first:
        artefacts.ensure_debian_kernel(get_profile("riscv64"), spec=spec)
    assert first.value.reason.startswith("Debian experimental has no linux kernel for riscv64")
    empty = Path(cache_root() / "no-bin-here")
    monkeypatch.setenv("PATH", str(empty))  # no apt: the manifest's record answers
    with pytest.raises(KernelUnavailable) as again:
        artefacts.ensure_debian_kernel(get_profile("riscv64"), spec=spec)
    assert again.value.reason == first.value.reason


def test_sid_manifest_from_before_suites_is_read_as_sid(filled, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    """manifest-<arch>.json written before suites were a choice has no suite or version."""
    kernel, _ = filled["x86_64"]
    copy = tmp_path / "cache"
    shutil.copytree(cache_root() / "debian", copy / "debian", symlinks=True)
    manifest = copy / "debian" / "manifest-x86_64.json"
    data = json.loads(manifest.read_text())
    for key in ("suite", "version", "spec"):
        data["kernel"].pop(key, None)
    manifest.write_text(json.dumps(data))
    monkeypatch.setenv("HVO_HARNESS_CACHE", str(copy))
    old = artefacts._kernel_from_manifest(get_profile("x86_64"))
    assert isinstance(old, artefacts.DebianKernel)
    assert (old.suite, old.version, old.label) == ("sid", kernel.packages[0].version, "sid")
