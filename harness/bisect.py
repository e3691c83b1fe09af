"""Bisecting a kernel tree: one step (build the checked-out commit, boot, judge it good, bad or
skip under a CHECK) and the `git bisect` driver around it.

`hvo-harness bisect-run` is one step for `git bisect run` in the user's tree; `hvo-harness
bisect` drives git bisect itself in a worktree and calls the same step. Unlike the kernel's
tools/testing/ktest/ktest.pl, a commit is only ever called bad on the evidence of a boot that
shows what CHECK names; a commit that does not build, or a boot that stopped before it could
show it, is skipped, never blamed."""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness import kbuild, pipeline, qemu, trees
from harness.cache import cache_dir
from harness.errors import HarnessError
from harness.profiles import ArchProfile
from harness.results import Finding, Results, Run, Scenario, write_json

Progress = Callable[[str], None]
Outcome = Literal["good", "bad", "skip"]
CHECK_KINDS = ("any", "function", "check", "scenario", "savings")
_CHECK_HELP = ("any, function:NAME, check:NAME, scenario:GLOB or savings "
               "(e.g. check:sparse_init-memmap-alignment, function:vmemmap_remap_pte, scenario:1G/boot/*)")
STATE_SCHEMA = "hvo-harness-bisect/1"


# --- CHECK: what "bad" means --------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    kind: str
    name: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" if self.name is not None else self.kind

    def matches(self, finding: Finding) -> bool:
        if self.kind == "any":
            return True
        if self.kind == "function":
            return finding.function == self.name
        if self.kind == "check":
            return finding.check == self.name
        return False


def parse_check(spec: str) -> Check:
    """'any', 'function:NAME', 'check:NAME', 'scenario:GLOB' or 'savings'; else one error line."""
    text = spec.strip()
    kind, sep, name = text.partition(":")
    if kind in ("any", "savings"):
        if sep:
            raise HarnessError(f"--check {spec!r}: {kind} takes no name: give --check {kind}")
        return Check(kind)
    if kind in ("function", "check", "scenario"):
        if not name.strip():
            raise HarnessError(f"--check {spec!r}: {kind}: needs a name after the colon: {_CHECK_HELP}")
        return Check(kind, name.strip())
    raise HarnessError(f"--check {spec!r} is not a check: give {_CHECK_HELP}")


# --- One boot judged under a CHECK ----------------------------------------------------------------

@dataclass(frozen=True)
class BootJudgement:
    outcome: Outcome
    reason: str
    # What shows it: the matched finding's excerpt, or the failing scenario's name and reason.
    evidence: str | None = None


def incomplete(run: Run) -> str | None:
    """Why this boot cannot show that something is absent, or None when it can.

    A finding that is not in the log proves nothing unless the log is the whole boot: the
    guest ran every scenario to its end (ended "done", no scenario "never ran"), the verdict
    is the kernel's (not "error", the test bed's), and no kernel log record went missing. A
    guest that panicked, hung or was cut short earlier, for whatever reason, might have shown
    the finding later; such a boot is a skip, never a good."""
    if run.verdict == "error":
        return f"the boot could not be judged: {run.verdict_reason}"
    if run.ended != "done":
        return f"the guest did not finish ({run.ended}: {run.verdict_reason})"
    never = [s for s in run.scenarios if s.reason.startswith("never ran")]
    if never:
        return f"{len(never)} scenario(s) never ran, first: {never[0].name}: {never[0].reason}"
    kernel_log = run.hugetlb.get("kernel_log") or {}
    if kernel_log.get("lost"):
        return f"kernel log records were lost ({kernel_log.get('summary', 'records lost')})"
    return None


def unread_statements(run: Run) -> str | None:
    """Why this boot cannot show that a named check is absent, or None when it can: a check is
    assigned from the statement at a finding's file:line in the source that was built
    (harness/checks.py), so a WARN or BUG whose line could not be read there might be it."""
    unread = [f for f in run.findings if f.kind in ("warn", "bug") and f.file is not None
              and (f.source or {}).get("status") != "found"]
    if not unread:
        return None
    source = unread[0].source or {}
    return (f"{len(unread)} WARN/BUG finding(s) could not be read in the source, first: "
            f"{unread[0].summary()}: {source.get('status', 'not read')}: {source.get('why', '')}")


