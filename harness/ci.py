"""`hvo-harness ci github|gitlab`: a nightly CI workflow, generated from the arch profiles.

One job per arch booting Debian sid's newest kernel, plus one per arch and kernel variant
built from Debian's linux-source (`run --tree --variant V`; with `--page-sizes all`, one per
page size the arch has). Each job installs the host (`make deps venv`), restores the harness
cache and ccache, runs the harness, writes the report and the KCIDB export, uploads logs,
results and report whatever happened, and compares the results with the last good night's
(the baseline): a regression fails the job.

The YAML is written by a small emitter here rather than PyYAML: it needs no dependency, it
writes comments (PyYAML cannot), and its output is the same on every machine, so the
workflow the repository ships can be checked against this command's output."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness import kbuild
from harness.errors import HarnessError
from harness.profiles import parse_arch_list

PROVIDERS = ("github", "gitlab")
# Where each provider reads its workflow from, relative to the repository root.
DEFAULT_PATHS = {"github": ".github/workflows/hvo-nightly.yml", "gitlab": ".gitlab-ci.yml"}
# The arguments the shipped .github/workflows/hvo-nightly.yml is generated with.
SHIPPED_ARGS = ("github", "--variant", "debug", "--page-sizes", "all")

HARNESS = ".venv/bin/hvo-harness"
OUT_DIR = "hvo-results"
BASELINE = "baseline/results.json"
IMAGE = "debian:bookworm"
CRON = "30 2 * * *"
# Minutes a job may take: a Debian kernel is booted twice (HVO on and off) under TCG; a tree
# job first unpacks linux-source and builds (6 to 12 minutes a kernel on 2 cores, cold).
DEBIAN_MINUTES, TREE_MINUTES = 180, 300
CCACHE_MAXSIZE = "2G"
# The files whose change starts a new harness cache (the harness keys its entries by content,
# so an old cache would work, but stale builds and initramfs images would pile up in it).
KEY_FILES = ("kconfigs/**", "guest_scripts/**")

CHECKOUT = "actions/checkout@v5"
CACHE_RESTORE = "actions/cache/restore@v5"
CACHE_SAVE = "actions/cache/save@v5"
UPLOAD = "actions/upload-artifact@v6"


@dataclass(frozen=True)
class Job:
    """One CI job: an arch, booting Debian's prebuilt kernel (variant None) or a variant built
    from Debian's linux-source."""

    arch: str
    variant: str | None = None

    @property
    def name(self) -> str:
        """The job's name, also in its results file, artifact and cache keys: 'x86_64',
        'loongarch64-debug-4k' (GitLab's API and GitHub's job ids take no '+')."""
        text = self.arch if self.variant is None else f"{self.arch}-{self.variant}"
        return re.sub(r"[^A-Za-z0-9_-]", "-", text)

    @property
    def title(self) -> str:
        if self.variant is None:
            return f"{self.arch}, Debian sid's kernel"
        return f"{self.arch}, {self.variant} built from linux-source"

    @property
    def results(self) -> str:
        return f"results-{self.name}.json"

    @property
    def minutes(self) -> int:
        return DEBIAN_MINUTES if self.variant is None else TREE_MINUTES

    @property
    def fetch_command(self) -> str:
        # `run` trusts the cache once it holds a kernel; fetch asks Debian for its newest one
        # (and linux-source for a tree job), keeping the cached copy if the archive is down.
        source = "" if self.variant else " --no-source"
        return f"{HARNESS} fetch --arch {self.arch}{source}"

    @property
    def run_command(self) -> str:
        tree = f" --tree --variant {shlex.quote(self.variant)}" if self.variant else ""
        return f"{HARNESS} run --arch {self.arch}{tree} --json {self.results} --out {OUT_DIR}"


