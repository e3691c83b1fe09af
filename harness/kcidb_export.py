"""Results as KernelCI KCIDB I/O data (schema v5), for submission with `kcidb-submit`.

One checkout per kernel source (a tree's commit and state, a Debian source version, or a
prebuilt image), one build per (arch, kernel image), and per run (one boot) a test for the
boot itself, carrying the kernel's findings, plus one test per scenario:

    hvo.boot.hvo-<on|off>                               the boot: findings, panic, hang
    hvo.<size>.<mode>.node<N>.hvo-<on|off>-<via>        one scenario

IDs are `<origin>:...` and deterministic: the checkout's from the source's identity, the
build's from the arch, config and image sha256, the tests' from a digest of their run's
record, so exporting the same results twice gives the same objects (KCIDB merges them) and two
boots of one kernel give two sets of tests.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from typing import Any

import kcidb_io

from harness.errors import HarnessError
from harness.finding_groups import group_findings
from harness.results import Results, Run, Scenario

DEFAULT_ORIGIN = "hvo_harness"
# The schema version written; the export is validated against it before it is returned.
SCHEMA = kcidb_io.schema.V5_3
_ORIGIN = re.compile(r"^[a-z0-9_]+$")
_PATH_PART_BAD = re.compile(r"[^a-zA-Z0-9_-]")
_ARCHITECTURE_BAD = re.compile(r"[^a-z0-9_]")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
# KCIDB caps log excerpts at 16 KiB; kept in bytes so a database counting bytes takes it too.
_EXCERPT_LIMIT = 16384

# Scenario status -> KCIDB status. A scenario that 'failed' in a boot the harness could not
# finish (run verdict 'error') says nothing about the kernel: ERROR, not FAIL.
_SCENARIO_STATUS = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP"}


def check_origin(origin: str) -> str:
    if not _ORIGIN.match(origin):
        raise HarnessError(
            f"--origin {origin!r}: KCIDB origins are lower-case letters, digits and '_' "
            f"(e.g. {DEFAULT_ORIGIN})"
        )
    return origin


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _text(value: str) -> str:
    """KCIDB strings may hold anything but NUL; console text can hold NUL."""
    return value.replace("\0", "")


def _excerpt(text: str) -> str:
    data = _text(text).encode()
    if len(data) <= _EXCERPT_LIMIT:
        return data.decode()
    marker = "\n[... cut at 16 KiB]"
    return data[: _EXCERPT_LIMIT - len(marker.encode())].decode(errors="ignore") + marker


def _path_part(text: str) -> str:
    return _PATH_PART_BAD.sub("_", text) or "_"


def scenario_path(scenario: Scenario) -> str:
    parts = (scenario.size, scenario.mode, f"node{scenario.node}",
             f"hvo-{scenario.hvo}-{scenario.hvo_via}")
    return "hvo." + ".".join(_path_part(part) for part in parts)


def boot_path(run: Run) -> str:
    return f"hvo.boot.hvo-{_path_part(run.hvo.requested)}"


def _checkout(run: Run, origin: str) -> dict[str, Any]:
    source = run.kernel.source
    kind = source.get("type")
    checkout: dict[str, Any] = {"origin": origin, "valid": True}
    misc: dict[str, Any] = {"source_type": kind}
    if kind == "tree":
        commit = source.get("commit")
        patches = source.get("patches") or []
        identity: Any = ["tree", source.get("tree_state") or commit or source.get("tree")]
        checkout["tree_name"] = _text(str(source.get("tree", "")).rstrip("/").rsplit("/", 1)[-1])
        if commit and _SHA1.match(commit):
            checkout["git_commit_hash"] = commit
        if source.get("describe"):
            checkout["git_commit_name"] = _text(source["describe"])
        # KCIDB's patchset hash: sha256 over each patch's newline-terminated sha256, in order.
        checkout["patchset_hash"] = (
            hashlib.sha256("".join(f"{p['sha256']}\n" for p in patches).encode()).hexdigest()
            if patches else ""
        )
        dirty = " with uncommitted changes" if source.get("dirty") else ""
        series = f" + {len(patches)} patch file(s)" if patches else ""
        checkout["comment"] = _text(f"Linux {source.get('version', '?')} from {source.get('tree')}"
                                    f"{dirty}{series}")
        misc.update({key: source.get(key) for key in
                     ("tree", "tree_kind", "version", "dirty", "tree_state", "patches")})
    elif kind == "debian":
        packages = source.get("packages") or []
        suite = source.get("suite")
        # The kernel package's version names the Debian source it was built from, on every arch.
        if packages:
            version = packages[0]["version"]
            identity = ["debian", version]
            comment = f"Debian linux {version}" + (f" ({suite})" if suite else "")
        else:
            # Not booted (verdict skip): the suite has no kernel for the arch; what was asked for.
            version = source.get("spec") or suite or "unknown"
            identity = ["debian-missing", version, run.arch]
            comment = f"Debian {version}: no kernel for {run.arch}"
        checkout["tree_name"] = "debian"
        checkout["git_commit_name"] = _text(version)
        checkout["comment"] = _text(comment)
        misc.update({"packages": packages, "suite": suite, "label": run.kernel.label})
    else:
        # A prebuilt image: nothing is known of its source but the image itself.
        identity = ["image", run.kernel.sha256]
        checkout["comment"] = _text(f"prebuilt kernel image {run.kernel.path}")
        misc.update({key: value for key, value in source.items() if key != "type"})
    checkout["id"] = f"{origin}:checkout-{_digest(identity)[:16]}"
    checkout["misc"] = misc
    return checkout


def _config_name(run: Run) -> str:
    source = run.kernel.source
    if run.variant or source.get("variant"):
        return str(run.variant or source["variant"])
    return "debian" if source.get("type") == "debian" else "image"


def _build(run: Run, checkout_id: str, origin: str) -> dict[str, Any]:
    source = run.kernel.source
    config_name = _config_name(run)
    # A skipped run has no image: its build is named by the release asked for.
    image = run.kernel.sha256[:16] if run.kernel.sha256 else f"none-{run.kernel.label or 'unknown'}"
    build: dict[str, Any] = {
        "id": _text(f"{origin}:build-{run.arch}-{config_name}-{image}"),
        "checkout_id": checkout_id,
        "origin": origin,
        "architecture": _ARCHITECTURE_BAD.sub("_", run.arch.lower()),
        "config_name": _text(config_name),
        # The image exists and was booted: its build succeeded (or Debian's did); a skipped run's
        # kernel does not exist for the arch: nothing was built.
        "status": "SKIP" if run.verdict == "skip" else "PASS",
        "misc": {
            "kernel_path": run.kernel.path, "kernel_sha256": run.kernel.sha256,
            "kernel_release": run.kernel.release,
            **{key: source[key] for key in ("config", "config_sha256", "toolchain", "build_metadata")
               if key in source},
        },
    }
    versions = (source.get("toolchain") or {}).get("versions") or {}
    if versions:
        # The compiler comes first in the toolchain's versions, the linker after it.
        build["compiler"] = _text(str(next(iter(versions.values()))))
    return build


def _environment(run: Run) -> dict[str, Any]:
    accel = run.accel.used + (f" ({run.accel.kvm_reason})" if run.accel.kvm_reason else "")
    return {
        "comment": _text(f"QEMU {run.arch}, {accel}"),
        "misc": {"accel": run.accel.used, "kvm_reason": run.accel.kvm_reason,
                 "cmdline": run.cmdline, "hvo_requested": run.hvo.requested},
    }


def _boot_status(run: Run) -> str:
    if run.verdict == "skip":
        return "SKIP"  # not booted, with the reason in the comment and misc
    if run.verdict == "error":
        return "ERROR"
    if run.findings or run.ended != "done":
        return "FAIL"
    # A failed verdict with no failed scenario is the boot's own failure (e.g. results incomplete).
    if run.verdict == "fail" and not any(s.status == "fail" for s in run.scenarios):
        return "FAIL"
    return "PASS"


def _findings_excerpt(run: Run) -> str:
    blocks = [f"# {group.count} x {group.example.summary()}\n{group.example.excerpt}"
              for group in group_findings(run.findings)]
    return _excerpt("\n\n".join(blocks))


def _boot_test(run: Run, run_id: str, build_id: str, origin: str) -> dict[str, Any]:
    path = boot_path(run)
    test: dict[str, Any] = {
        "id": f"{origin}:{run_id}.{path}",
        "build_id": build_id,
        "origin": origin,
        "path": path,
        "status": _boot_status(run),
        "comment": _text(f"{run.arch} boot with hugetlb_free_vmemmap={run.hvo.requested}: "
                         f"{run.verdict} - {run.verdict_reason}"),
        "environment": _environment(run),
        "misc": {
            "verdict": run.verdict, "verdict_reason": run.verdict_reason, "ended": run.ended,
            "hvo": asdict(run.hvo), "kernel_release": run.kernel.release,
            "kernel_label": run.kernel.label,
            "console_log": run.console_log, "results_log": run.results_log,
            "findings": [
                {"kind": f.kind, "function": f.function, "file": f.file, "line": f.line,
                 "check": f.check, "summary": _text(f.summary())}
                for f in run.findings
            ],
        },
    }
    if run.findings:
        test["log_excerpt"] = _findings_excerpt(run)
    if run.boot_seconds is not None:
        test["duration"] = run.boot_seconds
    return test


def _scenario_test(run: Run, scenario: Scenario, run_id: str, build_id: str, origin: str) -> dict[str, Any]:
    path = scenario_path(scenario)
    status = _SCENARIO_STATUS[scenario.status]
    if run.verdict == "error" and status == "FAIL":
        status = "ERROR"
    vmemmap = scenario.vmemmap
    test: dict[str, Any] = {
        "id": f"{origin}:{run_id}.{path}",
        "build_id": build_id,
        "origin": origin,
        "path": path,
        "status": status,
        "comment": _text(f"{scenario.name}: {scenario.reason}"),
        "environment": _environment(run),
        "misc": {
            "reason": _text(scenario.reason),
            "size": scenario.size, "mode": scenario.mode, "node": scenario.node,
            "hvo": scenario.hvo, "hvo_via": scenario.hvo_via, "boot_hvo": scenario.boot_hvo,
            "requested": scenario.requested, "allocated": scenario.allocated,
            "vmemmap_kib_per_page": {
                "expected": vmemmap.expected_kib_per_page, "claimed": vmemmap.claimed_kib_per_page,
                "measured": vmemmap.measured_kib_per_page, "measured_by": vmemmap.measured_by,
            },
        },
    }
    if vmemmap.measured_kib_per_page is not None and status in ("PASS", "FAIL"):
        # The vmemmap this scenario freed per huge page, in bytes; a dashboard scales it.
        test["number"] = {"value": vmemmap.measured_kib_per_page * 1024, "unit": "B", "prefix": "binary"}
    return test


def export(results: Results, origin: str = DEFAULT_ORIGIN) -> dict[str, Any]:
    """KCIDB I/O data for RESULTS, validated against the KCIDB schema."""
    check_origin(origin)
    checkouts: dict[str, dict[str, Any]] = {}
    builds: dict[str, dict[str, Any]] = {}
    tests: dict[str, dict[str, Any]] = {}
    for run in results.runs:
        checkout = _checkout(run, origin)
        checkouts.setdefault(checkout["id"], checkout)
        build = _build(run, checkout["id"], origin)
        builds.setdefault(build["id"], build)
        run_id = _digest(asdict(run))[:16]
        boot = _boot_test(run, run_id, build["id"], origin)
        tests[boot["id"]] = boot
        for scenario in run.scenarios:
            test = _scenario_test(run, scenario, run_id, build["id"], origin)
            tests[test["id"]] = test
    data = {
        "version": {"major": SCHEMA.major, "minor": SCHEMA.minor},
        "checkouts": list(checkouts.values()),
        "builds": list(builds.values()),
        "tests": list(tests.values()),
    }
    # An export that breaks the schema is a bug here: fail loudly rather than write it.
    SCHEMA.validate(data)
    return data
