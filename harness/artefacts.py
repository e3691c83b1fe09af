"""Debian guest artefacts: prebuilt kernels (sid's, or another suite's), static busybox and the
kernel source.

Why Debian sid: it carries a current kernel, built by the same people with the same config,
for all three arches this harness boots (amd64, riscv64, loong64), plus a static busybox
for each. That gives every arch a known-good kernel and userland without a cross toolchain.
Other kernels can be asked for by suite (trixie, experimental: a release matrix) or by package
and version (DebianKernelSpec); busybox and linux-source always come from sid.

Why a private apt state: the host is Debian bookworm and must stay so. apt is pointed at its
own sources list, lists, cache and (empty) dpkg status under cache_dir('apt'), so nothing of
the host's apt configuration of sources, pins or installed packages leaks in or is changed.
Packages are only downloaded (`apt-get download`) and unpacked (`dpkg-deb -x`) into the
cache, never installed.

Why manifests: a second run must work without the network. What was resolved (package
names, versions, sha256 of the .deb files and of the kernel image) is written to
cache_dir('debian')/manifest-<arch>.json (sid's kernel and busybox), manifest-<arch>-<suite>.json
or manifest-<arch>-pkg-<package>_<version>.json (another kernel, or the record that the suite has
none for the arch) and manifest-source.json; ensure_* with
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
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from harness.cache import cache_dir, cache_root, sha256_file
from harness.errors import DebugInfoUnavailable, HarnessError, KernelUnavailable
from harness.profiles import ArchProfile, Firmware

if TYPE_CHECKING:
    # python-debian costs about 20 ms to import (chardet and more); only the apt steps (a
    # download, a version to choose) need it, never a run on a warm cache.
    from debian.deb822 import Deb822
    from debian.debian_support import Version


def _version(text: str) -> Version:
    """A Debian version, to compare (python-debian imported only here, on the apt steps)."""
    from debian.debian_support import Version

    return Version(text)

# The default suite: busybox, linux-source and the default kernel come from it.
SUITE = "sid"
# Every suite the private apt state knows, a sources line each: one `apt-get update` fetches all
# their lists, and kernels are resolved per suite from them (_Apt.versions).
SUITES = ("sid", "trixie", "experimental")
MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SOURCES_LINES = tuple(f"deb [signed-by={KEYRING}] {MIRROR} {suite} main" for suite in SUITES)
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


# What a Debian package name and version may hold (Debian policy 5.6.1, 5.6.12).
_PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_PACKAGE_VERSION = re.compile(r"^[0-9][A-Za-z0-9.+~:-]*$")
_KERNEL_PACKAGE_PREFIXES = ("linux-image-", "linux-binary-")
_SPEC_HELP = "give debian:sid, debian:trixie, debian:experimental or debian:PACKAGE=VERSION"


@dataclass(frozen=True)
class DebianKernelSpec:
    """Which Debian kernel: a suite's newest (suite), or one package at one version."""

    suite: str | None = SUITE
    package: str | None = None
    version: str | None = None

    @property
    def text(self) -> str:
        """The --kernel item that names it: 'debian:trixie', 'debian:PACKAGE=VERSION'."""
        return f"debian:{self.suite}" if self.suite else f"debian:{self.package}={self.version}"

    @property
    def label(self) -> str:
        """A short name for tables and file names: the suite, or the package's version."""
        if self.suite:
            return self.suite
        assert self.version is not None
        return re.sub(r"[^A-Za-z0-9_.+-]", "_", self.version)

    def manifest_name(self, arch: str) -> str:
        if self.suite == SUITE:
            return f"manifest-{arch}.json"  # where sid's kernel always was: old caches read as is
        if self.suite:
            return f"manifest-{arch}-{self.suite}.json"
        assert self.package is not None and self.version is not None
        return f"manifest-{arch}-pkg-{self.package}_{self.version.replace(':', '%3a')}.json"


SID_KERNEL = DebianKernelSpec()