def plan_jobs(arch: str = "all", variants: Sequence[str] = (), all_page_sizes: bool = False) -> list[Job]:
    """The jobs for `--arch`, `--variant` and `--page-sizes`: Debian's kernel on each arch, then
    each variant on each arch (at each of the arch's page sizes with all_page_sizes)."""
    if all_page_sizes and not variants:
        raise HarnessError("--page-sizes all needs --variant (the page sizes of a kernel built from a tree)")
    profiles = parse_arch_list(arch)
    jobs = [Job(profile.name) for profile in profiles]
    for profile in profiles:
        seen: set[str] = set()
        for given in variants:
            # With one page size the variant as given names the same build (and the job).
            several = all_page_sizes and len(profile.build.page_sizes) > 1
            names = kbuild.page_size_variants(profile, given) if several else [given]
            for name in names:
                canonical = kbuild.resolve_variant(profile, name).name  # checks every word
                if canonical not in seen:
                    seen.add(canonical)
                    jobs.append(Job(profile.name, name))
    names = [job.name for job in jobs]
    clash = next((name for name in names if names.count(name) > 1), None)
    if clash:
        raise HarnessError(f"two jobs would be named {clash}: give variants that differ in more than "
                           "'+' and '-'")
    return jobs


def command_line(provider: str, arch: str = "all", variants: Sequence[str] = (),
                 all_page_sizes: bool = False) -> str:
    words = ["hvo-harness", "ci", provider]
    if arch.strip() != "all":
        words += ["--arch", arch]
    if variants:
        words += ["--variant", ",".join(variants)]
    if all_page_sizes:
        words += ["--page-sizes", "all"]
    return shlex.join(words)


def generate(provider: str, arch: str = "all", variants: Sequence[str] = (),
             all_page_sizes: bool = False) -> str:
    """The workflow file's text for provider ('github' or 'gitlab')."""
    if provider not in PROVIDERS:
        raise HarnessError(f"unknown CI provider {provider!r}: choose {' or '.join(PROVIDERS)}")
    jobs = plan_jobs(arch, variants, all_page_sizes)
    command = command_line(provider, arch, variants, all_page_sizes)
    what = "one job per arch booting Debian sid's newest kernel"
    if variants:
        what += ",\nand one per arch and variant built from Debian's linux-source"
    header = (
        f"Generated by `{command}`\n"
        "(harness/ci.py, from the arch profiles): change the generator and regenerate rather\n"
        "than editing this file.\n"
        "\n"
        f"Nightly: {what}. Each job runs\n"
        "the harness, writes the report and the KCIDB export, uploads them with the logs whatever\n"
        "happened, and compares the results with the last good night's: a regression fails the\n"
        "job. A scenario that fails every night does not (the report shows it); the first night,\n"
        "with no baseline yet, only warns.\n"
        "\n"
        f"{RUNNER_NOTES[provider]}\n"
        "\n"
        "Every job has the same steps: the first job's comments say why each is there."
    )
    if provider == "github":
        return dump(github_workflow(jobs), header)
    return dump(gitlab_pipeline(jobs), header)


RUNNER_NOTES = {
    "github": (
        "GitHub has no Debian runner image, so the jobs run in a debian:bookworm container on an\n"
        "Ubuntu runner: bookworm is the host the harness supports, and `make deps`\n"
        "(scripts/install-host-deps.sh) installs QEMU 10 and clang-19 from bookworm-backports.\n"
        "No /dev/kvm is passed in (not every runner has one; add `options: --device /dev/kvm`\n"
        "under `container:` where it does): `--accel auto` then boots x86_64 under TCG too.\n"
        "The guests have up to 16 GiB of RAM (riscv64: two nodes of 8 GiB) and touch a few GiB\n"
        "of it: the runner needs about 16 GB (GitHub's standard Linux runner for public\n"
        "repositories has that)."
    ),
    "gitlab": (
        "The jobs run in the debian:bookworm image: bookworm is the host the harness supports,\n"
        "and `make deps` (scripts/install-host-deps.sh) installs QEMU 10 and clang-19 from\n"
        "bookworm-backports. They run from a pipeline schedule (Build > Pipeline schedules,\n"
        f"e.g. cron \"{CRON}\") or by hand (Build > Pipelines > Run pipeline)."
    ),
}


# --- The job's shell steps, shared by both providers --------------------------------------------

