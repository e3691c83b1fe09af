"""Targets as one interface (harness/targets/): what the pipeline does after a target ran does
not depend on which one it was; and what an SSH run leaves in --out is kept by the next run.

The recorded boot here is a real riscv64 boot the harness made (tests/data/README.md), replayed
by a target whose run() hands back its three channels: the judge path is the one every target
takes (pipeline.run_target). No QEMU: these run in `make test`'s fast part."""

from __future__ import annotations

import threading
from pathlib import Path

from rich.console import Console

from harness import cli, judge, pipeline, report
from harness.guest import GuestOutcome
from harness.plan import Plan, make_plan
from harness.profiles import get_profile
from harness.results import Accel, KernelInfo, Results, Run
from harness.structpage import StructPage
from harness.targets import TargetFacts, TargetOutput
from harness.targets.qemu import QemuTarget
from harness.targets.ssh import SshTarget, parse_address
from harness.targets.vng import VngTarget

DATA = Path(__file__).parent / "data"
STEM = DATA / "riscv64-7.2.13-kmsg-hvo-on"
RISCV = get_profile("riscv64")
# Debian's riscv64 7.2.13, as tests/test_judge.py has it (struct page measured in its BTF).
FACTS = judge.KernelFacts(4096, StructPage(64, "BTF in vmlinuz"), True)
KERNEL = KernelInfo("recorded", "7.2.13+deb14-riscv64", None, {"type": "image"})


class RecordedTarget:
    """A target that replays a recorded boot: the three channels as the guest sent them."""

    def __init__(self, name: str, record: dict[str, object] | None, ended: str = "done",
                 reproducer_dir: Path | None = None) -> None:
        self.name = name
        self.record = record
        self.ended = ended
        self.reproducer_dir = reproducer_dir
        self.planned: Plan | None = None

    def prepare(self) -> TargetFacts:
        return TargetFacts(RISCV, FACTS, KERNEL, "console=ttyS0", "on", Accel("tcg", "recorded"))

    def run(self, plan: Plan, facts: TargetFacts, out_dir: Path,
            stop: threading.Event | None = None) -> TargetOutput:
        self.planned = plan
        console = Path(f"{STEM}.console.log").read_text()
        results = Path(f"{STEM}.results.ktap").read_text()
        log = pipeline.read_kernel_log(Path(f"{STEM}.dmesg.log").read_text(), console)
        outcome = GuestOutcome(self.ended, "recorded", 5.0, 30.0, 0)
        return TargetOutput(results, log, outcome, "recorded", record=self.record,
                            files={"console_log": str(out_dir / "recorded.console.log")})

    def reproducer(self, run: Run, out_dir: Path) -> Path | None:
        return self.reproducer_dir


def test_every_target_is_judged_the_same_whichever_it_is(tmp_path: Path) -> None:
    """The same channels through run_target: the same verdicts and scenarios, whatever the
    target's name; only the target's own fields say which ran."""
    runs = {name: pipeline.run_target(RecordedTarget(name, record), tmp_path)
            for name, record in (("qemu", None), ("vng", None), ("ssh", {"address": "ssh://root@h:22"}))}
    baseline = runs["qemu"]
    assert baseline.verdict == "pass", baseline.verdict_reason
    for name, run in runs.items():
        assert run.hugetlb["backend"] == name
        assert (run.verdict, run.verdict_reason) == (baseline.verdict, baseline.verdict_reason)
        assert [(s.name, s.status, s.reason) for s in run.scenarios] == \
            [(s.name, s.status, s.reason) for s in baseline.scenarios]
        assert run.boot_seconds == 5.0 and run.accel.used == "tcg"
    # A target's own record goes into Run.target; the harness's own guests keep none.
    assert runs["qemu"].target is None and runs["vng"].target is None
    assert runs["ssh"].target == {"type": "ssh", "address": "ssh://root@h:22"}


def test_the_plan_is_made_from_the_targets_facts(tmp_path: Path) -> None:
    target = RecordedTarget("qemu", None)
    pipeline.run_target(target, tmp_path)
    # The arch, page size and HVO setting prepare() gave, as the QEMU boot makes it.
    assert target.planned == make_plan(RISCV, 4096, "on")


