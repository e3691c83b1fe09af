"""pytest plugin (entry point `pytest11`): HVO scenarios on real guest kernels as pytest items,
and fixtures that boot a guest and return its judged results.

    pytest --hvo-arch all -n 2 --junitxml j.xml             # Debian's kernels
    pytest --hvo-arch x86_64 --hvo-kernel debian:trixie,debian:sid   # a release matrix
    pytest --hvo-arch riscv64 --hvo-tree --hvo-variant debug  # linux-source-7.2, built
    pytest --hvo-arch x86_64 --hvo-tree ~/linux --hvo-variant debug --hvo-setting on

Items are one per (arch, kernel, HVO setting, scenario) plus one `boot` item per boot that
fails on any verdict but pass; ids read `hvo/x86_64-debian-hvo-on::2M/boot/node0/hvo-on-cmdline`.
One boot covers all its scenarios: the first item of a boot boots it, the rest read the
result. With pytest-xdist the items of one boot stay on one worker (`--dist loadscope`, set
by the plugin), and every boot takes its guest memory from a host-wide budget
(guest_memory.py) so parallel guests do not starve the host. With --hvo-arch and no test
paths, only the HVO items run; give paths to run other tests too.

Runners are thin: this calls the same pipeline functions as the CLI."""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from harness import artefacts, guest_memory, kbuild, pipeline, qemu
from harness.errors import HarnessError
from harness.plan import make_plan
from harness.profiles import ARCH_NAMES, ArchProfile, get_profile, parse_arch_list, parse_size
from harness.results import Run, Scenario


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hvo-harness", "HVO scenarios on real guest kernels")
    group.addoption("--hvo-arch",
                    help="collect HVO items for these arches: x86_64,riscv64,loongarch64 or all")
    group.addoption("--hvo-kernel", default="debian",
                    help="'debian' (= debian:sid, sid's prebuilt kernels, default), debian:trixie, "
                         "debian:experimental, debian:PACKAGE=VERSION, comma-separated for a "
                         "release matrix, or a kernel image path (one arch)")
    group.addoption("--hvo-tree", nargs="?", const="debian", default=None,
                    help="build the kernels from this tree (alone: Debian's linux-source)")
    group.addoption("--hvo-variant", default=None,
                    help="build variant, e.g. debug or debug+4k (with --hvo-tree)")
    group.addoption("--hvo-setting", default="on,off", help="hugetlb_free_vmemmap settings to boot (on,off)")
    group.addoption("--hvo-out", default=None, help="directory for console logs (default: pytest's basetemp)")
    group.addoption("--hvo-fresh-memory", action="store_true",
                    help="boot every guest on fresh RAM, not on the memory pool's files that earlier "
                         "boots of the same size left (harness/guest_memory.py)")


@dataclass(frozen=True)
class KernelSpec:
    """Which kernel a boot uses: Debian's (one --hvo-kernel item: 'debian', 'debian:trixie',
    'debian:PACKAGE=VERSION'), an image, or a tree build with a variant."""

    kernel: str = "debian"
    tree: str | None = None
    variant: str | None = None

    def __post_init__(self) -> None:
        # One key per kernel: 'debian' and 'debian:sid' are the same boot, and a fixture asking
        # for one must get the run the collected items booted for the other, not boot again.
        if self.tree is None:
            choice = pipeline.parse_kernels(self.kernel, "--hvo-kernel")[0]
            if isinstance(choice, artefacts.DebianKernelSpec):
                object.__setattr__(self, "kernel", choice.text)

    @property
    def label(self) -> str:
        """In item ids and the log directory: 'debian' (sid), 'debian-trixie', an image's name."""
        if self.tree is None:
            choice = pipeline.parse_kernels(self.kernel, "--hvo-kernel")[0]
            if isinstance(choice, Path):
                return choice.name
            return "debian" if choice == artefacts.SID_KERNEL else f"debian-{choice.label}"
        tree = "linux-source" if self.tree == "debian" else Path(self.tree).name
        return f"{tree}-{self.variant or 'base'}"


