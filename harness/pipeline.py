"""The pipeline every runner calls: kernel → image → initramfs → boot → protocol → judge → Run.

One function per stage boundary; the CLI, the tests and later runners only call these."""

from __future__ import annotations

import dataclasses
import platform
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from harness import (
    __version__,
    artefacts,
    guest_helper,
    images,
    initramfs,
    kbuild,
    kconfig,
    qemu,
    structpage,
    trees,
    vng,
)
from harness.errors import HarnessError, KernelUnavailable
from harness.plan import make_plan
from harness.profiles import ARCH_NAMES, ArchProfile, get_profile
from harness.results import Accel, Hvo, KernelInfo, Results, Run
from harness.targets import Target, judged_run
from harness.targets.qemu import QemuTarget

# The boot stages live in the QEMU target now; lava, the pytest plugin and the tests call them
# as pipeline.* still (re-exported).
from harness.targets.qemu import boot_stem as boot_stem
from harness.targets.qemu import kernel_facts as kernel_facts
from harness.targets.qemu import read_kernel_log as read_kernel_log
from harness.targets.qemu import read_results as read_results
from harness.targets.vng import VngTarget

Progress = Callable[[str], None]
DEFAULT_TIMEOUT = 300.0
# The targets that boot a kernel the pipeline prepared, by --backend name (vng.BACKENDS).
BOOT_TARGETS: dict[str, type[QemuTarget]] = {"qemu": QemuTarget, "vng": VngTarget}


@dataclass(frozen=True)
class PreparedKernel:
    """A bootable kernel for one arch, with what is known of it."""

    image: images.KernelImage
    info: KernelInfo
    config: dict[str, str] | None
    # The build variant for a kernel built from a tree ('debug+4k'), else None.
    variant: str | None = None
    # Set by prepare_kernels when the matrix boots more than one kernel per arch: the kernel's
    # label (info.label, 'trixie'), which then goes into the log file names and progress lines.
    file_label: str | None = None


@dataclass(frozen=True)
class UnavailableKernel:
    """A Debian kernel asked for that does not exist for the arch (experimental has no riscv64
    build): the unit's boots are recorded as verdict "skip" with the reason (skipped_run)."""

    info: KernelInfo  # what was asked for: source {type: debian, suite, ...}, label; no image
    reason: str
    variant: str | None = None
    file_label: str | None = None


# What one --kernel item names: a Debian kernel (suite or package=version) or an image path.
KernelChoice = artefacts.DebianKernelSpec | Path


def parse_kernels(text: str, option: str = "--kernel") -> tuple[KernelChoice, ...]:
    """--kernel's value: Debian kernels, comma-separated ('debian' = 'debian:sid',
    'debian:trixie', 'debian:experimental', 'debian:PACKAGE=VERSION'), or one image path.

    Checks the text only (no apt): an empty item, an unknown suite, a PACKAGE= with no version,
    a release twice or a path among Debian items is one HarnessError naming the fix."""
    items = [item.strip() for item in text.split(",")]
    if not any(item == "debian" or item.startswith("debian:") for item in items):
        if not text.strip():
            raise HarnessError(f"{option} is empty: give debian:sid (the default), "
                               "debian:trixie,debian:sid,... or a kernel image path")
        return (Path(text).expanduser(),)
    specs: list[artefacts.DebianKernelSpec] = []
    for item in items:
        if not item:
            raise HarnessError(f"{option} {text!r} has an empty item: give Debian kernels separated "
                               "by single commas, e.g. debian:trixie,debian:sid")
        if item != "debian" and not item.startswith("debian:"):
            raise HarnessError(f"{option} {text!r}: {item!r} is not a Debian kernel: a kernel image "
                               "path goes alone, without debian:... items")
        spec = artefacts.parse_kernel_spec(item, option)
        if spec in specs or spec.label in {s.label for s in specs}:
            # Twice would boot twice into the same logs, the second over the first.
            raise HarnessError(f"{option} {text!r} names {spec.text} twice ('debian' is debian:sid): "
                               "give each release once")
        specs.append(spec)
    return tuple(specs)


