"""Debian sid guest artefacts: prebuilt kernels, static busybox and the kernel source.

Why Debian sid: it carries a current kernel, built by the same people with the same config,
for all three arches this harness boots (amd64, riscv64, loong64), plus a static busybox
for each. That gives every arch a known-good kernel and userland without a cross toolchain.

Why a private apt state: the host is Debian bookworm and must stay so. apt is pointed at its
own sources list, lists, cache and (empty) dpkg status under cache_dir('apt'), so nothing of
the host's apt configuration of sources, pins or installed packages leaks in or is changed.
Packages are only downloaded (`apt-get download`) and unpacked (`dpkg-deb -x`) into the
cache, never installed.

Why manifests: a second run must work without the network. What was resolved (package
names, versions, sha256 of the .deb files and of the kernel image) is written to
cache_dir('debian')/manifest-<arch>.json and manifest-source.json; ensure_* with
refresh=False trusts the manifest once the files it names are present and match, and does not
run apt at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from debian.deb822 import Deb822
from debian.debian_support import Version

from harness.cache import cache_dir, cache_root, sha256_file
from harness.errors import HarnessError
from harness.profiles import ArchProfile

SUITE = "sid"
MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SOURCES_LINE = f"deb [signed-by={KEYRING}] {MIRROR} {SUITE} main"
# The Debian architectures of the three profiles. 'all' packages (linux-source) come with
# every binary-<arch> index, so apt needs no 'all' entry here.
APT_ARCHITECTURES = ("amd64", "riscv64", "loong64")
MANIFEST_VERSION = 1
_ELF_MAGIC = b"\x7fELF"

Progress = Callable[[str], None]

_log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DebianPackage:
    """One downloaded .deb: what apt resolved and the sha256 of the file it fetched."""

    name: str
    version: str
    arch: str
    sha256: str


@dataclass(frozen=True)
class DebianKernel:
    """A Debian sid kernel for one arch profile, unpacked in the cache."""

    arch: str  # the profile name, e.g. 'x86_64'
    release: str  # the usr/lib/modules/<release> directory name, e.g. '7.2.13+deb14-amd64'
    image: Path  # the vmlinuz as shipped (images.prepare() makes it bootable)
    config: Path  # the kernel's .config, from linux-base-<release>
    image_sha256: str
    packages: tuple[DebianPackage, ...]


@dataclass(frozen=True)
class Busybox:
    """A static busybox binary for one arch, unpacked from busybox-static:<arch>."""

    path: Path
    package: DebianPackage


# --------------------------------------------------------------------------------------------
# The private apt state


class _Apt:
    """apt-get/apt-cache with a private state under cache_dir('apt').

    One instance per operation; update() runs `apt-get update` at most once per process for a
    given state, so fetching three arches costs one update.
    """

    _updated: set[Path] = set()  # noqa: RUF012 -- shared on purpose: once per process

    def __init__(self, progress: Progress) -> None:
        self.root = cache_dir("apt")
        self.progress = progress
        _write_if_changed(self.root / "sources.list", SOURCES_LINE + "\n")
        # Empty parts directories, an empty dpkg status and no pins: resolution must not
        # depend on the host's sources, installed packages or preferences.
        for sub in ("lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for empty in ("status", "preferences"):
            path = self.root / empty
            if not path.exists():
                path.write_text("")
        _write_if_changed(self.root / "apt.conf", self._config())

    def _config(self) -> str:
        """The private settings, read with -c after the host's own apt configuration."""
        root = self.root
        settings = {
            "Dir::Etc::SourceList": root / "sources.list",
            "Dir::Etc::SourceParts": root / "sources.list.d",
            "Dir::Etc::Preferences": root / "preferences",
            "Dir::Etc::PreferencesParts": root / "preferences.d",
            "Dir::State::Lists": root / "lists",
            "Dir::State::status": root / "status",
            "Dir::Cache": root / "cache",
            # Some hosts (Debian's docker images) turn the binary cache off; in the private
            # state it saves re-parsing three arches' lists on every apt-cache call.
            "Dir::Cache::pkgcache": "pkgcache.bin",
            # Name resolution must not depend on the host's native arch.
            "APT::Architecture": APT_ARCHITECTURES[0],
            "Acquire::Languages": "none",
            "Acquire::http::Timeout": "60",
        }
        if os.geteuid() == 0:
            # The state lives under root's home, which the _apt sandbox user cannot write.
            settings["APT::Sandbox::User"] = "root"
        lines = ["// Written by harness/artefacts.py: apt state for Debian sid guest artefacts."]
        lines += [f'{key} "{value}";' for key, value in settings.items()]
        # A list: drop whatever the host configured, then name ours ('all' packages come
        # with every binary-<arch> index).
        lines.append("#clear APT::Architectures;")
        lines += [f'APT::Architectures:: "{arch}";' for arch in APT_ARCHITECTURES]
        return "\n".join(lines) + "\n"

    def options(self) -> list[str]:
        return ["-c", str(self.root / "apt.conf")]

    def run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        """Run apt-get/apt-cache non-interactively; a failure is a one-line HarnessError."""
        if shutil.which(tool) is None:
            raise HarnessError(
                f"{tool} not found: fetching Debian sid artefacts needs Debian's apt "
                "(run on a Debian host, or copy a filled cache into $HVO_HARNESS_CACHE)"
            )
        argv = [tool, "-q", *self.options(), *args]
        if tool == "apt-get":
            argv.insert(2, "-y")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C.UTF-8")
        with _locked(self.root / ".harness.lock"):
            done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise _AptError(f"`{tool} {' '.join(args)}` failed: {_apt_reason(done)}")
        return done.stdout

    def update(self) -> None:
        if self.root in _Apt._updated:
            return
        self.progress(f"apt: updating the Debian {SUITE} package lists ({MIRROR})")
        # --error-on=any: without it a failed download of the index is only a warning.
        self.run("apt-get", "--error-on=any", "update")
        _Apt._updated.add(self.root)

    def pkgnames(self, prefix: str) -> list[str]:
        return self.run("apt-cache", "pkgnames", prefix).split()

    def show(self, name: str, arch: str) -> Deb822 | None:
        """The candidate version's record of NAME:ARCH, or None if sid has none."""
        try:
            text = self.run("apt-cache", "show", "--no-all-versions", f"{name}:{arch}")
        except _AptError as error:
            if "No packages found" in str(error) or "Unable to locate" in str(error):
                return None
            raise
        for record in Deb822.iter_paragraphs(text.splitlines()):
            if record.get("Package") == name and record.get("Version"):
                return record
        return None

    def download(self, name: str, arch: str, version: str, into: Path) -> Path:
        """`apt-get download NAME:ARCH=VERSION` into an empty directory; returns the .deb."""
        self.progress(f"apt: downloading {name}:{arch} {version}")
        self.run("apt-get", "download", f"{name}:{arch}={version}", cwd=into)
        debs = sorted(into.glob("*.deb"))
        if len(debs) != 1:
            raise HarnessError(
                f"apt-get download {name}:{arch} left {len(debs)} .deb files in {into}: "
                "remove that directory and run `hvo-harness fetch` again"
            )
        return debs[0]


