"""Triage of a failing boot: its reproducer bundle rerun under variations, one boot each.

Each variation changes one thing a failure could hang on: the vCPU count, TCG's threading, the
CPU model, the accelerator, the NUMA layout and the machine type (which move where boot-time
pages land), HVO, the Debian kernel release. The generic ones are here; what an arch can vary
(its other CPU models, machines, node layouts) is data in harness/profiles/<arch>.py. Every
variation boot is compared with the original (classify()):

- same: it fails with the same findings and the same failing scenarios;
- fails differently: it fails, but not so (other findings, other scenarios);
- gone: the scenarios that failed pass and the findings are absent, and nothing else fails;
- not applicable: the variation does not apply here (KVM unusable, one machine type only), or
  it took away what the failing scenarios need (a CPU model without 1G pages for a 1G failure:
  those scenarios are skipped or absent): never "gone";
- error: the test bed failed (QEMU crashed, was killed, ...): never "gone";
- not tried: it could not be booted (a kernel that cannot be had).

The table goes into the results file (Run.triage) and the report; each variation's logs into
<out>/triage/<boot>/<variation>/."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import artefacts, pipeline, qemu
from harness import bundle as bundles
from harness.errors import HarnessError, KernelUnavailable
from harness.profiles import get_profile
from harness.repro import Overrides, ScenarioKey, finding_key, key_text, rerun, scenario_key
from harness.results import Results, Run, Scenario, from_json, summarize, write_json

OUTCOMES = ("same", "fails differently", "gone", "not applicable", "error", "not tried")
TRIAGE_DIR = "triage"


@dataclass(frozen=True)
class Variation:
    name: str
    # What the boot changes, for the table.
    what: str
    # What it means when the failure is gone under it.
    if_gone: str
    overrides: Overrides | None = None
    # Set when the variation is not booted: "not applicable" or "not tried", and why.
    preset: str | None = None
    reason: str = ""


@dataclass
class Row:
    name: str
    what: str
    outcome: str
    detail: str
    verdict: str | None = None
    findings: str = ""
    scenarios: str = ""
    if_gone: str = ""
    out_dir: str | None = None
    boot_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Classification:
    outcome: str
    detail: str
    findings: str
    scenarios: str


def _fates(original: Run, run: Run) -> dict[ScenarioKey, Scenario | None]:
    """Each scenario that failed in the original -> that scenario in RUN (None: absent)."""
    now = {scenario_key(s): s for s in run.scenarios}
    return {scenario_key(s): now.get(scenario_key(s)) for s in original.scenarios if s.status == "fail"}


def _fates_text(fates: dict[ScenarioKey, Scenario | None]) -> str:
    if not fates:
        return "no scenario failed in the original"
    groups: dict[str, list[str]] = {}
    for key, scenario in fates.items():
        groups.setdefault(scenario.status if scenario else "absent", []).append(key_text(key))
    order = ("fail", "pass", "skip", "absent")
    words = {"fail": "still fail", "pass": "pass", "skip": "skipped", "absent": "absent"}
    parts = []
    for status in order:
        names = groups.get(status, [])
        if names:
            shown = ", ".join(names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "")
            parts.append(f"{len(names)} of {len(fates)} {words[status]}: {shown}")
    return "; ".join(parts)


def classify(original: Run, run: Run) -> Classification:
    """How RUN (a variation of ORIGINAL, a failing boot) came out against it."""
    fates = _fates(original, run)
    scenarios = _fates_text(fates)
    findings = summarize(run.findings) or "none"
    if run.verdict == "error":
        # The test bed, not the kernel: says nothing of the failure either way.
        return Classification("error", f"test bed: {run.verdict_reason}", findings, scenarios)
    before = {finding_key(f) for f in original.findings}
    now = {finding_key(f) for f in run.findings}
    unavailable = {k: s for k, s in fates.items() if s is None or s.status == "skip"}
    still = {k for k, s in fates.items() if s is not None and s.status == "fail"}
    failing_now = {scenario_key(s) for s in run.scenarios if s.status == "fail"}
    elsewhere = failing_now - set(fates)
    if fates and len(unavailable) == len(fates) and not elsewhere and not (now - before):
        key, scenario = next(iter(unavailable.items()))
        why = f"{key_text(key)} skipped: {scenario.reason}" if scenario else f"{key_text(key)} absent"
        return Classification(
            "not applicable",
            f"the variation takes away what the failing scenarios need ({why})", findings, scenarios)
    if run.verdict == "fail" and original.verdict == "fail" and now == before and \
            still == set(fates) - set(unavailable) and not elsewhere and still:
        note = f"; {len(unavailable)} skipped or absent" if unavailable else ""
        return Classification("same", f"fails with the same findings and failing scenarios{note}",
                              findings, scenarios)
    if run.verdict == "pass" and not still and not (now & before):
        if unavailable:
            # Some of what failed did not run at all: the failure cannot be said to be gone.
            key = next(iter(unavailable))
            return Classification(
                "not applicable",
                f"the scenarios that ran pass, but {key_text(key)} and {len(unavailable) - 1} more "
                "did not run as they did in the original", findings, scenarios)
        return Classification("gone", "the failing scenarios pass and the findings are absent",
                              findings, scenarios)
    if not fates and run.verdict == original.verdict and now == before:
        return Classification("same", f"the same verdict and findings ({run.verdict_reason})",
                              findings, scenarios)
    differences = []
    if now - before:
        differences.append(f"new findings: {_names(run, now - before)}")
    if before - now:
        differences.append(f"findings absent: {_names(original, before - now)}")
    if elsewhere:
        differences.append(f"other scenarios fail: {', '.join(key_text(k) for k in sorted(elsewhere)[:3])}")
    if set(fates) - still - set(unavailable):
        differences.append(f"{len(set(fates) - still - set(unavailable))} of the failing scenarios pass")
    if run.verdict == "pass":
        differences.append("passes")
    return Classification("fails differently", "; ".join(differences) or run.verdict_reason,
                          findings, scenarios)


def _names(run: Run, keys: set[Any]) -> str:
    examples = {finding_key(f): f for f in run.findings}
    return "; ".join(examples[k].summary() for k in keys if k in examples)


def conclude(rows: list[Row]) -> str:
    """One sentence: what the variations say about the failure."""
    by = {outcome: [r.name for r in rows if r.outcome == outcome] for outcome in OUTCOMES}
    baseline = next((r for r in rows if r.name == BASELINE), None)
    tail = []
    if by["not applicable"]:
        tail.append(f"not applicable: {', '.join(by['not applicable'])}")
    if by["not tried"]:
        tail.append(f"not tried: {', '.join(by['not tried'])}")
    if by["error"]:
        tail.append(f"test-bed error: {', '.join(by['error'])}")
    rest = f" ({'; '.join(tail)})" if tail else ""
    if baseline is not None and baseline.outcome not in ("same", "error"):
        return (f"Rerun unchanged, it came out {baseline.outcome}: the failure does not reproduce "
                f"reliably, so what the other variations show may be chance{rest}.")
    booted = by["same"] + by["fails differently"] + by["gone"]
    if not booted:
        return f"No variation could be booted{rest}."
    if by["gone"]:
        meaning = "; ".join(f"{r.name}: {r.if_gone}" for r in rows if r.outcome == "gone")
        kept = f"; it still fails under {', '.join(by['same'] + by['fails differently'])}" \
            if by["same"] or by["fails differently"] else ""
        return f"Gone with {', '.join(by['gone'])} ({meaning}){kept}{rest}."
    if not by["fails differently"]:
        return f"Fails the same way under every variation tried ({', '.join(by['same'])}){rest}."
    return (f"Never gone: fails the same way under {', '.join(by['same']) or 'none'} and differently under "
            f"{', '.join(by['fails differently'])}{rest}.")


# --- the variations --------------------------------------------------------------------------

BASELINE = "as-recorded"


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]+", "-", text).strip("-")


def debian_suites() -> tuple[str, ...] | None:
    """The Debian suites pipeline.prepare_kernel takes as 'debian:SUITE'; None if it takes none."""
    suites = getattr(artefacts, "SUITES", None)
    if not suites or not hasattr(artefacts, "parse_kernel_spec"):
        return None
    return tuple(suites)


def variations(bundle: bundles.Bundle) -> list[Variation]:
    """Every variation of the generic set and the arch's profile data, for this bundle's boot."""
    spec = bundle.spec
    profile = bundle.profile()
    arch = get_profile(profile.name)  # the arch's own data (triage_* fields)
    kvm = spec["accel"]["used"] == "kvm"
    out: list[Variation] = [
        Variation(BASELINE, "the boot again, unchanged", "it does not fail every time: flaky", Overrides()),
    ]

    def na(name: str, what: str, reason: str, preset: str = "not applicable") -> None:
        out.append(Variation(name, what, "", None, preset, reason))

    if profile.smp > 1:
        out.append(Variation("one-vcpu", "-smp 1: one vCPU (the nodes keep their memory)",
                             "it needs more than one CPU: a race, or work split across CPUs",
                             Overrides(smp=1)))
    else:
        na("one-vcpu", "-smp 1", "the boot had one vCPU already")
    if kvm:
        na("tcg-single", "-accel tcg,thread=single", "the boot ran under KVM: TCG has no threads there")
    elif profile.tcg_thread == "single":
        na("tcg-single", "-accel tcg,thread=single", "the boot ran single-threaded TCG already")
    else:
        out.append(Variation("tcg-single", "-accel tcg,thread=single: one host thread runs every vCPU",
                             "it depends on TCG running vCPUs in parallel: a race, or an emulator artefact",
                             Overrides(tcg_thread="single")))
    for cpu in arch.triage_cpus:
        name = f"cpu-{_label(cpu.model)}"
        what = f"-cpu {cpu.model}: {cpu.note}"
        if kvm:
            na(name, what, "the boot ran under KVM, which boots -cpu host")
        elif cpu.model == profile.cpu:
            na(name, what, "the boot's own CPU model")
        else:
            out.append(Variation(name, what, "it depends on the CPU model QEMU emulates (its features)",
                                 Overrides(cpu=cpu)))
    if not arch.triage_cpus:
        na("cpu", "another -cpu", f"{profile.name}'s profile lists no other CPU model")
    if kvm:
        out.append(Variation("tcg", "-accel tcg in place of KVM", "it needs KVM (or the host's CPU)",
                             Overrides(accel="tcg")))
    else:
        choice = qemu.choose_accel(profile, True)
        if choice.used == "kvm":
            out.append(Variation("kvm", "-accel kvm -cpu host in place of TCG",
                                 "it is an artefact of TCG's emulation", Overrides(accel="kvm")))
        else:
            na("kvm", "-accel kvm", choice.kvm_reason or "KVM does not work here")
    for listed in arch.triage_node_layouts:
        # As this boot gives it to the kernel: a loongarch64 direct boot has one node of the total.
        layout = qemu.guest_node_layout(profile, tuple(listed))
        if layout == profile.node_mem_mib:
            continue
        out.append(Variation(f"nodes-{'-'.join(map(str, layout))}",
                             f"NUMA nodes of {' + '.join(map(str, layout))} MiB",
                             "it depends on where the boot-time pages land in physical memory",
                             Overrides(node_mem_mib=tuple(layout))))
    machines = [m for m in arch.triage_machines if m != profile.machine]
    for machine in machines:
        out.append(Variation(f"machine-{_label(machine)}", f"-machine {machine}",
                             "it depends on the machine's memory map (where boot-time pages land) "
                             "or its devices", Overrides(machine=machine)))
    if not machines:
        na("machine", "another -machine", f"{profile.name} has only QEMU's {profile.machine} machine here")
    other = "off" if spec["hvo"] == "on" else "on"
    out.append(Variation(f"hvo-{other}", f"hugetlb_free_vmemmap={other}",
                         "it needs HVO" if other == "off" else "it needs HVO off", Overrides(hvo=other)))
    source = spec["kernel"]["source"].get("type")
    suites = debian_suites()
    if source != "debian":
        why = "kernel built from a tree" if source == "tree" else "a kernel image given by path"
        na("kernel-releases", "other Debian kernel releases", why)
    elif suites is None:
        for suite in ("trixie", "sid", "experimental"):
            na(f"kernel-{suite}", f"Debian {suite}'s kernel", "needs --kernel debian:SUITE", "not tried")
    else:
        for suite in suites:
            out.append(Variation(f"kernel-{suite}", f"Debian {suite}'s newest kernel",
                                 "it depends on the kernel release: bisect between them",
                                 Overrides(kernel=f"debian:{suite}")))
    return out


def _boot_variation(variation: Variation, bundle: bundles.Bundle, original: Run, out_dir: Path,
                    progress: pipeline.Progress | None, stop: threading.Event | None) -> Row:
    row = Row(variation.name, variation.what, "not tried", "", if_gone=variation.if_gone)
    if variation.preset is not None:
        row.outcome, row.detail = variation.preset, variation.reason
        return row
    overrides = variation.overrides or Overrides()
    if isinstance(overrides.kernel, str):
        try:
            kernel = pipeline.prepare_kernel(bundle.profile(), overrides.kernel, progress=progress)
        except KernelUnavailable as missing:
            row.outcome, row.detail = "not applicable", missing.reason
            return row
        except HarnessError as error:
            row.detail = f"{overrides.kernel}: {error}"
            return row
        if kernel.info.sha256 == bundle.spec["kernel"]["sha256"]:
            row.outcome = "not applicable"
            row.detail = f"{overrides.kernel} is the boot's own kernel ({kernel.info.release})"
            return row
        overrides = Overrides(kernel=kernel)
        row.what += f" ({kernel.info.release})"
    if progress:
        progress(f"triage {bundle.stem}: {variation.name} ({variation.what})")
    try:
        run = rerun(bundle, out_dir, overrides, progress, stop)
    except HarnessError as error:
        row.detail = str(error)
        return row
    verdict = classify(original, run)
    row.outcome, row.detail = verdict.outcome, verdict.detail
    row.verdict, row.findings, row.scenarios = run.verdict, verdict.findings, verdict.scenarios
    row.out_dir, row.boot_seconds = str(out_dir), run.boot_seconds
    return row


@dataclass
class Triage:
    boot: str
    rows: list[Row] = field(default_factory=list)
    out_dir: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"boot": self.boot, "out": self.out_dir,
                "written": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "variations": [r.as_dict() for r in self.rows], "conclusion": conclude(self.rows)}


def stem_of(run: Run) -> str:
    """The boot's name: its bundle's (pipeline.boot_stem), else made from the run's fields."""
    if run.repro:
        return Path(run.repro).name
    parts = [run.arch, run.variant, "hvo", run.hvo.requested]
    return "-".join(part for part in parts if part)


