"""`hvo-harness ci github|gitlab`: the generated nightly workflows parse, validate against the
providers' published schemas, have the jobs the arch profiles call for, each with its caches,
always-uploaded artifacts and the comparison with the baseline; their shell steps do what the
comments say; the shipped GitHub workflow is the command's output."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from harness import ci, kbuild
from harness.ci import Block, Note
from harness.profiles import ARCH_NAMES, get_profile
from tests.recorded import X86, document

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = Path(__file__).parent / "data" / "ci-schemas"
HARNESS = [sys.executable, "-m", "harness.cli"]
HASHED = "hashFiles('kconfigs/**', 'guest_scripts/**')"


# --- A YAML parser: PyYAML in the venv, else Debian's python3-yaml -------------------------------

@functools.cache
def _yaml_python() -> str | None:
    """An interpreter that can import yaml, for when the venv has no PyYAML."""
    for candidate in ("/usr/bin/python3", shutil.which("python3")):
        probe = [candidate, "-c", "import yaml"] if candidate else None
        if probe and subprocess.run(probe, capture_output=True).returncode == 0:
            return candidate
    return None


def load_yaml(text: str) -> Any:
    try:
        import yaml
    except ImportError:
        python = _yaml_python()
        if python is None:
            pytest.fail("no YAML parser: install PyYAML in the venv (pip install pyyaml) or python3-yaml")
        done = subprocess.run(
            [python, "-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
            input=text, capture_output=True, text=True, check=True,
        )
        return json.loads(done.stdout)
    return yaml.safe_load(text)


def validate(data: Any, schema_name: str) -> None:
    schema = json.loads((SCHEMAS / schema_name).read_text())
    checker = jsonschema.Draft7Validator.FORMAT_CHECKER
    errors = jsonschema.Draft7Validator(schema, format_checker=checker).iter_errors(data)
    # A oneOf/anyOf error says only that nothing matched: its leaves say why.
    lines = sorted({f"{'/'.join(map(str, leaf.absolute_path))}: {leaf.message[:160]}"
                    for error in errors for leaf in _leaves(error)})
    assert not lines, "\n".join(lines)


def _leaves(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    return [leaf for sub in error.context for leaf in _leaves(sub)] if error.context else [error]


def bash_syntax(script: str) -> None:
    done = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert done.returncode == 0, f"{done.stderr}\n{script}"


Jobs = dict[str, tuple[str, str | None]]


def expected_jobs(variants: tuple[str, ...] = (), all_page_sizes: bool = False) -> Jobs:
    """Job name -> (arch, variant), worked out from the profiles independently of ci.plan_jobs."""
    jobs: Jobs = {arch: (arch, None) for arch in ARCH_NAMES}
    for arch in ARCH_NAMES:
        profile = get_profile(arch)
        for variant in variants:
            many = all_page_sizes and len(profile.build.page_sizes) > 1
            for name in kbuild.page_size_variants(profile, variant) if many else [variant]:
                jobs[f"{arch}-{name.replace('+', '-')}"] = (arch, name)
    return jobs


def run_command(name: str, arch: str, variant: str | None) -> str:
    tree = f" --tree --variant {variant}" if variant else ""
    return f".venv/bin/hvo-harness run --arch {arch}{tree} --json results-{name}.json --out hvo-results"


# --- The emitter ---------------------------------------------------------------------------------

TRICKY = [
    "on", "On", "yes", "No", "off", "y", "n", "true", "False", "null", "~", "", " lead", "trail ",
    "a: b", "a #b", "a#b", "ends:", "a:b", "30 2 * * *", "1.5", ".5", ".inf", ".NaN", "0x1F", "1_000",
    "1:20", "-x", "- x", "*alias", "&anchor", "!tag", "%dir", "@at", "`tick", "'quoted'", '"dq"',
    "it's", 'say "hi"', "tab\there", "line\nbreak", "ünïcode", "sep\u2028arator", "nbsp\u00a0", "emoji 😀",
    "nul\x00", "back\\slash", "${{ hashFiles('a/**') != '' }}", "[a]", "{a}", "a, b", "?q", "|pipe",
    ">fold", "=", "<<", "#comment", "--- doc", "...", ".venv/bin/x", "$CI_PIPELINE_SOURCE == \"web\"",
]


def test_emitter_round_trip() -> None:
    data = {
        "strings": TRICKY,
        "keys": {word: index for index, word in enumerate(["on", "yes", "1", "a b", "x: y"])},
        "scalars": [True, False, None, 0, 42, -7, {}, []],
        "nested": [[1, [2]], {"a": [{"b": {"c": "d"}}]}],
        "noted": Note("a comment\nof two lines", {"first": Note("above the dash", 1), "second": 2}),
        "items": [Note("on an item", {"k": Note("first key's", "v"), "w": 1}), Note("", "x", blank=True)],
        "blocks": [
            Block("echo a\n  indented\n\nafter a blank line\n"),
            Block("no final newline"),
            Block(" leading space\nsecond\n"),
            Block("quotes ' \" and # and: colons\n"),
        ],
        "block": Block("set -e\ntest 1 -eq 1\n"),
    }
    text = ci.dump(data, header="a header\n\nwith a blank line")
    assert text.startswith("# a header\n#\n# with a blank line\n")
    assert load_yaml(text) == ci.plain(data)


def test_emitter_refuses_what_it_cannot_write() -> None:
    with pytest.raises(ValueError, match="literal block"):
        ci.dump({"a": Block("trailing blank lines\n\n")})
    with pytest.raises(TypeError):
        ci.dump({"a": 1.5})


# --- Jobs from the profiles -----------------------------------------------------------------------

@pytest.mark.parametrize(("variants", "all_page_sizes"), [((), False), (("debug",), False),
                                                          (("debug",), True), (("debug", "base+4k"), True)])
def test_jobs_follow_the_profiles(variants: tuple[str, ...], all_page_sizes: bool) -> None:
    jobs = ci.plan_jobs("all", variants, all_page_sizes)
    assert {job.name: (job.arch, job.variant) for job in jobs} == expected_jobs(variants, all_page_sizes)


def test_job_names_written_out() -> None:
    """The same rules as expected_jobs, written out, so a rule both sides share is checked too."""
    names = [job.name for job in ci.plan_jobs("all", ["debug", "base+4k"], all_page_sizes=True)]
    assert names == ["x86_64", "riscv64", "loongarch64", "x86_64-debug", "x86_64-base-4k", "riscv64-debug",
                     "riscv64-base-4k", "loongarch64-debug-16k", "loongarch64-debug-4k",
                     "loongarch64-debug-4k4l", "loongarch64-base-16k", "loongarch64-base-4k",
                     "loongarch64-base-4k4l"]


def test_loongarch64_gets_a_job_per_page_size() -> None:
    names = [job.name for job in ci.plan_jobs("loongarch64", ["debug"], all_page_sizes=True)]
    sizes = get_profile("loongarch64").build.page_sizes
    assert len(sizes) > 1
    assert names == ["loongarch64", *(f"loongarch64-debug-{size}" for size in sizes)]


def test_the_same_build_is_one_job() -> None:
    # debug and debug+16k are the same loongarch64 kernel (16k is its default page size).
    default = get_profile("loongarch64").build.page_sizes[0]
    jobs = ci.plan_jobs("loongarch64", ["debug", f"debug+{default}"])
    assert [job.variant for job in jobs] == [None, "debug"]


# --- GitHub Actions --------------------------------------------------------------------------------

def github(*args: str) -> dict[str, Any]:
    variants = ()
    if "--variant" in args:
        variants = tuple(args[args.index("--variant") + 1].split(","))
    text = ci.generate("github", "all", variants, "--page-sizes" in args)
    data = load_yaml(text)
    validate(data, "github-workflow.json")
    return data


def step_index(steps: list[dict[str, Any]], predicate: Any, what: str) -> int:
    found = [i for i, step in enumerate(steps) if predicate(step)]
    assert len(found) == 1, f"{what}: {len(found)} steps"
    return found[0]


def uses(action: str) -> Any:
    return lambda step: step.get("uses", "").startswith(action + "@")


@pytest.mark.parametrize("args", [(), ("--variant", "debug", "--page-sizes", "all")])
def test_github_workflow(args: tuple[str, ...]) -> None:
    data = github(*args)
    variants = ("debug",) if args else ()
    assert set(data["on"]) == {"schedule", "workflow_dispatch"}
    (cron,) = [entry["cron"] for entry in data["on"]["schedule"]]
    assert len(cron.split()) == 5
    assert data["defaults"]["run"]["shell"] == "bash"
    expected = expected_jobs(variants, bool(args))
    assert set(data["jobs"]) == set(expected)
    for name, (arch, variant) in expected.items():
        job = data["jobs"][name]
        where = f"job {name}"
        assert job["container"]["image"] == "debian:bookworm", where
        steps = job["steps"]
        assert not any(step.get("continue-on-error") for step in steps), where
        for step in steps:
            if "run" in step:
                bash_syntax(step["run"])

        deps = step_index(steps, lambda s: s.get("run") == "make deps venv", f"{where}: make deps venv")
        run = step_index(steps, lambda s: s.get("id") == "run", f"{where}: run")
        assert run_command(name, arch, variant) in steps[run]["run"], where
        report = step_index(steps, lambda s: "hvo-harness report" in s.get("run", ""), f"{where}: report")
        assert f"hvo-harness report results-{name}.json" in steps[report]["run"]
        assert f"hvo-harness export kcidb results-{name}.json" in steps[report]["run"]
        assert "!cancelled()" in steps[report]["if"]

        # The caches: restored before the run, saved after it, failure or not, under the same
        # path (actions/cache versions an entry by its paths), keyed by job and hashed inputs.
        restores = [i for i, s in enumerate(steps) if uses("actions/cache/restore")(s)]
        saves = [i for i, s in enumerate(steps) if uses("actions/cache/save")(s)]
        assert len(restores) == len(saves) == (3 if variant else 2), where
        for restore in restores:
            key = steps[restore]["with"]["key"]
            assert f"-{name}-${{{{ " in key and "${{ github.run_id }}" in key, where
            (save,) = [i for i in saves if steps[i]["with"]["key"]
                       == f"${{{{ steps.{steps[restore]['id']}.outputs.cache-primary-key }}}}"]
            assert steps[save]["with"]["path"] == steps[restore]["with"]["path"], where
            assert restore < deps < run < save, where
        harness_cache = steps[step_index(steps, lambda s: s.get("id") == "harness-cache", where)]
        assert harness_cache["with"]["path"] == "${{ env.HVO_HARNESS_CACHE }}"
        assert HASHED in harness_cache["with"]["key"], where
        assert data["env"]["HVO_HARNESS_CACHE"].endswith("/.cache/hvo-harness")
        if variant:
            ccache = steps[step_index(steps, lambda s: s.get("id") == "ccache", where)]
            assert ccache["with"]["path"] == "${{ env.CCACHE_DIR }}"
            assert HASHED in ccache["with"]["key"]
        for save in saves:
            condition = steps[save]["if"]
            if steps[save]["with"]["path"] != "baseline":
                assert "!cancelled()" in condition and "success" not in condition, where

        # The baseline: compared after the run, replaced only when the comparison passed.
        compare = step_index(steps, lambda s: s.get("id") == "compare", f"{where}: compare")
        assert f"hvo-harness compare baseline/results.json results-{name}.json" in steps[compare]["run"]
        assert steps[compare]["if"] == "${{ steps.run.outcome == 'success' }}"
        baseline = step_index(steps, lambda s: s.get("id") == "baseline", where)
        keep = step_index(steps, lambda s: "cp results-" in s.get("run", ""), where)
        save_baseline = step_index(steps, lambda s: s.get("with", {}).get("path") == "baseline"
                                   and uses("actions/cache/save")(s), where)
        assert baseline < run < compare < keep < save_baseline, where
        for later in (keep, save_baseline):
            assert steps[later]["if"] == "${{ steps.compare.outcome == 'success' }}", where

        # The artifacts: uploaded whatever happened.
        upload = steps[step_index(steps, uses("actions/upload-artifact"), f"{where}: upload")]
        assert upload["if"] == "${{ always() }}", where
        assert upload["with"]["path"].split() == ["hvo-results/", f"results-{name}.json"], where
        assert upload["with"]["name"] == f"hvo-{name}"


def test_github_workflow_schema_catches_mistakes() -> None:
    """The schema check can fail: a misspelt key or a bad value is caught."""
    data = github()
    data["jobs"]["x86_64"]["timeout_minutes"] = data["jobs"]["x86_64"].pop("timeout-minutes")
    with pytest.raises(AssertionError, match="timeout_minutes"):
        validate(data, "github-workflow.json")


def test_shipped_workflow_is_the_commands_output(tmp_path: Path) -> None:
    out = tmp_path / "hvo-nightly.yml"
    done = subprocess.run([*HARNESS, "ci", *ci.SHIPPED_ARGS, "--out", str(out)], capture_output=True,
                          text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    shipped = REPO / ci.DEFAULT_PATHS["github"]
    command = " ".join(["hvo-harness", "ci", *ci.SHIPPED_ARGS, "--out", ci.DEFAULT_PATHS["github"]])
    assert shipped.read_text() == out.read_text(), f"the shipped workflow drifted: run `{command}`"
    assert f"`hvo-harness ci {' '.join(ci.SHIPPED_ARGS)}`" in shipped.read_text()


# --- GitLab CI ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [(), ("--variant", "debug", "--page-sizes", "all")])
def test_gitlab_pipeline(args: tuple[str, ...], tmp_path: Path) -> None:
    out = tmp_path / ".gitlab-ci.yml"
    done = subprocess.run([*HARNESS, "ci", "gitlab", *args, "--out", str(out)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    data = load_yaml(out.read_text())
    validate(data, "gitlab-ci.json")
    expected = expected_jobs(("debug",) if args else (), bool(args))
    assert {key for key in data if key not in ("stages", "variables")} == set(expected)
    assert data["variables"]["HVO_HARNESS_CACHE"] == "$CI_PROJECT_DIR/.cache/hvo-harness"
    for name, (arch, variant) in expected.items():
        job, where = data[name], f"job {name}"
        assert job["image"] == "debian:bookworm"
        assert {"if": '$CI_PIPELINE_SOURCE == "schedule"'} in job["rules"], where
        assert all(rule["if"].startswith("$CI_PIPELINE_SOURCE == ") for rule in job["rules"]), where
        caches = {cache["paths"][0]: cache for cache in job["cache"]}
        assert set(caches) == {".cache/hvo-harness/", "baseline/", *([".cache/ccache/"] if variant else [])}
        harness_key = caches[".cache/hvo-harness/"]["key"]
        assert harness_key["prefix"] == f"hvo-harness-{name}", where
        assert [f.split("/")[0] for f in harness_key["files"]] == ["kconfigs", "guest_scripts"], where
        assert caches[".cache/hvo-harness/"]["when"] == "always", where
        assert caches["baseline/"] == {"key": f"hvo-baseline-{name}", "paths": ["baseline/"],
                                       "when": "on_success"}, where
        if variant:
            assert caches[".cache/ccache/"]["key"] == f"ccache-{name}"
        assert job["artifacts"]["when"] == "always", where
        assert job["artifacts"]["paths"] == ["hvo-results/", f"results-{name}.json"], where
        script = "\n".join(job["script"])
        bash_syntax(script)
        assert "make deps venv" in job["script"]
        for command in (run_command(name, arch, variant), f"hvo-harness report results-{name}.json",
                        f"hvo-harness export kcidb results-{name}.json",
                        f"hvo-harness compare baseline/results.json results-{name}.json"):
            assert command in script, f"{where}: {command}"


def test_gitlab_schema_catches_mistakes() -> None:
    data = load_yaml(ci.generate("gitlab"))
    data["x86_64"]["artifacts"]["when"] = "sometimes"
    with pytest.raises(AssertionError, match="sometimes"):
        validate(data, "gitlab-ci.json")


# --- The shell steps, run with a stand-in for `hvo-harness run` -----------------------------------

STUB = """#!/bin/sh
echo "$*" >> "$STUB_LOG"
case "$1" in
  fetch) exit 0 ;;
  run)
    while [ $# -gt 0 ]; do [ "$1" = --json ] && out=$2; shift; done
    [ -n "$STUB_RESULTS" ] && cp "$STUB_RESULTS" "$out"
    exit "$STUB_EXIT" ;;
esac
exec {python} -m harness.cli "$@"
"""


def workdir(tmp_path: Path, results: Path | None, exit_status: int) -> tuple[Path, dict[str, str]]:
    """A job's working directory whose .venv/bin/hvo-harness writes `results` for `run` and exits
    with exit_status; report, export and compare are the real commands."""
    work = tmp_path / "work"
    (work / ".venv" / "bin").mkdir(parents=True)
    stub = work / ".venv" / "bin" / "hvo-harness"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "STUB_LOG": str(tmp_path / "calls"),
           "STUB_RESULTS": str(results or ""), "STUB_EXIT": str(exit_status),
           "GITHUB_OUTPUT": str(tmp_path / "github-output"), "HOME": str(tmp_path),
           "HVO_HARNESS_CACHE": str(tmp_path / "cache")}
    (tmp_path / "cache" / "locks").mkdir(parents=True)
    return work, env


def regressed_baseline(tmp_path: Path) -> Path:
    """X86's results with its failing 1G scenario passing: against it, X86 has a regression."""
    doc = document(X86)
    failing = next(s for s in doc["runs"][0]["scenarios"] if s["status"] == "fail")
    failing["status"] = "pass"
    path = tmp_path / "baseline-passing.json"
    path.write_text(json.dumps(doc))
    return path


def gitlab_script(name: str) -> str:
    """The job's script as GitLab's runner runs it (one bash script, -e and pipefail), without
    the host set-up lines."""
    job = load_yaml(ci.generate("gitlab", variants=["debug"]))[name]
    lines = [line for line in job["script"] if not line.startswith(("apt-get ", "make "))]
    return "set -eo pipefail\n" + "\n".join(lines)


@pytest.mark.parametrize(("baseline", "exit_status", "job_status"), [
    (None, 1, 0),         # the first night: no baseline, tonight's results become it
    (X86, 1, 0),          # the same failure as last night: not a regression
    ("regressed", 1, 1),  # a scenario that passed last night fails: the job fails
])
def test_gitlab_script_compares_with_the_baseline(tmp_path: Path, baseline: Any, exit_status: int,
                                                  job_status: int) -> None:
    work, env = workdir(tmp_path, X86, exit_status)
    if baseline is not None:
        (work / "baseline").mkdir()
        source = regressed_baseline(tmp_path) if baseline == "regressed" else baseline
        shutil.copy(source, work / "baseline" / "results.json")
    before = (work / "baseline" / "results.json").read_bytes() if baseline else None
    done = subprocess.run(["bash", "-c", gitlab_script("x86_64-debug")], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == job_status, done.stdout + done.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[:2] == ["fetch --arch x86_64", run_command("x86_64-debug", "x86_64", "debug")
                         .removeprefix(".venv/bin/hvo-harness ")]
    for written in ("report.md", "report.html", "kcidb-x86_64-debug.json"):
        assert (work / "hvo-results" / written).is_file(), written
    kept = (work / "baseline" / "results.json").read_bytes()
    if job_status == 0:
        assert kept == X86.read_bytes()  # tonight's results are the next baseline
    else:
        assert kept == before  # a night with a regression leaves the baseline alone
        assert "regression" in (work / "hvo-results" / "compare.txt").read_text().lower()
    if baseline is None:
        assert "no baseline yet" in done.stdout


def test_gitlab_script_fails_when_the_run_gives_no_results(tmp_path: Path) -> None:
    work, env = workdir(tmp_path, None, 2)
    done = subprocess.run(["bash", "-c", gitlab_script("x86_64")], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert not (work / "baseline").exists()


@pytest.mark.parametrize(("exit_status", "step_status"), [(0, 0), (1, 0), (2, 2)])
def test_github_run_step(tmp_path: Path, exit_status: int, step_status: int) -> None:
    steps = github()["jobs"]["riscv64"]["steps"]
    script = next(step["run"] for step in steps if step.get("id") == "run")
    work, env = workdir(tmp_path, X86 if exit_status < 2 else None, exit_status)
    done = subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=work, env=env,
                          capture_output=True, text=True)
    assert done.returncode == step_status, done.stdout + done.stderr
    assert (tmp_path / "github-output").read_text() == f"exit={exit_status}\n"
    assert ("::warning::" in done.stdout) == (exit_status == 1)
    # A restored cache's guest memory ledger names processes of another machine: cleared.
    assert not (tmp_path / "cache" / "locks").exists()


@pytest.mark.parametrize(("baseline", "step_status"), [(None, 0), (X86, 0), ("regressed", 1)])
def test_github_compare_step(tmp_path: Path, baseline: Any, step_status: int) -> None:
    steps = github()["jobs"]["x86_64"]["steps"]
    script = next(step["run"] for step in steps if step.get("id") == "compare")
    work, env = workdir(tmp_path, None, 0)
    shutil.copy(X86, work / "results-x86_64.json")
    if baseline is not None:
        (work / "baseline").mkdir()
        source = regressed_baseline(tmp_path) if baseline == "regressed" else baseline
        shutil.copy(source, work / "baseline" / "results.json")
    done = subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == step_status, done.stdout + done.stderr
    assert ("::warning::" in done.stdout) == (baseline is None)


# --- The command line --------------------------------------------------------------------------------

def one_error_line(*args: str) -> str:
    done = subprocess.run([*HARNESS, *args], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hvo-harness: error: "), done.stderr
    assert not done.stdout
    return lines[0]


def test_unknown_provider() -> None:
    line = one_error_line("ci", "jenkins")
    assert "unknown CI provider 'jenkins'" in line and "github or gitlab" in line


def test_unknown_arch() -> None:
    line = one_error_line("ci", "github", "--arch", "x86_64,arm64")
    assert "unknown arch 'arm64'" in line and "loongarch64" in line


def test_bad_variants() -> None:
    assert "unknown variant word 'nodebug'" in one_error_line("ci", "gitlab", "--variant", "nodebug")
    assert "no 64k page size" in one_error_line("ci", "github", "--arch", "x86_64", "--variant", "debug+64k")
    assert "needs --variant" in one_error_line("ci", "github", "--page-sizes", "all")


def test_unwritable_out(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    line = one_error_line("ci", "github", "--out", str(tmp_path / "file" / "hvo-nightly.yml"))
    assert "cannot write" in line


def test_standard_output_by_default() -> None:
    done = subprocess.run([*HARNESS, "ci", "gitlab", "--arch", "riscv64"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ci.generate("gitlab", "riscv64")
    assert set(load_yaml(done.stdout)) == {"stages", "variables", "riscv64"}
