"""The record types of a result and their `hvo-harness/1` JSON form.

Reports, comparisons and exports read these records (or their JSON), never the console.
Field names in to_json() are a contract (see docs/results-schema.md): add, don't rename.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

from harness.errors import HarnessError

SCHEMA_ID = "hvo-harness/1"
_TIMESTAMP = re.compile(r"^\s*(?:<\d+>)?\[\s*\d+\.\d+\]\s*(?:\[\s*[CT]\d+\]\s*)?")
# mm/debug.c dump_page()'s lines (harness/dmesg.py _PAGE_DUMP_BODY_RE reads them in a log).
_PAGE_DUMP_LINES = ("page does not match folio", "page:", "head: ", "memcg:", "flags: ", "anon flags: ",
                    "ksm flags: ", "page_type: ", "raw: ", "page dumped because: ", "invalid mapping:",
                    "invalid inode", "invalid dentry", "aops:")

Status = Literal["pass", "fail", "skip"]
# "skip": the boot was not made, with a reason (e.g. the Debian suite asked for has no kernel
# for the arch); it counts as a pass for the exit status, never as a regression's cure.
Verdict = Literal["pass", "fail", "error", "skip"]


@dataclass(frozen=True)
class Finding:
    """One kernel complaint read off a console or dmesg: WARN, BUG, Oops, panic, KASAN, ..."""

    # "warn" | "bug" | "oops" | "panic" | "kasan" | "kfence" | "paging-request" | "lockdep" |
    # "oom" | "alloc-failure" | "list-corruption" | "stall" | "hung-task" | "ubsan" | ...
    kind: str
    function: str | None
    file: str | None
    line: int | None
    excerpt: str
    # A named check this finding is, e.g. "sparse_init-memmap-alignment"; None for others.
    # Assigned from the statement at file:line in the kernel's own source (harness/checks.py),
    # never from the function name alone.
    check: str | None = None
    # The statement that fired, read from the source of the kernel that printed it
    # (harness/source_lines.py): {"status": "found", "file", "line", "function" (the function
    # the line is in, by the source: an inlined helper, where the kernel printed its caller),
    # "origin" (the tree, or "linux-source-7.2 7.2.13-1"), "lines": [{"line": N, "text": ...}]}
    # or {"status": "not at hand" | "no file:line" | "line not in file", "why": ...}.
    source: dict[str, Any] | None = None
    # The call trace decoded with the kernel's scripts/decode_stacktrace.sh against a vmlinux
    # with debug info (harness/decode.py): {"status": "decoded", "vmlinux", "origin",
    # "text": the decoded excerpt, "frames": [{"function", "file", "line", "inlined"}]} or
    # {"status": "not decoded", "why": ... (which package or file would give it)}.
    trace: dict[str, Any] | None = None

    def summary(self) -> str:
        """'WARN at sparse_init (mm/sparse.c:606)', or the kernel's own headline line."""
        name = self.check or self.kind.upper()
        if not self.function:
            headline = self.headline()
            return headline if headline.upper().startswith(name) else f"{name}: {headline}"
        where = self.function
        if self.file:
            where += f" ({self.file}:{self.line})" if self.line else f" ({self.file})"
        return f"{name} at {where}"

    def headline(self) -> str:
        """The first line of the excerpt that is not a cut-here rule, without its timestamp.

        A panic's excerpt starts with the end of the report that led to it: its headline is
        the "Kernel panic - not syncing: ..." line itself."""
        lines = self.excerpt.splitlines()
        if self.kind == "panic":
            lines = [ln for ln in lines if "Kernel panic" in ln] or lines
        for line in lines:
            text = _TIMESTAMP.sub("", line).strip()
            # A VM_BUG_ON_PAGE()'s excerpt starts with the page it dumped: its headline is
            # the BUG after the dump.
            if self.kind != "page-dump" and text.startswith(_PAGE_DUMP_LINES):
                continue
            if text and "cut here" not in text:
                return text
        return self.kind


def summarize(findings: list[Finding], limit: int = 3) -> str:
    """Findings grouped by summary with counts: '60 x BUG: Bad page state in process sh'."""
    counts: dict[str, int] = {}
    for finding in findings:
        key = re.sub(r"\bpfn:\w+|0x[0-9a-f]+", "…", finding.summary())
        counts[key] = counts.get(key, 0) + 1
    parts = [f"{n} x {key}" if n > 1 else key for key, n in counts.items()]
    extra = f" (+{len(parts) - limit} more kinds)" if len(parts) > limit else ""
    return "; ".join(parts[:limit]) + extra


@dataclass
class Vmemmap:
    """vmemmap KiB freed per huge page: what HVO's rules give, what dmesg claims, what was measured."""

    expected_kib_per_page: int | None = None
    claimed_kib_per_page: int | None = None
    measured_kib_per_page: float | None = None
    # How measured_kib_per_page was obtained ("nr_memmap counters", "across boots", ...).
    measured_by: str | None = None
    # MemFree change per page, for reference only: it moves with unrelated allocations.
    memfree_kib_per_page: float | None = None
    # Freed per page on release (vmemmap restored), from the same counters.
    restored_kib_per_page: float | None = None