def _run_script(job: Job, github: bool) -> str:
    lines = [
        "# The guest memory ledger in the restored cache counts guests of a machine long gone.",
        'rm -rf "${HVO_HARNESS_CACHE:?}/locks"',
        "status=0",
        f"{job.run_command} || status=$?",
    ]
    if github:
        lines.append('echo "exit=$status" >> "$GITHUB_OUTPUT"')
    warn = "::warning::" if github else "warning: "
    lines += [
        "# 1: a scenario or boot failed; the comparison with the baseline says whether that is new.",
        'if [ "$status" -eq 1 ]; then',
        f'  echo "{warn}{job.name}: something failed (see the report); only a regression fails the job"',
        "fi",
    ]
    if github:
        lines += ["# 2 and more: a set-up error, or no results to compare.",
                  '[ "$status" -le 1 ] || exit "$status"']
    return "\n".join(lines) + "\n"


def _report_script(job: Job) -> str:
    return (
        f"if [ -f {job.results} ]; then\n"
        f"  {HARNESS} report {job.results} --out {OUT_DIR}\n"
        f"  {HARNESS} export kcidb {job.results} -o {OUT_DIR}/kcidb-{job.name}.json\n"
        "fi\n"
    )


def _compare_script(job: Job, github: bool) -> str:
    warn = "::warning::" if github else "warning: "
    return (
        f"mkdir -p {OUT_DIR}\n"
        f"if [ -f {BASELINE} ]; then\n"
        f"  cp {BASELINE} {OUT_DIR}/baseline-{job.results}\n"
        "  status=0\n"
        f"  {HARNESS} compare {BASELINE} {job.results} > {OUT_DIR}/compare.txt || status=$?\n"
        f"  cat {OUT_DIR}/compare.txt\n"
        "  # 1: a regression; 2: a file that is not a results file.\n"
        '  [ "$status" -eq 0 ] || exit "$status"\n'
        "else\n"
        f'  echo "{warn}{job.name}: no baseline yet (the first night, or its cache entry was evicted): '
        'tonight\'s results become it"\n'
        "fi\n"
    )


def _keep_baseline(job: Job) -> str:
    return f"mkdir -p {BASELINE.rsplit('/', 1)[0]} && cp {job.results} {BASELINE}"


_APT = "apt-get update -q && apt-get install -y -q --no-install-recommends ca-certificates git make"


def _explainer(explain: bool) -> Any:
    """Note(comment, value) for the first job, the bare value for the others (same steps)."""
    return Note if explain else (lambda comment, value: value)


# --- GitHub Actions ----------------------------------------------------------------------------

def github_workflow(jobs: Sequence[Job]) -> dict[str, Any]:
    return {
        "name": "hvo-nightly",
        "on": {
            "schedule": Note("Every night at 02:30 UTC; workflow_dispatch runs it by hand.",
                             [{"cron": CRON}]),
            "workflow_dispatch": {},
        },
        "permissions": {"contents": "read"},
        "concurrency": Note(
            "Two runs at once would race for the same baseline: the second waits.",
            {"group": "hvo-nightly-${{ github.ref }}", "cancel-in-progress": False},
        ),
        "defaults": {"run": {"shell": "bash"}},
        "env": Note(
            "Absolute paths, not ~ (in a container job HOME is /github/home): the harness's and\n"
            "ccache's own defaults for root.",
            {"HVO_HARNESS_CACHE": "/root/.cache/hvo-harness", "CCACHE_DIR": "/root/.cache/ccache",
             "CCACHE_MAXSIZE": CCACHE_MAXSIZE},
        ),
        "jobs": {job.name: Note("", _github_job(job, explain=index == 0), blank=True)
                 for index, job in enumerate(jobs)},
    }


