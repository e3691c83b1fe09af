"""The stage after the parser: each finding's statement from the kernel's source, the named
check that statement is, and its call trace decoded, for a booted kernel or a log.

parse (dmesg.py: text to findings) -> source lines (source_lines.py) -> checks (checks.py) ->
decoded traces (decode.py) -> verdict and report. What the kernel's source and vmlinux are
comes from what was booted (runs[].kernel.source) or, for `hvo-harness parse`, from the log's
banner and the user's --source/--vmlinux."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from harness import checks, decode, source_lines
from harness.errors import HarnessError
from harness.results import Finding, KernelInfo

Progress = Callable[[str], None]


def findings_of_log(findings: list[Finding], text: str, source: source_lines.Source,
                    debug: Callable[[], decode.Debug] | None) -> list[Finding]:
    """Source lines and checks for FINDINGS, then their traces decoded with DEBUG's vmlinux
    (called only when a finding has a call trace: Debian's -dbg is a 1 GB download); DEBUG None:
    traces are not decoded."""
    if not findings:
        return findings
    findings = checks.assign_all(source_lines.resolve_all(findings, source))
    if debug is None:
        return [_no_decode(f) for f in findings]
    return decode.decode_findings(findings, debug, text)


def _no_decode(finding: Finding) -> Finding:
    return replace(finding, trace={"status": "not decoded", "why": "decoding was not asked for"})


def debug_for_log(text: str, source: source_lines.Source, vmlinux: Path | None,
                  progress: Progress | None = None) -> Callable[[], decode.Debug]:
    """Where a log's vmlinux comes from: --vmlinux, else Debian's -dbg package of the banner's
    kernel, else nowhere (and what would give it)."""
    tree = source.root if isinstance(source, source_lines.SourceTree) else None
    if vmlinux is not None:
        given = decode.for_file(vmlinux, tree)
        return lambda: given
    banner = source_lines.kernel_banner(text)
    if banner is not None and banner.debian_version and banner.debian_arch:
        release, version, arch = banner.release, banner.debian_version, banner.debian_arch
        return lambda: decode.for_debian(arch, release, version, tree, progress)
    what = f"the kernel {banner.release}" if banner else "the kernel that printed the log"
    return lambda: decode.NoDebugInfo(f"no vmlinux with debug info of {what} at hand: give "
                                      "--vmlinux FILE (a tree build's is <O>/vmlinux)")


def findings_of_boot(kernel: KernelInfo, text: str, findings: list[Finding],
                     progress: Progress | None = None) -> list[Finding]:
    """FINDINGS of a boot of KERNEL (its log TEXT) with source lines, checks and decoded traces:
    a tree build's tree and vmlinux, a Debian kernel's linux-source and -dbg package."""
    if not findings:
        return findings
    try:
        return _findings_of_boot(kernel, text, findings, progress)
    except (HarnessError, OSError, subprocess.SubprocessError) as error:
        # The boot's verdict stands without them: say why its findings have no source or trace.
        why = f"could not be read: {error}"
        return [replace(f, source=f.source or {"status": "not at hand", "why": why},
                        trace=f.trace or {"status": "not decoded", "why": why}) for f in findings]


def _findings_of_boot(kernel: KernelInfo, text: str, findings: list[Finding],
                      progress: Progress | None) -> list[Finding]:
    source = source_lines.source_for_kernel(kernel.source, kernel.release, text)
    if kernel.source.get("type") == "tree":
        build = decode.for_tree_build(kernel.source)
        return findings_of_log(findings, text, source, lambda: build)
    # A Debian kernel (or a Debian image given by path: its banner says so) has its -dbg package.
    return findings_of_log(findings, text, source, debug_for_log(text, source, None, progress))