def _savings_mismatch(scenario: Scenario) -> bool:
    vm = scenario.vmemmap
    return (vm.expected_kib_per_page is not None and vm.measured_kib_per_page is not None
            and vm.expected_kib_per_page != vm.measured_kib_per_page)


def judge_run(run: Run, check: Check) -> BootJudgement:
    """good, bad or skip for one boot. Bad needs the evidence CHECK names in this boot; good
    needs a boot that ran far enough to have shown it (see incomplete); else skip."""
    if check.kind in ("any", "function", "check"):
        matched = [f for f in run.findings if check.matches(f)]
        if matched:
            # A kernel complaint in the log is the kernel's, whatever else went wrong later.
            return BootJudgement("bad", f"{matched[0].summary()}" + (
                f" (+{len(matched) - 1} more)" if len(matched) > 1 else ""), matched[0].excerpt)
    if check.kind == "any":
        if run.verdict == "error":
            return BootJudgement("skip", f"the boot could not be judged: {run.verdict_reason}")
        if run.verdict == "fail":
            failed = [s for s in run.scenarios if s.status == "fail"]
            evidence = f"{failed[0].name}: {failed[0].reason}" if failed else run.verdict_reason
            return BootJudgement("bad", run.verdict_reason, evidence)
        return BootJudgement("good", run.verdict_reason)
    if check.kind in ("function", "check"):
        if why := incomplete(run):
            return BootJudgement("skip", f"no {check} finding, but {why}")
        if check.kind == "check" and (why := unread_statements(run)):
            return BootJudgement("skip", f"no {check} finding, but {why}")
        return BootJudgement("good", f"no {check} finding in a boot that ran to its end "
                                     f"(verdict {run.verdict}: {run.verdict_reason})")
    if check.kind == "scenario":
        assert check.name is not None
        chosen = [s for s in run.scenarios if fnmatch.fnmatchcase(s.name, check.name)]
        if run.verdict == "error":
            return BootJudgement("skip", f"the boot could not be judged: {run.verdict_reason}")
        failed = [s for s in chosen if s.status == "fail"]
        if failed and not failed[0].reason.startswith("never ran"):
            return BootJudgement("bad", f"{failed[0].name} failed: {failed[0].reason}",
                                 f"{failed[0].name}: {failed[0].reason}")
        if failed:
            # A scenario the guest never reached (an earlier panic) says nothing about itself.
            return BootJudgement("skip", f"{failed[0].name} {failed[0].reason}")
        passed = [s for s in chosen if s.status == "pass"]
        if not passed:
            names = ", ".join(sorted({s.name for s in run.scenarios})[:4]) or "none"
            why = ("none of them passed (all skipped)" if chosen
                   else f"no scenario matches (there are: {names}, ...)")
            return BootJudgement("skip", f"scenario:{check.name}: {why}")
        return BootJudgement("good", f"{len(passed)} scenario(s) matching {check.name} passed")
    # savings: expected != measured KiB per page in any scenario that measured them.
    mismatched = [s for s in run.scenarios if _savings_mismatch(s)]
    if mismatched:
        s = mismatched[0]
        text = (f"{s.name}: expected {s.vmemmap.expected_kib_per_page} KiB per page, measured "
                f"{s.vmemmap.measured_kib_per_page} ({s.vmemmap.measured_by or 'measured'})")
        return BootJudgement("bad", f"savings mismatch: {text}", text)
    if why := incomplete(run):
        return BootJudgement("skip", f"no savings mismatch, but {why}")
    measured = [s for s in run.scenarios if s.vmemmap.expected_kib_per_page is not None
                and s.vmemmap.measured_kib_per_page is not None]
    if not measured:
        return BootJudgement("skip", "no scenario measured its savings")
    return BootJudgement("good", f"savings as expected in {len(measured)} scenario(s)")