def parse_kernel_spec(item: str, option: str = "--kernel") -> DebianKernelSpec:
    """'debian' (= 'debian:sid'), 'debian:SUITE' or 'debian:PACKAGE=VERSION'; anything else is a
    one-line HarnessError naming the forms. Checks the text only: no apt, no network."""
    if item == "debian":
        return SID_KERNEL
    if not item.startswith("debian:"):
        raise HarnessError(f"{option} {item!r} is not a Debian kernel: {_SPEC_HELP}")
    rest = item.removeprefix("debian:")
    if "=" not in rest:
        if rest not in SUITES:
            raise HarnessError(f"{option} {item!r}: no Debian suite {rest!r} here: {_SPEC_HELP}")
        return DebianKernelSpec(rest)
    package, _, version = rest.partition("=")
    example = "e.g. debian:linux-image-6.12.107+deb13-amd64=6.12.107-1"
    if not package or not version:
        raise HarnessError(f"{option} {item!r}: give both a package and a version, {example} "
                           "(`apt-cache madison PACKAGE` lists the versions)")
    if not _PACKAGE_NAME.match(package) or not _PACKAGE_VERSION.match(version):
        raise HarnessError(f"{option} {item!r}: not a Debian package name and version: {example}")
    if not package.startswith(_KERNEL_PACKAGE_PREFIXES):
        raise HarnessError(f"{option} {item!r}: {package} is not a kernel package: give a "
                           f"linux-image-* or linux-binary-* package, {example}")
    return DebianKernelSpec(None, package, version)


def check_spec_arch(spec: DebianKernelSpec, profile: ArchProfile, others: Sequence[ArchProfile],
                    option: str = "--kernel") -> None:
    """A PACKAGE=VERSION spec names one Debian arch's package ('...-amd64'): booting it on
    another arch is a one-line error before any download. OTHERS: every arch profile."""
    if spec.package is None:
        return
    for other in others:
        if other.debian_arch != profile.debian_arch and spec.package.endswith(f"-{other.debian_arch}"):
            raise HarnessError(
                f"{option} {spec.text}: {spec.package} is for {other.debian_arch}, not "
                f"{profile.debian_arch}: give --arch {other.name}, or the {profile.debian_arch} "
                f"package for {profile.name}"
            )


@dataclass(frozen=True)
class DebianKernel:
    """A Debian kernel for one arch profile, unpacked in the cache."""

    arch: str  # the profile name, e.g. 'x86_64'
    release: str  # the usr/lib/modules/<release> directory name, e.g. '7.2.13+deb14-amd64'
    image: Path  # the vmlinuz as shipped (images.prepare() makes it bootable)
    config: Path  # the kernel's .config, from linux-base-<release> or the image package
    image_sha256: str
    packages: tuple[DebianPackage, ...]
    # The suite it was resolved in ('sid', 'trixie', 'experimental') and the image package's
    # version; label: DebianKernelSpec.label of what was asked for.
    suite: str = SUITE
    version: str = ""
    label: str = SUITE


@dataclass(frozen=True)
class _Absent:
    """The manifest's record that a suite has no kernel for an arch (a skip, not a miss)."""

    reason: str


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
        _write_if_changed(self.root / "sources.list", "".join(f"{line}\n" for line in SOURCES_LINES))
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
        lines = ["// Written by harness/artefacts.py: apt state for Debian guest artefacts."]
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
                f"{tool} not found: fetching Debian artefacts needs Debian's apt "
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
        self.progress(f"apt: updating the Debian {', '.join(SUITES)} package lists ({MIRROR})")
        # --error-on=any: without it a failed download of the index is only a warning.
        self.run("apt-get", "--error-on=any", "update")
        _Apt._updated.add(self.root)

    def pkgnames(self, prefix: str) -> list[str]:
        return self.run("apt-cache", "pkgnames", prefix).split()

    def versions(self, names: Sequence[str], arch: str) -> list[tuple[str, str, str]]:
        """(name, version, suite) for every version of NAMES:ARCH in the lists, one apt call.

        Why `apt-cache madison` and not apt's candidate: the candidate is one version across
        every suite (experimental is NotAutomatic, sid outranks trixie), and
        `-o APT::Default-Release=SUITE` only raises SUITE's priority, so where SUITE lacks a
        package the candidate silently comes from another suite. madison lists each version
        with the sources line (dist) it comes from: "newest in trixie" is exact, and "trixie
        has none" is knowable."""
        if not names:
            return []
        text = self.run("apt-cache", "madison", *(f"{name}:{arch}" for name in names))
        rows = []
        for line in text.splitlines():
            # 'linux-binary-7.3-loong64:loong64 | 7.3~rc7-1~exp1 |
            #  http://deb.debian.org/debian experimental/main loong64 Packages'
            parts = [part.strip() for part in line.split("|")]
            where = parts[2].split() if len(parts) == 3 else []
            if len(where) >= 2:
                rows.append((parts[0].split(":")[0], parts[1], where[1].split("/")[0]))
        return rows

    def record(self, name: str, arch: str, version: str) -> Deb822 | None:
        """The index record of NAME:ARCH at VERSION, or None if no list holds it."""
        try:
            text = self.run("apt-cache", "show", f"{name}:{arch}={version}")
        except _AptError as error:
            if "No packages found" in str(error) or "Unable to locate" in str(error) \
                    or "not found" in str(error):
                return None
            raise
        from debian.deb822 import Deb822

        for record in Deb822.iter_paragraphs(text.splitlines()):
            if record.get("Package") == name and record.get("Version") == version:
                return record
        return None

    def candidate(self, name: str, arch: str, suite: str) -> Deb822 | None:
        """The record of the newest version of NAME:ARCH in SUITE, or None if SUITE has none."""
        found = [version for got, version, where in self.versions([name], arch)
                 if got == name and where == suite]
        return self.record(name, arch, max(found, key=_version)) if found else None

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
                f"{deb.name} has sha256 {digest}, but the Debian index says {expected}: "
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


