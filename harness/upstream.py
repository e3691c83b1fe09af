"""A failing boot as a bug report for a kernel mailing list (`hvo-harness report --upstream`).

Plain text in the form the lists expect: a one-line subject; what happens; the kernel (release,
commit or Debian version, its config and where to get both); the QEMU command line and the
harness command that reproduce it; the kernel's own report, the decoded call trace and the
statement that fired; triage and bisect when they were run; and what was not tried, derived
from the results. Every line is under 80 columns (kernel lines are folded, shell lines broken
with a backslash) and nothing in it needs the harness to be read: no JSON, no markup.
"""

from __future__ import annotations

import json
import re
import shlex
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import kconfig, qemu
from harness.bundle import SCRIPT_NAME, SPEC_NAME, grep_pattern
from harness.errors import HarnessError
from harness.finding_groups import FindingGroup, group_findings
from harness.profiles import ARCH_NAMES, get_profile
from harness.results import Finding, Results, Run, Scenario, run_unit

# Every line is shorter than 80 columns.
WIDTH = 79
BISECT_STATE = "bisect.json"
# The options an HVO report is read against, shown from the kernel's .config when it is known.
RELEVANT_OPTIONS = (
    "CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP",
    "CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP_DEFAULT_ON",
    "CONFIG_SPARSEMEM_VMEMMAP",
    "CONFIG_DEBUG_VM",
    "CONFIG_INIT_ON_ALLOC_DEFAULT_ON",
    "CONFIG_INIT_ON_FREE_DEFAULT_ON",
    "CONFIG_NUMA",
    "CONFIG_CONTIG_ALLOC",
    "CONFIG_PAGE_SIZE_4KB",
    "CONFIG_PAGE_SIZE_16KB",
    "CONFIG_PAGE_SIZE_64KB",
)
# The unpacked linux-source package in the harness's cache: linux-source-<series>_<version>_all.
_DEBIAN_SOURCE = re.compile(r"linux-source-([0-9.]+)_([^_/]+)_all")
# Kernel reports shown in full; more groups are listed by their headline only.
_REPORTS_SHOWN = 3


# --- which boot ------------------------------------------------------------------------------


def stem_of(run: Run) -> str:
    """The boot's name: its bundle's directory (pipeline.boot_stem), else made from the run."""
    if run.repro:
        return Path(run.repro).name
    parts = [run.arch, run.kernel.label if run.kernel.source.get("type") == "debian" else None,
             run.variant, "hvo", run.hvo.requested]
    return "-".join(part for part in parts if part)


def select_run(results: Results, boot: str | None) -> Run:
    """The boot to report: the one BOOT names (its name or its arch), else the first failing
    one. One HarnessError line when there is none or BOOT names none or several."""
    failing = [run for run in results.runs if run.verdict in ("fail", "error")]
    if boot is None:
        if not failing:
            raise HarnessError("no failing boot in the results: an upstream report is of a boot that "
                               "failed; give the results of a run with a FAIL")
        return failing[0]
    named = [run for run in results.runs if boot in (stem_of(run), run.arch)]
    names = ", ".join(stem_of(run) for run in results.runs)
    if not named:
        raise HarnessError(f"--boot {boot}: no such boot in the results: choose from {names}")
    if len(named) > 1:
        raise HarnessError(f"--boot {boot} names {len(named)} boots: give one of "
                           f"{', '.join(stem_of(run) for run in named)}")
    if named[0].verdict not in ("fail", "error"):
        others = ", ".join(stem_of(run) for run in failing) or "none in these results"
        raise HarnessError(f"--boot {boot} did not fail ({named[0].verdict}): give a failing boot "
                           f"({others})")
    return named[0]


# --- the bisect, the bundle and the config -------------------------------------------------