@dataclass(frozen=True)
class BootKey:
    arch: str
    spec: KernelSpec
    hvo: str

    @property
    def label(self) -> str:
        return f"{self.arch}-{self.spec.label}-hvo-{self.hvo}"


class Boots:
    """Boots made in this process, by key: each boots once, whoever asks first."""

    def __init__(self, out_dir: Callable[[], Path], fresh_memory: bool = False) -> None:
        self._out_dir = out_dir
        self._fresh_memory = fresh_memory
        self._runs: dict[BootKey, Run] = {}
        self._errors: dict[BootKey, HarnessError] = {}
        self._kernels: dict[tuple[str, KernelSpec], pipeline.PreparedKernel | pipeline.UnavailableKernel] = {}
        self._lock = threading.Lock()

    def kernel(
        self, profile: ArchProfile, spec: KernelSpec
    ) -> pipeline.PreparedKernel | pipeline.UnavailableKernel:
        """The kernel, or (a Debian suite with none for the arch) an UnavailableKernel."""
        key = (profile.name, spec)
        if key not in self._kernels:
            if spec.tree is None:
                self._kernels[key] = pipeline.prepare_matrix_kernel(profile, spec.kernel)
            else:
                build = pipeline.TreeBuild(tree=None if spec.tree == "debian" else Path(spec.tree),
                                           variants=(spec.variant,))
                source = pipeline.resolve_source(build)
                self._kernels[key] = pipeline.build_kernel(profile, build, spec.variant, source)
        return self._kernels[key]

    def get(self, key: BootKey) -> Run:
        with self._lock:
            if key in self._errors:
                raise self._errors[key]
            if key not in self._runs:
                try:
                    self._runs[key] = self._boot(key)
                except HarnessError as error:
                    self._errors[key] = error
                    raise
            return self._runs[key]

    def _boot(self, key: BootKey) -> Run:
        profile = get_profile(key.arch)
        kernel = self.kernel(profile, key.spec)
        if isinstance(kernel, pipeline.UnavailableKernel):
            return pipeline.skipped_run(profile, kernel, key.hvo)
        env = pipeline.prepare_environment(profile)
        out = self._out_dir() / key.spec.label
        # The boot takes its memory through the host-wide ledger (guest_memory.take), so
        # xdist workers booting at once wait rather than overcommit the host.
        return pipeline.boot(profile, kernel, env, key.hvo, out, fresh_memory=self._fresh_memory)


class ScenarioFailed(Exception):
    """A scenario or a boot that failed: the message is the harness's reason and findings."""


def failure_text(run: Run, scenario: Scenario | None, what: str) -> str:
    lines = [what]
    if scenario is not None:
        lines.append(f"reason: {scenario.reason}")
    lines.append(f"boot: {run.verdict} ({run.verdict_reason})")
    for finding in run.findings[:2]:
        excerpt = finding.excerpt.splitlines()
        lines += ["", f"finding: {finding.summary()}", *excerpt[:25]]
        if len(excerpt) > 25:
            lines.append(f"... ({len(excerpt) - 25} more lines)")
    if len(run.findings) > 2:
        lines.append(f"... and {len(run.findings) - 2} more findings")
    lines += ["", f"console log: {run.console_log}"]
    console = Path(run.console_log)
    reproducer = console.with_name(console.name.replace(".console.log", ".qemu.sh"))
    if reproducer.exists():
        lines.append(f"reproduce: sh {reproducer}")
    return "\n".join(lines)


def _sysctl_absent(run: Run) -> bool:
    env = run.hugetlb.get("guest_env") or {}
    return env.get("sysctl") == "absent"