def decide(judgements: list[BootJudgement], need: int) -> tuple[Outcome, str]:
    """The step's outcome from its boots: bad when at least NEED are bad; good when so many are
    good that NEED bad ones are out of reach even if every skipped boot had been bad; else skip."""
    total = len(judgements)
    bad = [j for j in judgements if j.outcome == "bad"]
    good = [j for j in judgements if j.outcome == "good"]
    tally = f"{len(bad)} of {total} boots bad"
    if len(bad) >= need:
        return "bad", f"{tally}: {bad[0].reason}"
    if len(good) > total - need:
        first = bad[0].reason if bad else good[0].reason
        return "good", f"{tally} (need {need}): {first}"
    skipped = [j for j in judgements if j.outcome == "skip"]
    return "skip", f"{tally}, {len(skipped)} could not be judged (need {need} bad): {skipped[0].reason}"


# --- One step: build, boot, judge -----------------------------------------------------------------

@dataclass(frozen=True)
class StepConfig:
    profile: ArchProfile
    variant: str | None = None
    toolchain: str | None = None
    check: Check = Check("any")
    repeat: int = 1
    need: int = 1
    hvo: str = "on"
    timeout: float = pipeline.DEFAULT_TIMEOUT

    def check_setup(self) -> None:
        """Every error that does not depend on the commit, before any build: these abort a bisect."""
        if self.repeat < 1:
            raise HarnessError(f"--repeat {self.repeat}: give how many boots a step makes, 1 or more")
        if not 1 <= self.need <= self.repeat:
            raise HarnessError(f"--need {self.need}: give how many of the --repeat {self.repeat} boots "
                               f"must be bad, 1 to {self.repeat}")
        if self.hvo not in ("on", "off"):
            raise HarnessError(f"--hvo {self.hvo!r}: a step boots once per repeat: give on or off")
        kbuild.resolve_variant(self.profile, self.variant)
        kbuild.find_toolchain(self.profile, self.toolchain)
        qemu.qemu_path(self.profile)

    def as_json(self) -> dict[str, Any]:
        return {"arch": self.profile.name, "variant": self.variant, "toolchain": self.toolchain,
                "check": str(self.check), "repeat": self.repeat, "need": self.need, "hvo": self.hvo}


@dataclass
class StepResult:
    commit: str | None
    subject: str | None
    outcome: Outcome
    reason: str
    seconds: float
    dir: str
    # Bad boots of `repeat`: the flake rate is bad_boots / repeat.
    bad_boots: int = 0
    repeat: int = 0
    build_log: str | None = None
    boots: list[dict[str, Any]] = field(default_factory=list)
    excerpt: str | None = None
    # The first bad boot's reproducer bundle (pipeline.boot's repro/<stem>/), else its .qemu.sh.
    repro: str | None = None
    role: str = "bisect-run"
    # The good end's findings, each with the --check that names it (verification's hint).
    findings: list[dict[str, str | None]] = field(default_factory=list)

    @property
    def flake(self) -> str:
        return f"{self.bad_boots}/{self.repeat} bad"


def commit_subject(tree: Path) -> tuple[str | None, str | None]:
    if not trees.is_git(tree):
        return None, None
    done = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%H%n%s"],
                          capture_output=True, text=True)
    lines = done.stdout.splitlines()
    return (lines[0], lines[1] if len(lines) > 1 else "") if done.returncode == 0 and lines else (None, None)


def _prepared(config: StepConfig, variant: kbuild.Variant,
              built: kbuild.BuiltKernel) -> pipeline.PreparedKernel:
    """As pipeline.build_kernel makes it, from an incremental build."""
    return pipeline.prepared_build(config.profile, variant, built,
                                   incremental=built.metadata.get("incremental"))