def find_bisect(results_path: Path, run: Run, given: Path | None = None) -> dict[str, Any] | None:
    """The state of `hvo-harness bisect` (bisect.json) for RUN: the one GIVEN (the file, the
    bisect's --out or its bisect/ directory), else one beside the results (a bisect run with
    --out the results' directory). A bisect of another arch or variant is not this boot's."""
    if given is not None:
        candidates = [given, given / BISECT_STATE, given / "bisect" / BISECT_STATE]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise HarnessError(f"--bisect {given}: no {BISECT_STATE} there: give the --out of "
                               "`hvo-harness bisect` or its bisect/bisect.json")
    else:
        path = results_path.parent / "bisect" / BISECT_STATE
        if not path.is_file():
            return None
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HarnessError(f"{path}: cannot read it ({error.__class__.__name__}): give the "
                           f"{BISECT_STATE} that `hvo-harness bisect` wrote") from None
    params = state.get("params", {}) if isinstance(state, dict) else {}
    if params.get("arch") != run.arch or (run.variant and params.get("variant") != run.variant):
        if given is not None:
            raise HarnessError(f"--bisect {given}: a bisect of {params.get('arch')} "
                               f"{params.get('variant') or ''}, not of {stem_of(run)}: give its own")
        return None
    state["path"] = str(path)
    return state


