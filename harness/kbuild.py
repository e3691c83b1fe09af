"""Kernel builds from a tree: kconfig fragments, toolchains, `make O=`, and the build cache.

The config is tinyconfig (small, boots fast under TCG) plus the project's fragments, merged
by the kernel's own scripts/kconfig/merge_config.sh and settled by `make olddefconfig`; then
every option a fragment asked for is checked, because Kconfig drops an option whose
dependencies are missing without a word. Builds are cached under the cache directory, keyed
by the tree's state, the fragments' text and the toolchain's versions."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from harness import __version__, kconfig, trees
from harness.cache import cache_dir, sha256_file
from harness.errors import HarnessError
from harness.profiles import ArchProfile, Toolchain

Progress = Callable[[str], None]

KCONFIGS = Path(__file__).resolve().parent.parent / "kconfigs"
BASE_CONFIG = "tinyconfig"
# Fragments every variant has (resolve_variant): not variant words.
_BASE_FRAGMENTS = ("common", "debuginfo")
_OPTION = re.compile(r"^(CONFIG_\w+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_\w+) is not set")
# Builds of the same key from two processes (pytest-xdist) wait for each other, and builds of
# different keys in one process run one at a time: each already uses every core.
_BUILD_LOCK = threading.Lock()


class BuildFailed(HarnessError):
    """The tree did not configure or build (make, merge_config.sh or a fragment's option failed).

    It depends on the tree's state, not on the machine: `hvo-harness bisect` skips such a commit,
    where a set-up error (no compiler, a bad variant) aborts the whole bisect."""


@dataclass(frozen=True)
class Variant:
    """A named set of fragments on top of common + arch: e.g. 'debug+16k'."""

    name: str
    page_size: str
    fragments: tuple[Path, ...]


@dataclass(frozen=True)
class BuildRequest:
    source: trees.Source
    profile: ArchProfile
    variant: Variant
    toolchain: Toolchain

    @property
    def state(self) -> trees.TreeState:
        return self.source.state


@dataclass(frozen=True)
class BuiltKernel:
    image: Path
    config: Path
    release: str
    metadata: dict[str, object]
    metadata_path: Path
    # False when the build came out of the cache.
    built: bool


def resolve_variant(
    profile: ArchProfile, name: str | None, extra_fragments: tuple[Path, ...] = ()
) -> Variant:
    """'debug', 'debug+4k', 'base', None...: words joined by '+'. A word is a page size the arch
    has (kconfigs/page-size/<arch>-<word>.config) or a fragment kconfigs/<word>.config."""
    words = [w.strip() for w in (name or "base").split("+") if w.strip() and w.strip() != "base"]
    page_sizes = profile.build.page_sizes
    known = sorted(p.stem for p in KCONFIGS.glob("*.config") if p.stem not in _BASE_FRAGMENTS)
    page_size = None
    fragments: list[Path] = []
    for word in words:
        if re.fullmatch(r"\d+k(?:\d+l)?", word):
            if word not in page_sizes:
                raise HarnessError(
                    f"{profile.name} has no {word} page size in kconfigs/page-size/: "
                    f"it has {', '.join(page_sizes)}"
                )
            page_size = word
        elif (KCONFIGS / f"{word}.config").is_file() and word not in _BASE_FRAGMENTS:
            fragments.append(KCONFIGS / f"{word}.config")
        else:
            raise HarnessError(
                f"unknown variant word {word!r} in {name!r}: use fragments from kconfigs/ "
                f"({', '.join(known)}) and page sizes ({', '.join(page_sizes)}), joined by '+'"
            )
    page_size = page_size or page_sizes[0]
    for extra in extra_fragments:
        if not extra.is_file():
            raise HarnessError(f"--fragment {extra}: no such file")
    base = [
        KCONFIGS / "common.config",
        KCONFIGS / "debuginfo.config",
        KCONFIGS / "arch" / f"{profile.name}.config",
        KCONFIGS / "page-size" / f"{profile.name}-{page_size}.config",
    ]
    stems = [p.stem for p in fragments] + [p.stem for p in extra_fragments]
    canonical = "+".join([*(stems or ["base"]), page_size])
    return Variant(canonical, page_size, (*base, *fragments, *(p.resolve() for p in extra_fragments)))


def page_size_variants(profile: ArchProfile, name: str | None) -> list[str]:
    """The variant at each of the arch's page sizes (for `--page-sizes all`)."""
    words = [w for w in (name or "base").split("+") if not re.fullmatch(r"\d+k(?:\d+l)?", w.strip())]
    return ["+".join([*words, size]) for size in profile.build.page_sizes]


def find_toolchain(profile: ArchProfile, name: str | None) -> Toolchain:
    choices = {t.name: t for t in profile.build.toolchains}
    toolchain = choices.get(name) if name else profile.build.toolchains[0]
    if toolchain is None:
        raise HarnessError(
            f"{profile.name} kernels build with {' or '.join(choices)} here, not {name}: "
            f"use --toolchain {profile.build.toolchains[0].name}"
        )
    for tool, package in toolchain.tools:
        if shutil.which(tool) is None:
            raise HarnessError(
                f"{tool} not found ({profile.name}, --toolchain {toolchain.name}): install {package}, "
                "or run `make deps`"
            )
    return toolchain


def requested_options(fragments: tuple[Path, ...]) -> dict[str, tuple[str, Path]]:
    """Option -> (value, fragment): later fragments override earlier ones, as merge_config does."""
    wanted: dict[str, tuple[str, Path]] = {}
    for fragment in fragments:
        for line in fragment.read_text().splitlines():
            line = line.strip()
            if match := _OPTION.match(line):
                wanted[match[1]] = (match[2], fragment)
            elif match := _UNSET.match(line):
                wanted[match[1]] = ("n", fragment)
    return wanted


def check_config(config: dict[str, str], fragments: tuple[Path, ...]) -> None:
    """Every requested option as asked, after olddefconfig; else one error naming the first."""
    missed = []
    for option, (want, fragment) in requested_options(fragments).items():
        got = config.get(option, "n")
        if got != want:
            missed.append((option, want, got, fragment))
    if missed:
        option, want, got, fragment = missed[0]
        others = f" (and {len(missed) - 1} more)" if len(missed) > 1 else ""
        name = fragment.relative_to(KCONFIGS.parent) if fragment.is_relative_to(KCONFIGS.parent) else fragment
        shown = "not set" if got == "n" else got
        raise BuildFailed(
            f"kconfig: {option}={want} from {name} did not stick after olddefconfig "
            f"(it is {shown}){others}: the option does not exist or its dependencies are not met; "
            "fix the fragment"
        )


def _versions(toolchain: Toolchain) -> dict[str, str]:
    versions = {}
    for tool, _package in toolchain.tools:
        done = subprocess.run([tool, "--version"], capture_output=True, text=True)
        versions[tool] = (done.stdout.strip().splitlines() or ["?"])[0]
    return versions


def _make_vars(request: BuildRequest) -> list[str]:
    make_vars = [f"ARCH={request.profile.kernel_arch}", *request.toolchain.make_vars]
    if shutil.which("ccache"):
        make_vars.append(f"CC=ccache {request.toolchain.compiler}")
    return make_vars


def build_key(request: BuildRequest, versions: dict[str, str]) -> str:
    key = {
        "arch": request.profile.name,
        "tree": request.state.digest,
        "base": BASE_CONFIG,
        "fragments": [[p.name, p.read_text()] for p in request.variant.fragments],
        "toolchain": [request.toolchain.name, list(request.toolchain.make_vars), versions],
        "target": request.profile.build.target,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_make(tree: Path, out: Path, make_vars: list[str], targets: list[str], log: Path,
              label: str, progress: Progress | None, jobs: int | None = None) -> None:
    argv = ["make", "-C", str(tree), f"O={out}", *make_vars, *targets]
    if jobs:
        argv.insert(1, f"-j{jobs}")
    env = dict(os.environ, CCACHE_NOHASHDIR="1", KBUILD_BUILD_USER="hvo-harness",
               KBUILD_BUILD_HOST="hvo-harness")
    with log.open("a") as sink:
        sink.write(f"$ {' '.join(argv)}\n")
        sink.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, errors="replace")
        assert proc.stdout is not None
        started = last_report = time.monotonic()
        compiled = 0
        # The compiler's first "error:" names the cause; make's own "*** ... Error 1" lines
        # only say that something failed.
        first_error: str | None = None
        last_line = ""
        for line in proc.stdout:
            sink.write(line)
            if line.lstrip().startswith(("CC ", "AS ", "LD ")):
                compiled += 1
            if first_error is None and "error:" in line:
                first_error = line.strip()
            if line.strip():
                last_line = line.strip()
            now = time.monotonic()
            if progress and now - last_report >= 15:
                last_report = now
                progress(f"{label}: {' '.join(targets)}: {compiled} objects, {now - started:.0f}s")
        status = proc.wait()
    if status != 0:
        cause = first_error or last_line or "?"
        raise BuildFailed(f"{label}: make {' '.join(targets)} failed: {cause[:200]} (log: {log})")


def configure(request: BuildRequest, tree: Path, out: Path, log: Path,
              progress: Progress | None = None) -> Path:
    """tinyconfig, merge_config.sh -m with the fragments, olddefconfig, then the check."""
    make_vars = _make_vars(request)
    label = f"{request.profile.name} {request.variant.name}"
    _run_make(tree, out, make_vars, [BASE_CONFIG], log, label, progress)
    merge = tree / "scripts/kconfig/merge_config.sh"
    done = subprocess.run(
        ["sh", str(merge), "-m", "-O", str(out), str(out / ".config"), *map(str, request.variant.fragments)],
        capture_output=True, text=True, cwd=tree,
        env=dict(os.environ, ARCH=request.profile.kernel_arch),
    )
    with log.open("a") as sink:
        sink.write(done.stdout + done.stderr)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise BuildFailed(f"{label}: merge_config.sh failed: {last}")
    _run_make(tree, out, make_vars, ["olddefconfig"], log, label, progress)
    config = out / ".config"
    check_config(kconfig.read(config), request.variant.fragments)
    return config


def _cache_entry(request: BuildRequest, key: str) -> Path:
    return cache_dir("builds") / request.profile.name / f"{request.variant.name}-{key[:16]}"


def _cached(where: Path, label: str, progress: Progress | None) -> BuiltKernel | None:
    """The build cache's entry WHERE, if it is whole (its image has the recorded hash)."""
    metadata_path = where / "metadata.json"
    if not metadata_path.exists():
        return None
    metadata = json.loads(metadata_path.read_text())
    image = Path(str(metadata["image"]))
    if not image.exists() or sha256_file(image) != metadata["image_sha256"]:
        return None
    if progress:
        progress(f"{label}: cached build {where}")
    return BuiltKernel(image, where / "build" / ".config", str(metadata["release"]),
                       metadata, metadata_path, built=False)


def _release(out: Path, request: BuildRequest) -> str:
    release_file = out / "include/config/kernel.release"
    return release_file.read_text().strip() if release_file.exists() else request.state.version


def _metadata(request: BuildRequest, versions: dict[str, str], key: str, config: Path, image: Path,
              release: str, log: Path, started_at: str, started: float,
              applied: dict[str, str]) -> dict[str, object]:
    return {
        "harness_version": __version__,
        "arch": request.profile.name,
        "variant": request.variant.name,
        "page_size": request.variant.page_size,
        # With a series: the commit git am made (and the base commit the state keys on).
        "source": {**request.state.as_source(), **applied,
                   **({"base_commit": request.state.commit} if applied else {})},
        "base_config": BASE_CONFIG,
        "fragments": [{"path": str(p), "sha256": sha256_file(p)} for p in request.variant.fragments],
        "config": str(config),
        "config_sha256": sha256_file(config),
        "toolchain": {"name": request.toolchain.name, "make_vars": _make_vars(request),
                      "versions": versions, "ccache": shutil.which("ccache") is not None},
        "image": str(image),
        "image_sha256": sha256_file(image),
        "release": release,
        "build_log": str(log),
        "started": started_at,
        "duration_seconds": round(time.monotonic() - started, 1),
        "key": key,
    }


def build(request: BuildRequest, progress: Progress | None = None) -> BuiltKernel:
    """The image for this request: from the cache when an identical build is there."""
    versions = _versions(request.toolchain)
    key = build_key(request, versions)
    label = f"{request.profile.name} {request.variant.name}"
    where = _cache_entry(request, key)
    metadata_path = where / "metadata.json"
    with _BUILD_LOCK, _file_lock(where.parent / f".{where.name}.lock"):
        if cached := _cached(where, label, progress):
            return cached
        if where.exists():
            shutil.rmtree(where)
        out = where / "build"
        out.mkdir(parents=True)
        log = where / "build.log"
        started = time.monotonic()
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        if progress:
            progress(f"{label}: configuring {request.state.describe or request.state.path} ({BASE_CONFIG} + "
                     f"{', '.join(p.stem for p in request.variant.fragments)})")
        with trees.checkout(request.source) as tree:
            config = configure(request, tree, out, log, progress)
            if progress:
                progress(f"{label}: building {request.profile.build.target} with {request.toolchain.name} "
                         f"(log: {log})")
            _run_make(tree, out, _make_vars(request), [request.profile.build.target], log, label,
                      progress, jobs=os.cpu_count() or 1)
            applied = trees.head(tree) if request.source.patches else {}
        image = out / request.profile.build.image
        if not image.exists():
            raise BuildFailed(
                f"{label}: make succeeded but left no {request.profile.build.image} (log: {log})"
            )
        release = _release(out, request)
        metadata = _metadata(request, versions, key, config, image, release, log, started_at,
                             started, applied)
        tmp = metadata_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(metadata, indent=2) + "\n")
        tmp.replace(metadata_path)
        if progress:
            progress(f"{label}: built {image.name} in {metadata['duration_seconds']}s")
        return BuiltKernel(image, config, release, metadata, metadata_path, built=True)