@dataclass
class Scenario:
    size: str  # "2M", "1G", "16G", "32M"
    mode: Literal["boot", "runtime"]
    node: int
    hvo: Literal["on", "off"]  # HVO in force for this allocation
    requested: int
    allocated: int
    status: Status
    reason: str
    vmemmap: Vmemmap = field(default_factory=Vmemmap)
    # hugetlb_free_vmemmap= of the boot this scenario ran in ("on" | "off").
    boot_hvo: str = "on"
    # "cmdline" (boot parameter) or "sysctl" (/proc/sys/vm/hugetlb_optimize_vmemmap).
    hvo_via: str = "cmdline"
    # What the guest saw: touch/readback and kpageflags checks, raw counters.
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.size}/{self.mode}/node{self.node}/hvo-{self.hvo}-{self.hvo_via}"


@dataclass
class KernelInfo:
    path: str  # "" for a run that was skipped (no kernel for the arch)
    release: str | None
    sha256: str | None  # None for a skipped run
    # {"type": "debian", "suite": ..., "packages": [{name, version, sha256}], "version": ...},
    # {"type": "image", ...} or {"type": "tree", "tree": ..., "commit": ..., "variant": ...,
    # "config_sha256": ...} for a kernel built from a tree.
    source: dict[str, Any]
    # A short name of a Debian kernel: its suite ('trixie') or, for debian:PACKAGE=VERSION, the
    # version; None for images and tree builds (whose runs have a variant). It keeps two
    # releases of one arch apart in reports, comparisons and exports (results.run_unit).
    label: str | None = None
    # sizeof(struct page) and its members, read from the kernel itself (harness/structpage.py:
    # its BTF, or the DWARF of its vmlinux, with pahole): {"size": 64, "origin": "BTF in the
    # image" | "DWARF of <vmlinux> (<package>)", "members": [{"name", "offset", "size"}]} or
    # {"size": None, "why": "not measured: ... (what would give it)"}; None: not looked at.
    struct_page: dict[str, Any] | None = None


@dataclass
class Accel:
    used: Literal["kvm", "tcg", "none"]  # "none": not booted (verdict skip)
    kvm_reason: str | None  # why KVM was not used (None when it was)


@dataclass
class Hvo:
    requested: Literal["on", "off"]
    state: Literal["active", "inactive", "off", "unknown"]  # "unknown": not booted (skip)
    reason: str


@dataclass
class Run:
    arch: str
    kernel: KernelInfo
    accel: Accel
    cmdline: str
    boot_seconds: float | None
    verdict: Verdict
    hvo: Hvo
    findings: list[Finding]
    scenarios: list[Scenario]
    console_log: str
    # Why the verdict is what it is, one line ("guest panicked", "timeout after 300 s", ...).
    verdict_reason: str = ""
    # How the guest ended (guest.GuestOutcome): "done" | "panic" | "timeout" | "exited" |
    # "signalled" | "flood" | "log-error" | "interrupted" | "kvm-stopped"; "not-booted" for a
    # skipped run (pipeline.skipped_run); "connection-lost" when an SSH target's connection
    # dropped mid-run (harness/targets/ssh.py).
    ended: str = "done"
    qemu_argv: list[str] = field(default_factory=list)
    results_log: str | None = None
    hugetlb: dict[str, Any] = field(default_factory=dict)
    # The build variant (e.g. 'debug+16k') for kernels built from a tree; None otherwise.
    variant: str | None = None
    # The reproducer bundle of a failing boot (verdict fail or error): the directory
    # <out>/repro/<stem>/ that pipeline.boot wrote (harness/bundle.py); None for a pass.
    repro: str | None = None
    # `hvo-harness triage` of this boot (harness/triage.py): its variations and conclusion.
    triage: dict[str, Any] | None = None
    # Which target ran the plan when it was not the harness's own QEMU (harness/targets/):
    # {"type": "ssh", "address": "ssh://root@host:22", "host_key": ..., "restored": bool,
    # "changed": [...], "not_restored": [...], ...}; None for QEMU and vng boots.
    target: dict[str, Any] | None = None
    # The guest's RAM (harness/guest_memory.py): {"backing": "pool", "files": [...], "reused":
    # [per node]} for a boot on the memory pool's files, {"backing": "fresh", "why": ...} for
    # fresh RAM; None where the harness did not choose it (an SSH target, older results).
    memory: dict[str, Any] | None = None


def run_unit(run: Run) -> str:
    """What was booted, beside the arch: the variant of a tree build ('debug+4k'), else a Debian
    kernel's label ('trixie'), else ''. Reports title and group runs by (arch, this); a release
    matrix has one x86_64 unit per release."""
    return run.variant or run.kernel.label or ""