def _github_job(job: Job, explain: bool) -> dict[str, Any]:
    note = _explainer(explain)
    hashed = ", ".join(f"'{pattern}'" for pattern in KEY_FILES)
    files_hash = f"${{{{ hashFiles({hashed}) }}}}"
    unique = "${{ github.run_id }}-${{ github.run_attempt }}"
    harness_key = f"hvo-harness-{job.name}-{files_hash}-"
    ccache_key = f"ccache-{job.name}-"
    steps: list[Any] = [
        note("git for a real clone, make for `make deps`, which installs the rest.",
             {"name": "Tools for the checkout and make", "run": _APT}),
        {"uses": CHECKOUT},
        note(
            "Debian artefacts, linux-source, builds, initramfs images. A cache entry cannot be\n"
            "overwritten, so each run saves a new one (the run id is in the key) and the next\n"
            "restores the newest with the same kconfigs/ and guest_scripts/ (a change starts\n"
            "afresh, so stale builds do not pile up).",
            {"name": "Restore the harness cache", "id": "harness-cache", "uses": CACHE_RESTORE,
             "with": {"path": "${{ env.HVO_HARNESS_CACHE }}", "key": harness_key + unique,
                      "restore-keys": harness_key}},
        ),
    ]
    if job.variant:
        steps.append(note(
            "ccache keys each compile by its inputs, so it is carried over a kconfigs/ change\n"
            "(CCACHE_MAXSIZE bounds it).",
            {"name": "Restore ccache", "id": "ccache", "uses": CACHE_RESTORE,
             "with": {"path": "${{ env.CCACHE_DIR }}", "key": f"{ccache_key}{files_hash}-{unique}",
                      "restore-keys": Block(f"{ccache_key}{files_hash}-\n{ccache_key}\n")}},
        ))
    steps += [
        note(
            "The baseline: the results of the last night without a regression, kept in the cache\n"
            "under a key per job. Downloading the last successful run's artifact instead needs\n"
            "the REST API (list the runs, pick one, a token with actions: read) for the same\n"
            "file. A night with a regression does not replace it, so the job stays red until the\n"
            "regression is fixed. GitHub evicts an entry unused for 7 days: the next night then\n"
            "starts a new baseline (and says so).",
            {"name": "Restore the baseline", "id": "baseline", "uses": CACHE_RESTORE,
             "with": {"path": "baseline", "key": f"hvo-baseline-{job.name}-{unique}",
                      "restore-keys": f"hvo-baseline-{job.name}-"}},
        ),
        {"name": "Host packages and the virtual environment", "run": "make deps venv"},
        note(
            "`run` trusts a cached kernel; fetch asks Debian for its newest (keeping the cached\n"
            "one when the archive cannot be reached).",
            {"name": "Fetch Debian sid's newest " + ("kernel and linux-source" if job.variant else "kernel"),
             "run": job.fetch_command},
        ),
        {"name": "Run the harness", "id": "run", "run": Block(_run_script(job, github=True))},
        {"name": "Report and KCIDB export", "if": "${{ !cancelled() && steps.run.outputs.exit != '' }}",
         "run": Block(_report_script(job))},
        {"name": "Compare with the baseline", "id": "compare", "if": "${{ steps.run.outcome == 'success' }}",
         "run": Block(_compare_script(job, github=True))},
        note(
            "always(): the logs matter most when something failed or the job timed out.",
            {"name": "Upload logs, results and report", "if": "${{ always() }}", "uses": UPLOAD,
             "with": {"name": f"hvo-{job.name}", "path": Block(f"{OUT_DIR}/\n{job.results}\n"),
                      "if-no-files-found": "warn", "retention-days": 30}},
        ),
        {"name": "Keep tonight's results as the baseline", "if": "${{ steps.compare.outcome == 'success' }}",
         "run": _keep_baseline(job)},
        {"name": "Save the baseline", "if": "${{ steps.compare.outcome == 'success' }}", "uses": CACHE_SAVE,
         "with": {"path": "baseline", "key": "${{ steps.baseline.outputs.cache-primary-key }}"}},
        note(
            "Saved on failure too: the downloads and builds are good whatever the kernel did.",
            {"name": "Save the harness cache",
             "if": "${{ !cancelled() && steps.harness-cache.outputs.cache-primary-key != '' }}",
             "uses": CACHE_SAVE,
             "with": {"path": "${{ env.HVO_HARNESS_CACHE }}",
                      "key": "${{ steps.harness-cache.outputs.cache-primary-key }}"}},
        ),
    ]
    if job.variant:
        steps.append({"name": "Save ccache",
                      "if": "${{ !cancelled() && steps.ccache.outputs.cache-primary-key != '' }}",
                      "uses": CACHE_SAVE,
                      "with": {"path": "${{ env.CCACHE_DIR }}",
                               "key": "${{ steps.ccache.outputs.cache-primary-key }}"}})
    return {
        "name": job.title,
        "runs-on": "ubuntu-24.04",
        "container": {"image": IMAGE},
        "timeout-minutes": job.minutes,
        "steps": steps,
    }