@dataclass(frozen=True)
class UnpackedPackage:
    """A Debian package unpacked in the cache (ensure_package)."""

    package: DebianPackage
    path: Path  # the unpacked tree (dpkg-deb -x)
    record: Deb822  # its index record: Depends, Pre-Depends, SHA256, ...


def ensure_package(name: str, arch: str, version: str | None = None, *, suite: str = SUITE,
                   progress: Progress | None = None) -> UnpackedPackage:
    """NAME:ARCH (a Debian arch, 'amd64'), SUITE's newest or exactly VERSION from any suite
    the private apt state has, downloaded, checked against the index's sha256 and unpacked
    into the package cache once. Resolved in the package lists at hand; only when they lack
    it are they updated (once per process) and it is resolved again, so a filled cache needs
    no network. Raises HarnessError naming the package when Debian has no such one."""
    apt = _Apt(_say(progress))

    def resolve() -> Deb822 | None:
        if version is None:
            return apt.candidate(name, arch, suite)
        return apt.record(name, arch, version)

    record = None if not any((apt.root / "lists").glob("*Packages*")) else resolve()
    if record is None:
        apt.update()
        record = resolve()
    if record is None:
        where = f"no {name}:{arch} {version}" if version else f"Debian {suite} has no {name}:{arch}"
        raise HarnessError(f"{where} ({', '.join(SUITES)} through the harness's apt state): check "
                           f"the name with `apt-cache -c {apt.root / 'apt.conf'} madison {name}:{arch}`")
    package, path = _unpacked_package(apt, name, arch, record)
    return UnpackedPackage(package, path, record)


# --------------------------------------------------------------------------------------------
# The kernel


def _suite_kernel_record(apt: _Apt, profile: ArchProfile, suite: str) -> Deb822 | _Absent:
    """The package of SUITE's newest kernel for the arch (linux-binary-<abi>-<flavour>, or
    linux-image-<abi>-<flavour> where there is none), or _Absent when SUITE has neither.

    The flavour is the plain generic one, named like the Debian arch (amd64, riscv64,
    loong64); cloud-, rt- and unsigned- variants don't match the pattern. Within an ABI
    linux-binary wins: in sid and experimental linux-image-<abi> is a meta package depending on
    it, while trixie has no linux-binary and its linux-image holds the image and config.
    """
    flavour = profile.debian_arch
    pattern = re.compile(rf"^linux-(binary|image)-([0-9][^-]*)-{re.escape(flavour)}$")
    names = sorted({name for prefix in _KERNEL_PACKAGE_PREFIXES for name in apt.pkgnames(prefix)
                    if pattern.match(name)})
    rows = [(name, version) for name, version, where in apt.versions(names, flavour) if where == suite]
    if not rows:
        return _Absent(f"Debian {suite} has no linux kernel for {flavour} "
                       f"(checked linux-binary-*-{flavour} and linux-image-*-{flavour})")

    def rank(row: tuple[str, str]) -> tuple[Version, bool, Version]:
        match = pattern.match(row[0])
        assert match is not None
        return _version(match.group(2)), match.group(1) == "binary", _version(row[1])

    name, version = max(rows, key=rank)
    record = apt.record(name, flavour, version)
    if record is None:
        raise HarnessError(f"apt-cache madison lists {name}:{flavour} {version} but apt-cache show "
                           "has no record of it: run `hvo-harness fetch` again")
    return record