def _repro_of(boot_dir: Path) -> str | None:
    """The boot's reproducer bundle (pipeline.boot writes one per failing boot), else the
    QEMU command it wrote."""
    bundles = sorted(boot_dir.glob("repro/*/repro.sh"))
    if bundles:
        return str(bundles[0].parent)
    scripts = sorted(boot_dir.glob("*.qemu.sh"))
    return str(scripts[0]) if scripts else None


def _spec_hints(findings: list[Finding]) -> list[dict[str, str | None]]:
    hints = []
    for finding in findings:
        spec = f"check:{finding.check}" if finding.check else (
            f"function:{finding.function}" if finding.function else None)
        hints.append({"summary": finding.summary(), "check": spec})
    return hints


def run_step(tree: Path, config: StepConfig, step_dir: Path, progress: Progress | None = None,
             role: str = "bisect-run") -> StepResult:
    """Build the tree as it is checked out (incrementally, kbuild.build_incremental), boot it
    config.repeat times and judge each boot under config.check. A tree that does not build is
    a skip; a set-up error (no QEMU, ...) is raised as HarnessError and must abort the bisect."""
    started = time.monotonic()
    if step_dir.exists():
        shutil.rmtree(step_dir)  # an interrupted try of this very step
    step_dir.mkdir(parents=True)
    commit, subject = commit_subject(tree)
    source = trees.resolve(tree)
    variant = kbuild.resolve_variant(config.profile, config.variant)
    toolchain = kbuild.find_toolchain(config.profile, config.toolchain)
    request = kbuild.BuildRequest(source, config.profile, variant, toolchain)

    def result(outcome: Outcome, reason: str, **extra: Any) -> StepResult:
        step = StepResult(commit, subject, outcome, reason, round(time.monotonic() - started, 1),
                          str(step_dir), repeat=config.repeat, build_log=str(step_dir / "build.log"),
                          role=role, **extra)
        write_json(step_dir / "step.json", asdict(step), "--out")
        return step

    try:
        built = kbuild.build_incremental(request, step_dir, progress)
    except kbuild.BuildFailed as error:
        return result("skip", f"does not build: {error}")
    kernel = _prepared(config, variant, built)
    env = pipeline.prepare_environment(config.profile, want_kvm=True)
    judgements: list[BootJudgement] = []
    boots: list[dict[str, Any]] = []
    runs: list[Run] = []
    for index in range(config.repeat):
        boot_dir = step_dir / f"boot-{index + 1}"
        run = pipeline.boot(config.profile, kernel, env, config.hvo, boot_dir, timeout=config.timeout,
                            progress=progress)
        Results(runs=[run], harness_version=pipeline.new_results().harness_version).write(
            boot_dir / "results.json")
        judgement = judge_run(run, config.check)
        judgements.append(judgement)
        runs.append(run)
        boots.append({"dir": str(boot_dir), "console_log": run.console_log, "verdict": run.verdict,
                      "verdict_reason": run.verdict_reason, "ended": run.ended,
                      "outcome": judgement.outcome, "reason": judgement.reason,
                      "repro": getattr(run, "repro", None) or _repro_of(boot_dir)})
        if progress:
            progress(f"boot {index + 1}/{config.repeat}: {judgement.outcome} ({judgement.reason})")
    outcome, reason = decide(judgements, config.need)
    first_bad = next((i for i, j in enumerate(judgements) if j.outcome == "bad"), None)
    excerpt = judgements[first_bad].evidence if first_bad is not None else None
    repro = boots[first_bad]["repro"] if first_bad is not None else None
    findings = _spec_hints([f for run in runs for f in run.findings])
    return result(outcome, reason, bad_boots=sum(j.outcome == "bad" for j in judgements), boots=boots,
                  excerpt=excerpt, repro=repro, findings=findings)


# --- The step log of a bisect-run directory, and of a bisect --------------------------------------

def step_line(step: StepResult) -> str:
    what = f"{step.commit[:12]} {step.subject}" if step.commit else step.dir
    return f"{step.outcome}: {what}: {step.reason} [{step.flake}, {step.seconds:.0f} s]"