class HvoItem(pytest.Item):
    """One scenario of one boot (or, named `boot`, the boot's own findings)."""

    def __init__(self, *, key: BootKey, scenario: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.key = key
        self.scenario = scenario
        self.user_properties.append(("arch", key.arch))
        self.user_properties.append(("kernel", key.spec.label))

    def runtest(self) -> None:
        try:
            run = boots_of(self.config).get(self.key)
        except HarnessError as error:
            raise ScenarioFailed(f"set-up error: {error}") from None
        self.user_properties.append(("console_log", run.console_log))
        if run.verdict == "skip":
            pytest.skip(run.verdict_reason)  # not booted: the suite has no kernel for the arch
        if self.scenario == "boot":
            # Any verdict but pass: a hang after the last scenario, a results channel cut short
            # or a KTAP count that does not add up fail no scenario item, only this one.
            if run.verdict != "pass" or run.findings:
                raise ScenarioFailed(failure_text(run, None, f"boot {run.verdict}: {run.verdict_reason}"))
            # A failed scenario no item was collected for must not hide behind a pass.
            planned = set(self.parent.scenarios) if isinstance(self.parent, HvoBootCollector) else set()
            unplanned = [s for s in run.scenarios if s.name not in planned and s.status == "fail"]
            if unplanned:
                names = ", ".join(s.name for s in unplanned)
                raise ScenarioFailed(failure_text(run, unplanned[0], f"unplanned scenarios failed: {names}"))
            return
        found = next((s for s in run.scenarios if s.name == self.scenario), None)
        if found is None and self.scenario.endswith("-sysctl") and _sysctl_absent(run):
            # No /proc/sys/vm/hugetlb_optimize_vmemmap: the guest made one run-time pass under
            # the boot's own setting; it stands for the pass with that setting.
            where, setting = self.scenario.rsplit("/", 1)
            found = next((s for s in run.scenarios if f"{s.size}/{s.mode}/node{s.node}" == where
                          and setting.startswith(f"hvo-{s.hvo}-")), None)
            if found is None:
                pytest.skip(f"the kernel has no /proc/sys/vm/hugetlb_optimize_vmemmap: HVO cannot be "
                            f"switched at run time ({run.hvo.reason})")
        if found is None:
            what = f"{self.scenario}: not in the results (never reported)"
            raise ScenarioFailed(failure_text(run, None, what))
        self.user_properties.append(("vmemmap_kib_per_page_expected", found.vmemmap.expected_kib_per_page))
        self.user_properties.append(("vmemmap_kib_per_page_measured", found.vmemmap.measured_kib_per_page))
        if found.status == "skip":
            pytest.skip(found.reason)
        if found.status != "pass":
            raise ScenarioFailed(failure_text(run, found, f"{self.scenario}: {found.status}"))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: str | None = None) -> str:
        if isinstance(excinfo.value, ScenarioFailed):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return Path("hvo"), None, f"{self.key.label}::{self.scenario}"


