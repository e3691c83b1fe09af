"""The virtme-ng backend (`run --backend vng`): a real boot of the x86_64 debug+vng kernel, judged
like a QEMU boot of the same kernel; and the one-line errors where the backend does not fit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness import pipeline
from harness.errors import HarnessError
from harness.profiles import get_profile
from harness.results import Results, Run, validate
from tests.cli import one_error_line, run_cli

VARIANT = "debug+vng"
FREED_2M_KIB = 28  # 512 struct pages of 64 bytes: 8 vmemmap pages of 4K, HVO keeps one


def processes_mentioning(text: str) -> list[str]:
    """QEMU, vng or virtme-run processes whose command line has TEXT (an output directory)."""
    # -ww: full command lines (piped, ps cuts them to a width and the path would never match).
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    names = ("qemu-system", "vng", "virtme-run")
    return [line for line in ps.splitlines() if text in line and any(n in line for n in names)]


def test_vng_on_another_arch_is_one_error_line(tmp_path: Path) -> None:
    line = one_error_line(run_cli("run", "--arch", "riscv64", "--backend", "vng", "--tree",
                                  "--variant", VARIANT, "--out", str(tmp_path)))
    assert "x86_64 only" in line and "riscv64" in line
    assert "--arch x86_64" in line and "--backend qemu" in line


def test_vng_without_a_tree_is_one_error_line(tmp_path: Path) -> None:
    line = one_error_line(run_cli("run", "--arch", "x86_64", "--backend", "vng",
                                  "--out", str(tmp_path)))
    assert "--tree --variant debug+vng" in line and "--backend qemu" in line
    # Nothing was booted or written.
    assert not (tmp_path / "results.json").exists()


def test_vng_with_a_kernel_without_9p_is_refused_before_booting(tmp_path: Path) -> None:
    # Debian's kernel has 9p as modules: the guest could not mount its root.
    profile = get_profile("x86_64")
    kernel = pipeline.prepare_kernel(profile, "debian")
    env = pipeline.prepare_environment(profile)
    with pytest.raises(HarnessError, match=r"lacks CONFIG_NET_9P.*--variant debug\+vng"):
        pipeline.boot(profile, kernel, env, "on", tmp_path, backend="vng")
    assert not list(tmp_path.glob("*.console.log"))


@pytest.fixture(scope="module")
def vng_kernel() -> tuple[pipeline.PreparedKernel, pipeline.GuestEnvironment]:
    profile = get_profile("x86_64")
    spec = pipeline.TreeBuild(variants=(VARIANT,))
    kernel = pipeline.build_kernel(profile, spec, VARIANT, pipeline.resolve_source(spec))
    return kernel, pipeline.prepare_environment(profile)


@pytest.fixture(scope="module")
def both_backends(vng_kernel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """The same kernel with HVO on, booted by each backend into its own directory."""
    profile = get_profile("x86_64")
    kernel, env = vng_kernel
    runs = {}
    for backend in ("vng", "qemu"):
        out = tmp_path_factory.mktemp(backend)
        runs[backend] = pipeline.boot(profile, kernel, env, "on", out, backend=backend)
        assert not processes_mentioning(str(out)), f"{backend} left a process behind"
    return runs


@pytest.mark.boot
@pytest.mark.timeout(3600)  # the first run builds the kernel (cached after)
def test_vng_boot_runs_the_same_scenarios_as_qemu(both_backends: dict[str, Run]) -> None:
    vng_run, qemu_run = both_backends["vng"], both_backends["qemu"]
    assert vng_run.ended == "done", (vng_run.verdict_reason, vng_run.console_log)
    assert vng_run.hugetlb["backend"] == "vng"
    assert vng_run.hugetlb["results_channel"] == "virtio-serial"
    assert vng_run.hvo.state == "active"
    # The guest reported every planned scenario, under the names the QEMU backend gives them.
    assert vng_run.scenarios
    assert [s.name for s in vng_run.scenarios] == [s.name for s in qemu_run.scenarios]
    assert not [s.name for s in vng_run.scenarios if s.reason.startswith("never ran")]
    assert vng_run.hugetlb["guest_env"]["release"] == qemu_run.hugetlb["guest_env"]["release"]
    # The reproducer, as for QEMU boots.
    console = Path(vng_run.console_log)
    script = console.with_name(console.name.replace(".console.log", ".vng.sh"))
    assert script.exists() and "--exec" in script.read_text()
    assert b"hvo-init: start" in console.read_bytes()
    # Kernel messages reached the console log (findings are parsed from it).
    assert b"Linux version" in console.read_bytes()
    validate(Results(runs=[vng_run, qemu_run]).to_json())


@pytest.mark.boot
@pytest.mark.timeout(3600)
def test_vng_boot_measures_2m_savings_exactly(both_backends: dict[str, Run]) -> None:
    run = both_backends["vng"]
    judged = [s for s in run.scenarios if s.size == "2M" and s.hvo == "on"]
    assert {(s.mode, s.node) for s in judged} == {
        (mode, node) for mode in ("boot", "runtime") for node in (0, 1)
    }
    for scenario in judged:
        vm = scenario.vmemmap
        assert scenario.status == "pass", scenario.reason
        assert scenario.allocated == scenario.requested > 0
        assert vm.expected_kib_per_page == FREED_2M_KIB
        assert vm.measured_kib_per_page == vm.expected_kib_per_page
        assert vm.claimed_kib_per_page == vm.expected_kib_per_page


@pytest.mark.boot
@pytest.mark.timeout(3600)
def test_vng_guest_ended_at_the_timeout_leaves_nothing_running(vng_kernel, tmp_path: Path) -> None:
    kernel, env = vng_kernel
    # vng is a Python process that runs virtme-run through a shell, which forks QEMU: ending
    # vng must end them all.
    run = pipeline.boot(get_profile("x86_64"), kernel, env, "on", tmp_path, timeout=20, backend="vng")
    assert run.ended == "timeout" and run.verdict == "fail"
    assert not processes_mentioning(str(tmp_path))