def _package_kernel_record(apt: _Apt, profile: ArchProfile, spec: DebianKernelSpec) -> Deb822:
    """The record of PACKAGE:<arch> at VERSION, from whichever suite has it."""
    assert spec.package is not None and spec.version is not None
    arch = profile.debian_arch
    rows = [(version, where) for name, version, where in apt.versions([spec.package], arch)
            if name == spec.package]
    record = apt.record(spec.package, arch, spec.version) if any(v == spec.version for v, _ in rows) else None
    if record is None:
        known = ", ".join(sorted({v for v, _ in rows}, key=_version, reverse=True)) or "none"
        raise HarnessError(
            f"--kernel {spec.text}: Debian ({', '.join(SUITES)}) has no {spec.package}:{arch} "
            f"{spec.version} (versions there: {known}): list them with "
            f"`apt-cache -c {apt.root / 'apt.conf'} madison {spec.package}`"
        )
    return record


def _exact_dependency(record: Deb822, prefixes: tuple[str, ...]) -> tuple[str, str] | None:
    """The first Depends entry named PREFIX* with an exact version: (name, version)."""
    from debian.deb822 import PkgRelation

    for alternatives in PkgRelation.parse_relations(record.get("Depends", "")):
        for relation in alternatives:
            version = relation.get("version")
            if relation["name"].startswith(prefixes) and version and version[0] == "=":
                return relation["name"], version[1]
    return None


def _kernel_packages(apt: _Apt, record: Deb822, arch: str, depth: int = 0) -> list[Deb822]:
    """The package that holds the kernel image, first, and the one with its config if that is
    another (linux-binary-X: linux-base-X). A meta package (sid's and experimental's
    linux-image-X, linux-image-<flavour>) is followed through its exact-version Depends."""
    name = record["Package"]
    if name.startswith("linux-binary-"):
        base_name = "linux-base-" + name.removeprefix("linux-binary-")
        pinned = _exact_dependency(record, (base_name,))
        base = apt.record(base_name, arch, pinned[1] if pinned else record["Version"])
        if base is None:
            raise HarnessError(f"{name} {record['Version']} has no {base_name} of its version: "
                               "Debian changed its kernel packaging; update harness/artefacts.py")
        return [record, base]
    target = _exact_dependency(record, ("linux-binary-", "linux-image-"))
    if target is not None and depth < 3:
        followed = apt.record(target[0], arch, target[1])
        if followed is not None:
            return _kernel_packages(apt, followed, arch, depth + 1)
    return [record]


def _find_kernel_files(trees: Sequence[Path]) -> tuple[str, Path, Path] | None:
    """(release, image, config) in unpacked packages: usr/lib/modules/<release>/{vmlinuz,config}
    (linux-binary + linux-base) or /boot/{vmlinuz,config}-<release> (trixie's linux-image; on
    riscv64 the image is /boot/vmlinux-<release>, the same bootable Image sid calls vmlinuz)."""
    images = [(p.parent.name, p) for tree in trees for p in sorted(tree.glob("usr/lib/modules/*/vmlinuz"))]
    images += [(p.name.split("-", 1)[1], p) for tree in trees
               for pattern in ("boot/vmlinuz-*", "boot/vmlinux-*") for p in sorted(tree.glob(pattern))]
    for release, image in images:
        for tree in trees:
            for config in (tree / "usr/lib/modules" / release / "config", tree / f"boot/config-{release}"):
                if config.is_file():
                    return release, image, config
    return None


def _kernel_from_manifest(
    profile: ArchProfile, spec: DebianKernelSpec = SID_KERNEL
) -> DebianKernel | _Absent | None:
    """The cached kernel if the manifest names one whose files are present and intact, or its
    record that the suite has none for the arch."""
    entry = _read_json(cache_dir("debian") / spec.manifest_name(profile.name)).get("kernel")
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("absent"), str):
        return _Absent(entry["absent"])
    try:
        image, config = _abs(entry["image"]), _abs(entry["config"])
        if not image.is_file() or not config.is_file():
            return None
        if sha256_file(image) != entry["image_sha256"]:
            return None
        packages = tuple(_package_from(p) for p in entry["packages"])
        return DebianKernel(
            arch=profile.name,
            release=entry["release"],
            image=image,
            config=config,
            image_sha256=entry["image_sha256"],
            packages=packages,
            # Manifests from before suites were a choice hold sid's kernel and no suite.
            suite=entry.get("suite", SUITE),
            version=entry.get("version", packages[0].version),
            label=spec.label,
        )
    except (KeyError, TypeError, IndexError):
        return None


