"""`hvo-harness bisect` and `bisect-run`: CHECK specs, the good/bad/skip rule on a recorded real
boot (and crafted variations of it), git bisect run's exit codes, and a real bisect over a
synthetic history on Debian's linux-source-7.2 (riscv64 debug): a doc change, a commit that does
not build (skipped, never blamed), its revert, the misalignment patch (blamed), a doc change."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import bisect, checks, kbuild, source_lines
from harness.cache import cache_dir
from harness.errors import HarnessError
from harness.profiles import get_profile
from harness.results import Finding, Run, Scenario, load

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
MISALIGN_PATCH = REPO / "patches" / "riscv-misalign-vmemmap.patch"
SPARSE_INIT_CHECK = "sparse_init-memmap-alignment"
LINUX_SOURCE_72 = cache_dir("src") / "linux-source-7.2_7.2.13-1_all"
HARNESS = [sys.executable, "-m", "harness.cli"]


# --- CHECK specs ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "kind", "name"), [
    ("any", "any", None), (" savings ", "savings", None),
    ("function:vmemmap_remap_pte", "function", "vmemmap_remap_pte"),
    ("check:sparse_init-memmap-alignment", "check", "sparse_init-memmap-alignment"),
    ("scenario:1G/boot/node0/*", "scenario", "1G/boot/node0/*"),
])
def test_check_specs(spec: str, kind: str, name: str | None) -> None:
    check = bisect.parse_check(spec)
    assert (check.kind, check.name) == (kind, name)
    assert bisect.parse_check(str(check)) == check


@pytest.mark.parametrize(("spec", "message"), [
    ("warn", r"'warn' is not a check: give any, function:NAME"),
    ("function:", r"function: needs a name"),
    ("check: ", r"check: needs a name"),
    ("any:x", r"any takes no name"),
    ("savings:2M", r"savings takes no name"),
    ("", r"is not a check"),
])
def test_bad_check_spec_is_one_line(spec: str, message: str) -> None:
    with pytest.raises(HarnessError, match=message) as error:
        bisect.parse_check(spec)
    assert "\n" not in str(error.value)


# --- good, bad or skip, per boot and per step -----------------------------------------------------

@pytest.fixture
def recorded_run() -> Run:
    """A real riscv64 debug boot with HVO on (docs/findings.md #3): two WARNs in
    vmemmap_remap_pte, boot-time scenarios failed, run-time ones passed, savings exact. Recorded
    before findings carried their source lines (Finding.source None)."""
    (run,) = load(DATA / "results-riscv64-7.2.13-debug-hvo-on.json").runs
    assert run.ended == "done" and run.verdict == "fail"
    return run


@pytest.fixture
def warn_run(recorded_run: Run) -> Run:
    """The recorded boot with its WARNs read in the source it was built from (linux-source-7.2
    7.2.13-1), as pipeline.boot reads them now."""
    if not (LINUX_SOURCE_72 / "mm/sparse.c").is_file():
        pytest.skip(f"no {LINUX_SOURCE_72} (hvo-harness fetch)")
    source = source_lines.SourceTree(LINUX_SOURCE_72, "linux-source-7.2 7.2.13-1")
    findings = checks.assign_all(source_lines.resolve_all(recorded_run.findings, source))
    return dataclasses.replace(recorded_run, findings=findings)


def test_a_named_check_is_not_called_absent_where_the_source_was_not_read(recorded_run: Run) -> None:
    """Checks come from the statement at a finding's line in the tree that was built: a WARN
    whose line was not read there might be the check, so its absence proves nothing."""
    outcome, reason = judged(recorded_run, f"check:{SPARSE_INIT_CHECK}")
    assert outcome == "skip" and "could not be read in the source" in reason
    assert judged(recorded_run, "function:sparse_init")[0] == "good"


def test_named_check_from_the_tree_at_the_commit_built(tmp_path: Path) -> None:
    """bisect's steps read the check in the tree they built, at that commit: the same WARN line
    is the alignment check at one commit and another statement at the next."""
    if not (LINUX_SOURCE_72 / "mm/sparse.c").is_file():
        pytest.skip(f"no {LINUX_SOURCE_72} (hvo-harness fetch)")
    repo = tmp_path / "tree"
    (repo / "mm").mkdir(parents=True)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "init", "-q"], check=True)
    sparse = (LINUX_SOURCE_72 / "mm/sparse.c").read_text()
    commits = []
    for text in (sparse, sparse.replace("VM_WARN_ON_ONCE(!IS_ALIGNED", "VM_WARN_ON_ONCE(!IS_ENABLED")):
        (repo / "mm/sparse.c").write_text(text)
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
        commits.append(subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                                      check=True).stdout.strip())
    warn = Finding("warn", "sparse_init", "mm/sparse.c", 365,
                   "WARNING: mm/sparse.c:365 at sparse_init+0x5c/0x2d0, CPU#0: swapper/0")
    outcomes = []
    for commit in commits:
        source = source_lines.build_source({"type": "tree", "tree": str(repo), "commit": commit,
                                            "dirty": False, "patches": []})
        [finding] = checks.assign_all(source_lines.resolve_all([warn], source))
        assert finding.source is not None and finding.source["status"] == "found"
        run = dataclasses.replace(load(DATA / "results-riscv64-7.2.13-debug-hvo-on.json").runs[0],
                                  findings=[finding])
        outcomes.append(judged(run, f"check:{SPARSE_INIT_CHECK}")[0])
    assert outcomes == ["bad", "good"]


def judged(run: Run, spec: str) -> tuple[str, str]:
    judgement = bisect.judge_run(run, bisect.parse_check(spec))
    return judgement.outcome, judgement.reason


def test_the_finding_named_is_bad(warn_run: Run) -> None:
    assert judged(warn_run, "any")[0] == "bad"
    outcome, reason = judged(warn_run, "function:vmemmap_remap_pte")
    assert outcome == "bad" and "vmemmap_remap_pte" in reason
    judgement = bisect.judge_run(warn_run, bisect.parse_check("function:vmemmap_remap_pte"))
    assert judgement.evidence and "WARNING" in judgement.evidence


def test_absent_finding_in_a_complete_boot_is_good(warn_run: Run) -> None:
    assert judged(warn_run, f"check:{SPARSE_INIT_CHECK}")[0] == "good"
    assert judged(warn_run, "function:sparse_init")[0] == "good"
    assert judged(warn_run, "savings")[0] == "good"
    assert judged(warn_run, "scenario:*/runtime/*")[0] == "good"
    assert judged(warn_run, "scenario:1G/boot/*")[0] == "bad"


@pytest.mark.parametrize("change", ["panic", "timeout", "error", "never-ran", "lost-records"])
def test_absent_finding_in_an_incomplete_boot_is_skip(warn_run: Run, change: str) -> None:
    """A boot that stopped early (or whose log has holes) cannot show the finding is absent."""
    if change in ("panic", "timeout"):
        run = dataclasses.replace(warn_run, ended=change, verdict="fail", verdict_reason=change)
    elif change == "error":
        run = dataclasses.replace(warn_run, ended="signalled", verdict="error",
                                  verdict_reason="QEMU was killed")
    elif change == "never-ran":
        scenarios = [dataclasses.replace(s, status="fail", reason="never ran: the guest died")
                     if s.mode == "runtime" else s for s in warn_run.scenarios]
        run = dataclasses.replace(warn_run, scenarios=scenarios)
    else:
        run = dataclasses.replace(warn_run, hugetlb={"kernel_log": {"lost": [[10, 12]],
                                                                    "summary": "records lost: 10-12"}})
    outcome, reason = judged(run, f"check:{SPARSE_INIT_CHECK}")
    assert outcome == "skip", reason
    assert judged(run, "savings")[0] == "skip"
    # The finding that is there is still evidence: the kernel printed it.
    assert judged(run, "function:vmemmap_remap_pte")[0] == "bad"


def test_any_skips_what_the_test_bed_broke(warn_run: Run) -> None:
    clean = dataclasses.replace(warn_run, findings=[], verdict="pass", verdict_reason="all passed",
                                scenarios=[s for s in warn_run.scenarios if s.status != "fail"])
    assert judged(clean, "any")[0] == "good"
    broken = dataclasses.replace(clean, verdict="error", ended="signalled", verdict_reason="QEMU killed")
    assert judged(broken, "any")[0] == "skip"
    hung = dataclasses.replace(clean, verdict="fail", ended="timeout", verdict_reason="no end after 300 s")
    assert judged(hung, "any")[0] == "bad"  # the judge calls a hang the kernel's


def test_savings_mismatch_is_bad(warn_run: Run) -> None:
    scenarios: list[Scenario] = []
    for s in warn_run.scenarios:
        if s.name == "2M/runtime/node1/hvo-on-sysctl":
            s = dataclasses.replace(s, vmemmap=dataclasses.replace(s.vmemmap, measured_kib_per_page=24.0))
        scenarios.append(s)
    outcome, reason = judged(dataclasses.replace(warn_run, scenarios=scenarios), "savings")
    assert outcome == "bad" and "2M/runtime/node1" in reason and "expected 28" in reason


def test_scenario_glob_matching_nothing_is_skip(warn_run: Run) -> None:
    outcome, reason = judged(warn_run, "scenario:4G/*")
    assert outcome == "skip" and "no scenario matches" in reason


def test_named_check_field(warn_run: Run) -> None:
    [sparse] = checks.assign_all(source_lines.resolve_all(
        [Finding("warn", "sparse_init", "mm/sparse.c", 365, "WARNING: mm/sparse.c:365 at sparse_init")],
        source_lines.SourceTree(LINUX_SOURCE_72, "linux-source-7.2 7.2.13-1")))
    assert sparse.check == SPARSE_INIT_CHECK
    run = dataclasses.replace(warn_run, findings=[*warn_run.findings, sparse])
    assert judged(run, f"check:{SPARSE_INIT_CHECK}") == ("bad", f"{SPARSE_INIT_CHECK} at sparse_init "
                                                                "(mm/sparse.c:365)")
    assert judged(run, "check:other")[0] == "good"


@pytest.mark.parametrize(("outcomes", "need", "want"), [
    (["bad"], 1, "bad"), (["good"], 1, "good"), (["skip"], 1, "skip"),
    (["bad", "good", "good"], 1, "bad"),
    (["bad", "good", "good"], 2, "good"),
    (["bad", "bad", "good"], 2, "bad"),
    # 1 bad, 1 skip of 3, need 2: the skipped one might have been bad.
    (["bad", "skip", "good"], 2, "skip"),
    (["good", "skip", "good"], 2, "good"),
    (["good", "skip", "good"], 1, "skip"),
])
def test_k_of_n(outcomes: list[str], need: int, want: str) -> None:
    judgements = [bisect.BootJudgement(o, f"boot {i}") for i, o in enumerate(outcomes)]  # type: ignore[arg-type]
    outcome, reason = bisect.decide(judgements, need)
    assert outcome == want, reason
    assert f"{outcomes.count('bad')} of {len(outcomes)} boots bad" in reason


def test_unverified_good_end_names_its_finding_and_the_narrower_check() -> None:
    finding = {"summary": "WARN at vmemmap_remap_pte", "check": "function:vmemmap_remap_pte"}
    end = bisect.StepResult("a" * 40, "base", "bad", "1 of 1 boots bad: WARN at vmemmap_remap_pte", 1.0,
                            "/x", findings=[finding])
    message = bisect._unverified(end, "good", bisect.parse_check("any"))
    assert "good end aaaaaaaaaaaa (base) is already bad under --check any" in message
    assert "function:vmemmap_remap_pte" in message and "nothing blamed" in message
    assert "\n" not in message
    skipped = dataclasses.replace(end, outcome="skip", reason="does not build: make Image failed")
    assert "could not be judged" in bisect._unverified(skipped, "good", bisect.parse_check("any"))


# --- git bisect run's exit codes ------------------------------------------------------------------

def bisect_run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> \
        subprocess.CompletedProcess[str]:
    return subprocess.run([*HARNESS, "bisect-run", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or REPO, timeout=120)


@pytest.mark.parametrize("args", [
    ["--arch", "riscv64", "--no-such-option"],
    ["--arch", "sparc"],
    ["--arch", "riscv64", "--check", "warn"],
    ["--arch", "riscv64", "--repeat", "2", "--need", "3"],
    ["--arch", "riscv64", "--variant", "kasan"],
    ["--arch", "riscv64", "--tree", "/"],
])
def test_set_up_errors_abort_the_bisect(args: list[str]) -> None:
    """Exit 128, which git bisect run takes as "stop", never 1-127 (bad) or 125 (skip)."""
    done = bisect_run(*args)
    assert done.returncode == 128, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("hvo-harness: error: ")


def test_missing_qemu_or_compiler_aborts(tmp_path: Path) -> None:
    """PATH with the riscv64 cross compiler but no QEMU, then with neither."""
    tools = tmp_path / "bin"
    tools.mkdir()
    toolchain = kbuild.find_toolchain(get_profile("riscv64"), None)
    for tool, _package in toolchain.tools:
        (tools / tool).symlink_to(subprocess.run(["which", tool], capture_output=True, text=True,
                                                 check=True).stdout.strip())
    env = dict(os.environ, PATH=str(tools))
    done = bisect_run("--arch", "riscv64", env=env)
    assert done.returncode == 128 and "qemu-system-riscv64 not found" in done.stderr, done.stderr
    for link in tools.iterdir():
        link.unlink()
    done = bisect_run("--arch", "riscv64", env=env)
    assert done.returncode == 128 and "not found" in done.stderr and "install" in done.stderr, done.stderr


def test_help_documents_the_exit_codes() -> None:
    done = bisect_run("--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "0 good, 1 bad, 125 skip" in text and "128 abort" in text and "above 127" in text


def toy_repo(path: Path, count: int = 7) -> list[str]:
    path.mkdir()
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    commits = []
    for index in range(count):
        (path / "file").write_text(f"{index}\n")
        subprocess.run([*git, "add", "file"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", f"c{index}"], check=True)
        commits.append(subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                                      check=True).stdout.strip())
    return commits


def test_git_bisect_run_stops_on_a_set_up_error(tmp_path: Path) -> None:
    """The real git bisect run: our 128 ends the bisect, no commit is blamed."""
    repo = tmp_path / "toy"
    commits = toy_repo(repo)
    git = ["git", "-C", str(repo)]
    subprocess.run([*git, "bisect", "start", commits[6], commits[0]], check=True, capture_output=True)
    done = subprocess.run([*git, "bisect", "run", *HARNESS, "bisect-run", "--arch", "sparc"],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode != 0
    assert "is the first bad commit" not in done.stdout
    assert "128" in done.stdout + done.stderr, done.stdout + done.stderr
    log = subprocess.run([*git, "bisect", "log"], capture_output=True, text=True).stdout
    assert "# bad:" not in log.replace(f"# bad: [{commits[6]}]", "")  # only the bad end is bad


def test_git_bisect_output_is_read(tmp_path: Path) -> None:
    """On 7 commits `git bisect start c6 c0` visits c3 first (the synthetic history below puts
    its broken build there); after the skip git moves to a neighbour (which one depends on the
    hashes), and the bisect still ends at c5. The "only skipped commits" end names them."""
    repo = tmp_path / "toy"
    commits = toy_repo(repo)
    git = ["git", "-C", str(repo)]

    def head() -> str:
        return subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()

    subprocess.run([*git, "bisect", "start", commits[6], commits[0]], check=True, capture_output=True)
    assert head() == commits[3]
    done = subprocess.run([*git, "bisect", "skip"], capture_output=True, text=True)
    assert head() in (commits[2], commits[4])
    first, candidates = bisect._parse_bisect_output(done.stdout)
    while first is None:
        assert candidates is None, done.stdout
        done = subprocess.run([*git, "bisect", "good" if commits.index(head()) < 5 else "bad"],
                              capture_output=True, text=True)
        first, candidates = bisect._parse_bisect_output(done.stdout)
    assert first == commits[5]

    subprocess.run([*git, "bisect", "reset"], check=True, capture_output=True)
    subprocess.run([*git, "bisect", "start", commits[6], commits[4]], check=True, capture_output=True)
    done = subprocess.run([*git, "bisect", "skip"], capture_output=True, text=True)
    first, candidates = bisect._parse_bisect_output(done.stdout)
    assert first is None and candidates is not None and set(candidates) == {commits[5], commits[6]}


# --- The driver's bookkeeping, on a toy history with the step judged from a file -----------------
# (The step itself is the real one in the test below; here only git bisect's state, the resume
# and the ends are at stake, which a kernel build would only make slower.)

def judged_by_file(interrupt_at: int | None, skip: set[int]) -> tuple[list[int], object]:
    calls: list[int] = []

    def step(tree: Path, config: bisect.StepConfig, step_dir: Path, progress: object = None,
             role: str = "bisect-run") -> bisect.StepResult:
        index = int((tree / "file").read_text())
        calls.append(index)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        outcome = "skip" if index in skip else ("bad" if index >= 5 else "good")
        commit, subject = bisect.commit_subject(tree)
        step_dir.mkdir(parents=True, exist_ok=True)
        return bisect.StepResult(commit, subject, outcome, f"file says {index}", 0.0,  # type: ignore[arg-type]
                                 str(step_dir), repeat=1, role=role, excerpt=f"excerpt {index}")

    return calls, step


def toy_request(tmp_path: Path) -> tuple[bisect.BisectRequest, list[str]]:
    commits = toy_repo(tmp_path / "toy")
    config = bisect.StepConfig(get_profile("riscv64"), check=bisect.parse_check("any"))
    return bisect.BisectRequest(tmp_path / "toy", commits[0], commits[6], config, tmp_path / "out"), commits


def test_a_rerun_resumes_where_the_interruption_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    request, commits = toy_request(tmp_path)
    calls, step = judged_by_file(interrupt_at=4, skip={3})
    monkeypatch.setattr(bisect, "run_step", step)
    with pytest.raises(KeyboardInterrupt):
        bisect.bisect(request)
    assert calls[:3] == [0, 6, 3]  # both ends, then c3 (skipped), then cut short
    before = len(calls)
    outcome = bisect.bisect(request)
    assert outcome.status == "found" and outcome.first_bad == commits[5], outcome
    assert outcome.subject == "c5" and outcome.excerpt == "excerpt 5"
    # Nothing done before the interruption ran again; the step cut short did.
    assert calls[before] == calls[3] and len(set(calls[before:])) == len(calls[before:])
    assert not set(calls[before:]) & {0, 6, 3}
    state = json.loads((tmp_path / "out" / "bisect" / "bisect.json").read_text())
    assert [s["outcome"] for s in state["steps"] if s["commit"] == commits[3]] == ["skip"]
    assert "# skip: [" + commits[3] in (tmp_path / "out" / "bisect" / "bisect.log").read_text()
    user = subprocess.run(["git", "-C", str(tmp_path / "toy"), "status", "--porcelain"], capture_output=True,
                          text=True).stdout
    assert user == ""  # the user's checkout: untouched


def test_only_skipped_commits_left_names_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    request, commits = toy_request(tmp_path)
    _calls, step = judged_by_file(interrupt_at=None, skip={3, 4, 5})
    monkeypatch.setattr(bisect, "run_step", step)
    outcome = bisect.bisect(request)
    assert outcome.status == "ambiguous" and outcome.first_bad is None
    assert set(outcome.candidates) == {commits[3], commits[4], commits[5], commits[6]}
    assert all(c[:12] in outcome.message for c in outcome.candidates)


def test_an_end_that_does_not_verify_blames_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    request, commits = toy_request(tmp_path)
    calls, step = judged_by_file(interrupt_at=None, skip=set())
    monkeypatch.setattr(bisect, "run_step", step)
    outcome = bisect.bisect(dataclasses.replace(request, bad=commits[4]))  # c4 is good
    assert outcome.status == "unverified" and "bad end" in outcome.message and outcome.first_bad is None
    assert calls == [0, 4]


# --- A real bisect on linux-source-7.2, riscv64 debug ---------------------------------------------

# Fixed identity and dates: the same commits (and so the same build cache keys) on every run.
_COMMIT_ENV = {"GIT_AUTHOR_NAME": "hvo-harness test", "GIT_AUTHOR_EMAIL": "hvo-harness@localhost",
               "GIT_COMMITTER_NAME": "hvo-harness test", "GIT_COMMITTER_EMAIL": "hvo-harness@localhost",
               "GIT_AUTHOR_DATE": "2026-11-22T00:00:00Z", "GIT_COMMITTER_DATE": "2026-11-22T00:00:00Z"}
BROKEN_FILE = "init/main.c"
SUBJECTS = {
    "c1": "Documentation/mm: hugetlb vmemmap note (bisect test)",
    "c2": "Documentation/admin-guide: hugetlbpage note (bisect test)",
    "c3": "init: break the build (bisect test)",
    "c4": "Revert \"init: break the build (bisect test)\"",
    "c5": "riscv/mm: break the vmemmap alignment HVO needs (hvo-harness detection test)",
    "c6": "Documentation/mm: another note (bisect test)",
}


def make_history(base: Path, repo: Path) -> dict[str, str]:
    """c0 = linux-source-7.2's own commit, then c1..c6 (SUBJECTS) in a clone under tmp: made with
    a private index and commit-tree, so neither the cached tree nor its branch moves."""
    subprocess.run(["git", "clone", "-q", "--shared", "--no-checkout", str(base), str(repo)], check=True)
    env = dict(os.environ, GIT_INDEX_FILE=str(repo / ".git" / "history-index"), **_COMMIT_ENV)

    def git(*args: str, stdin: str | None = None) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], input=stdin, capture_output=True, text=True,
                              env=env, check=True).stdout

    def put(path: str, text: str) -> None:
        blob = git("hash-object", "-w", "--stdin", stdin=text).strip()
        git("update-index", "--cacheinfo", f"100644,{blob},{path}")

    def append(path: str, line: str) -> None:
        put(path, git("cat-file", "blob", f"HEAD:{path}") + line + "\n")

    commits = {"c0": git("rev-parse", "HEAD").strip()}
    git("read-tree", commits["c0"])
    main_c = git("cat-file", "blob", f"{commits['c0']}:{BROKEN_FILE}")
    edits = {
        "c1": lambda: append("Documentation/mm/hugetlbfs_reserv.rst", "\n.. bisect test: a note."),
        "c2": lambda: append("Documentation/admin-guide/mm/hugetlbpage.rst", "\n.. bisect test: a note."),
        "c3": lambda: put(BROKEN_FILE, '#error "bisect test: this commit does not build"\n' + main_c),
        "c4": lambda: put(BROKEN_FILE, main_c),
        "c5": lambda: git("apply", "--cached", str(MISALIGN_PATCH)),
        "c6": lambda: append("Documentation/mm/hugetlbfs_reserv.rst", "\n.. bisect test: another note."),
    }
    parent = commits["c0"]
    for name, edit in edits.items():
        edit()
        tree = git("write-tree").strip()
        parent = git("commit-tree", tree, "-p", parent, "-m", SUBJECTS[name]).strip()
        git("update-ref", "HEAD", parent)
        commits[name] = parent
    git("update-ref", "refs/heads/bisect-test", parent)
    return commits


@pytest.fixture(scope="session")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    from harness import pipeline

    base = pipeline.source_tree(None)
    repo = tmp_path_factory.mktemp("history") / "linux"
    return repo, make_history(base, repo)


def bisect_out(name: str) -> Path:
    """The test's --out, at a fixed path in the cache rather than under tmp: the worktree is
    out/bisect/worktree, and a kernel build's objects (ccache's entries, the incremental O=
    directory) are keyed by the source path, so a fixed path makes every run after the first
    rebuild from ccache instead of compiling the kernel from scratch. Emptied before each use."""
    from harness.cache import cache_dir

    out = cache_dir("test-bisect") / name
    if out.exists():
        shutil.rmtree(out)
    return out


def run_bisect(repo: Path, commits: dict[str, str], out: Path,
               *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HARNESS, "bisect", "--tree", str(repo), "--good", commits["c0"], "--bad", commits["c6"],
         "--arch", "riscv64", "--variant", "debug", "--out", str(out), *extra],
        capture_output=True, text=True, timeout=3600, cwd=REPO)


@pytest.mark.boot
@pytest.mark.timeout(3600)
def test_bisect_names_the_misalignment_commit(history: tuple[Path, dict[str, str]]) -> None:
    repo, commits = history
    out = bisect_out("found")
    user_head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                               text=True).stdout
    done = run_bisect(repo, commits, out, "--check", f"check:{SPARSE_INIT_CHECK}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"first bad commit: {commits['c5']} {SUBJECTS['c5']}" in done.stdout, done.stdout
    assert "sparse_init" in done.stdout.split("finding:", 1)[1]
    match = re.search(r"^reproducer: (\S+)$", done.stdout, re.M)
    assert match and Path(match[1]).exists(), done.stdout
    state = json.loads((out / "bisect" / "bisect.json").read_text())
    outcomes = {step["commit"]: step["outcome"] for step in state["steps"]}
    assert outcomes[commits["c0"]] == "good" and outcomes[commits["c6"]] == "bad"
    assert outcomes[commits["c3"]] == "skip", state["steps"]  # visited, skipped, not blamed
    c3 = next(step for step in state["steps"] if step["commit"] == commits["c3"])
    assert "does not build" in c3["reason"] and "bisect test" in Path(c3["build_log"]).read_text()
    for step in state["steps"]:
        assert step["subject"] and step["seconds"] >= 0 and step["reason"]
        assert step["repeat"] == 1 and step["bad_boots"] == (step["outcome"] == "bad")
        if step["role"] == "bisect" and step["outcome"] != "skip":
            # Built in the O= directory the bad end left, not configured again.
            metadata = json.loads((Path(step["dir"]) / "kernel" / "metadata.json").read_text())
            assert metadata["incremental"]["configured_from_scratch"] is False, metadata
    assert (out / "bisect" / "bisect.log").read_text().count("# skip:") == 1
    # The user's checkout is where it was; the bisect's worktree is gone.
    assert subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout == user_head
    assert not (out / "bisect" / "worktree").exists()
    # The same command again: the bisect has ended, its result is said again, nothing rebuilt.
    again = run_bisect(repo, commits, out, "--check", f"check:{SPARSE_INIT_CHECK}")
    assert again.returncode == 0 and f"first bad commit: {commits['c5']}" in again.stdout, again.stderr
    assert len(json.loads((out / "bisect" / "bisect.json").read_text())["steps"]) == \
        len(state["steps"])
    help_text = subprocess.run([*HARNESS, "--help"], capture_output=True, text=True).stdout
    if re.search(r"\brepro\b", help_text):
        again = subprocess.run([*HARNESS, "repro", match[1]], capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stdout + again.stderr


@pytest.mark.boot
@pytest.mark.timeout(3600)
def test_bisect_with_the_default_check_stops_at_the_good_end(history: tuple[Path, dict[str, str]]) -> None:
    """The good end already fails (the vmemmap_remap_pte WARN of docs/findings.md #3): one
    line naming it and the narrower --check, exit 1, and no commit blamed."""
    repo, commits = history
    out = bisect_out("default-check")
    done = run_bisect(repo, commits, out)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "first bad commit:" not in done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("hvo-harness:")]
    assert len(errors) == 1, done.stderr
    assert "good end" in errors[0] and "vmemmap_remap_pte" in errors[0] and "--check" in errors[0]
    state = json.loads((out / "bisect" / "bisect.json").read_text())
    assert [step["role"] for step in state["steps"]] == ["good-end"]
    assert state["result"]["status"] == "unverified" and state["result"]["first_bad"] is None


def test_incremental_build_directory_per_tree_path_arch_variant_toolchain(tmp_path: Path) -> None:
    """One persistent O= directory per (tree path, arch, variant, toolchain); its config key
    (when it is configured from scratch) moves with the fragments' text."""
    from harness import trees

    profile = get_profile("riscv64")
    toolchain = kbuild.find_toolchain(profile, None)
    state = trees.TreeState("/t", "git", "7.2.13", "c" * 40, None, False, "d" * 64)

    def request(tree: str, variant: str = "debug", fragments: tuple[Path, ...] = ()) -> kbuild.BuildRequest:
        source = trees.Source(Path(tree), (), state)
        chosen = kbuild.resolve_variant(profile, variant, fragments)
        return kbuild.BuildRequest(source, profile, chosen, toolchain)

    assert kbuild.incremental_dir(request("/a")) == kbuild.incremental_dir(request("/a"))
    assert kbuild.incremental_dir(request("/a")) != kbuild.incremental_dir(request("/b"))
    assert kbuild.incremental_dir(request("/a")) != kbuild.incremental_dir(request("/a", "base"))
    extra = tmp_path / "extra.config"
    extra.write_text("CONFIG_DEBUG_LIST=y\n")
    versions = {"gcc": "12"}
    before = kbuild._config_key(request("/a", fragments=(extra,)), versions)
    extra.write_text("CONFIG_DEBUG_LIST=n\n")
    assert kbuild._config_key(request("/a", fragments=(extra,)), versions) != before
    assert kbuild._config_key(request("/a"), versions) != kbuild._config_key(request("/a"), {"gcc": "13"})
    patched = trees.Source(Path("/a"), (extra,), state)
    with pytest.raises(HarnessError, match="without --patches"):
        kbuild.build_incremental(kbuild.BuildRequest(patched, profile, request("/a").variant, toolchain),
                                 tmp_path / "step")