def _debian_source(
    spec: artefacts.DebianKernelSpec, debian: artefacts.DebianKernel | None
) -> dict[str, object]:
    """runs[].kernel.source of a Debian kernel: the suite, the packages and the image's version
    (what was asked for, with no packages, when the suite has no kernel for the arch)."""
    if debian is None:
        return {"type": "debian", "suite": spec.suite, "packages": [], "version": spec.version,
                "spec": spec.text}
    return {
        "type": "debian",
        "suite": debian.suite,
        "packages": [{"name": p.name, "version": p.version, "sha256": p.sha256} for p in debian.packages],
        "version": debian.version,
        "spec": spec.text,
    }


@dataclass(frozen=True)
class GuestEnvironment:
    """Everything but the kernel that a boot of this arch needs."""

    initramfs: Path
    accel: qemu.AccelChoice
    # What the initramfs is made of; the vng backend (no initramfs) lays them out in the guest.
    busybox: Path | None = None
    helper: Path | None = None


def prepare_kernel(
    profile: ArchProfile, kernel: str | KernelChoice, config_path: Path | None = None,
    progress: Progress | None = None,
) -> PreparedKernel:
    """One kernel for PROFILE, ready to boot. KERNEL is one --kernel item: 'debian' (=
    'debian:sid', sid's newest prebuilt kernel), 'debian:trixie', 'debian:experimental' (that
    suite's newest), 'debian:PACKAGE=VERSION', an artefacts.DebianKernelSpec, or a path to an
    image (CONFIG_PATH its .config; a .config beside the image is found by itself).

    E.g. prepare_kernel(profile, "debian:trixie") boots the same arch with another release.
    Raises harness.errors.KernelUnavailable when that suite has no kernel for the arch
    (experimental for riscv64): its .reason is one line for a skip ("Debian experimental has no
    linux kernel for riscv64 (...)"). Any other HarnessError is a set-up error (a malformed
    item, an unknown PACKAGE=VERSION, no cache and no network)."""
    kernel = _one_choice(kernel)
    if isinstance(kernel, artefacts.DebianKernelSpec):
        debian = artefacts.ensure_debian_kernel(profile, progress=progress, spec=kernel)
        image = images.prepare(debian.image, profile)
        info = KernelInfo(str(debian.image), debian.release, image.sha256,
                          _debian_source(kernel, debian), kernel.label)
        debian_config = kconfig.read(debian.config)
        structpage.fill(profile, image, info, debian_config, progress)
        return PreparedKernel(image, info, debian_config)
    path = kernel
    image = images.prepare(path, profile)
    if config_path is None:
        sibling = path.parent / ".config"
        config_path = sibling if sibling.exists() else None
    config = kconfig.read(config_path) if config_path else None
    info = KernelInfo(str(path.resolve()), None, image.sha256, {"type": "image", "format": image.format,
                      "config": str(config_path) if config_path else None})
    structpage.fill(profile, image, info, config, progress)
    return PreparedKernel(image, info, config)


@dataclass(frozen=True)
class TreeBuild:
    """Kernels built from a tree for each arch and variant (tree None: Debian's linux-source)."""

    tree: Path | None = None
    patches: Path | None = None
    # Variant names (kbuild.resolve_variant); None is the base variant.
    variants: tuple[str | None, ...] = (None,)
    # Build each variant at every page size the arch has (loongarch64: 16k and 4k).
    all_page_sizes: bool = False
    toolchain: str | None = None
    fragments: tuple[Path, ...] = ()


def source_tree(tree: Path | None, progress: Progress | None = None) -> Path:
    """The tree to build: the one given, or Debian's newest linux-source as a git repository
    (one commit, so a series can go on it with git am and builds key on that commit)."""
    if tree is not None:
        return trees.check_tree(tree)
    path = artefacts.ensure_linux_source(progress=progress)
    if not trees.is_git(path):
        if progress:
            progress(f"making {path.name} a git repository (once)")
        trees.ensure_git(path)
    return path