def failing_boots(results: Results, boot: str | None) -> list[int]:
    """Indexes of the runs to triage: every failing one, or the one BOOT names."""
    failing = [i for i, r in enumerate(results.runs) if r.verdict in ("fail", "error")]
    if boot is None:
        if not failing:
            raise HarnessError("no failing boot in the results: nothing to triage")
        return failing
    named = [i for i, r in enumerate(results.runs) if boot in (stem_of(r), r.arch)]
    if not named:
        names = ", ".join(stem_of(r) for r in results.runs)
        raise HarnessError(f"--boot {boot}: no such boot in the results: choose from {names}")
    if len(named) > 1:
        raise HarnessError(f"--boot {boot} names {len(named)} boots: give one of "
                           f"{', '.join(stem_of(results.runs[i]) for i in named)}")
    if results.runs[named[0]].verdict not in ("fail", "error"):
        others = f" ({', '.join(stem_of(results.runs[i]) for i in failing)})" if failing else ""
        ended = "passed" if results.runs[named[0]].verdict == "pass" else "was skipped"
        raise HarnessError(f"--boot {boot} {ended}: triage takes a failing boot{others}")
    return named


def _load_document(path: Path) -> tuple[dict[str, Any], Results]:
    from harness.results import load

    results = load(path)  # one error line for a missing, foreign or broken file
    return json.loads(path.read_text()), results