@contextlib.contextmanager
def _locked(directory: Path, what: str) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HarnessError(f"{directory} is in use by another {what}: wait for it, or give "
                               "another --out") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def default_run_dir(tree: Path) -> Path:
    digest = hashlib.sha256(str(tree.resolve()).encode()).hexdigest()[:12]
    return cache_dir("bisect-run") / f"{tree.resolve().name}-{digest}"


def check_out_dir(out: Path, tree: Path) -> None:
    out, tree = out.expanduser().resolve(), tree.resolve()
    if out.is_relative_to(tree):
        # Files in the tree make its state dirty and every step a different build.
        raise HarnessError(f"--out {out} is inside the tree {tree}: give a directory outside it")
    if out.exists() and not out.is_dir():
        raise HarnessError(f"--out {out} is a file: give a directory")


def bisect_run(tree: Path, config: StepConfig, out: Path, progress: Progress | None = None) -> StepResult:
    """One `git bisect run` step: OUT/steps/NN-<commit>/ and a line in OUT/bisect-run.log."""
    with _locked(out, "bisect-run"):
        state_path = out / "bisect-run.json"
        state = json.loads(state_path.read_text()) if state_path.exists() else \
            {"schema": STATE_SCHEMA, "tree": str(tree), "steps": []}
        commit, _ = commit_subject(tree)
        step_dir = out / "steps" / f"{len(state['steps']) + 1:02d}-{(commit or 'tree')[:12]}"
        step = run_step(tree, config, step_dir, progress)
        state["steps"].append({**asdict(step), "params": config.as_json()})
        write_json(state_path, state, "--out")
        with (out / "bisect-run.log").open("a") as log:
            log.write(step_line(step) + "\n")
        return step


# --- The driver: git bisect in a worktree ---------------------------------------------------------

@dataclass
class BisectOutcome:
    # "found": first_bad is the first bad commit; "unverified": an end is not what it was said
    # to be (message says which and why); "ambiguous": only skipped commits are left.
    status: Literal["found", "unverified", "ambiguous"]
    message: str
    first_bad: str | None = None
    subject: str | None = None
    excerpt: str | None = None
    repro: str | None = None
    candidates: list[str] = field(default_factory=list)
    state: str = ""


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["git", "-C", str(repo), "-c", "gc.auto=0", "-c", "maintenance.auto=false",
                           *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise HarnessError(f"git {' '.join(args[:2])} in {repo} failed: {last}")
    return done


def rev_parse(repo: Path, rev: str, option: str) -> str:
    done = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
    if done.returncode != 0:
        raise HarnessError(f"{option} {rev!r} is not a commit in {repo}: give a commit, tag or branch "
                           "of that repository")
    return done.stdout.strip()


def _subject(repo: Path, commit: str) -> str:
    return _git(repo, "log", "-1", "--format=%s", commit).stdout.strip()


@dataclass(frozen=True)
class BisectRequest:
    repo: Path
    good: str
    bad: str
    config: StepConfig
    out: Path

    @property
    def dir(self) -> Path:
        return self.out / "bisect"


def _load_state(request: BisectRequest, good: str, bad: str) -> dict[str, Any]:
    params = {"repo": str(request.repo), "good": good, "bad": bad, **request.config.as_json()}
    path = request.dir / "bisect.json"
    if path.exists():
        state = json.loads(path.read_text())
        if state.get("params") != params and state.get("result") is not None:
            # An ended bisect (e.g. an end that did not verify) is kept, and a new one starts:
            # the usual next move is the same command with a narrower --check.
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(path.stat().st_mtime))
            kept = request.out / "previous-bisects" / stamp
            kept.parent.mkdir(parents=True, exist_ok=True)
            request.dir.rename(kept)
            request.dir.mkdir()
            return {"schema": STATE_SCHEMA, "params": params, "steps": [], "result": None,
                    "previous": str(kept)}
        if state.get("params") != params:
            theirs = state.get("params", {})
            differ = [k for k in params if theirs.get(k) != params[k]]
            raise HarnessError(f"{request.dir} holds a bisect with other {', '.join(differ) or 'parameters'} "
                               f"({', '.join(f'{k}={theirs.get(k)}' for k in differ)}): give another --out, "
                               "or remove it to start over")
        return state
    return {"schema": STATE_SCHEMA, "params": params, "steps": [], "result": None}