def _fetch_kernel(apt: _Apt, profile: ArchProfile, spec: DebianKernelSpec) -> DebianKernel | _Absent:
    apt.update()
    arch = profile.debian_arch
    manifest = cache_dir("debian") / spec.manifest_name(profile.name)
    header = {"arch": profile.name, "debian_arch": arch}
    if spec.suite:
        found = _suite_kernel_record(apt, profile, spec.suite)
        if isinstance(found, _Absent):
            apt.progress(f"{profile.name}: {found.reason}")
            _update_manifest(manifest, "kernel", {"absent": found.reason, "resolved": _now()},
                             suite=spec.suite, **header)
            return found
        suite = spec.suite
    else:
        found = _package_kernel_record(apt, profile, spec)
        suite = next((where for name, version, where in apt.versions([spec.package or ""], arch)
                      if version == spec.version), "?")
    records = _kernel_packages(apt, found, arch)
    apt.progress(f"{profile.name}: {spec.text} is {records[0]['Package']} {records[0]['Version']} ({suite})")
    unpacked = [_unpacked_package(apt, r["Package"], arch, r) for r in records]
    files = _find_kernel_files([tree for _, tree in unpacked])
    names = " and ".join(f"{package.name} {package.version}" for package, _ in unpacked)
    if files is None:
        raise HarnessError(
            f"{names}: no kernel image and config (usr/lib/modules/*/vmlinuz, boot/vmlinu[xz]-*): "
            "give a linux-image-* or linux-binary-* package, or update harness/artefacts.py"
        )
    release, image, config = files
    packages = tuple(package for package, _ in unpacked)
    kernel = DebianKernel(
        arch=profile.name,
        release=release,
        image=image,
        config=config,
        image_sha256=sha256_file(image),
        packages=packages,
        suite=suite,
        version=packages[0].version,
        label=spec.label,
    )
    entry = {
        "release": release,
        "image": _rel(image),
        "config": _rel(config),
        "image_sha256": kernel.image_sha256,
        "packages": [asdict(p) for p in kernel.packages],
        "suite": suite,
        "version": kernel.version,
        "spec": spec.text,
        "resolved": _now(),
    }
    _update_manifest(manifest, "kernel", entry, suite=suite, **header)
    return kernel


def ensure_debian_kernel(
    profile: ArchProfile,
    refresh: bool = False,
    *,
    progress: Progress | None = None,
    spec: DebianKernelSpec = SID_KERNEL,
) -> DebianKernel:
    """The Debian kernel SPEC names for PROFILE (default: sid's newest), from the cache when it
    has one.

    refresh=False: a cached kernel is returned without running apt (works offline); apt runs
    only when the cache has none. refresh=True: update the lists and re-resolve; if that fails
    but a cache exists, the cache is kept and PROGRESS is told why.
    Raises KernelUnavailable when SPEC's suite has no kernel for the arch (experimental for
    riscv64); that too is recorded, so a second run asks no network.
    """
    found = _ensure(
        what=f"the Debian kernel {spec.text} for {profile.name}",
        lock=cache_dir("debian") / f".lock-{profile.name}",
        cached=lambda: _kernel_from_manifest(profile, spec),
        fetch=lambda apt: _fetch_kernel(apt, profile, spec),
        refresh=refresh,
        progress=progress,
    )
    if isinstance(found, _Absent):
        raise KernelUnavailable(found.reason)
    return found


# --------------------------------------------------------------------------------------------
# The kernel's debug info (linux-image-<release>-dbg)
#
# Why: some kernels carry no BTF (Debian's loong64 has CONFIG_DEBUG_INFO_BTF unset), so facts
# such as sizeof(struct page) can only be read from the DWARF of their vmlinux, which Debian
# ships in linux-image-<release>-dbg at the image package's version. The .deb is large (about
# 1 GB, 9 GB unpacked) and only its vmlinux is needed: that one file is streamed out of the
# package, kept in cache_dir('debian', 'dbg'), and the .deb is deleted.


def debug_package_name(release: str) -> str:
    """Debian's name for the package with RELEASE's vmlinux and its debug info."""
    return f"linux-image-{release}-dbg"


def _debug_manifest(package: str, version: str) -> Path:
    return cache_dir("debian") / f"manifest-dbg-{package}_{version.replace(':', '%3a')}.json"