@dataclass
class Results:
    runs: list[Run] = field(default_factory=list)
    harness_version: str = ""
    # False while a matrix runs and when it was cut short (interrupted, stopped by an error):
    # then partial_reason says how far it got, e.g. "interrupted by SIGTERM after 1 of 6 boots".
    complete: bool = True
    partial_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_ID,
            "harness_version": self.harness_version,
            "complete": self.complete,
            "partial_reason": self.partial_reason,
            "runs": [asdict(run) for run in self.runs],
        }

    def finished_boots(self) -> int:
        """Boots that ran to their end: an interrupted one is in runs, but did not finish."""
        return sum(run.ended != "interrupted" for run in self.runs)

    def write(self, path: Path, option: str = "--out") -> None:
        """Write atomically (see write_json); OPTION is what the fix names ('--out', '--json')."""
        write_json(path, self.to_json(), option)


def write_json(path: Path, document: Any, option: str) -> None:
    """Write a JSON document so that PATH is always a whole file, the old one or the new one.

    A temporary file in the same directory is written, fsynced and renamed over PATH: a full
    disk, a read-only file system or a kill part-way leave the earlier file as it was and no
    temporary file behind. An OSError is one HarnessError naming the file and OPTION as the fix."""
    text = json.dumps(document, indent=2) + "\n"
    # A symlink is written through, not replaced by a file.
    target = path.resolve() if path.is_symlink() else path
    # Unique per writer, so two processes saving into one directory never share a temp file.
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: never write through a file (or link) that is already there; 0o666 so the
        # umask, not a temp-file default of 0600, decides who may read the results.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "w") as stream:
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    except OSError as error:
        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        fix = f"free space or give another {option}" if full else f"give another {option}"
        raise HarnessError(f"cannot write {path}: {error.strerror or error}: {fix}") from None
    # The rename is durable once the directory is synced; a file system that cannot sync a
    # directory still has the whole file, so this is best effort.
    with contextlib.suppress(OSError):
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def json_schema() -> dict[str, Any]:
    text = resources.files("harness").joinpath("schema/hvo-harness-1.json").read_text()
    return json.loads(text)


def validate(document: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError if the document breaks the hvo-harness/1 contract."""
    import jsonschema

    jsonschema.validate(document, json_schema())


_Record = TypeVar("_Record")


def _record(record_type: type[_Record], data: dict[str, Any], **nested: Any) -> _Record:
    """A record from its JSON object; keys this version does not know are dropped, since
    fields are added to the schema over time and an older reader must still load newer files."""
    known = {f.name for f in fields(record_type)}  # type: ignore[arg-type]
    return record_type(**{k: v for k, v in data.items() if k in known}, **nested)


def _run_from_json(data: dict[str, Any]) -> Run:
    scalars = {k: v for k, v in data.items() if k not in ("kernel", "accel", "hvo", "findings", "scenarios")}
    return _record(
        Run, scalars,
        kernel=_record(KernelInfo, data["kernel"]),
        accel=_record(Accel, data["accel"]),
        hvo=_record(Hvo, data["hvo"]),
        findings=[_record(Finding, f) for f in data["findings"]],
        scenarios=[
            _record(Scenario, {k: v for k, v in s.items() if k != "vmemmap"},
                    vmemmap=_record(Vmemmap, s["vmemmap"]))
            for s in data["scenarios"]
        ],
    )


def from_json(document: Any, origin: str = "document") -> Results:
    """Results from an `hvo-harness/1` document; anything else is a HarnessError naming ORIGIN."""
    import jsonschema

    if not isinstance(document, dict) or document.get("schema") != SCHEMA_ID:
        if not isinstance(document, dict):
            found = f"a JSON {type(document).__name__}"
        elif "schema" in document:
            found = f"schema {document['schema']!r}"
        else:
            found = "no schema field"
        raise HarnessError(
            f"{origin} is not an {SCHEMA_ID} results document ({found}): "
            "give the results.json that `hvo-harness run` wrote"
        )
    try:
        validate(document)
    except jsonschema.ValidationError as error:
        where = "/".join(str(part) for part in error.absolute_path) or "top level"
        first_line = error.message.splitlines()[0][:200]
        raise HarnessError(f"{origin} breaks the {SCHEMA_ID} schema at {where}: {first_line}") from None
    return Results(
        runs=[_run_from_json(run) for run in document["runs"]],
        harness_version=document.get("harness_version", ""),
        # Files from before these fields were written only at the end of a run, or (after a
        # Ctrl-C) with no mark: they are taken as complete, as their readers always took them.
        complete=document.get("complete", True),
        partial_reason=document.get("partial_reason"),
    )


def load(path: Path) -> Results:
    """Read a results file; a missing, unreadable or foreign file is one HarnessError line."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise HarnessError(
            f"{path}: no such file: give a results JSON (`hvo-harness run --json FILE`)"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise HarnessError(
            f"{path}: cannot read it ({error.__class__.__name__}): give a results JSON"
        ) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise HarnessError(f"{path} is not JSON (line {error.lineno}, column {error.colno}: {error.msg}): "
                           "give the results.json that `hvo-harness run` wrote") from None
    return from_json(document, origin=str(path))