def test_a_failing_run_gets_the_targets_reproducer(tmp_path: Path) -> None:
    bundle = tmp_path / "repro" / "x"
    run = pipeline.run_target(RecordedTarget("qemu", None, ended="timeout", reproducer_dir=bundle), tmp_path)
    assert run.verdict == "fail"
    assert run.repro == str(bundle)
    # A target with none (a running machine): no bundle, no error.
    run = pipeline.run_target(RecordedTarget("ssh", {}, ended="timeout"), tmp_path)
    assert run.verdict == "fail" and run.repro is None and "repro_error" not in run.hugetlb


def test_the_booting_targets_and_ssh_are_targets_of_one_interface() -> None:
    # pipeline.boot's backends are targets, by the name --backend takes.
    assert {name: cls.name for name, cls in pipeline.BOOT_TARGETS.items()} == {"qemu": "qemu", "vng": "vng"}
    assert issubclass(VngTarget, QemuTarget)
    for cls in (QemuTarget, VngTarget, SshTarget):
        assert all(callable(getattr(cls, method)) for method in ("prepare", "run", "reproducer"))


# --- What an SSH run leaves in --out, and how its boot line reads --------------------------


def _ssh_facts() -> TargetFacts:
    return TargetFacts(get_profile("x86_64"), FACTS, KERNEL, "console=ttyS0", "on",
                       Accel("none", "not booted by the harness"))


def test_an_earlier_ssh_runs_state_file_is_kept_by_the_next_run(tmp_path: Path) -> None:
    """<stem>.ssh-state.json is what an SSH run saved of the target's settings (kept while they
    are not restored): the next run into the same --out moves it with the rest of that run,
    rather than write its own in its place."""
    target = SshTarget(parse_address("ssh://root@192.0.2.7:2222"))
    stem = target.stem(_ssh_facts())
    (tmp_path / "results.json").write_text("{}")
    kinds = ("console.log", "results.ktap", "kernel.log", "ssh-state.json")
    for kind in kinds:
        (tmp_path / f"{stem}.{kind}").write_text(f"earlier {kind}\n")
    kept = cli._keep_previous_run(tmp_path, lambda line: None)
    assert kept is not None
    assert sorted(p.name for p in kept.iterdir()) == sorted(["results.json", *(f"{stem}.{k}" for k in kinds)])
    assert (kept / f"{stem}.ssh-state.json").read_text() == "earlier ssh-state.json\n"
    assert [p.name for p in tmp_path.iterdir()] == ["previous"]


def _run(target: dict[str, object] | None, accel: Accel, boot_seconds: float | None) -> Run:
    run = pipeline.run_target(RecordedTarget("ssh" if target else "qemu", target), Path("/nonexistent"))
    run.accel, run.boot_seconds = accel, boot_seconds
    return run


def test_a_runs_boot_line_names_its_target_where_the_harness_did_not_boot_it() -> None:
    ssh = _run({"address": "ssh://root@192.0.2.7:2222", "restored": True},
               Accel("none", "not booted by the harness: the running kernel of ssh://root@192.0.2.7:2222"),
               None)
    line = report.boot_facts(ssh)
    assert "target ssh ssh://root@192.0.2.7:2222 (its running kernel)" in line
    assert "settings restored" in line
    assert "boot None" not in line and "accel none" not in line
    ssh.target = {"type": "ssh", "address": "ssh://root@192.0.2.7:2222", "restored": False,
                  "not_restored": ["/proc/sys/vm/hugetlb_optimize_vmemmap: was 1, reads 0"]}
    assert "NOT restored (1 setting)" in report.boot_facts(ssh)
    # A boot by the harness says how long it took and under what.
    booted = _run(None, Accel("tcg", "no /dev/kvm"), 4.2)
    assert "boot 4.2 s, ended done, accel tcg (no /dev/kvm)" in report.boot_facts(booted)
    # print_results prints it so.
    console = Console(width=200, record=True)
    report.print_results(Results(runs=[ssh]), console)
    assert "target ssh ssh://root@192.0.2.7:2222" in console.export_text()
