"""`export lava`: LAVA job definitions checked with LAVA's own schemas (Debian's lava-common,
run in the system python3 as harness/targets/lava.py does, but called here directly), bad input
as one error line; a LAVA run judged like every target's (annotated findings, a dispatcher's
failure an error); and (boot) jobs run through Debian's lava-dispatcher: one judged, one the
dispatcher fails, one ended half-way without leaving its scratch directory."""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import os
import shlex
import subprocess
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import libarchive
import pytest
import yaml

from harness import judge, pipeline
from harness.errors import HarnessError
from harness.guest import GuestOutcome
from harness.plan import make_plan
from harness.profiles import get_profile
from harness.results import KernelInfo, Results, load, validate
from harness.structpage import StructPage
from harness.targets import TargetOutput, judged_run, lava
from tests.cli import one_error_line, run_cli
from tests.recorded import X86, document

# LAVA's job and device schemas, strict, as a LAVA server of Debian bookworm checks a job.
_LAVA_CHECK = r"""
import sys, yaml
from lava_common.schemas import validate
from lava_common.schemas.device import validate as validate_device
kind, path = sys.argv[1], sys.argv[2]
data = yaml.safe_load(open(path))
validate_device(data) if kind == "device" else validate(data, strict=True)
print("valid")
"""