# --- GitLab CI ---------------------------------------------------------------------------------

def gitlab_pipeline(jobs: Sequence[Job]) -> dict[str, Any]:
    pipeline: dict[str, Any] = {
        "stages": ["nightly"],
        "variables": Note(
            "GitLab caches only paths inside the project directory.",
            {"HVO_HARNESS_CACHE": "$CI_PROJECT_DIR/.cache/hvo-harness",
             "CCACHE_DIR": "$CI_PROJECT_DIR/.cache/ccache", "CCACHE_MAXSIZE": CCACHE_MAXSIZE},
        ),
    }
    for index, job in enumerate(jobs):
        pipeline[job.name] = Note("", _gitlab_job(job, explain=index == 0), blank=True)
    return pipeline


def _gitlab_job(job: Job, explain: bool) -> dict[str, Any]:
    note = _explainer(explain)
    caches: list[Any] = [
        note(
            "Debian artefacts, linux-source, builds, initramfs images: a new cache when kconfigs/\n"
            "or guest_scripts/ change (so stale builds do not pile up). Saved on failure too.",
            {"key": {"prefix": f"hvo-harness-{job.name}",
                     "files": [f"{path.removesuffix('**')}**/*" for path in KEY_FILES]},
             "paths": [".cache/hvo-harness/"], "when": "always"},
        ),
    ]
    if job.variant:
        caches.append(note(
            "ccache keys each compile by its inputs: one cache per job, bounded by CCACHE_MAXSIZE.",
            {"key": f"ccache-{job.name}", "paths": [".cache/ccache/"], "when": "always"},
        ))
    caches.append(note(
        "The baseline: the results of the last night without a regression (the cache is saved\n"
        "only when the job succeeds). The artifacts API could give the last successful\n"
        "pipeline's file, but whether CI_JOB_TOKEN may use it depends on the GitLab tier; a\n"
        "cache works on every tier (give the runners a distributed cache when there are several).",
        {"key": f"hvo-baseline-{job.name}", "paths": ["baseline/"], "when": "on_success"},
    ))
    return {
        "stage": "nightly",
        "image": IMAGE,
        "timeout": f"{job.minutes} minutes",
        "rules": [{"if": '$CI_PIPELINE_SOURCE == "schedule"'}, {"if": '$CI_PIPELINE_SOURCE == "web"'}],
        "cache": caches,
        "script": [
            _APT,
            "make deps venv",
            job.fetch_command,
            Block(_run_script(job, github=False)),
            Block(_report_script(job)),
            Block('if [ "$status" -gt 1 ]; then\n'
                  '  echo "the harness exited $status: a set-up error, or no results"; exit "$status"\n'
                  "fi\n"),
            Block(_compare_script(job, github=False)),
            _keep_baseline(job),
        ],
        "artifacts": note(
            "when: always: the logs matter most when something failed or the job timed out.",
            {"name": f"hvo-{job.name}", "when": "always", "paths": [f"{OUT_DIR}/", job.results],
             "expire_in": "30 days"},
        ),
    }


# --- A small YAML emitter ------------------------------------------------------------------------

class Block(str):
    """A multi-line string, written as a YAML literal block (`|`): shell scripts, path lists."""


@dataclass(frozen=True)
class Note:
    """A value with a comment on the lines above its key or list item (and a blank line first
    when blank is set)."""

    comment: str
    value: Any
    blank: bool = False


# YAML 1.1 (PyYAML) and 1.2 read these plain words as booleans or null, not strings.
_SPECIAL_WORDS = {"y", "yes", "n", "no", "true", "false", "on", "off", "null", "~"}
# A plain (unquoted) scalar here: a safe first character, then printable ASCII; _is_plain()
# rules out the rest (": ", " #", a final ":", words and numbers that are not strings).
_PLAIN = re.compile(r"[A-Za-z_/$.][ -~]*")