class _AptError(HarnessError):
    """An apt command failed (usually the network); callers may fall back to the cache."""


def _apt_reason(done: subprocess.CompletedProcess[str]) -> str:
    """The most telling line of a failed apt run: its first 'E:' line, else the last line."""
    lines = [line.strip() for line in (done.stderr + "\n" + done.stdout).splitlines()]
    lines = [line for line in lines if line]
    errors = [line for line in lines if line.startswith("E:")]
    reason = errors[0] if errors else (lines[-1] if lines else f"exit status {done.returncode}")
    return reason[:300]


# --------------------------------------------------------------------------------------------
# Small helpers


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock, so parallel harness runs (pytest-xdist) don't fetch twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temp file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(text)
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, path)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        _write_atomic(path, text)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rel(path: Path) -> str:
    """Manifest paths are relative to the cache root, so a cache can be moved whole."""
    return str(path.relative_to(cache_root()))


def _abs(rel: str) -> Path:
    return cache_root() / rel


def _dir_name(name: str, version: str, arch: str) -> str:
    return f"{name}_{version.replace(':', '%3a')}_{arch}"


def _say(progress: Progress | None) -> Progress:
    return progress if progress is not None else _log.info


def _warn(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)
    else:
        _log.warning(message)


def _manifest_path(profile: ArchProfile) -> Path:
    return cache_dir("debian") / f"manifest-{profile.name}.json"