def lava_check(kind: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([lava.LAVA_PYTHON, "-c", _LAVA_CHECK, kind, str(path)], capture_output=True,
                          text=True, check=False)


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def _actions(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {next(iter(action)): next(iter(action.values())) for action in job["actions"]}


@pytest.fixture(scope="module")
def x86_kernel() -> pipeline.PreparedKernel:
    """Debian sid's x86_64 kernel, from the cache after the first fetch."""
    return pipeline.prepare_kernel(get_profile("x86_64"), "debian")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, x86_kernel: pipeline.PreparedKernel) -> Path:
    out = tmp_path_factory.mktemp("lava") / "jobs"
    proc = run_cli("export", "lava", "--arch", "x86_64,riscv64,loongarch64", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_every_job_and_device_passes_lavas_own_schema(exported: Path) -> None:
    jobs = sorted(exported.glob("*.yaml"))
    boards = sorted((exported / "boards").glob("*.yaml"))
    devices = sorted((exported / "devices").glob("*.yaml"))
    assert [p.name for p in jobs] == ["riscv64-hvo-off.yaml", "riscv64-hvo-on.yaml",
                                      "x86_64-hvo-off.yaml", "x86_64-hvo-on.yaml"]
    # A board template per boot, loongarch64 too: a board needs no QEMU device type.
    assert len(boards) == 6 and any("loongarch64" in p.name for p in boards)
    assert [p.name for p in devices] == [p.name for p in jobs]
    for path in [*jobs, *boards]:
        proc = lava_check("job", path)
        assert proc.returncode == 0 and proc.stdout.strip() == "valid", (path, proc.stderr)
    for path in devices:
        proc = lava_check("device", path)
        assert proc.returncode == 0, (path, proc.stderr)


def test_the_job_boots_the_plans_command_line(exported: Path, x86_kernel: pipeline.PreparedKernel) -> None:
    job = load_yaml(exported / "x86_64-hvo-on.yaml")
    assert job["device_type"] == "qemu" and job["context"]["arch"] == "x86_64"
    images = _actions(job)["deploy"]["images"]
    words = shlex.split(images["kernel"]["image_arg"].replace("{kernel}", "K"))
    assert words[:2] == ["-kernel", "K"] and words[2] == "-append"
    cmdline = words[3].split()
    # The plan pipeline.boot makes for this kernel, word for word, after the console words.
    profile = get_profile("x86_64")
    facts = pipeline.kernel_facts(profile, x86_kernel)
    plan = make_plan(profile, facts.page_size, "on")
    assert cmdline[:3] == ["console=ttyS0", "panic=-1", "printk.time=1"]
    assert cmdline[-len(plan.kernel_args()):] == plan.kernel_args()
    assert "hugetlb_free_vmemmap=on" in cmdline and "hugepagesz=1G" in cmdline
    off = _actions(load_yaml(exported / "x86_64-hvo-off.yaml"))["deploy"]["images"]["kernel"]["image_arg"]
    assert "hugetlb_free_vmemmap=off" in off
    # The same NUMA layout as the harness's own boots: two nodes.
    assert sum("-numa node" in option for option in job["context"]["extra_options"]) == 2
    # Every file the job names is there, as the dispatcher reads a file:// URL (no %-escapes).
    for image in images.values():
        assert image["url"].startswith("file:///") and Path(image["url"][len("file://"):]).is_file()
    assert Path(images["kernel"]["url"][len("file://"):]) == x86_kernel.image.path
    riscv = _actions(load_yaml(exported / "riscv64-hvo-on.yaml"))["deploy"]["images"]
    assert riscv["bios"]["image_arg"] == "-bios {bios}"


def test_the_ramdisk_gives_lava_a_shell_and_the_test_runs_scenarios(exported: Path) -> None:
    job = load_yaml(exported / "x86_64-hvo-on.yaml")
    actions = _actions(job)
    ramdisk = actions["deploy"]["images"]["ramdisk"]
    assert ramdisk["format"] == "cpio.newc" and ramdisk["overlays"] == {"lava": True}
    entries: dict[str, bytes] = {}
    with libarchive.file_reader(ramdisk["url"][len("file://"):]) as archive:
        for entry in archive:
            entries[entry.pathname] = b"".join(entry.get_blocks())
    assert entries["init"].decode() == lava.LAVA_INIT
    assert "hvo/scenarios.sh" in entries and "bin/hvoh" in entries and "bin/busybox" in entries
    assert f"export PS1='{lava.PROMPT}'" in lava.LAVA_INIT
    assert actions["boot"]["prompts"] == [lava.PROMPT]
    definition = actions["test"]["definitions"][0]
    steps = definition["repository"]["run"]["steps"]
    assert definition["from"] == "inline"
    assert any("/hvo/scenarios.sh" in step for step in steps)
    assert any("lava-test-case" in step for step in steps)


def test_lava_test_case_names_from_ktap(tmp_path: Path) -> None:
    """The test definition's KTAP loop, run by a real shell with a stand-in lava-test-case
    (LAVA's own writes a signal line; here it writes its arguments)."""
    (tmp_path / "lava-test-case").write_text('#!/bin/sh\necho "$@" >> "$CASES"\n')
    (tmp_path / "lava-test-case").chmod(0o755)
    ktap = ("KTAP version 1\n1..4\n# hvo: boot size_kb=2048 node=0 allocated=2\n"
            "ok 1 boot size_kb=2048 node=0\n"
            "not ok 2 boot size_kb=1048576 node=1 # touch_rc=1 release_rc=0\n"
            "ok 3 boot size_kb=16777216 node=0 # SKIP no /sys/devices/system/node/node0/hugepages\n"
            "ok 4 runtime size_kb=2048 node=1 sysctl=0\n")
    (tmp_path / "hvo.ktap").write_text(ktap)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "CASES": str(tmp_path / "cases")}
    loop = next(s for s in lava.test_definition(False)["run"]["steps"] if "lava-test-case" in s)
    assert loop.endswith("< /tmp/hvo.ktap")
    loop = loop.replace("/tmp/hvo.ktap", str(tmp_path / "hvo.ktap"))
    subprocess.run(["/bin/sh", "-c", loop], env=env, check=True)
    assert (tmp_path / "cases").read_text().splitlines() == [
        "boot-2048kB-node0 --result pass",
        "boot-1048576kB-node1 --result fail",
        "boot-16777216kB-node0 --result skip",
        "runtime-2048kB-node1-sysctl0 --result pass",
    ]


def test_lavas_schema_refuses_a_broken_job(exported: Path) -> None:
    job = load_yaml(exported / "x86_64-hvo-on.yaml")
    broken = copy.deepcopy(job)
    del broken["visibility"]
    with pytest.raises(HarnessError, match=r"bad: LAVA's schema refuses it: .*visibility"):
        lava.to_yaml({"bad": broken})
    broken = copy.deepcopy(job)
    _actions(broken)["deploy"]["images"]["ramdisk"]["format"] = "cpio"
    with pytest.raises(HarnessError, match="LAVA's schema refuses it"):
        lava.to_yaml({"bad": broken})


def test_export_from_a_results_file_keeps_the_runs_command_line(
    tmp_path: Path, x86_kernel: pipeline.PreparedKernel
) -> None:
    doc = document(X86)
    run = doc["runs"][0]
    argv = run["qemu_argv"]
    argv[argv.index("-kernel") + 1] = str(x86_kernel.image.path)  # the recorded build is gone
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    proc = run_cli("export", "lava", str(path), "--out", str(tmp_path / "jobs"))
    assert proc.returncode == 0, proc.stderr
    job = load_yaml(tmp_path / "jobs" / "x86_64-hvo-on.yaml")
    assert f'-append "{run["cmdline"]}"' in _actions(job)["deploy"]["images"]["kernel"]["image_arg"]
    assert lava_check("job", tmp_path / "jobs" / "x86_64-hvo-on.yaml").returncode == 0


@pytest.mark.parametrize("case", ["missing", "loongarch64-only", "kernel-gone", "both", "neither", "hvo"])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    path = tmp_path / "r.json"
    doc = document(X86)
    args = [str(path)]
    if case == "loongarch64-only":
        doc["runs"][0]["arch"] = "loongarch64"
    if case == "both":
        args += ["--arch", "x86_64"]
    if case == "neither":
        args = []
    if case == "hvo":
        args += ["--hvo", "on"]
    if case != "missing":
        path.write_text(json.dumps(doc))
    proc = run_cli("export", "lava", *args, "--out", str(tmp_path / "jobs"))
    line = one_error_line(proc)
    expected = {
        "missing": "no such file",
        "loongarch64-only": "loongarch64: LAVA 2023.01's qemu device type",
        "kernel-gone": "is not there any more",
        "both": "not both",
        "neither": "not both and not neither",
        "hvo": "--hvo is for export lava --arch",
    }[case]
    assert expected in line
    assert not (tmp_path / "jobs").exists()


@pytest.mark.boot
def test_one_x86_64_job_through_lava_dispatcher_judged(tmp_path: Path) -> None:
    """lava-run (Debian's lava-dispatcher) boots the job under QEMU, its test shell runs the
    scenarios; LAVA records a test case per scenario and the harness's judge reads the same
    boot back from the dispatcher's log. About a minute under TCG."""
    out = tmp_path / "jobs"
    proc = run_cli("export", "lava", "--arch", "x86_64", "--hvo", "on", "--out", str(out), "--run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results_path = out / "lava-run" / "x86_64-hvo-on" / "results.json"
    validate(json.loads(results_path.read_text()))
    run = load(results_path).runs[0]
    assert run.verdict == "pass", run.verdict_reason
    assert run.hugetlb["backend"] == "lava" and run.hvo.state == "active"
    assert run.target is not None
    assert (run.target["job_result"], run.target["device_type"]) == ("pass", "qemu")
    plan_count = len(run.scenarios)
    cases = run.hugetlb["lava_test_cases"]
    assert len(cases) == plan_count == 18
    by_case = {c["case"]: c["result"] for c in cases}
    assert by_case["boot-2048kB-node0"] == "pass" and by_case["boot-16777216kB-node1"] == "skip"
    # The judge measured the savings from the counters that came through LAVA's console.
    two_meg = next(s for s in run.scenarios if s.name == "2M/runtime/node0/hvo-on-sysctl")
    assert two_meg.status == "pass"
    assert two_meg.vmemmap.measured_kib_per_page == two_meg.vmemmap.expected_kib_per_page == 28
    log = (out / "lava-run" / "x86_64-hvo-on" / "lava-run.log").read_text()
    assert "Job finished correctly" in log


def test_artefacts_url_copies_the_files_a_lab_fetches(
    tmp_path: Path, x86_kernel: pipeline.PreparedKernel
) -> None:
    out = tmp_path / "jobs"
    proc = run_cli("export", "lava", "--arch", "x86_64", "--hvo", "on", "--out", str(out),
                   "--artefacts-url", "https://lab.example/hvo/")
    assert proc.returncode == 0, proc.stderr
    images = _actions(load_yaml(out / "x86_64-hvo-on.yaml"))["deploy"]["images"]
    for image in images.values():
        name = image["url"].removeprefix("https://lab.example/hvo/")
        assert "/" not in name
        copy_path = out / "artefacts" / name
        assert hashlib.sha256(copy_path.read_bytes()).hexdigest() == image["sha256sum"]
    assert (out / "artefacts" / x86_kernel.image.path.name).read_bytes() == x86_kernel.image.path.read_bytes()
    assert lava_check("job", out / "x86_64-hvo-on.yaml").returncode == 0


# --- A LAVA run is judged as every target's run ----------------------------------------------------

DATA = Path(__file__).parent / "data"
RECORDED = DATA / "riscv64-7.2.13-kmsg-hvo-on"  # a real riscv64 boot (tests/data/README.md)
RISCV = get_profile("riscv64")
RISCV_FACTS = judge.KernelFacts(4096, StructPage(64, "BTF in vmlinuz"), True)
# A kernel with no source at hand (an image from elsewhere, a banner that is not Debian's): its
# findings are annotated with why not, without a download.
IMAGE = KernelInfo("/boot/vmlinuz-test", "7.2.13-hvo-test", None, {"type": "image"})
BANNER = "Linux version 7.2.13-hvo-test (builder@host) (gcc 12.2.0) #1 SMP PREEMPT"
# docs/findings.md #3: the WARN HVO's boot-time optimization of 1G pages printed at boot.
WARN = ["------------[ cut here ]------------",
        "WARNING: mm/hugetlb_vmemmap.c:223 at vmemmap_remap_pte+0x112/0x11e, CPU#1: pool_workqueue_/3",
        "---[ end trace 0000000000000000 ]---"]


def _frame(tag: str, payload: str) -> str:
    return f"{tag} {zlib.crc32(payload.encode()):08x} {payload}"


def recorded_channels() -> tuple[str, list[str]]:
    """The recorded boot's KTAP, and its kernel log records with the WARN before the end
    record (and a banner that is not Debian's)."""
    records = Path(f"{RECORDED}.dmesg.log").read_text().splitlines()
    end = records.pop()
    assert end.endswith(";hvo-harness: kmsg end")
    seq = len(records)
    records = [f"5,1,0,-;{BANNER}" if r.startswith("5,1,0,-;Linux version") else r for r in records]
    records += [f"4,{seq + n},{28_000_000 + n},-;{line}" for n, line in enumerate(WARN)]
    records.append(f"12,{seq + len(WARN)},28532062,-;hvo-harness: kmsg end")
    return Path(f"{RECORDED}.results.ktap").read_text(), records


def dispatcher_log(ktap: str, records: list[str]) -> str:
    """A lava-run log (one JSON record a line) of a job whose test definition sent KTAP and
    RECORDS as it does: `hvoh frame` (each numbered line twice), then `hvoh kmsg`."""
    def target(line: str) -> str:
        return json.dumps({"dt": "2026-12-02T17:08:52.0", "lvl": "target", "msg": line})

    lines = [json.dumps({"dt": "0", "lvl": "info", "msg": "lava-dispatcher, installed at version: 2023.01"}),
             target(lava.PROMPT + "/bin/sh /hvo/scenarios.sh > /tmp/hvo.ktap 2>&1"),
             target(f"+ hvoh frame {lava.kmsg.RESULT_TAG}")]
    for n, line in enumerate(ktap.splitlines()):
        lines += [target(_frame(lava.kmsg.RESULT_TAG, f"{n} {line}"))] * 2
    lines.append(json.dumps({"dt": "0", "lvl": "results",
                             "msg": {"definition": f"0_{lava.TESTDEF_NAME}", "case": "boot-2048kB-node0",
                                     "result": "pass", "endtc": "758"}}).replace(': "758"', ': ! "758"'))
    lines += [target(_frame(lava.kmsg.KMSG_TAG, record)) for record in records]
    lines += [target("hvo-lava: done"),
              json.dumps({"dt": "0", "lvl": "info", "msg": "Job finished correctly"}),
              json.dumps({"dt": "0", "lvl": "results", "msg": {"definition": "lava", "case": "job",
                                                               "result": "pass"}})]
    return "\n".join(lines) + "\n"


def riscv_spec() -> lava.BootSpec:
    plan = make_plan(RISCV, 4096, "on")
    cmdline = "console=ttyS0 panic=-1 printk.time=1 " + " ".join(plan.kernel_args())
    return lava.BootSpec("riscv64-hvo-on", RISCV, "on", cmdline, Path(IMAGE.path), IMAGE, (),
                         RISCV.memory_mib, None, plan, RISCV_FACTS)


def test_a_lava_runs_finding_is_annotated_as_a_qemu_runs(tmp_path: Path) -> None:
    """The WARN read out of a dispatcher's log gets its source, checks and trace status as the
    same report and kernel log from QEMU do: the judge path does not know which target ran."""
    ktap, records = recorded_channels()
    log_path = tmp_path / "lava-run.log"
    log_path.write_text(dispatcher_log(ktap, records))
    parsed = lava.parse_dispatcher_log(log_path.read_text())
    assert parsed.job_result == "pass" and parsed.version == "2023.01" and parsed.error is None
    assert parsed.lava_results == [{"definition": f"0_{lava.TESTDEF_NAME}", "case": "boot-2048kB-node0",
                                    "result": "pass"}]
    dispatcher = lava.DispatcherRun(0, 30.0, log_path, parsed)
    job, device = tmp_path / "job.yaml", tmp_path / "device.yaml"
    job.write_text("device_type: qemu\njob_name: test\n")
    device.write_text("{}\n")
    target = lava.LavaTarget(riscv_spec(), job, device)
    facts = target.prepare()
    plan = make_plan(facts.profile, facts.facts.page_size, facts.hvo)
    output = target.output(dispatcher, tmp_path)
    assert output.report is not None and output.report.done and output.report.garbled == 0
    run = judged_run(target.name, facts, plan, output)

    assert run.verdict == "fail", run.verdict_reason
    [finding] = run.findings
    assert (finding.kind, finding.function, finding.file, finding.line) == \
        ("warn", "vmemmap_remap_pte", "mm/hugetlb_vmemmap.c", 223)
    # Annotated (harness/annotate.py): no source for an image from elsewhere, said so.
    assert finding.source is not None and finding.source["status"] == "not at hand", finding.source
    assert "came with no source" in finding.source["why"]
    assert finding.trace is not None and finding.trace["status"] == "not decoded"
    # Exactly as a QEMU run of the same report and kernel log.
    qemu_output = TargetOutput(ktap, output.kernel_log, GuestOutcome("done", "done", 5.0, 30.0, 0),
                               "virtio-serial", cmdline=output.cmdline)
    qemu_run = judged_run("qemu", facts, plan, qemu_output)
    assert run.findings == qemu_run.findings
    assert [(s.name, s.status, s.reason) for s in run.scenarios] == \
        [(s.name, s.status, s.reason) for s in qemu_run.scenarios]
    # Only the target's own fields say it was LAVA.
    assert run.hugetlb["backend"] == "lava" and run.hugetlb["results_channel"] == f"lava: {log_path}"
    assert run.target == {"type": "lava", "job": str(job), "device": str(device), "device_type": "qemu",
                          "dispatcher": "lava-run 2023.01", "job_result": "pass"}
    assert run.accel.used == "tcg" and run.cmdline == target.spec.cmdline
    assert Path(run.hugetlb["kernel_log"]["path"]).read_text() == output.kernel_log.text
    validate(Results(runs=[run], harness_version="test").to_json())


def test_a_job_the_dispatcher_failed_is_an_error_with_lavas_reason(tmp_path: Path) -> None:
    """lava-run's exit 1 with LAVA's job error: the test bed's error naming LAVA's cause (not
    its help line), even when the guest's report had come through."""
    ktap, records = recorded_channels()
    records = [r for r in records if "WARNING" not in r and "cut here" not in r and "end trace" not in r]
    text = dispatcher_log(ktap, records).replace('"result": "pass"}}\n', (
        '"result": "fail", "error_msg": "lava-test-shell timed out after 600 seconds", '
        '"error_type": "Job"}}\n')).replace(
        '{"dt": "0", "lvl": "info", "msg": "Job finished correctly"}',
        '{"dt": "0", "lvl": "error", "msg": "JobError: Your job cannot terminate cleanly."}')
    log_path = tmp_path / "lava-run.log"
    log_path.write_text(text)
    parsed = lava.parse_dispatcher_log(text)
    assert parsed.job_result == "fail" and parsed.error == "lava-test-shell timed out after 600 seconds"
    target = lava.LavaTarget(riscv_spec(), tmp_path / "job.yaml", tmp_path / "device.yaml")
    facts = target.prepare()
    plan = make_plan(facts.profile, facts.facts.page_size, facts.hvo)
    output = target.output(lava.DispatcherRun(1, 700.0, log_path, parsed), tmp_path)
    run = judged_run("lava", facts, plan, output)
    assert run.verdict == "error", run.verdict_reason
    assert run.verdict_reason.startswith(
        "the LAVA dispatcher failed the job: lava-test-shell timed out after 600 seconds (lava-run exit 1")
    assert run.target is not None and run.target["job_result"] == "fail"


def _dispatcher_job(exported: Path, x86_kernel: pipeline.PreparedKernel) -> lava.LavaTarget:
    spec = lava.spec_for_boot(get_profile("x86_64"), x86_kernel, "on")
    assert spec.name == "x86_64-hvo-on"
    return lava.LavaTarget(spec, exported / f"{spec.name}.yaml", exported / "devices" / f"{spec.name}.yaml")


@pytest.mark.boot
def test_a_job_the_real_dispatcher_fails_is_an_error_naming_why(
    tmp_path: Path, exported: Path, x86_kernel: pipeline.PreparedKernel
) -> None:
    """lava-run refuses a job whose kernel is not there (its validate step, a second): the
    run is an error with LAVA's reason, a reproducer of the job, never a pass."""
    target = _dispatcher_job(exported, x86_kernel)
    job = load_yaml(target.job_yaml)
    missing = tmp_path / "gone" / "vmlinuz"
    _actions(job)["deploy"]["images"]["kernel"]["url"] = f"file://{missing}"
    target.job_yaml = tmp_path / "x86_64-hvo-on.yaml"
    target.job_yaml.write_text(yaml.safe_dump(job, sort_keys=False))
    run = lava.run_job(target, tmp_path / "run")
    assert run.verdict == "error", run.verdict_reason
    assert "the LAVA dispatcher failed the job" in run.verdict_reason
    assert f"'{missing}' does not exist" in run.verdict_reason and "lava-run exit 1" in run.verdict_reason
    assert run.target is not None and run.target["job_result"] == "fail"
    assert run.target["dispatcher"].startswith("lava-run 20") and run.hugetlb["backend"] == "lava"
    assert run.repro is not None
    assert (Path(run.repro) / "job.yaml").read_text() == target.job_yaml.read_text()
    assert (Path(run.repro) / "device.yaml").is_file() and (Path(run.repro) / "lava-run.sh").is_file()
    assert not (lava.DISPATCHER_TMP / f"hvo-{os.getpid()}").exists()


@pytest.mark.boot
@pytest.mark.parametrize("how", ["stop", "timeout"])
def test_a_dispatcher_ended_half_way_leaves_no_scratch_directory(
    tmp_path: Path, exported: Path, x86_kernel: pipeline.PreparedKernel, how: str
) -> None:
    """lava-run killed mid-job (a stop, the harness's timeout) cannot clean up after itself:
    run_dispatcher removes its scratch directory, and the run is not a pass."""
    scratch = lava.DISPATCHER_TMP / f"hvo-{os.getpid()}"
    assert not scratch.exists()
    target = _dispatcher_job(exported, x86_kernel)
    stop = threading.Event()
    seen = threading.Event()

    def stop_once_it_is_there() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not scratch.exists():
            time.sleep(0.05)
        if scratch.exists():
            seen.set()
        if how == "stop":
            time.sleep(1.0)  # into the deploy and the boot
            stop.set()

    watcher = threading.Thread(target=stop_once_it_is_there, daemon=True)
    watcher.start()
    if how == "timeout":
        target.timeout = 5.0
    run = lava.run_job(target, tmp_path / "run", stop=stop)
    watcher.join()
    assert seen.is_set(), "lava-run never made its scratch directory"
    assert not scratch.exists()
    log = (tmp_path / "run" / "lava-run.log").read_text()
    assert f"{scratch}/" in log and "Job finished correctly" not in log
    if how == "stop":
        assert run.verdict == "error" and "the LAVA job was stopped" in run.verdict_reason
    else:
        assert run.verdict == "fail" and "lava-run did not end within 5 s" in run.verdict_reason
    assert run.target is not None and run.target["job_result"] is None


def _framed_console(records: list[str]) -> str:
    return "".join(f"hvo-kmsg: {zlib.crc32(r.encode()):08x} {r}\n" for r in records)


RECORDED_LAVA = DATA / "x86_64-7.2.13-lava-hvo-on.lava-run.log.gz"  # tests/data/README.md


def test_lavas_quote_escaping_is_undone_so_no_framed_record_is_lost() -> None:
    """LAVA's shell logger writes each '"' of the target's output as '\\"' (YAML): a framed
    line with a quote failed its CRC on both copies, and the record was lost when the console's
    level had not shown it (record 101 in CI's dispatcher run, docs/findings.md)."""
    dispatcher_log = lava.parse_dispatcher_log(gzip.decompress(RECORDED_LAVA.read_bytes()).decode())
    assert '\\"' not in dispatcher_log.console
    _, report, log = lava.read_back(dispatcher_log.console)
    # The one line dropped is the shell's trace of the command ("+ hvoh kmsg hvo-kmsg:").
    assert (log.garbled, log.lost, log.stream_ended) == (1, [], True), log.summary()
    assert 'Unknown kernel command line parameters "nokaslr"' in log.text
    assert report.done and report.garbled == 0


def test_a_lost_record_is_a_hole_on_lavas_console_as_on_qemus() -> None:
    """A record neither copy of the framed stream nor the console had is judged the same on
    LAVA's console as on a QEMU console (the framed stream of a guest without virtio-serial)."""
    records = ["6,0,1000,-;Linux version 7.2.13", "6,1,2000,-;one", "6,3,4000,-;three"]
    console = _framed_console(records)
    for log in (lava.read_back(console)[2], pipeline.read_kernel_log("", console)):
        assert log.lost == [(2, 2)] and "records lost: 2" in log.summary()
        hole = log.holes()
        assert hole is not None and "lost records 2" in hole