def dump(data: dict[str, Any], header: str = "") -> str:
    """YAML text for data: dicts, lists, str, int, bool and None, with Note and Block."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
    if lines:
        lines.append("")
    _mapping(data, 0, lines)
    return "\n".join(lines) + "\n"


def plain(data: Any) -> Any:
    """data without its Notes and Blocks: what a YAML parser reads back from dump(data)."""
    if isinstance(data, Note):
        return plain(data.value)
    if isinstance(data, dict):
        return {key: plain(value) for key, value in data.items()}
    if isinstance(data, list):
        return [plain(item) for item in data]
    if isinstance(data, Block):
        return str(data)
    return data


def _comment(value: Any, indent: int, out: list[str]) -> Any:
    if not isinstance(value, Note):
        return value
    if value.blank:
        out.append("")
    out.extend(f"{' ' * indent}# {line}".rstrip() for line in value.comment.splitlines())
    return value.value


def _mapping(mapping: dict[str, Any], indent: int, out: list[str]) -> None:
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise TypeError(f"YAML keys here are strings, not {key!r}")
        value = _comment(value, indent, out)
        _value(value, " " * indent + _scalar(key) + ":", indent, out)


def _sequence(items: list[Any], indent: int, out: list[str]) -> None:
    for item in items:
        item = _comment(item, indent, out)
        if isinstance(item, dict) and item:
            # The first key goes on the dash's line; its comment goes above the dash.
            inner: list[str] = []
            _mapping(item, indent + 2, inner)
            first = next(i for i, line in enumerate(inner) if not line.lstrip().startswith("#"))
            out.extend(line[2:] for line in inner[:first])
            out.append(" " * indent + "- " + inner[first][indent + 2:])
            out.extend(inner[first + 1:])
        else:
            _value(item, " " * indent + "-", indent, out)


def _value(value: Any, head: str, indent: int, out: list[str]) -> None:
    """value after head ('key:' or '-'), its lines indented under indent."""
    if isinstance(value, dict) and value:
        out.append(head)
        _mapping(value, indent + 2, out)
    elif isinstance(value, list) and value:
        out.append(head)
        _sequence(value, indent + 2, out)
    elif isinstance(value, Block):
        out.append(f"{head} {_block_indicator(value)}")
        body = value[:-1] if value.endswith("\n") else value
        out.extend(" " * (indent + 2) + line if line else "" for line in body.split("\n"))
    else:
        out.append(f"{head} {_scalar(value)}")


def _block_indicator(text: str) -> str:
    if not text.strip() or text.endswith("\n\n") or not all(c.isprintable() or c in "\n\t" for c in text):
        raise ValueError(f"not writable as a literal block: {text!r}")
    # An indentation indicator when the first line starts with a space; clip (|) keeps the one
    # final newline, strip (|-) has none.
    indicator = "|2" if text[0] == " " else "|"
    return indicator if text.endswith("\n") else indicator + "-"


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict | list) and not value:
        return "{}" if isinstance(value, dict) else "[]"
    if not isinstance(value, str) or isinstance(value, Block):
        raise TypeError(f"no YAML scalar for {value!r}")
    if _is_plain(value):
        return value
    if value.isprintable():
        return "'" + value.replace("'", "''") + "'"
    return '"' + "".join(_escape(c) for c in value) + '"'


def _escape(char: str) -> str:
    """A character inside a double-quoted scalar (YAML's escapes: \\n, \\xNN, \\uNNNN, \\UNNNNNNNN)."""
    if char in '"\\':
        return "\\" + char
    if char.isprintable():
        return char
    named = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
    if char in named:
        return named[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _is_plain(text: str) -> bool:
    return bool(
        _PLAIN.fullmatch(text)
        and text == text.strip()
        and text.lower() not in _SPECIAL_WORDS
        and ": " not in text and " #" not in text and not text.endswith(":")
        and not re.fullmatch(r"\.(inf|nan|\d.*)", text, re.IGNORECASE)
    )