def resolve_source(spec: TreeBuild, progress: Progress | None = None) -> trees.Source:
    return trees.resolve(source_tree(spec.tree, progress), spec.patches)


def variant_names(profile: ArchProfile, spec: TreeBuild) -> list[str | None]:
    if not spec.all_page_sizes:
        return list(spec.variants)
    return [name for variant in spec.variants for name in kbuild.page_size_variants(profile, variant)]


def build_kernel(
    profile: ArchProfile, spec: TreeBuild, variant_name: str | None, source: trees.Source,
    progress: Progress | None = None,
) -> PreparedKernel:
    """Build (or take from the build cache) one arch and variant, ready to boot."""
    variant = kbuild.resolve_variant(profile, variant_name, spec.fragments)
    toolchain = kbuild.find_toolchain(profile, spec.toolchain)
    built = kbuild.build(kbuild.BuildRequest(source, profile, variant, toolchain), progress)
    return prepared_build(profile, variant, built)


def prepared_build(profile: ArchProfile, variant: kbuild.Variant, built: kbuild.BuiltKernel,
                   **extra: object) -> PreparedKernel:
    """A built kernel ready to boot, its source described from the build's metadata (EXTRA:
    more fields for the source, e.g. an incremental build's)."""
    image = images.prepare(built.image, profile)
    metadata = built.metadata
    kernel_source = {
        "type": "tree",
        **dict(metadata["source"]),  # type: ignore[call-overload]
        "variant": variant.name,
        "config_sha256": metadata["config_sha256"],
        "toolchain": metadata["toolchain"],
        "build_metadata": str(built.metadata_path),
        "built_now": built.built,
        **extra,
    }
    info = KernelInfo(str(built.image), built.release, image.sha256, kernel_source)
    config = kconfig.read(built.config)
    structpage.fill(profile, image, info, config)
    return PreparedKernel(image, info, config, variant.name)


def prepare_environment(profile: ArchProfile, want_kvm: bool = True) -> GuestEnvironment:
    qemu.qemu_path(profile)  # a missing QEMU is a set-up error before any download
    busybox = artefacts.ensure_busybox(profile)
    helper = guest_helper.build(artefacts.ensure_linux_source(), profile)
    return GuestEnvironment(initramfs.build(busybox.path, helper), qemu.choose_accel(profile, want_kvm),
                            busybox.path, helper)


def skipped_run(profile: ArchProfile, kernel: UnavailableKernel, hvo: str) -> Run:
    """The record of a boot that cannot be made because its kernel does not exist for the arch:
    verdict "skip" with the reason; no boot, no scenarios, no logs."""
    return Run(
        arch=profile.name,
        variant=kernel.variant,
        kernel=kernel.info,
        accel=Accel("none", "not booted"),
        cmdline="",
        boot_seconds=None,
        verdict="skip",
        hvo=Hvo(hvo, "unknown", f"not booted: {kernel.reason}"),  # type: ignore[arg-type]
        findings=[],
        scenarios=[],
        console_log="",
        verdict_reason=kernel.reason,
        ended="not-booted",
    )


def boot(
    profile: ArchProfile,
    kernel: PreparedKernel,
    env: GuestEnvironment,
    hvo: str,
    out_dir: Path,
    append: str = "",
    timeout: float = DEFAULT_TIMEOUT,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    backend: str = "qemu",
    fresh_memory: bool = False,
) -> Run:
    """One boot with hugetlb_free_vmemmap=<hvo>: all its scenarios, judged.

    backend: the booting target (BOOT_TARGETS): "qemu" (QEMU with the initramfs,
    harness/targets/qemu.py) or "vng" (virtme-ng on the host's userspace, harness/targets/vng.py):
    the same guest scripts, results channel and judging (run_target). fresh_memory: boot on
    fresh RAM rather than the memory pool's files (harness/guest_memory.py)."""
    if backend not in BOOT_TARGETS:
        vng.check_backend(backend, [profile], True)  # the one error line naming the backends
    target = BOOT_TARGETS[backend](profile, kernel, env, hvo, append, timeout, progress, fresh_memory)
    return run_target(target, out_dir, progress, stop)