def _worktree(request: BisectRequest, start: str) -> Path:
    """The bisect's own checkout (the user's is never moved), made once and kept until the end."""
    worktree = request.dir / "worktree"
    listed = _git(request.repo, "worktree", "list", "--porcelain").stdout
    if f"worktree {worktree.resolve()}\n" in listed and (worktree / ".git").exists():
        return worktree
    _git(request.repo, "worktree", "prune")
    if worktree.exists():
        shutil.rmtree(worktree)
    _git(request.repo, "worktree", "add", "--detach", "-q", str(worktree), start)
    return worktree


def _bisecting(worktree: Path) -> bool:
    return _git(worktree, "bisect", "log", check=False).returncode == 0


_FIRST_BAD = " is the first bad commit"


def _parse_bisect_output(text: str) -> tuple[str | None, list[str] | None]:
    """(first bad commit, None), (None, candidates) when only skipped ones are left, or (None, None)."""
    for line in text.splitlines():
        if line.endswith(_FIRST_BAD):
            return line.split()[0], None
    if "only 'skip'ped commits left" in text:
        lines = text.splitlines()
        start = next(i for i, ln in enumerate(lines) if "could be any of" in ln) + 1
        candidates = []
        for line in lines[start:]:
            word = line.split()[0] if line.split() else ""
            if len(word) == 40 and all(c in "0123456789abcdef" for c in word):
                candidates.append(word)
            else:
                break
        return None, candidates
    return None, None