def _bundle_spec(run: Run) -> dict[str, Any] | None:
    if not run.repro:
        return None
    try:
        spec = json.loads((Path(run.repro) / SPEC_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return spec if isinstance(spec, dict) else None


def _config_path(run: Run) -> Path | None:
    """The kernel's .config as a file: the bundle's copy, else the one given with --config."""
    if run.repro and (Path(run.repro) / "config").is_file():
        return Path(run.repro) / "config"
    given = run.kernel.source.get("config")
    if run.kernel.source.get("type") == "image" and given and Path(given).is_file():
        return Path(given)
    return None


# --- text helpers --------------------------------------------------------------------------


def _para(text: str, indent: str = "", hang: str = "") -> list[str]:
    """TEXT as lines under WIDTH; a word longer than a line is broken (paths)."""
    return textwrap.wrap(" ".join(text.split()), width=WIDTH, initial_indent=indent,
                         subsequent_indent=hang or indent, break_on_hyphens=False) or [indent.rstrip()]


def _item(text: str) -> list[str]:
    return _para(text, "- ", "  ")


def _fold(line: str, indent: str = "  ") -> list[str]:
    """A kernel log line as it was (its spacing kept), folded at WIDTH at a space where it
    can be: the continuation lines are indented further, so each line's start stands out."""
    line = line.expandtabs(8).rstrip()
    if len(indent) + len(line) <= WIDTH:
        return [indent + line]
    return textwrap.wrap(line, width=WIDTH, initial_indent=indent, subsequent_indent=indent + "    ",
                         replace_whitespace=False, break_on_hyphens=False) or [indent]


def _heading(title: str) -> list[str]:
    return ["", title, "-" * len(title)]


def _shell_word_lines(word: str, prefix: str, first_width: int) -> list[str]:
    """A shell word too long for a line, broken with backslash-newline (which the shell
    removes outside single quotes, so the break must not fall inside one), after a ',' or
    '/' near the end of the line where there is one."""
    lines, current = [], prefix
    for char in word:
        if len(current) >= first_width and not _inside_single_quote(current[len(prefix):]):
            cut = max(current.rfind(","), current.rfind("/"))
            cut = cut + 1 if cut >= first_width - 24 and cut > len(prefix) else len(current)
            if _inside_single_quote(current[len(prefix):cut]):
                cut = len(current)
            lines.append(current[:cut] + "\\")
            current = current[cut:]
            prefix = ""
        current += char
    return [*lines, current]


def _inside_single_quote(text: str) -> bool:
    return text.count("'") % 2 == 1


def _shell_command(words: list[str], indent: str = "  ") -> list[str]:
    """A command of shell WORDS (already quoted), one option and its value per line."""
    groups: list[str] = []
    for word in words:
        if groups and not word.startswith("-") and groups[-1].startswith("-") and " " not in groups[-1]:
            groups[-1] += " " + word
        else:
            groups.append(word)
    lines: list[str] = []
    for number, group in enumerate(groups):
        prefix = indent if number == 0 else indent + "  "
        tail = " \\" if number < len(groups) - 1 else ""
        line = prefix + group + tail
        if len(line) <= WIDTH:
            lines.append(line)
        else:
            broken = _shell_word_lines(group, prefix, WIDTH - 2)
            broken[-1] += tail
            lines += broken
    return lines


def _shell_flow(words: list[str], indent: str = "  ") -> list[str]:
    """A short command of shell WORDS (already quoted) filled into lines, continued with a
    backslash, an option and its value kept on one line; a line still too long is broken as
    _shell_word_lines does."""
    pairs: list[str] = []
    for word in words:
        if pairs and pairs[-1].startswith("-") and " " not in pairs[-1] and not word.startswith("-"):
            pairs[-1] += " " + word
        else:
            pairs.append(word)
    lines: list[str] = []
    current = indent
    for pair in pairs:
        if current.strip() and len(current) + 1 + len(pair) > WIDTH - 2:
            lines.append(current + " \\")
            current = indent + "  "
        current += ("" if not current.strip() else " ") + pair
    out: list[str] = []
    for line in [*lines, current]:
        out += _shell_word_lines(line, "", WIDTH - 2) if len(line) > WIDTH else [line]
    return out


def _assign(name: str, value: str, indent: str = "  ") -> list[str]:
    """NAME=VALUE in pieces under WIDTH: `NAME="a b"`, then `NAME="$NAME c d"`, split at
    spaces (the kernel command line) or anywhere (a path)."""
    pieces: list[str] = []
    for word in value.split(" "):
        if pieces and len(pieces[-1]) + 1 + len(word) <= WIDTH - len(indent) - len(name) - 12:
            pieces[-1] += " " + word
        else:
            pieces.append(word)
    lines = []
    for number, piece in enumerate(pieces):
        quoted = shlex.quote(piece) if number == 0 else shlex.quote(" " + piece)
        line = f"{indent}{name}={quoted}" if number == 0 else f'{indent}{name}="${name}"{quoted}'
        lines += _shell_word_lines(line, "", WIDTH - 2) if len(line) > WIDTH else [line]
    return lines


# --- what the report says ------------------------------------------------------------------


def _kernel_name(run: Run) -> str:
    source = run.kernel.source
    if source.get("type") == "debian":
        suite = source.get("suite") or "sid"
        return f"Debian {suite}'s {run.kernel.release or 'kernel'} ({source.get('version')})"
    if source.get("type") == "tree":
        commit = source.get("describe") or source.get("commit")
        return f"{run.kernel.release or 'a kernel'} built from {commit}"
    return f"the kernel image {Path(run.kernel.path).name} ({run.kernel.release or 'release unknown'})"


def subject(run: Run) -> str:
    """'Subject: <arch> <release>: <headline>, hugetlb_free_vmemmap=<on|off>', shortened to fit."""
    groups = group_findings(run.findings)
    what = grep_pattern(groups[0].example) if groups else run.verdict_reason
    hvo = f"hugetlb_free_vmemmap={run.hvo.requested}"
    release = run.kernel.release or run.kernel.source.get("version")
    candidates = [f"{run.arch} {release}: {what}, {hvo}" if release else None, f"{run.arch}: {what}, {hvo}",
                  f"{run.arch}: {what}"]
    for candidate in candidates:
        if candidate and len("Subject: " + candidate) <= WIDTH:
            return "Subject: " + candidate
    return ("Subject: " + f"{run.arch}: {what}")[: WIDTH - 3] + "..."


_SCENARIO_LEGEND = (
    "A scenario is SIZE/MODE/nodeN/hvo-on|off-VIA. boot: huge pages reserved on the kernel "
    "command line (hugepagesz= hugepages=NODE:COUNT); runtime: allocated by writing "
    "/sys/devices/system/node/nodeN/hugepages/hugepages-<kB>kB/nr_hugepages, with "
    "/proc/sys/vm/hugetlb_optimize_vmemmap set first when VIA is sysctl. The guest maps each "
    "page (MAP_HUGETLB), writes and reads it back, checks its head and tail flags in "
    "/proc/kpageflags, reads nr_memmap_pages and nr_memmap_boot_pages in /proc/vmstat, and "
    "releases the pages by writing 0 to nr_hugepages."
)


def _by_reason(scenarios: list[Scenario]) -> list[str]:
    """Scenarios listed under their reason, each reason said once."""
    reasons: dict[str, list[str]] = {}
    for scenario in scenarios:
        reasons.setdefault(scenario.reason, []).append(scenario.name)
    lines: list[str] = []
    for reason, names in reasons.items():
        lines += _para(f"{', '.join(names)}: {reason}", "  ", "      ")
    return lines


def _what_happens(results: Results, run: Run, groups: list[FindingGroup]) -> list[str]:
    accel = "KVM" if run.accel.used == "kvm" else "TCG" if run.accel.used == "tcg" else run.accel.used
    name = _kernel_name(run)
    after = f", after {run.boot_seconds:g} s" if run.boot_seconds is not None else ""
    lines = _para(
        f"{name[:1].upper() + name[1:]}, booted under QEMU ({run.arch}, {accel}) with "
        f"hugetlb_free_vmemmap={run.hvo.requested}: {run.verdict_reason}. The boot ended: "
        f"{run.ended}{after}. HVO was {run.hvo.state} ({run.hvo.reason}).")
    guest = _guest_text(qemu.on_fresh_ram(run.qemu_argv))
    if guest:
        lines += ["", *_para(f"Guest: {guest}.")]
    if groups:
        lines += ["", "The kernel reported:"]
        for group in groups:
            count = f"{group.count} x " if group.count > 1 else ""
            lines += _para(f"{count}{group.example.headline()}", "  ", "      ")
    failed = [s for s in run.scenarios if s.status == "fail"]
    passed = [s for s in run.scenarios if s.status == "pass"]
    skipped = [s for s in run.scenarios if s.status == "skip"]
    if failed:
        lines += ["", f"Failed ({len(failed)} of {len(run.scenarios)} scenarios):"]
        lines += _by_reason(failed)
    if passed:
        lines += ["", f"Passed ({len(passed)}): " + ", ".join(s.name for s in passed)]
        lines[-1:] = _para(lines[-1], "", "  ")
    if skipped:
        lines += ["", f"Skipped ({len(skipped)}):"]
        lines += _by_reason(skipped)
    if not run.scenarios:
        lines += ["", "No scenario ran: the boot stopped before the guest reported any."]
    lines += ["", *_para(_SCENARIO_LEGEND)]
    others = [other for other in results.runs if other is not run]
    if others:
        lines += ["", "Other boots in the same run:"]
        for other in others:
            lines += _para(f"{stem_of(other)}: {other.verdict.upper()}: {other.verdict_reason}",
                           "  ", "      ")
    return lines


def _kernel_section(run: Run, spec: dict[str, Any] | None) -> list[str]:
    kernel, source = run.kernel, run.kernel.source
    lines = _para(f"Release: {kernel.release or 'unknown (not in the image)'}")
    kind = source.get("type")
    profile = get_profile(run.arch)
    if kind == "debian":
        packages = source.get("packages") or []
        lines += _para(f"Debian {source.get('suite') or 'sid'}, version {source.get('version')}: "
                       + ", ".join(f"{p.get('name')} {p.get('version')}" for p in packages), "", "  ")
        base = next((p for p in packages if str(p.get("name", "")).startswith("linux-base-")), None)
        holder = base or (packages[0] if packages else {})
        where = (f"usr/lib/modules/{kernel.release}/config" if base else f"/boot/config-{kernel.release}")
        download = " ".join(f"{p.get('name')}:{profile.debian_arch}" for p in packages)
        lines += _para(f"Config: {where} in {holder.get('name')} {holder.get('version')}. Both from "
                       f"https://deb.debian.org/debian ({source.get('suite') or 'sid'}, "
                       f"{profile.debian_arch}): apt-get download {download}", "", "  ")
    elif kind == "tree":
        debian_source = _DEBIAN_SOURCE.search(str(source.get("tree")))
        if debian_source:
            lines += _para(f"Source: Debian's linux-source-{debian_source[1]} {debian_source[2]} "
                           f"(apt-get download linux-source-{debian_source[1]}={debian_source[2]}: "
                           f"the tree as a tar.xz), unpacked at "
                           f"{source.get('tree')}; the commit below is of the harness's git "
                           "import of it, not an upstream one", "", "  ")
        dirty = ", with uncommitted changes" if source.get("dirty") else ""
        patches = f", with {len(source['patches'])} patch file(s) applied" if source.get("patches") else ""
        lines += _para(f"Built from {source.get('tree')} at commit {source.get('commit')} "
                       f"({source.get('describe')}){dirty}{patches}", "", "  ")
        lines += _para(f"Config: the harness's kconfig variant {source.get('variant')} (fragments of "
                       f"hvo-harness kconfigs/ merged with scripts/kconfig/merge_config.sh), "
                       f"sha256 {source.get('config_sha256')}", "", "  ")
        toolchain = source.get("toolchain") or {}
        versions = "; ".join(str(v) for v in (toolchain.get("versions") or {}).values())
        if versions:
            lines += _para(f"Toolchain: {versions}", "", "  ")
    else:
        lines += _para(f"Image: {kernel.path}", "", "  ")
        lines += _para(f"Config: {source.get('config') or 'not given'}", "", "  ")
    if kernel.sha256:
        lines += _para(f"Image sha256: {kernel.sha256}")
    config = _config_path(run)
    if config is not None:
        options = kconfig.read(config)
        shown = [f"{name}={options[name]}" if options[name] != "n" else f"# {name} is not set"
                 for name in RELEVANT_OPTIONS if name in options]
        if run.repro and config.parent == Path(run.repro):
            lines += _para("The .config is in the reproducer bundle (config); from it:")
        else:
            lines += _para(f"From {config}:", "", "  ")
        lines += [f"  {line}" for line in shown]
    struct_page = kernel.struct_page
    if struct_page and struct_page.get("size"):
        lines += _para(f"sizeof(struct page): {struct_page['size']} bytes ({struct_page.get('origin')})",
                       "", "  ")
    elif struct_page:
        lines += _para(f"sizeof(struct page): {struct_page.get('why', 'not measured')}", "", "  ")
    return lines


def _node_sizes(argv: list[str]) -> list[int]:
    """Guest memory per NUMA node, MiB, from the QEMU argv's memory backends."""
    return [int(match[1]) for arg in argv for match in [re.search(r"memory-backend-ram,.*size=(\d+)M", arg)]
            if match]


def _option(argv: list[str], name: str) -> str | None:
    return next((argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == name), None)


def _guest_text(argv: list[str]) -> str | None:
    """The guest QEMU made, in words: 'machine pc, CPU max, 2 vCPUs, 2 NUMA nodes of 4096 +
    4096 MiB'; None without a recorded argv."""
    if not argv:
        return None
    parts = []
    for option, label in (("-machine", "machine"), ("-cpu", "CPU")):
        value = _option(argv, option)
        if value:
            parts.append(f"{label} {value}")
    smp = _option(argv, "-smp")
    if smp:
        parts.append(f"{smp.split(',')[0]} vCPUs")
    nodes = _node_sizes(argv)
    if nodes:
        parts.append(f"{len(nodes)} NUMA node(s) of {' + '.join(str(n) for n in nodes)} MiB")
    elif _option(argv, "-m"):
        parts.append(f"{_option(argv, '-m')} of memory")
    return ", ".join(parts) or None


def harness_command(run: Run, spec: dict[str, Any] | None) -> list[str]:
    """The `hvo-harness run` that boots this again, from what the results record."""
    source = run.kernel.source
    words = ["hvo-harness", "run"]
    if source.get("type") == "tree":
        words += ["--tree", str(source.get("tree"))]
        if source.get("variant"):
            words += ["--variant", str(source["variant"])]
    elif source.get("type") == "debian":
        spec_text = source.get("spec") or f"debian:{source.get('suite') or 'sid'}"
        if spec_text not in ("debian", "debian:sid"):
            words += ["--kernel", str(spec_text)]
    else:
        words += ["--kernel", run.kernel.path]
        if source.get("config"):
            words += ["--config", str(source["config"])]
    words += ["--arch", run.arch, "--hvo", run.hvo.requested]
    nodes = _node_sizes(qemu.on_fresh_ram(run.qemu_argv))
    if nodes and tuple(nodes) != get_profile(run.arch).node_mem_mib:
        words += ["--node-mem", ",".join(str(n) for n in nodes)]
    append = (spec or {}).get("append")
    if append:
        words += ["--append", append]
    return words


def _qemu_lines(run: Run) -> list[str]:
    """The boot's QEMU argv as a shell script under WIDTH: the kernel and initramfs as
    variables, the kernel command line in $APPEND, the ports' files by their names."""
    # On fresh RAM: the harness's memory pool files are not the reader's (the same guest).
    argv = qemu.on_fresh_ram(run.qemu_argv)
    lines: list[str] = []
    words: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        value = argv[index + 1] if index + 1 < len(argv) else None
        if arg in ("-kernel", "-initrd") and value is not None:
            name = "KERNEL" if arg == "-kernel" else "INITRD"
            lines += _assign(name, value)
            words += [arg, f'"${name}"']
            index += 2
            continue
        if arg == "-append" and value is not None:
            lines += _assign("APPEND", value)
            words += [arg, '"$APPEND"']
            index += 2
            continue
        if arg.startswith("file,") and "path=" in arg:
            arg = re.sub(r"path=([^,]*)", lambda m: "path=" + Path(m[1]).name, arg)
        words.append(shlex.quote(arg) if index else Path(arg).name)
        index += 1
    return [*lines, *_shell_command(words)]


def _reproduce(run: Run, spec: dict[str, Any] | None) -> list[str]:
    qemu_version = (spec or {}).get("qemu_version")
    lines = [*_para(f"The boot's QEMU: {qemu_version}", "", "  "), ""] if qemu_version else []
    lines += _para("With QEMU alone (KERNEL: the image above; INITRD: the harness's initramfs, a "
                   "static busybox and the scripts that run the scenarios and write their results "
                   "to the virtio-serial port org.hvo-harness.results, here results.ktap):")
    lines += [""]
    lines += _qemu_lines(run) if run.qemu_argv else ["  (the QEMU command was not recorded)"]
    if run.repro:
        lines += ["", *_para(f"The reproducer bundle holds the kernel, the initramfs and {SCRIPT_NAME}, "
                             "which boots it again with QEMU alone and counts the reports:"),
                  *_shell_flow([shlex.quote(f"{run.repro}/{SCRIPT_NAME}"), "[OUT_DIR]"])]
    lines += ["", *_para("With hvo-harness:")]
    lines += _shell_flow([shlex.quote(word) for word in harness_command(run, spec)])
    if run.repro:
        lines += _shell_flow(["hvo-harness", "repro", shlex.quote(run.repro)])
    return lines


def _kernel_reports(groups: list[FindingGroup]) -> list[str]:
    if not groups:
        return _para("None: the kernel printed no report the harness knows (WARN, BUG, Oops, "
                     "panic, ...) on the console or in its log.")
    lines: list[str] = []
    for number, group in enumerate(groups[:_REPORTS_SHOWN], 1):
        count = f"the longest of {group.count} like it" if group.count > 1 else "the only one"
        lines += ([""] if number > 1 else []) + _para(f"{number}. {group.example.summary()} ({count}):")
        for line in group.example.excerpt.splitlines():
            lines += _fold(line)
    for group in groups[_REPORTS_SHOWN:]:
        lines += _para(f"Also: {group.count} x {group.example.summary()}", "", "  ")
    return lines


def _trace(finding: Finding) -> list[str]:
    trace = finding.trace
    if not trace:
        return _para("not decoded: the results predate trace decoding; the kernel's "
                     "scripts/decode_stacktrace.sh with this kernel's vmlinux (debug info) gives it")
    if trace.get("status") != "decoded":
        return _para(f"not decoded: {trace.get('why', '')}")
    lines = _para(f"Decoded with the kernel's scripts/decode_stacktrace.sh against {trace.get('vmlinux')} "
                  f"({trace.get('origin')}):", "", "  ")
    for line in str(trace.get("text", "")).splitlines():
        lines += _fold(line)
    if trace.get("why"):
        # Decoded in part: the frames it could not place (a module's, another image's).
        lines += _para(f"Partly: {trace['why']}", "", "  ")
    return lines


def _source(finding: Finding) -> list[str]:
    source = finding.source
    if not source:
        where = f" (the report names {finding.file}:{finding.line})" if finding.file else ""
        return _para(f"not looked up: the results predate reading the source{where}")
    if source.get("status") != "found":
        return _para(f"{source.get('status')}: {source.get('why', '')}")
    inside = f", in {source['function']}" if source.get("function") else ""
    lines = _para(f"{source.get('file')}:{source.get('line')}{inside} ({source.get('origin')}):", "", "  ")
    for entry in source.get("lines") or []:
        lines += _fold(f"{entry.get('line'):>5}  {entry.get('text', '')}")
    return lines


def _per_finding(groups: list[FindingGroup], part: Callable[[Finding], list[str]]) -> list[str]:
    if not groups:
        return _para("none: no kernel report")
    lines: list[str] = []
    for number, group in enumerate(groups[:_REPORTS_SHOWN], 1):
        if len(groups) > 1:
            lines += ([""] if number > 1 else []) + _para(f"{number}. {group.example.summary()}:")
        lines += part(group.example)
    return lines


def _triage(run: Run) -> list[str]:
    if not run.triage:
        return _para("not run")
    rows = run.triage.get("variations", [])
    lines = _para(f"The boot again under one change each ({len(rows)} variations):")
    for row in rows:
        lines += _para(f"{row.get('name')}: {row.get('outcome')}: {row.get('what', '')}; "
                       f"{row.get('detail', '')}", "  ", "      ")
    return [*lines, "", *_para(f"Conclusion: {run.triage.get('conclusion', '')}")]


def _bisect(state: dict[str, Any] | None) -> list[str]:
    if not state:
        return _para("not run")
    params = state.get("params", {})
    lines = _para(f"git bisect in {params.get('repo')} from good {params.get('good')} to bad "
                  f"{params.get('bad')}, each step built ({params.get('arch')} "
                  f"{params.get('variant') or ''}) and booted {params.get('repeat')} time(s) with "
                  f"hugetlb_free_vmemmap={params.get('hvo')}; bad when --check "
                  f"{params.get('check')} fails.", "", "")
    result = state.get("result")
    lines += [""] + (_para(f"Result: {result.get('status')}: {result.get('message')}")
                     if result else _para("Result: not finished"))
    steps = state.get("steps") or []
    if steps:
        lines += ["", f"Steps ({len(steps)}):"]
        for step in steps:
            lines += _para(f"{str(step.get('commit') or '?')[:12]} {step.get('outcome')} "
                           f"({step.get('role')}): {step.get('subject') or ''}; {step.get('reason', '')}",
                           "  ", "      ")
    return lines


def _not_tried(results: Results, run: Run, state: dict[str, Any] | None, results_path: Path) -> list[str]:
    lines: list[str] = []
    if run.accel.used != "kvm":
        why = run.accel.kvm_reason or "not asked for"
        lines += _item(f"KVM: not used ({why}); the boot ran under TCG, QEMU's emulator.")
    else:
        lines += _item("TCG, QEMU's emulator: not tried; the boot ran under KVM (--accel tcg).")
    stem = stem_of(run)
    if not run.triage:
        lines += _item("Triage (the boot again with one vCPU, TCG single-threaded, other CPU models, "
                       "machines and node layouts, HVO off, other Debian kernels): not run "
                       f"(hvo-harness triage {results_path} --boot {stem}).")
    else:
        untried = [r for r in run.triage.get("variations", [])
                   if r.get("outcome") in ("not applicable", "not tried", "error")]
        for row in untried:
            lines += _item(f"Triage variation {row.get('name')}: {row.get('outcome')}: "
                           f"{row.get('detail', '')}")
    if not state:
        lines += _item("Bisect: not run (hvo-harness bisect --tree LINUX --good COMMIT --bad COMMIT "
                       f"--arch {run.arch} finds the first bad commit).")
    booted = {other.arch for other in results.runs if other.verdict != "skip"}
    missing = [arch for arch in ARCH_NAMES if arch not in booted]
    if missing:
        lines += _item(f"Other arches: {', '.join(missing)} not booted in these results.")
    same_kernel = [other for other in results.runs
                   if other.arch == run.arch and run_unit(other) == run_unit(run) and other.verdict != "skip"]
    other_hvo = "off" if run.hvo.requested == "on" else "on"
    triaged_hvo = any(r.get("name") == f"hvo-{other_hvo}" and r.get("outcome") in ("same", "gone",
                                                                                "fails differently")
                      for r in (run.triage or {}).get("variations", []))
    if not triaged_hvo and not any(other.hvo.requested == other_hvo for other in same_kernel):
        lines += _item(f"The same kernel with hugetlb_free_vmemmap={other_hvo}: not booted in these "
                       f"results (--hvo {other_hvo}).")
    triaged_kernels = any(str(r.get("name", "")).startswith("kernel-")
                          for r in (run.triage or {}).get("variations", []))
    releases = {other.kernel.release for other in results.runs if other.arch == run.arch}
    if not triaged_kernels and len(releases) <= 1:
        lines += _item(f"Other kernel releases: only {run.kernel.release or 'this kernel'} was booted.")
    config = _config_path(run)
    if config is not None and kconfig.read(config).get("CONFIG_DEBUG_VM", "n") == "n":
        lines += _item("A kernel with CONFIG_DEBUG_VM=y: not this one (hvo-harness run --tree "
                       "--variant debug builds one).")
    return lines or _item("Nothing the harness knows of.")


def render(results: Results, run: Run, results_path: Path, bisect: dict[str, Any] | None = None) -> str:
    """The report of RUN, a failing boot of RESULTS (read from RESULTS_PATH). BISECT: a
    bisect.json state (find_bisect), else one beside the results is looked for."""
    state = bisect if bisect is not None else find_bisect(results_path, run)
    spec = _bundle_spec(run)
    groups = group_findings(run.findings)
    lines = [subject(run)]
    lines += _heading("What happens") + _what_happens(results, run, groups)
    lines += _heading("Kernel") + _kernel_section(run, spec)
    lines += _heading("Reproduce") + _reproduce(run, spec)
    lines += _heading("Kernel report") + _kernel_reports(groups)
    lines += _heading("Call trace") + _per_finding(groups, _trace)
    lines += _heading("Source") + _per_finding(groups, _source)
    lines += _heading("Triage") + _triage(run)
    lines += _heading("Bisect") + _bisect(state)
    lines += _heading("Not tried") + _not_tried(results, run, state, results_path)
    lines += ["", *_para(f"Found by hvo-harness {results.harness_version or '?'}, boot {stem_of(run)} "
                         f"of {results_path.name}.")]
    return "\n".join(line.rstrip() for line in lines) + "\n"