def run_target(target: Target, out_dir: Path, progress: Progress | None = None,
               stop: threading.Event | None = None) -> Run:
    """The plan run on TARGET and judged: prepare, plan, run, judge (targets.judged_run), the
    target's finish where it has one (Target.finish), and for a run judged fail or error the
    target's reproducer (Run.repro). Nothing here asks which target it is."""
    facts = target.prepare()
    plan = make_plan(facts.profile, facts.facts.page_size, facts.hvo)
    if facts.boot_pages is not None:
        # A running target's boot-time pages were allocated at its boot, as its own command
        # line asked: those are what the plan can test (a booting target sets its own).
        plan = dataclasses.replace(plan, boot_pages={size: facts.boot_pages.get(size, 0)
                                                     for size in plan.sizes})
    output = target.run(plan, facts, out_dir, stop)
    run = judged_run(target.name, facts, plan, output, progress)
    finish = getattr(target, "finish", None)  # optional (Target's docstring)
    if finish is not None:
        run = finish(run)
    if run.verdict in ("fail", "error"):
        # Every failing boot gets a reproducer bundle at <out_dir>/repro/<stem>/, whoever
        # called boot (run, triage, bisect); Run.repro names it (harness/bundle.py).
        try:
            repro = target.reproducer(run, out_dir)
        except OSError as error:
            # The boot's own results matter more than its bundle: say why there is none.
            run.hugetlb["repro_error"] = f"cannot write the reproducer bundle: {error.strerror or error}"
            if progress:
                stem = Path(run.console_log).name.removesuffix(".console.log")
                progress(f"{stem}: {run.hugetlb['repro_error']}")
        else:
            run.repro = str(repro) if repro is not None else None
    return run


def new_results() -> Results:
    return Results(harness_version=f"{__version__} ({platform.node()})")


def parse_hvo_settings(text: str, option: str) -> tuple[str, ...]:
    """'on', 'off' or 'on,off' (as given to `option`) -> the hugetlb_free_vmemmap settings."""
    settings = tuple(s.strip() for s in text.split(",") if s.strip())
    if not settings or any(s not in ("on", "off") for s in settings):
        raise HarnessError(f"{option} {text!r}: give on, off or on,off")
    if len(set(settings)) != len(settings):
        # A setting twice would boot twice into the same logs, the second over the first.
        raise HarnessError(f"{option} {text!r}: give each setting once: on, off or on,off")
    return settings