def bisect(request: BisectRequest, progress: Progress | None = None) -> BisectOutcome:
    """Verify the ends, then git bisect in a worktree under OUT/bisect/, one run_step per commit.

    Resumable: bisect.json records every step and the worktree keeps git's bisect state, so a
    rerun after an interruption goes on where it stopped (a step cut short is run again)."""
    say = progress or (lambda text: None)
    if not trees.is_git(request.repo):
        raise HarnessError(f"--tree {request.repo} is not the top of a git repository: bisect needs "
                           "the commits (git bisect), give a git checkout")
    good = rev_parse(request.repo, request.good, "--good")
    bad = rev_parse(request.repo, request.bad, "--bad")
    if good == bad:
        raise HarnessError(f"--good and --bad are the same commit {good[:12]}: give two commits")
    if _git(request.repo, "merge-base", "--is-ancestor", bad, good, check=False).returncode == 0:
        raise HarnessError(f"--bad {request.bad} is an ancestor of --good {request.good}: swap them "
                           "(bisect looks for the first bad commit after a good one)")
    request.config.check_setup()
    out = request.dir
    with _locked(out, "bisect"):
        state = _load_state(request, good, bad)
        path = out / "bisect.json"
        if state["result"] is not None:
            say(f"{path}: this bisect has ended; its result again")
            return BisectOutcome(**state["result"])

        def save() -> None:
            write_json(path, state, "--out")

        def step(commit: str, role: str, worktree: Path) -> StepResult:
            head = _git(worktree, "rev-parse", "HEAD").stdout.strip()
            if head != commit:
                _git(worktree, "checkout", "-q", "--detach", commit)
            index = len(state["steps"]) + 1
            say(f"step {index} ({role}): {commit[:12]} {_subject(request.repo, commit)}")
            result = run_step(worktree, request.config, out / "steps" / f"{index:02d}-{commit[:12]}",
                              progress, role)
            state["steps"].append(asdict(result))
            save()
            say(step_line(result))
            return result

        def done(outcome: BisectOutcome) -> BisectOutcome:
            if _bisecting(worktree):
                (out / "bisect.log").write_text(_git(worktree, "bisect", "log").stdout)
                _git(worktree, "bisect", "reset", check=False)
            outcome.state = str(path)
            state["result"] = asdict(outcome)
            save()
            # The checkout is a whole kernel tree; its objects stay in the build cache. Removed
            # directly, then pruned: `git worktree remove` first stats every file (minutes).
            shutil.rmtree(worktree, ignore_errors=True)
            _git(request.repo, "worktree", "prune", check=False)
            return outcome

        def recorded(commit: str, role: str) -> StepResult | None:
            for entry in reversed(state["steps"]):
                if entry["commit"] == commit and entry["role"] == role:
                    return StepResult(**entry)
            return None

        worktree = _worktree(request, good)
        if not _bisecting(worktree):
            for role, commit, want in (("good-end", good, "good"), ("bad-end", bad, "bad")):
                end = recorded(commit, role) or step(commit, role, worktree)
                if end.outcome != want:
                    return done(BisectOutcome("unverified", _unverified(end, want, request.config.check)))
            first, _ = _parse_bisect_output(
                _git(worktree, "bisect", "start", bad, good).stdout)
        else:
            first = None
            say(f"resuming the bisect in {worktree} ({len(state['steps'])} steps done)")
        candidates = None
        while first is None and candidates is None:
            head = _git(worktree, "rev-parse", "HEAD").stdout.strip()
            # Run but not yet told to git (interrupted in between): told now, not run again.
            result = recorded(head, "bisect") or step(head, "bisect", worktree)
            told = _git(worktree, "bisect", result.outcome, check=False)
            first, candidates = _parse_bisect_output(told.stdout)
            if told.returncode != 0 and first is None and candidates is None:
                last = (told.stderr.strip().splitlines() or ["?"])[-1]
                raise HarnessError(f"git bisect {result.outcome} in {worktree} failed: {last}")
        if first is None:
            assert candidates is not None
            names = ", ".join(f"{c[:12]} {_subject(request.repo, c)}" for c in candidates)
            return done(BisectOutcome(
                "ambiguous", f"no first bad commit: only skipped commits are left, the first bad one "
                             f"is one of {len(candidates)}: {names}", candidates=candidates))
        blamed = recorded(first, "bisect") or recorded(first, "bad-end")
        assert blamed is not None and blamed.outcome == "bad", first
        repro = _keep_repro(blamed, out)
        return done(BisectOutcome(
            "found", f"first bad commit: {first} {blamed.subject}", first_bad=first,
            subject=blamed.subject, excerpt=blamed.excerpt, repro=repro))


def _keep_repro(step: StepResult, out: Path) -> str | None:
    """The first bad step's reproducer as OUT/repro/ (a copy of pipeline.boot's bundle)."""
    if step.repro is None:
        return None
    source = Path(step.repro)
    if not source.is_dir():
        return str(source)  # no bundle: the boot's own .qemu.sh
    target = out / "repro"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, symlinks=True)
    return str(target)


def _unverified(end: StepResult, want: str, check: Check) -> str:
    which = "good" if want == "good" else "bad"
    name = f"{which} end {(end.commit or '?')[:12]} ({end.subject})"
    if end.outcome == "skip":
        return (f"the {name} could not be judged under --check {check}: {end.reason}; nothing blamed: "
                f"give a --{which} that builds and boots to its end")
    if want == "good":
        hints = sorted({h["check"] for h in end.findings if h["check"]})
        hint = (f"the good end's own finding is {' and '.join(hints)} (--check {hints[0]} would "
                f"select it); to bisect another failure give --check check:NAME or function:NAME "
                f"of that one" if hints else "give a --check that names only what you bisect "
                                             "(check:NAME, function:NAME, scenario:GLOB or savings)")
        return f"the {name} is already bad under --check {check}: {end.reason}; nothing blamed: {hint}"
    return (f"the {name} is good under --check {check}: {end.reason}; nothing to bisect: give a --bad "
            "that shows the failure, or a --check that matches it")