def _debug_vmlinux_from_manifest(package: str, version: str) -> Path | _Absent | None:
    """The cached vmlinux of PACKAGE at VERSION if the manifest names one that is present with
    its recorded size (sha256 of a file this large on every look-up costs seconds; the size
    catches a truncated copy), or the record that no suite has the package."""
    entry = _read_json(_debug_manifest(package, version)).get("vmlinux")
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("absent"), str):
        return _Absent(entry["absent"])
    try:
        path = _abs(entry["path"])
        if not path.is_file() or path.stat().st_size != entry["size"]:
            return None
    except (KeyError, TypeError):
        return None
    return path


def _stream_member(deb: Path, names: Sequence[str], into: Path) -> str | None:
    """Copy the first regular file of DEB's data whose base name is one of NAMES to INTO,
    reading the package as a stream and stopping there (no 9 GB unpack); returns its path in
    the package, or None when the package has no such file."""
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL) as reader:
        assert reader.stdout is not None
        found = None
        try:
            with tarfile.open(fileobj=reader.stdout, mode="r|*") as archive:
                for member in archive:
                    if member.isfile() and PurePosixPath(member.name).name in names:
                        source = archive.extractfile(member)
                        assert source is not None
                        with open(into, "wb") as target:
                            shutil.copyfileobj(source, target, 1 << 20)
                        found = member.name.removeprefix("./")
                        break
        except tarfile.TarError as error:
            raise HarnessError(f"reading {deb.name} failed ({error}): remove "
                               f"{deb.parent} and retry") from None
        finally:
            # Found (or failed): the rest of the package is not needed; end our own reader.
            reader.kill()
    return found


def _fetch_debug_vmlinux(apt: _Apt, profile: ArchProfile, release: str, version: str) -> Path | _Absent:
    package = debug_package_name(release)
    arch = profile.debian_arch
    manifest = _debug_manifest(package, version)
    try:
        apt.update()
        rows = apt.versions([package], arch)
        suite = next((where for name, got, where in rows if name == package and got == version), None)
        if suite is None:
            known = ", ".join(sorted({got for name, got, _ in rows if name == package},
                                     key=_version, reverse=True)) or "none"
            reason = (f"Debian ({', '.join(SUITES)}) has no {package}:{arch} {version} "
                      f"(versions there: {known})")
            _update_manifest(manifest, "vmlinux", {"absent": reason, "resolved": _now()},
                             arch=profile.name, debian_arch=arch)
            return _Absent(reason)
        record = apt.record(package, arch, version)
        if record is None:
            raise DebugInfoUnavailable(f"apt-cache madison lists {package}:{arch} {version} but "
                                       "apt-cache show has no record of it")
        where = cache_dir("debian", "dbg")
        final = where / f"vmlinux-{release}_{version.replace(':', '%3a')}"
        with tempfile.TemporaryDirectory(dir=where, prefix=".tmp-") as tmp_name:
            tmp = Path(tmp_name)
            size = int(record.get("Size", "0")) >> 20
            apt.progress(f"{profile.name}: fetching {package} {version} ({suite}, {size} MiB) "
                         "for its vmlinux's debug info")
            deb = apt.download(package, arch, version, tmp)
            digest = sha256_file(deb)
            if record.get("SHA256") and record["SHA256"] != digest:
                raise DebugInfoUnavailable(f"{deb.name} has sha256 {digest}, but the Debian index "
                                           f"says {record['SHA256']}: retry (the mirror may have "
                                           "been mid-update)")
            apt.progress(f"{profile.name}: taking vmlinux-{release} out of {deb.name}")
            member = _stream_member(deb, (f"vmlinux-{release}", "vmlinux"), tmp / "vmlinux")
            deb.unlink()
            if member is None:
                raise DebugInfoUnavailable(f"{package} {version} holds no vmlinux-{release}: "
                                           "Debian changed its packaging; update harness/artefacts.py")
            machine = _elf_machine(tmp / "vmlinux")
            if machine != profile.elf_machine:
                raise DebugInfoUnavailable(f"{member} of {package} {version} is not an ELF for "
                                           f"{profile.name} (e_machine {machine})")
            os.replace(tmp / "vmlinux", final)
    except _AptError as error:
        raise DebugInfoUnavailable(f"could not fetch {package} {version}: {error}: check network "
                                   f"access to {MIRROR} (or set http_proxy) and retry") from None
    except HarnessError as error:
        # Every failure here (apt missing, a bad download, no vmlinux in it) names the package.
        text = str(error)
        raise DebugInfoUnavailable(text if package in text else f"{package} {version}: {text}") from None
    entry = {
        "path": _rel(final),
        "size": final.stat().st_size,
        "sha256": sha256_file(final),
        "member": member,
        "package": asdict(DebianPackage(package, version, arch, digest)),
        "suite": suite,
        "release": release,
        "resolved": _now(),
    }
    _update_manifest(manifest, "vmlinux", entry, arch=profile.name, debian_arch=arch)
    return final


