"""The pipeline every runner calls: kernel → image → initramfs → boot → protocol → judge → Run.

One function per stage boundary; the CLI, the tests and later runners only call these."""

from __future__ import annotations

import platform
import shlex
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from harness import (
    __version__,
    artefacts,
    guest,
    guest_helper,
    images,
    initramfs,
    judge,
    kconfig,
    protocol,
    qemu,
)
from harness.plan import make_plan
from harness.profiles import ArchProfile
from harness.results import Accel, KernelInfo, Results, Run

Progress = Callable[[str], None]
DEFAULT_TIMEOUT = 300.0


@dataclass(frozen=True)
class PreparedKernel:
    """A bootable kernel for one arch, with what is known of it."""

    image: images.KernelImage
    info: KernelInfo
    config: dict[str, str] | None


@dataclass(frozen=True)
class GuestEnvironment:
    """Everything but the kernel that a boot of this arch needs."""

    initramfs: Path
    accel: qemu.AccelChoice


def prepare_kernel(profile: ArchProfile, kernel: str, config_path: Path | None = None) -> PreparedKernel:
    """'debian' (sid's newest prebuilt kernel) or a path to an image."""
    if kernel == "debian":
        debian = artefacts.ensure_debian_kernel(profile)
        image = images.prepare(debian.image, profile)
        source = {
            "type": "debian",
            "packages": [{"name": p.name, "version": p.version, "sha256": p.sha256}
                         for p in debian.packages],
        }
        info = KernelInfo(str(debian.image), debian.release, image.sha256, source)
        return PreparedKernel(image, info, kconfig.read(debian.config))
    path = Path(kernel).expanduser()
    image = images.prepare(path, profile)
    if config_path is None:
        sibling = path.parent / ".config"
        config_path = sibling if sibling.exists() else None
    config = kconfig.read(config_path) if config_path else None
    info = KernelInfo(str(path.resolve()), None, image.sha256, {"type": "image", "format": image.format,
                      "config": str(config_path) if config_path else None})
    return PreparedKernel(image, info, config)


def prepare_environment(profile: ArchProfile, want_kvm: bool = True) -> GuestEnvironment:
    qemu.qemu_path(profile)  # a missing QEMU is a set-up error before any download
    busybox = artefacts.ensure_busybox(profile)
    helper = guest_helper.build(artefacts.ensure_linux_source(), profile)
    return GuestEnvironment(initramfs.build(busybox.path, helper), qemu.choose_accel(profile, want_kvm))