# --- Incremental builds, for bisecting: one O= directory reused commit after commit --------------

def _config_key(request: BuildRequest, versions: dict[str, str]) -> str:
    """What the O= directory's .config and objects depend on besides the tree: when it changes
    (a fragment edited, another compiler version) the directory is configured from scratch."""
    key = {
        "base": BASE_CONFIG,
        "fragments": [[p.name, p.read_text()] for p in request.variant.fragments],
        "toolchain": [request.toolchain.name, _make_vars(request), versions],
        "target": request.profile.build.target,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def incremental_dir(request: BuildRequest) -> Path:
    """The persistent O= directory of (tree path, arch, variant, toolchain): kbuild's objects
    record the source paths they were built from, so one tree path has one directory."""
    ident = json.dumps([str(Path(request.source.tree).resolve()), request.profile.name,
                        request.variant.name, request.toolchain.name])
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return cache_dir("builds") / request.profile.name / "incremental" / f"{request.variant.name}-{digest}"


def build_incremental(request: BuildRequest, into: Path, progress: Progress | None = None) -> BuiltKernel:
    """Build the tree's current state in its persistent O= directory (incremental_dir), so that
    make rebuilds only what changed since the last state built there, and copy the image and
    .config into INTO/kernel/ (each bisect step keeps its own kernel; the directory moves on).

    A state already in the ordinary build cache (build()) is taken from there. The directory
    is configured from scratch (tinyconfig, fragments, olddefconfig) when it is new or the
    fragments or toolchain changed; otherwise `make olddefconfig` settles the .config for this
    tree's Kconfig (a commit may add or drop options). Either way every option a fragment asks
    for is checked again. A failure of make or of the config is BuildFailed; its log is
    INTO/build.log."""
    if request.source.patches:
        raise HarnessError("incremental builds take a tree as it is checked out, without --patches")
    versions = _versions(request.toolchain)
    key = build_key(request, versions)
    label = f"{request.profile.name} {request.variant.name}"
    kernel_dir = into / "kernel"
    log = into / "build.log"
    into.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    entry = _cache_entry(request, key)
    with _BUILD_LOCK, _file_lock(entry.parent / f".{entry.name}.lock"):
        cached = _cached(entry, label, progress)
    if cached is not None:
        log.write_text(f"# the build cache had this tree state: {entry}\n")
        return _keep(cached, kernel_dir, cached.metadata, built=False)
    where = incremental_dir(request)
    out = where / "build"
    config_key = _config_key(request, versions)
    key_file = where / "config-key"
    started = time.monotonic()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    tree = Path(request.source.tree)
    with _BUILD_LOCK, _file_lock(where.parent / f".{where.name}.lock"):
        reuse = (out / ".config").is_file() and key_file.is_file() and key_file.read_text() == config_key
        if reuse:
            if progress:
                progress(f"{label}: incremental build of {request.state.describe or tree} in {out}")
            config = out / ".config"
            try:
                _run_make(tree, out, _make_vars(request), ["olddefconfig"], log, label, progress)
                check_config(kconfig.read(config), request.variant.fragments)
            except BuildFailed as error:
                # The .config carried over from another commit (or left by an interrupted
                # step) may be what fails: a fresh one decides whether this commit's does.
                with log.open("a") as sink:
                    sink.write(f"# the reused .config failed ({error}); configuring from scratch\n")
                reuse = False
        if not reuse:
            if where.exists():
                shutil.rmtree(where)
            out.mkdir(parents=True)
            if progress:
                progress(f"{label}: configuring {out} for incremental builds ({BASE_CONFIG} + "
                         f"{', '.join(p.stem for p in request.variant.fragments)})")
            config = configure(request, tree, out, log, progress)
            key_file.write_text(config_key)
        if progress:
            progress(f"{label}: building {request.profile.build.target} (log: {log})")
        _run_make(tree, out, _make_vars(request), [request.profile.build.target], log, label,
                  progress, jobs=os.cpu_count() or 1)
        image = out / request.profile.build.image
        if not image.exists():
            raise BuildFailed(f"{label}: make succeeded but left no {request.profile.build.image} "
                              f"(log: {log})")
        metadata = _metadata(request, versions, key, config, image, _release(out, request), log,
                             started_at, started, {})
        metadata["incremental"] = {"dir": str(out), "configured_from_scratch": not reuse}
        built = BuiltKernel(image, config, str(metadata["release"]), metadata, where / "metadata.json",
                            built=True)
        kept = _keep(built, kernel_dir, metadata, built=True)
    if progress:
        progress(f"{label}: built {image.name} in {metadata['duration_seconds']}s (incremental)")
    return kept


def _keep(kernel: BuiltKernel, kernel_dir: Path, metadata: dict[str, object], built: bool) -> BuiltKernel:
    """Copies of the image and .config in KERNEL_DIR, with a metadata.json naming them."""
    if kernel_dir.exists():
        shutil.rmtree(kernel_dir)
    kernel_dir.mkdir(parents=True)
    image = kernel_dir / kernel.image.name
    config = kernel_dir / ".config"
    shutil.copy2(kernel.image, image)
    shutil.copy2(kernel.config, config)
    kept = {**metadata, "image": str(image), "config": str(config), "built_from": str(kernel.image),
            "image_sha256": sha256_file(image)}
    if kept["image_sha256"] != metadata["image_sha256"]:
        raise HarnessError(f"copying {kernel.image} to {image} changed it: check the disk")
    metadata_path = kernel_dir / "metadata.json"
    metadata_path.write_text(json.dumps(kept, indent=2) + "\n")
    return BuiltKernel(image, config, kernel.release, kept, metadata_path, built=built)