def _source_manifest_path() -> Path:
    return cache_dir("debian") / "manifest-source.json"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("manifest_version") != MANIFEST_VERSION:
        return {}
    return data


def _update_manifest(path: Path, key: str, entry: dict[str, Any], **header: str) -> None:
    data = _read_json(path) or {"manifest_version": MANIFEST_VERSION, "suite": SUITE}
    data.update(header)
    data[key] = entry
    _write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _package_from(entry: dict[str, Any]) -> DebianPackage:
    return DebianPackage(entry["name"], entry["version"], entry["arch"], entry["sha256"])


def _elf_machine(path: Path) -> int | None:
    with open(path, "rb") as stream:
        head = stream.read(20)
    if len(head) < 20 or head[:4] != _ELF_MAGIC:
        return None
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


def _unpacked_package(apt: _Apt, name: str, arch: str, record: Deb822) -> tuple[DebianPackage, Path]:
    """Download NAME:ARCH (the version in RECORD) and unpack it into the cache, once.

    The tree is unpacked next to its final place and renamed into it, so an interrupted
    run never leaves a tree that looks complete.
    """
    version = record["Version"]
    final = cache_dir("debian", "pkg") / _dir_name(name, version, arch)
    stamp = final / ".hvo-package.json"
    if stamp.exists():
        with contextlib.suppress(KeyError, ValueError, OSError):
            return _package_from(json.loads(stamp.read_text())), final
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".tmp-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "deb").mkdir()
        deb = apt.download(name, arch, version, tmp / "deb")
        digest = sha256_file(deb)
        expected = record.get("SHA256")
        if expected and expected != digest:
            raise HarnessError(
                f"{deb.name} has sha256 {digest}, but the sid index says {expected}: "
                "run `hvo-harness fetch` again (the mirror may have been mid-update)"
            )
        tree = tmp / "tree"
        _run_dpkg_deb(deb, tree)
        package = DebianPackage(name, version, arch, digest)
        (tree / ".hvo-package.json").write_text(json.dumps(asdict(package), indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.rename(tree, final)
    return package, final


def _run_dpkg_deb(deb: Path, into: Path) -> None:
    done = subprocess.run(
        ["dpkg-deb", "-x", str(deb), str(into)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise HarnessError(f"dpkg-deb -x {deb.name} failed: {reason}: install dpkg and retry")


# --------------------------------------------------------------------------------------------
# The kernel


def _resolve_kernel_abi(apt: _Apt, profile: ArchProfile) -> tuple[str, Deb822, Deb822]:
    """The newest linux-binary-<abi>-<flavour> for the arch, with its linux-base.

    The flavour is the plain generic one, named like the Debian arch (amd64, riscv64,
    loong64); cloud-, rt- and unsigned- variants don't match the pattern.
    """
    flavour = profile.debian_arch
    pattern = re.compile(rf"^linux-binary-([0-9][^-]*)-{re.escape(flavour)}$")
    abis = {m.group(1) for name in apt.pkgnames("linux-binary-") if (m := pattern.match(name))}
    for abi in sorted(abis, key=Version, reverse=True):
        binary = apt.show(f"linux-binary-{abi}-{flavour}", profile.debian_arch)
        base = apt.show(f"linux-base-{abi}-{flavour}", profile.debian_arch)
        if binary is not None and base is not None:
            return f"{abi}-{flavour}", binary, base
    raise HarnessError(
        f"Debian {SUITE} has no linux-binary-*-{flavour} for {profile.debian_arch}: "
        "check `apt-cache pkgnames linux-binary-` with the harness's apt state, or give --kernel"
    )


def _kernel_from_manifest(profile: ArchProfile) -> DebianKernel | None:
    """The cached kernel if the manifest names one whose files are present and intact."""
    entry = _read_json(_manifest_path(profile)).get("kernel")
    if not isinstance(entry, dict):
        return None
    try:
        image, config = _abs(entry["image"]), _abs(entry["config"])
        if not image.is_file() or not config.is_file():
            return None
        if sha256_file(image) != entry["image_sha256"]:
            return None
        return DebianKernel(
            arch=profile.name,
            release=entry["release"],
            image=image,
            config=config,
            image_sha256=entry["image_sha256"],
            packages=tuple(_package_from(p) for p in entry["packages"]),
        )
    except (KeyError, TypeError):
        return None


def _fetch_kernel(apt: _Apt, profile: ArchProfile) -> DebianKernel:
    apt.update()
    release, binary_record, base_record = _resolve_kernel_abi(apt, profile)
    apt.progress(
        f"{profile.name}: newest sid kernel is {binary_record['Package']} {binary_record['Version']}"
    )
    binary, binary_dir = _unpacked_package(apt, binary_record["Package"], profile.debian_arch, binary_record)
    base, base_dir = _unpacked_package(apt, base_record["Package"], profile.debian_arch, base_record)
    image = binary_dir / "usr/lib/modules" / release / "vmlinuz"
    config = base_dir / "usr/lib/modules" / release / "config"
    for path, package in ((image, binary), (config, base)):
        if not path.is_file():
            raise HarnessError(
                f"{package.name} {package.version} has no usr/lib/modules/{release}/{path.name}: "
                "Debian changed its kernel packaging; update harness/artefacts.py"
            )
    kernel = DebianKernel(
        arch=profile.name,
        release=release,
        image=image,
        config=config,
        image_sha256=sha256_file(image),
        packages=(binary, base),
    )
    entry = {
        "release": release,
        "image": _rel(image),
        "config": _rel(config),
        "image_sha256": kernel.image_sha256,
        "packages": [asdict(p) for p in kernel.packages],
        "resolved": _now(),
    }
    _update_manifest(
        _manifest_path(profile), "kernel", entry, arch=profile.name, debian_arch=profile.debian_arch
    )
    return kernel


def ensure_debian_kernel(
    profile: ArchProfile, refresh: bool = False, *, progress: Progress | None = None
) -> DebianKernel:
    """The newest Debian sid kernel for PROFILE, from the cache when it has one.

    refresh=False: a cached kernel is returned without running apt (works offline); apt runs
    only when the cache has none. refresh=True: update the lists and re-resolve; if that fails
    but a cache exists, the cache is kept and PROGRESS is told why.
    """
    return _ensure(
        what=f"the Debian {SUITE} kernel for {profile.name}",
        lock=cache_dir("debian") / f".lock-{profile.name}",
        cached=lambda: _kernel_from_manifest(profile),
        fetch=lambda apt: _fetch_kernel(apt, profile),
        refresh=refresh,
        progress=progress,
    )


# --------------------------------------------------------------------------------------------
# busybox


def _busybox_from_manifest(profile: ArchProfile) -> Busybox | None:
    entry = _read_json(_manifest_path(profile)).get("busybox")
    if not isinstance(entry, dict):
        return None
    try:
        path = _abs(entry["path"])
        if not path.is_file() or sha256_file(path) != entry["sha256"]:
            return None
        return Busybox(path=path, package=_package_from(entry["package"]))
    except (KeyError, TypeError):
        return None


def _fetch_busybox(apt: _Apt, profile: ArchProfile) -> Busybox:
    apt.update()
    record = apt.show("busybox-static", profile.debian_arch)
    if record is None:
        raise HarnessError(
            f"Debian {SUITE} has no busybox-static for {profile.debian_arch}: "
            "check the harness's apt state with `apt-cache policy busybox-static:"
            f"{profile.debian_arch}`"
        )
    package, tree = _unpacked_package(apt, "busybox-static", profile.debian_arch, record)
    path = tree / "usr/bin/busybox"
    if not path.is_file():
        raise HarnessError(
            f"busybox-static {package.version} has no usr/bin/busybox: "
            "Debian changed its packaging; update harness/artefacts.py"
        )
    machine = _elf_machine(path)
    if machine != profile.elf_machine:
        raise HarnessError(
            f"{path} is ELF machine {machine}, not {profile.elf_machine} ({profile.name}): "
            "remove it from the cache and run `hvo-harness fetch`"
        )
    entry = {
        "path": _rel(path),
        "sha256": sha256_file(path),
        "package": asdict(package),
        "resolved": _now(),
    }
    _update_manifest(
        _manifest_path(profile),
        "busybox",
        entry,
        arch=profile.name,
        debian_arch=profile.debian_arch,
    )
    return Busybox(path=path, package=package)


def ensure_busybox(
    profile: ArchProfile, refresh: bool = False, *, progress: Progress | None = None
) -> Busybox:
    """A static busybox for PROFILE's arch (the guest's userland), cached like the kernel."""
    return _ensure(
        what=f"busybox-static for {profile.name}",
        lock=cache_dir("debian") / f".lock-{profile.name}",
        cached=lambda: _busybox_from_manifest(profile),
        fetch=lambda apt: _fetch_busybox(apt, profile),
        refresh=refresh,
        progress=progress,
    )


# --------------------------------------------------------------------------------------------
# linux-source


def _source_from_manifest() -> Path | None:
    entry = _read_json(_source_manifest_path()).get("source")
    if not isinstance(entry, dict):
        return None
    try:
        tree = _abs(entry["tree"])
    except (KeyError, TypeError):
        return None
    return tree if (tree / "Makefile").is_file() else None


def _fix_gitignore(tree: Path) -> None:
    """Drop Debian's '/*' and '!/debian/' lines: they make git ignore the whole top level."""
    path = tree / ".gitignore"
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() not in ("/*", "!/debian/")]
    if kept != lines:
        path.write_text("".join(kept))


def _fetch_source(apt: _Apt) -> Path:
    apt.update()
    pattern = re.compile(r"^linux-source-([0-9]+\.[0-9]+)$")
    series = sorted(
        {m.group(1) for name in apt.pkgnames("linux-source-") if (m := pattern.match(name))},
        key=Version,
        reverse=True,
    )
    record = None
    for candidate in series:
        record = apt.show(f"linux-source-{candidate}", "all") or apt.show(
            f"linux-source-{candidate}", APT_ARCHITECTURES[0]
        )
        if record is not None:
            break
    if record is None:
        raise HarnessError(
            f"Debian {SUITE} has no linux-source-X.Y: check `apt-cache pkgnames linux-source-` "
            "with the harness's apt state"
        )
    name, version = record["Package"], record["Version"]
    entry = _read_json(_source_manifest_path()).get("source")
    current = _source_from_manifest()
    if (
        current is not None
        and isinstance(entry, dict)
        and entry.get("package", {}).get("version") == version
        and entry["package"].get("name") == name
    ):
        apt.progress(f"source: {name} {version} is already unpacked in {current}")
        return current

    src = cache_dir("src")
    final = src / _dir_name(name, version, "all")
    with tempfile.TemporaryDirectory(dir=src, prefix=".tmp-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "deb").mkdir()
        deb = apt.download(name, record.get("Architecture", "all"), version, tmp / "deb")
        digest = sha256_file(deb)
        if record.get("SHA256") and record["SHA256"] != digest:
            raise HarnessError(
                f"{deb.name} has sha256 {digest}, but the sid index says {record['SHA256']}: "
                "run `hvo-harness fetch` again"
            )
        _run_dpkg_deb(deb, tmp / "pkg")
        deb.unlink()
        tarballs = sorted((tmp / "pkg/usr/src").glob(f"{name}.tar.*"))
        if len(tarballs) != 1:
            raise HarnessError(
                f"{name} {version} has no usr/src/{name}.tar.*: "
                "Debian changed its packaging; update harness/artefacts.py"
            )
        apt.progress(f"source: unpacking {tarballs[0].name} (about a minute)")
        (tmp / "tree").mkdir()
        done = subprocess.run(
            ["tar", "-x", "-f", str(tarballs[0]), "-C", str(tmp / "tree")],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["?"])[-1]
            raise HarnessError(f"unpacking {tarballs[0].name} failed: {reason}: check free space")
        tops = [p for p in (tmp / "tree").iterdir() if p.is_dir()]
        if len(tops) != 1 or not (tops[0] / "Makefile").is_file():
            raise HarnessError(
                f"{tarballs[0].name} does not hold one kernel tree: update harness/artefacts.py"
            )
        _fix_gitignore(tops[0])
        if final.exists():
            shutil.rmtree(final)
        os.rename(tops[0], final)
    entry = {
        "package": asdict(DebianPackage(name, version, record.get("Architecture", "all"), digest)),
        "series": name.removeprefix("linux-source-"),
        "tree": _rel(final),
        "resolved": _now(),
    }
    _update_manifest(_source_manifest_path(), "source", entry)
    # An older tree is no longer named by the manifest: reclaim its space.
    if current is not None and current != final and current.parent == src:
        shutil.rmtree(current, ignore_errors=True)
    return final


def ensure_linux_source(refresh: bool = False, *, progress: Progress | None = None) -> Path:
    """The newest linux-source-X.Y of sid, unpacked once; returns the tree's path.

    The tree is where the harness reads kernel facts from (e.g. image headers) and builds
    kernels. Debian's .gitignore lines that hide the top level from git are removed.
    """
    return _ensure(
        what=f"the Debian {SUITE} linux-source",
        lock=cache_dir("src") / ".lock",
        cached=_source_from_manifest,
        fetch=_fetch_source,
        refresh=refresh,
        progress=progress,
    )


# --------------------------------------------------------------------------------------------
# The common cache-or-network policy


def _ensure(
    *,
    what: str,
    lock: Path,
    cached: Callable[[], T | None],
    fetch: Callable[[_Apt], T],
    refresh: bool,
    progress: Progress | None,
) -> T:
    if not refresh:
        hit = cached()
        if hit is not None:
            return hit
    with _locked(lock):
        hit = cached()
        if hit is not None and not refresh:
            return hit  # another process fetched it while we waited
        apt = _Apt(_say(progress))
        try:
            return fetch(apt)
        except _AptError as error:
            if hit is None:
                raise HarnessError(
                    f"could not fetch {what}: {error}: check network access to {MIRROR} "
                    "(or set http_proxy) and retry"
                ) from None
            _warn(progress, f"{what}: refresh failed ({error}); keeping the cached copy")
            return hit


# --------------------------------------------------------------------------------------------
# `hvo-harness fetch`


def fetch(
    profiles: Sequence[ArchProfile],
    refresh: bool = True,
    with_source: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Fill the cache for PROFILES (kernel + busybox each, and the source); return a summary.

    The summary is JSON-ready: the cache root, per arch the kernel release, paths, sha256 and
    package versions, and the source tree, plus how long it took.
    """
    started = time.monotonic()
    summary: dict[str, Any] = {"cache": str(cache_root()), "suite": SUITE, "arches": {}}
    for profile in profiles:
        kernel = ensure_debian_kernel(profile, refresh, progress=progress)
        busybox = ensure_busybox(profile, refresh, progress=progress)
        summary["arches"][profile.name] = {
            "release": kernel.release,
            "image": str(kernel.image),
            "image_sha256": kernel.image_sha256,
            "config": str(kernel.config),
            "busybox": str(busybox.path),
            "packages": [asdict(p) for p in (*kernel.packages, busybox.package)],
            "manifest": str(_manifest_path(profile)),
        }
    if with_source:
        tree = ensure_linux_source(refresh, progress=progress)
        source = _read_json(_source_manifest_path()).get("source", {})
        summary["source"] = {
            "tree": str(tree),
            "package": source.get("package"),
            "manifest": str(_source_manifest_path()),
        }
    summary["seconds"] = round(time.monotonic() - started, 1)
    return summary