@dataclass(frozen=True)
class MatrixRequest:
    profiles: list[ArchProfile]
    # --kernel: Debian kernels, comma-separated (a release matrix), or one image path
    # (parse_kernels); unused with `build`.
    kernel: str = "debian"
    config: Path | None = None
    hvo_settings: tuple[str, ...] = ("on", "off")
    append: str = ""
    timeout: float = DEFAULT_TIMEOUT
    want_kvm: bool = True
    # Arches booted at once: each TCG guest keeps about one host core busy.
    jobs: int = 2
    # Build kernels from a tree instead of `kernel` (CLI: run --tree).
    build: TreeBuild | None = None
    # How guests boot: "qemu" or "vng" (vng.py; x86_64 kernels built from a tree only).
    backend: str = "qemu"
    fresh_memory: bool = False  # every boot on fresh RAM (--fresh-memory)

    def boot_count(self) -> int:
        """Boots the matrix makes: one per unit (an arch and kernel, or an arch and variant) and
        setting; a kernel that does not exist for an arch still counts, as its skipped runs."""
        if self.build is None:
            units = len(self.profiles) * len(self.kernel_choices())
        else:
            units = sum(len(variant_names(profile, self.build)) for profile in self.profiles)
        return units * len(self.hvo_settings)

    def kernel_choices(self) -> tuple[KernelChoice, ...]:
        """The kernels --kernel names (parse_kernels): a malformed value is a HarnessError."""
        return parse_kernels(self.kernel)

    def check(self) -> None:
        """Every check of the request that needs no download, build or boot: the backend,
        QEMU for each arch, and the kernels (check_kernels). run_matrix makes these first; a
        caller may make them earlier, before it touches anything (the CLI's --out)."""
        vng.check_backend(self.backend, self.profiles, self.build is not None)
        for profile in self.profiles:
            qemu.qemu_path(profile)
        self.check_kernels()

    def check_kernels(self) -> None:
        """What can be known of the kernels without a download or a build: a kernel image's
        path, format and arch (a stat and its headers), its --config; a tree's path, every
        variant and toolchain. A mistyped path fails here in well under a second, where a
        check after the downloads would first fetch linux-source on a cold cache."""
        if self.build is not None:
            if self.build.tree is not None:
                trees.check_tree(self.build.tree)
            for profile in self.profiles:
                for name in variant_names(profile, self.build):
                    kbuild.resolve_variant(profile, name, self.build.fragments)
                kbuild.find_toolchain(profile, self.build.toolchain)
            return
        choices = self.kernel_choices()
        specs = [c for c in choices if isinstance(c, artefacts.DebianKernelSpec)]
        if specs:
            if self.config is not None:
                raise HarnessError("--config is the .config of a --kernel PATH: Debian's kernels come "
                                   "with their own: omit --config")
            every_arch = [get_profile(name) for name in ARCH_NAMES]
            for profile in self.profiles:
                for spec in specs:
                    artefacts.check_spec_arch(spec, profile, every_arch)
            return
        path = choices[0]
        assert isinstance(path, Path)
        if len(self.profiles) > 1:
            raise HarnessError("--kernel PATH is one arch's kernel: give --arch with one arch")
        for profile in self.profiles:
            images.check(path, profile)
        if self.config is not None and not self.config.is_file():
            raise HarnessError(f"--config {self.config}: no such file: give the kernel's .config, "
                               "or omit --config (a .config next to the image is found by itself)")


def prepare_kernels(
    request: MatrixRequest, progress: Progress | None = None
) -> list[tuple[ArchProfile, PreparedKernel | UnavailableKernel]]:
    """Every (arch, kernel) the matrix boots, arch by arch, each arch's kernels in --kernel's
    order; downloads and builds run here, one at a time, before any boot. A Debian suite with
    no kernel for an arch is an UnavailableKernel there (its boots are skips); a tree build
    always gives PreparedKernels."""
    # Every path, variant and toolchain first: a typo or a missing compiler fails before any
    # download or an hour of building.
    request.check_kernels()
    if request.build is None:
        choices = request.kernel_choices()
        units: list[tuple[ArchProfile, PreparedKernel | UnavailableKernel]] = []
        for profile in request.profiles:
            for choice in choices:
                units.append((profile, prepare_matrix_kernel(profile, choice, request.config,
                                                             len(choices) > 1, progress)))
        return units
    source = resolve_source(request.build, progress)
    return [
        (profile, build_kernel(profile, request.build, name, source, progress))
        for profile in request.profiles
        for name in variant_names(profile, request.build)
    ]


def _one_choice(kernel: str | KernelChoice) -> KernelChoice:
    if not isinstance(kernel, str):
        return kernel
    choices = parse_kernels(kernel)
    if len(choices) != 1:
        raise HarnessError(f"one kernel is asked for here, not {kernel!r}: give one item")
    return choices[0]