def ensure_debug_vmlinux(
    profile: ArchProfile, release: str, version: str, *, progress: Progress | None = None
) -> Path:
    """The vmlinux with debug info (DWARF) of Debian's kernel RELEASE ('7.2.13+deb14-loong64')
    at VERSION (the image package's, '7.2.13-1'), from linux-image-RELEASE-dbg in whichever
    suite has it.

    Fetched on demand (about 1 GB of download, once), cached with a manifest; a second call
    needs no network, and neither does one for a package the lists did not have (that too is
    recorded). Raises DebugInfoUnavailable, naming the package and version, when no suite has
    the package at VERSION or its download fails.
    """
    package = debug_package_name(release)
    found = _ensure(
        what=f"{package} {version}",
        lock=cache_dir("debian") / f".lock-dbg-{profile.name}",
        cached=lambda: _debug_vmlinux_from_manifest(package, version),
        fetch=lambda apt: _fetch_debug_vmlinux(apt, profile, release, version),
        refresh=False,
        progress=progress,
    )
    if isinstance(found, _Absent):
        raise DebugInfoUnavailable(found.reason)
    return found


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
    record = apt.candidate("busybox-static", profile.debian_arch, SUITE)
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
# QEMU firmware (UEFI) from Debian: bookworm has none for LoongArch, sid has qemu-efi-loongarch64


@dataclass(frozen=True)
class DebianFirmware:
    """A firmware file QEMU takes with -bios, unpacked from a Debian package in the cache."""

    path: Path
    package: DebianPackage


def _firmware_manifest_path() -> Path:
    return cache_dir("debian") / "manifest-firmware.json"


def _firmware_from_manifest(firmware: Firmware) -> DebianFirmware | None:
    entry = _read_json(_firmware_manifest_path()).get(firmware.package)
    if not isinstance(entry, dict):
        return None
    try:
        path = _abs(entry["path"])
        if entry.get("member") != firmware.path or not path.is_file() \
                or sha256_file(path) != entry["sha256"]:
            return None
        return DebianFirmware(path=path, package=_package_from(entry["package"]))
    except (KeyError, TypeError):
        return None


def _fetch_firmware(apt: _Apt, firmware: Firmware) -> DebianFirmware:
    apt.update()
    # Firmware packages are Architecture: all; every binary index lists them.
    record = apt.candidate(firmware.package, APT_ARCHITECTURES[0], SUITE)
    if record is None:
        raise HarnessError(
            f"Debian {SUITE} has no {firmware.package}: check the harness's apt state with "
            f"`apt-cache -c {apt.root / 'apt.conf'} policy {firmware.package}`"
        )
    package, tree = _unpacked_package(apt, firmware.package, record.get("Architecture", "all"), record)
    path = tree / firmware.path
    if not path.is_file():
        raise HarnessError(
            f"{firmware.package} {package.version} has no {firmware.path}: Debian changed its "
            "packaging; update the arch profile's firmware path"
        )
    entry = {"path": _rel(path), "member": firmware.path, "sha256": sha256_file(path),
             "package": asdict(package), "resolved": _now()}
    _update_manifest(_firmware_manifest_path(), firmware.package, entry)
    return DebianFirmware(path=path, package=package)