class HvoBootCollector(pytest.Collector):
    def __init__(self, *, key: BootKey, scenarios: list[str], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.key = key
        self.scenarios = scenarios

    def collect(self) -> Iterator[pytest.Item]:
        for name in ["boot", *self.scenarios]:
            yield HvoItem.from_parent(self, name=name, key=self.key, scenario=name)


# Per config, not a module global: an in-process pytester session (tests/test_judge.py) configures
# the plugin again, and a global would leave the outer session with the inner one's Boots, whose
# config has been torn down (no _tmp_path_factory).
BOOTS_KEY = pytest.StashKey["Boots"]()


def boots_of(config: pytest.Config) -> Boots:
    return config.stash[BOOTS_KEY]


def _page_size(profile: ArchProfile, spec: KernelSpec, boots: Boots) -> int | None:
    """The kernel's base page size, which the plan (and so the items) depend on; None when the
    Debian suite has no kernel for the arch (only the boot item, a skip, is collected)."""
    if spec.tree is not None:
        return parse_size(kbuild.resolve_variant(profile, spec.variant).page_size)
    kernel = boots.kernel(profile, spec)
    if isinstance(kernel, pipeline.UnavailableKernel):
        return None
    return pipeline.kernel_facts(profile, kernel).page_size


def _booted_profile(profile: ArchProfile, spec: KernelSpec, boots: Boots) -> ArchProfile:
    """The profile as pipeline.boot will boot the kernel (qemu.boot_profile: firmware or not, and
    so the NUMA nodes the plan's items name). A tree's kernel is not built at collection: it is
    the arch's build.image, which boots directly (loongarch64's vmlinux.elf: one node)."""
    kernel = None if spec.tree is not None else boots.kernel(profile, spec)
    if isinstance(kernel, pipeline.PreparedKernel):
        return qemu.boot_profile(profile, kernel.image)
    return replace(profile, node_mem_mib=qemu.guest_node_layout(profile, profile.node_mem_mib))


def requested_boots(config: pytest.Config) -> list[tuple[BootKey, list[str]]]:
    option = config.getoption("--hvo-arch")
    if not option:
        return []
    tree, variant = config.getoption("--hvo-tree"), config.getoption("--hvo-variant")
    try:
        settings = pipeline.parse_hvo_settings(config.getoption("--hvo-setting"), "--hvo-setting")
        profiles = parse_arch_list(option)
        kernel_option = config.getoption("--hvo-kernel")
        # The CLI's checks of --kernel: the spec syntax, a path with one arch, a package's arch.
        choices = pipeline.parse_kernels(kernel_option, "--hvo-kernel")
        if isinstance(choices[0], Path) and len(profiles) > 1:
            raise HarnessError("--hvo-kernel PATH is one arch's kernel: give --hvo-arch with one arch")
        every_arch = [get_profile(name) for name in ARCH_NAMES]
        for profile in profiles:
            for choice in choices:
                if isinstance(choice, artefacts.DebianKernelSpec):
                    artefacts.check_spec_arch(choice, profile, every_arch, "--hvo-kernel")
        items = [c.text if isinstance(c, artefacts.DebianKernelSpec) else str(c) for c in choices]
        specs = [KernelSpec(item, tree, variant) for item in (items if tree is None else ["debian"])]
        boots = []
        for profile in profiles:
            for spec in specs:
                page_size = _page_size(profile, spec, boots_of(config))
                planned = _booted_profile(profile, spec, boots_of(config))
                for hvo in settings:
                    names = [] if page_size is None else make_plan(planned, page_size, hvo).scenario_names()
                    boots.append((BootKey(profile.name, spec, hvo), names, planned.memory_mib))
        # The kernel whose boots need the most guest memory first (stable: a kernel's boots stay
        # together, in the order asked): the longest boots start first under xdist, and every
        # later, smaller guest finds an idle memory file of its size (guest_memory.py).
        kernel_mib: dict[tuple[str, KernelSpec], int] = {}
        for key, _, mib in boots:
            kernel_mib[(key.arch, key.spec)] = kernel_mib.get((key.arch, key.spec), 0) + mib
        boots.sort(key=lambda boot: -kernel_mib[(boot[0].arch, boot[0].spec)])
        return [(key, names) for key, names, _ in boots]
    except HarnessError as error:
        raise pytest.UsageError(f"hvo-harness: {error}") from None


def pytest_configure(config: pytest.Config) -> None:
    def out_dir() -> Path:
        given = config.getoption("--hvo-out")
        if given:
            return Path(given)
        factory = config._tmp_path_factory  # type: ignore[attr-defined]
        return factory.getbasetemp() / "hvo"

    config.stash[BOOTS_KEY] = Boots(out_dir, bool(config.getoption("--hvo-fresh-memory")))
    guest_memory.sweep()  # what a crashed or killed session left in the memory pool
    _sigterm_as_interrupt()
    # The items of one boot must stay on one worker, or each worker would boot it again.
    # loadscope groups items by their nodeid up to the last "::", which for ours is the boot
    # (hvo/<arch>-<kernel>-hvo-<setting>). Not loadgroup: it marks groups by rewriting nodeids,
    # which pytest 9.2 ignores, so groups are silently spread (pytest-xdist#1386).
    if config.getoption("--hvo-arch") and getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadscope"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under `-n N` with --hvo-arch: a kernel's boots (HVO on and off) on one worker, one after
    the other, so the second boots on the memory files the first one wrote (guest_memory.py)
    rather than both at once on fresh memory, each slowing the other."""
    if not config.getoption("--hvo-arch") or getattr(config.option, "dist", "no") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    # In collection order (requested_boots: the kernel with the most guest memory first), not
    # loadscope's by number of items, which is no measure of a boot's time.
    config.option.loadscopereorder = False

    class KernelScopeScheduling(LoadScopeScheduling):
        """A kernel's boots are one unit for the first kernel of each worker; a later kernel's
        boots are a unit each, so the last and smallest fill whichever worker is free first
        (each worker then has idle files at least as large as them: the matrix's tail was one
        worker booting loongarch64 twice while the other idled)."""

        def __init__(self, config: pytest.Config, log: Any) -> None:
            super().__init__(config, log)
            self._kernel_whole: dict[str, bool] = {}  # by first sight, i.e. collection order

        def _split_scope(self, nodeid: str) -> str:
            scope = nodeid.rsplit("::", 1)[0]
            boot, _, rest = nodeid.partition("::")
            if not (boot.startswith("hvo/") and rest):
                return scope
            # hvo/<arch>-<kernel>-hvo-<setting>::... -> hvo/<arch>-<kernel>, the first time
            # each kernel is seen (collection order), for as many kernels as there are workers.
            kernel = re.sub(r"-hvo-[a-z]+$", "", boot)
            if kernel not in self._kernel_whole:
                self._kernel_whole[kernel] = len(self._kernel_whole) < self.numnodes
            return kernel if self._kernel_whole[kernel] else boot

    return KernelScopeScheduling(config, log)


def pytest_unconfigure(config: pytest.Config) -> None:
    # The memory pool's files this process used last go when the session is done (a
    # worker's with it; a killed worker's at the next sweep).
    guest_memory.release_pool()


def _sigterm_as_interrupt() -> None:
    """SIGTERM ends the session as Ctrl-C does (pytest reports what ran, unconfigure lets the
    memory pool's files go), where nothing else has claimed SIGTERM."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """`pytest --hvo-arch ...` with no paths is the HVO matrix alone: the testpaths are not
    imported only to be deselected (seconds of imports per process, each xdist worker's too,
    before its first boot)."""
    if config.getoption("--hvo-arch") and config.args_source != pytest.Config.ArgsSource.ARGS:
        return True
    return None


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    boots = requested_boots(config)
    if not boots:
        return
    # (`pytest --hvo-arch ...` with no paths collects nothing else: pytest_ignore_collect.)
    for key, scenarios in boots:
        collector = HvoBootCollector.from_parent(session, name=f"hvo/{key.label}", nodeid=f"hvo/{key.label}",
                                                 key=key, scenarios=scenarios)
        collected = list(collector.collect())
        # Reported like any collector's result, so the header counts them ("collected N items").
        report = pytest.CollectReport(collector.nodeid, "passed", None, collected)
        config.hook.pytest_collectreport(report=report)
        items.extend(collected)


@pytest.fixture(scope="session")
def hvo_boot(pytestconfig: pytest.Config) -> Callable[..., Run]:
    """Boot (once per session and process) and return the judged Run:
    hvo_boot("x86_64", "on"), hvo_boot("riscv64", "on", tree="debian", variant="debug")."""

    def boot(arch: str, hvo: str, kernel: str = "debian", tree: str | None = None,
             variant: str | None = None) -> Run:
        return boots_of(pytestconfig).get(BootKey(arch, KernelSpec(kernel, tree, variant), hvo))

    return boot