def prepare_matrix_kernel(
    profile: ArchProfile, choice: str | KernelChoice, config: Path | None = None, several: bool = False,
    progress: Progress | None = None,
) -> PreparedKernel | UnavailableKernel:
    """One unit's kernel (prepare_kernel), or an UnavailableKernel where the Debian suite has
    none for the arch; with SEVERAL kernels per arch the label goes into the file names."""
    choice = _one_choice(choice)
    try:
        kernel = prepare_kernel(profile, choice, config, progress)
    except KernelUnavailable as missing:
        assert isinstance(choice, artefacts.DebianKernelSpec)
        info = KernelInfo("", None, None, _debian_source(choice, None), choice.label)
        return UnavailableKernel(info, missing.reason, file_label=choice.label if several else None)
    return dataclasses.replace(kernel, file_label=kernel.info.label) if several else kernel


def run_matrix(
    request: MatrixRequest,
    out_dir: Path,
    on_run: Callable[[Results, int], None] | None = None,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> Results:
    """Every arch x HVO setting; arches in parallel, each arch's boots in turn.

    on_run(results, total) gets the results so far after every boot, and how many boots the
    matrix makes in all: to save them (Ctrl-C keeps them) and say how far it got. The results
    say it too: complete is False (partial_reason "run in progress: N of M boots done") until
    every boot has run; the results returned are complete unless `stop` cut the matrix short.
    An error in one arch (its set-up, its on_run) sets `stop`, which ends the others' guests."""
    # Every check that needs no download, build or boot comes before all of them.
    request.check()
    total = request.boot_count()
    results = new_results()
    results.complete, results.partial_reason = False, f"run in progress: 0 of {total} boots done"
    stop = stop or threading.Event()
    # The source tree (nolibc for the guest helper) is shared by all arches: fetch it once,
    # before the threads start.
    artefacts.ensure_linux_source()
    units = prepare_kernels(request, progress)
    per_unit: list[list[Run]] = [[] for _ in units]
    lock = threading.Lock()
    # One environment per arch, made once, though a release matrix has several units per arch.
    envs: dict[str, GuestEnvironment] = {}
    env_lock = threading.Lock()
    several = request.build is None and len(request.kernel_choices()) > 1

    def environment(profile: ArchProfile) -> GuestEnvironment:
        with env_lock:
            if profile.name not in envs:
                envs[profile.name] = prepare_environment(profile, request.want_kvm)
            return envs[profile.name]

    def one_unit(index: int) -> None:
        try:
            boot_unit(index)
        except BaseException:
            # Stop the other arches now: their results could not be saved (on_run failed) or
            # the run ends with this error anyway, and the main thread waits for them in turn.
            stop.set()
            raise

    def boot_unit(index: int) -> None:
        profile, kernel = units[index]
        env = None if isinstance(kernel, UnavailableKernel) else environment(profile)
        for hvo in request.hvo_settings:
            if stop.is_set():
                return
            if isinstance(kernel, UnavailableKernel):
                run = skipped_run(profile, kernel, hvo)
            else:  # env was made above for every unit with a kernel
                run = boot(profile, kernel, env, hvo, out_dir, request.append,  # type: ignore[arg-type]
                           request.timeout, progress, stop, request.backend,
                           request.fresh_memory)
            with lock:
                per_unit[index].append(run)
                results.runs = [r for runs in per_unit for r in runs]
                results.partial_reason = f"run in progress: {results.finished_boots()} of {total} boots done"
                if on_run:
                    on_run(results, total)
            if progress:
                release = run.kernel.label if several else None
                label = " ".join(p for p in (profile.name, release, run.variant) if p)
                progress(f"{label} hvo={hvo}: {run.verdict} ({run.verdict_reason})")

    with ThreadPoolExecutor(max_workers=max(1, request.jobs)) as pool:
        futures = [pool.submit(one_unit, index) for index in range(len(units))]
        try:
            for future in futures:
                future.result()
        except BaseException:
            stop.set()
            raise
    done = results.finished_boots()
    results.complete = done == total
    results.partial_reason = None if results.complete else f"stopped after {done} of {total} boots"
    return results