def triage(
    results_path: Path,
    boot: str | None = None,
    only: list[str] | None = None,
    out_dir: Path | None = None,
    progress: pipeline.Progress | None = None,
    stop: threading.Event | None = None,
    on_row: Callable[[Triage], None] | None = None,
) -> list[Triage]:
    """Triage the failing boots of a results file; the table of each goes into the file
    (runs[i].triage, written after every variation) and is returned."""
    document, results = _load_document(results_path)
    indexes = failing_boots(results, boot)
    out_root = (out_dir or results_path.parent) / TRIAGE_DIR
    plans: list[tuple[int, bundles.Bundle, list[Variation]]] = []
    for index in indexes:
        run = results.runs[index]
        if not run.repro:
            raise HarnessError(f"{stem_of(run)} has no reproducer bundle (results from before bundles, or "
                               "it could not be written): run it again with `hvo-harness run`")
        bundle = bundles.load(Path(run.repro))
        plans.append((index, bundle, variations(bundle)))
    if only:
        names = {v.name for _, _, found in plans for v in found}
        unknown = [n for n in only if n not in names]
        if unknown:
            raise HarnessError(f"--only {','.join(unknown)}: no such variation: choose from "
                               f"{', '.join(sorted(names))}")
    done: list[Triage] = []
    for index, bundle, found in plans:
        original = results.runs[index]
        chosen = [v for v in found if not only or v.name in only]
        report = Triage(bundle.stem, out_dir=str(out_root / bundle.stem))
        for variation in chosen:
            if stop is not None and stop.is_set():
                break
            row = _boot_variation(variation, bundle, original, out_root / bundle.stem / variation.name,
                                  progress, stop)
            report.rows.append(row)
            if progress:
                progress(f"triage {bundle.stem}: {row.name}: {row.outcome} ({row.detail})")
            document["runs"][index]["triage"] = report.as_dict()
            # Validated as the results are: what is written is a file the harness reads again.
            from_json(document, str(results_path))
            write_json(results_path, document, "RESULTS.json")
            if on_row:
                on_row(report)
        done.append(report)
    return done


def table_lines(report: Triage) -> list[list[str]]:
    return [[r.name, r.verdict or "-", r.outcome, r.findings or "-", r.scenarios or "-", r.detail]
            for r in report.rows]