def ensure_firmware(
    firmware: Firmware, refresh: bool = False, *, progress: Progress | None = None
) -> DebianFirmware:
    """FIRMWARE's file from Debian sid, unpacked into the cache once; later calls read the
    manifest (debian/manifest-firmware.json) and need no network."""
    return _ensure(
        what=f"the firmware {firmware.package}",
        lock=cache_dir("debian") / ".lock-firmware",
        cached=lambda: _firmware_from_manifest(firmware),
        fetch=lambda apt: _fetch_firmware(apt, firmware),
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


def _unpack_source(apt: _Apt, record: Deb822, final: Path) -> str:
    """Download the linux-source package of RECORD and unpack its tree as FINAL (made whole in
    a temporary directory, then renamed); returns the .deb's sha256."""
    name, version = record["Package"], record["Version"]
    src = final.parent
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
    return digest


def _fetch_source(apt: _Apt) -> Path:
    apt.update()
    pattern = re.compile(r"^linux-source-([0-9]+\.[0-9]+)$")
    series = sorted(
        {m.group(1) for name in apt.pkgnames("linux-source-") if (m := pattern.match(name))},
        key=_version,
        reverse=True,
    )
    record = None
    for candidate in series:
        # Only sid's: trixie's 6.12 and experimental's release candidates are in the same lists.
        record = apt.candidate(f"linux-source-{candidate}", APT_ARCHITECTURES[0], SUITE)
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
    digest = _unpack_source(apt, record, final)
    entry = {
        "package": asdict(DebianPackage(name, version, record.get("Architecture", "all"), digest)),
        "series": name.removeprefix("linux-source-"),
        "tree": _rel(final),
        "resolved": _now(),
    }
    _update_manifest(_source_manifest_path(), "source", entry)
    # An older tree stays: the results and reproducers of kernels built from it read their
    # statements there (source_lines.build_source), and sid no longer has its version to fetch.
    if current is not None and current != final and current.parent == src:
        apt.progress(f"source: {current} ({current.name}) is kept for the results built from it; "
                     "remove it when they are not needed")
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


def ensure_linux_source_at(series: str, version: str, *, progress: Progress | None = None) -> Path:
    """Debian's linux-source-SERIES ('7.2') at exactly VERSION ('7.2.13-1'), unpacked once:
    the source a Debian kernel of that version was built from (harness/source_lines.py reads a
    finding's file:line in it). From the cache when that tree is there, else from whichever
    suite still has that version. Raises HarnessError naming the package and version when none
    does (Debian keeps only current versions) or the download fails."""
    name = f"linux-source-{series}"
    final = cache_dir("src") / _dir_name(name, version, "all")

    def cached() -> Path | None:
        return final if (final / "Makefile").is_file() else None

    def fetch_it(apt: _Apt) -> Path:
        apt.update()
        rows = apt.versions([name], APT_ARCHITECTURES[0])
        if not any(got == version for package, got, _ in rows if package == name):
            known = ", ".join(sorted({got for package, got, _ in rows if package == name},
                                     key=_version, reverse=True)) or "none"
            raise HarnessError(f"Debian ({', '.join(SUITES)}) has no {name} {version} "
                               f"(versions there: {known})")
        record = apt.record(name, APT_ARCHITECTURES[0], version)
        if record is None:
            raise HarnessError(f"apt-cache madison lists {name} {version} but apt-cache show "
                               "has no record of it")
        _unpack_source(apt, record, final)
        return final

    return _ensure(what=f"{name} {version}", lock=cache_dir("src") / ".lock", cached=cached,
                   fetch=fetch_it, refresh=False, progress=progress)


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
    kernels: Sequence[DebianKernelSpec] = (SID_KERNEL,),
) -> dict[str, Any]:
    """Fill the cache for PROFILES (each of KERNELS + busybox per arch, and the source); return
    a summary.

    The summary is JSON-ready: the cache root, per arch and kernel (under "kernels", by label)
    the release, paths, sha256 and package versions, or "skip" with the reason where the suite
    has no kernel for the arch; with one kernel its fields are also the arch's own, as before
    suites were a choice. Then the source tree, and how long it took.
    """
    started = time.monotonic()
    summary: dict[str, Any] = {"cache": str(cache_root()), "suite": SUITE,
                               "kernels": [spec.text for spec in kernels], "arches": {}}
    for profile in profiles:
        busybox = ensure_busybox(profile, refresh, progress=progress)
        entry: dict[str, Any] = {"busybox": str(busybox.path), "kernels": {}}
        if profile.firmware is not None:
            # The firmware some of the arch's kernels boot through (qemu.boot_profile).
            entry["firmware"] = str(ensure_firmware(profile.firmware, refresh, progress=progress).path)
        for spec in kernels:
            manifest = str(cache_dir("debian") / spec.manifest_name(profile.name))
            try:
                kernel = ensure_debian_kernel(profile, refresh, progress=progress, spec=spec)
            except KernelUnavailable as missing:
                entry["kernels"][spec.label] = {"skip": missing.reason, "manifest": manifest}
                continue
            entry["kernels"][spec.label] = {
                "suite": kernel.suite,
                "version": kernel.version,
                "release": kernel.release,
                "image": str(kernel.image),
                "image_sha256": kernel.image_sha256,
                "config": str(kernel.config),
                "packages": [asdict(p) for p in (*kernel.packages, busybox.package)],
                "manifest": manifest,
            }
        if len(kernels) == 1:
            entry.update(next(iter(entry["kernels"].values())))
        summary["arches"][profile.name] = entry
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