def kernel_facts(profile: ArchProfile, kernel: PreparedKernel) -> judge.KernelFacts:
    config = kernel.config or {}
    page_size = kconfig.page_size(config) or min(profile.huge_sizes_by_page_size)
    hvo_built = None
    if kernel.config is not None:
        hvo_built = config.get("CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP") == "y"
    return judge.KernelFacts(page_size, profile.struct_page_size, hvo_built)


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
) -> Run:
    """One boot with hugetlb_free_vmemmap=<hvo>: all its scenarios, judged."""
    facts = kernel_facts(profile, kernel)
    plan = make_plan(profile, facts.page_size, hvo)
    stem = f"{profile.name}-hvo-{hvo}"
    console_log = out_dir / f"{stem}.console.log"
    files = qemu.GuestFiles(
        kernel.image.path, env.initramfs, out_dir / f"{stem}.results.ktap", out_dir / f"{stem}.dmesg.log"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (files.results, files.dmesg):
        stale.unlink(missing_ok=True)
    cmdline = qemu.kernel_cmdline(profile, *plan.kernel_args(), append)
    argv = qemu.build_argv(profile, files, cmdline, env.accel)
    (out_dir / f"{stem}.qemu.sh").write_text(
        "#!/bin/sh\n# Reproduce this boot by hand (the console is on stdio).\n"
        + shlex.join(argv) + "\n"
    )
    if progress:
        progress(f"{profile.name}: booting with hugetlb_free_vmemmap={hvo} ({env.accel.used})")
    outcome = guest.run(argv, console_log, timeout, stop=stop)
    console = console_log.read_bytes().decode(errors="replace")
    results_text = files.results.read_text(errors="replace") if files.results.exists() else ""
    report = protocol.parse(results_text)
    channel = "virtio-serial"
    if not report.env and "hvo-init: error: no virtio-serial port" in console:
        # The guest fell back to the console (its kernel has no usable virtio-serial port):
        # results lines are whole lines there, and kernel lines never parse as results.
        report = protocol.parse(console)
        channel = "console (no virtio-serial port in the guest)"
    verdict = judge.judge(profile, plan, facts, console, report, outcome)
    return Run(
        arch=profile.name,
        kernel=kernel.info,
        accel=Accel(env.accel.used, env.accel.kvm_reason),  # type: ignore[arg-type]
        cmdline=cmdline,
        boot_seconds=round(outcome.boot_seconds, 2) if outcome.boot_seconds else None,
        verdict=verdict.verdict,  # type: ignore[arg-type]
        hvo=verdict.hvo,
        findings=verdict.findings,
        scenarios=verdict.scenarios,
        console_log=str(console_log),
        verdict_reason=verdict.verdict_reason,
        ended=outcome.ended,
        qemu_argv=argv,
        results_log=str(files.results),
        hugetlb={
            "registered": verdict.hugetlb.registered,
            "freeable_kib": verdict.hugetlb.freeable_kib,
            "unsupported": verdict.hugetlb.unsupported,
            "allocation_failures": verdict.hugetlb.allocation_failures,
            "page_size": facts.page_size,
            "guest_env": report.env,
            "seconds": round(outcome.seconds, 2),
            "results_channel": channel,
        },
    )


def new_results() -> Results:
    return Results(harness_version=f"{__version__} ({platform.node()})")


@dataclass(frozen=True)
class MatrixRequest:
    profiles: list[ArchProfile]
    kernel: str = "debian"
    config: Path | None = None
    hvo_settings: tuple[str, ...] = ("on", "off")
    append: str = ""
    timeout: float = DEFAULT_TIMEOUT
    want_kvm: bool = True
    # Arches booted at once: each TCG guest keeps about one host core busy.
    jobs: int = 2


def run_matrix(
    request: MatrixRequest,
    out_dir: Path,
    on_run: Callable[[Results], None] | None = None,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> Results:
    """Every arch x HVO setting; arches in parallel, each arch's boots in turn.

    on_run gets the results so far after every boot (to save them: Ctrl-C keeps them)."""
    results = new_results()
    per_arch: dict[str, list[Run]] = {p.name: [] for p in request.profiles}
    lock = threading.Lock()
    stop = stop or threading.Event()

    def one_arch(profile: ArchProfile) -> None:
        kernel = prepare_kernel(profile, request.kernel, request.config)
        env = prepare_environment(profile, request.want_kvm)
        for hvo in request.hvo_settings:
            if stop.is_set():
                return
            run = boot(profile, kernel, env, hvo, out_dir, request.append, request.timeout,
                       progress, stop)
            with lock:
                per_arch[profile.name].append(run)
                results.runs = [r for p in request.profiles for r in per_arch[p.name]]
                if on_run:
                    on_run(results)
            if progress:
                progress(f"{profile.name} hvo={hvo}: {run.verdict} ({run.verdict_reason})")

    # The source tree (nolibc for the guest helper) is shared by all arches: fetch it once,
    # before the threads start.
    artefacts.ensure_linux_source()
    with ThreadPoolExecutor(max_workers=max(1, request.jobs)) as pool:
        futures = [pool.submit(one_arch, profile) for profile in request.profiles]
        try:
            for future in futures:
                future.result()
        except BaseException:
            stop.set()
            raise
    return results
