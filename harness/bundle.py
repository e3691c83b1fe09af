"""Reproducer bundles: what a failing boot needs to be booted again, in one directory.

pipeline.boot writes one for every boot whose verdict is fail or error, into
`<out>/repro/<stem>/`, and names it in Run.repro. A bundle holds:

- `repro.json`: the machine-readable spec (BUNDLE_FORMAT): the arch and the profile fields the
  boot used (node memory, smp, cpu, machine, TCG thread mode, the huge page sizes the arch has
  there), the accelerator, hvo, `append` (the user's own kernel arguments, apart from the
  plan's), timeout, backend, the kernel (release, sha256, source, variant), every file below
  with its sha256, and the original boot's verdict, verdict_reason, findings and scenarios.
- `repro.sh`: the boot again with plain QEMU and no harness installed (paths relative to the
  bundle, the results and dmesg ports written into an output directory, default a new
  temporary one); it prints where the console went and counts the original findings' headlines.
- `qemu-argv.json` (the exact argv), `cmdline.txt`, `config` (the kernel's .config, when known).
- `kernel` (the file QEMU booted), `initramfs.cpio`, `firmware/<name>` (the -bios file): copied
  in when under FILE_LIMIT, else only their path, sha256 and how to get them (repro.json).
- `guest/`: the guest scripts (guest_scripts/), the guest helper binary `hvoh` and `busybox`.
- `original/`: the console log, the kernel log and the results channel of the failing boot.

harness/repro.py reruns a bundle through the harness; this module only writes and reads them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import __version__, qemu
from harness.cache import sha256_file
from harness.errors import HarnessError
from harness.initramfs import GUEST_SCRIPTS
from harness.profiles import MIB, ArchProfile, get_profile
from harness.results import Finding, Run

if TYPE_CHECKING:
    from harness.pipeline import GuestEnvironment, PreparedKernel

BUNDLE_FORMAT = "hvo-harness-repro/1"
SPEC_NAME = "repro.json"
SCRIPT_NAME = "repro.sh"
REPRO_DIR = "repro"
# A file this big or bigger is not copied into a bundle: its path, sha256 and how to get it
# are recorded instead (a debug vmlinux can be hundreds of MiB; a Debian vmlinuz is ~12 MiB).
FILE_LIMIT = 64 * MIB
# Files of the original boot kept in original/ (a flooded console is at most 64 MiB).
_ORIGINAL_LOGS = ("console.log", "kernel.log", "results.ktap", "dmesg.log")


def copied_into_bundle(size: int, limit: int = FILE_LIMIT) -> bool:
    """Whether a file of SIZE bytes goes into a bundle (else only its path and sha256)."""
    return 0 <= size < limit


def bundle_dir(out_dir: Path, stem: str) -> Path:
    """Where pipeline.boot writes the bundle of boot STEM (bisect and triage rely on it)."""
    return out_dir / REPRO_DIR / stem


@dataclass(frozen=True)
class BootRecord:
    """What pipeline.boot knows of a boot, as the bundle needs it."""

    stem: str
    profile: ArchProfile
    kernel: PreparedKernel
    env: GuestEnvironment
    hvo: str
    append: str
    timeout: float
    backend: str
    cmdline: str
    argv: list[str]  # what ran (Run.qemu_argv)
    files: qemu.GuestFiles
    console_log: Path
    kernel_log: Path
    # What repro.sh runs where it is not ARGV: the same boot on fresh RAM, for a boot that
    # ran on the memory pool's files (harness/guest_memory.py), which are the harness's.
    script_argv: list[str] | None = None


def profile_record(profile: ArchProfile) -> dict[str, Any]:
    """The profile fields a boot depends on beyond the arch's defaults (replace()-able)."""
    return {
        "name": profile.name,
        "machine": profile.machine,
        "cpu": profile.cpu,
        "smp": profile.smp,
        "node_mem_mib": list(profile.node_mem_mib),
        "tcg_thread": profile.tcg_thread,
        "bios": profile.bios,
        "huge_sizes_by_page_size": {str(k): list(v) for k, v in profile.huge_sizes_by_page_size.items()},
    }


def profile_from_record(record: dict[str, Any], bios: str | None = None) -> ArchProfile:
    """The profile a bundle was booted with: the arch's, with the recorded fields."""
    profile = get_profile(record["name"])
    return replace(
        profile,
        machine=record["machine"],
        cpu=record["cpu"],
        smp=int(record["smp"]),
        node_mem_mib=tuple(int(n) for n in record["node_mem_mib"]),
        tcg_thread=record.get("tcg_thread"),
        bios=bios if bios is not None else record.get("bios"),
        huge_sizes_by_page_size={int(k): tuple(v) for k, v in record["huge_sizes_by_page_size"].items()},
    )


def scenario_records(run: Run) -> list[dict[str, Any]]:
    return [{"name": s.name, "size": s.size, "mode": s.mode, "node": s.node, "hvo": s.hvo,
             "hvo_via": s.hvo_via, "status": s.status, "reason": s.reason}
            for s in run.scenarios]


def write(record: BootRecord, run: Run, out_dir: Path) -> Path:
    """Write the bundle of a boot into out_dir/repro/<stem>/ (replacing an older one of that
    stem whole: it is built beside it and renamed); the bundle's path. OSError on failure."""
    target = bundle_dir(out_dir, record.stem).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{record.stem}.{secrets.token_hex(4)}.tmp"
    staging.mkdir()
    try:
        _fill(staging, record, run)
        if target.exists():
            old = target.parent / f".{record.stem}.{secrets.token_hex(4)}.old"
            os.replace(target, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _place(source: Path | None, bundle: Path, name: str, hint: str) -> dict[str, Any] | None:
    """SOURCE copied into the bundle as NAME if it fits, with its sha256 and size; a file too
    big is recorded by path with HINT on getting it."""
    if source is None:
        return None
    size = source.stat().st_size
    entry: dict[str, Any] = {"path": str(source.resolve()), "sha256": sha256_file(source), "size": size,
                             "file": None, "hint": None}
    if copied_into_bundle(size):
        dest = bundle / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        # A copy, not a link: a build directory reused by the next build (bisect's incremental
        # one) may rewrite its image in place, which would change a linked bundle under it.
        shutil.copy2(source, dest)
        entry["file"] = name
    else:
        entry["hint"] = hint
    return entry


def _kernel_hint(record: BootRecord) -> str:
    source = record.kernel.info.source
    arch = record.profile.name
    if source.get("type") == "debian":
        packages = ", ".join(f"{p['name']} {p['version']}" for p in source.get("packages", []))
        return (f"Debian's kernel ({packages}): `hvo-harness fetch --arch {arch}` downloads it into "
                "the cache, where `path` is")
    if source.get("type") == "tree":
        return (f"built from {source.get('tree')} at {source.get('commit')} ({source.get('describe')}): "
                f"`hvo-harness build --tree {source.get('tree')} --arch {arch} --variant "
                f"{source.get('variant')}` rebuilds it (the build cache keeps it at `path`)")
    return "the kernel image given with --kernel"


def _config_text(config: dict[str, str]) -> str:
    """A .config from the options kconfig.read() read: set ones and 'is not set' ones, in order
    (comments are the only thing lost; the image's own .config is copied instead when known)."""
    lines = [f"# {name} is not set" if value == "n" else f"{name}={value}" for name, value in config.items()]
    return "\n".join(lines) + "\n"


def _fill(bundle: Path, record: BootRecord, run: Run) -> None:
    kernel, env, profile = record.kernel, record.env, record.profile
    files: dict[str, Any] = {}
    files["kernel"] = _place(kernel.image.path, bundle, "kernel", _kernel_hint(record))
    files["initramfs"] = _place(
        env.initramfs, bundle, "initramfs.cpio",
        f"the harness's initramfs (busybox, guest_scripts/, the helper): any `hvo-harness run "
        f"--arch {profile.name}` builds it into the cache, where `path` is")
    firmware = Path(profile.bios) if profile.bios else None
    files["firmware"] = _place(firmware, bundle, f"firmware/{firmware.name}" if firmware else "",
                               f"QEMU's firmware, from the Debian package {profile.qemu_package}")
    files["helper"] = _place(env.helper, bundle, "guest/hvoh", "built by the harness from guest/hvoh.c")
    files["busybox"] = _place(env.busybox, bundle, "guest/busybox", "Debian's busybox-static")
    (bundle / "guest").mkdir(exist_ok=True)
    for script in sorted(GUEST_SCRIPTS.iterdir()):
        if script.is_file():
            shutil.copy2(script, bundle / "guest" / script.name)
    config_source = kernel.info.source.get("config") if kernel.info.source.get("type") == "image" else None
    if config_source and Path(config_source).is_file():
        shutil.copy2(config_source, bundle / "config")
    elif kernel.config is not None:
        (bundle / "config").write_text(_config_text(kernel.config))
    original = bundle / "original"
    original.mkdir()
    logs = {"console.log": record.console_log, "kernel.log": record.kernel_log,
            "results.ktap": record.files.results, "dmesg.log": record.files.dmesg}
    kept: dict[str, str] = {}
    for name in _ORIGINAL_LOGS:
        path = logs[name]
        if path.is_file() and copied_into_bundle(path.stat().st_size):
            shutil.copy2(path, original / name)
            kept[name] = f"original/{name}"
    (bundle / "qemu-argv.json").write_text(json.dumps(record.argv, indent=1) + "\n")
    (bundle / "cmdline.txt").write_text(record.cmdline + "\n")
    spec = {
        "format": BUNDLE_FORMAT,
        "harness_version": __version__,
        "written": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "stem": record.stem,
        "arch": profile.name,
        "variant": kernel.variant,
        # The kernel's label in the boot's file names, when the run booted several per arch.
        "file_label": kernel.file_label,
        "profile": profile_record(profile),
        "accel": {"used": env.accel.used, "kvm_reason": env.accel.kvm_reason},
        "hvo": record.hvo,
        # The user's own kernel arguments (run --append), apart from the plan's and the
        # profile's: a rerun gives these again and lets the harness make the rest.
        "append": record.append,
        "timeout": record.timeout,
        "backend": record.backend,
        "cmdline": record.cmdline,
        "qemu_argv": record.argv,
        "qemu_version": _qemu_version(record.argv[0] if record.backend == "qemu" else None),
        "kernel": {**asdict(kernel.info), "format": kernel.image.format,
                   "payload_format": kernel.image.payload_format,
                   "config": "config" if (bundle / "config").exists() else None},
        "files": files,
        "guest_scripts": sorted(p.name for p in (bundle / "guest").iterdir()
                                if p.name not in ("hvoh", "busybox")),
        "original": {
            "verdict": run.verdict,
            "verdict_reason": run.verdict_reason,
            "ended": run.ended,
            "findings": [asdict(f) for f in run.findings],
            "scenarios": scenario_records(run),
            "logs": kept,
        },
    }
    (bundle / SPEC_NAME).write_text(json.dumps(spec, indent=2) + "\n")
    script = bundle / SCRIPT_NAME
    script.write_text(render_script(spec, record))
    script.chmod(0o755)


def _qemu_version(binary: str | None) -> str | None:
    if binary is None:
        return None
    import subprocess

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
        return (done.stdout.splitlines() or [""])[0].strip() or None
    return None


# --- repro.sh --------------------------------------------------------------------------------

_HEX = re.compile(r"\s+pfn:\S*|\+0x[0-9a-f]+/0x[0-9a-f]+|0x[0-9a-f]+|\s+$")


def grep_pattern(finding: Finding) -> str:
    """A finding's headline cut before its first address: text the console of a rerun shows
    again when the same thing happens ('BUG: Bad page state in process sh')."""
    headline = finding.headline()
    match = _HEX.search(headline)
    return (headline[: match.start()] if match else headline).strip()


def render_script(spec: dict[str, Any], record: BootRecord) -> str:
    """repro.sh: the boot's argv with every harness path replaced by one in the bundle (or,
    for a file too big to copy, its original path) and the ports written into OUT_DIR."""
    files = spec["files"]

    def var(entry: dict[str, Any] | None) -> str:
        return "" if entry is None else entry["path"]

    # Original text in argv -> shell text it becomes.
    substitutions: dict[str, str] = {}
    for key, name in (("kernel", "kernel"), ("initramfs", "initramfs"), ("firmware", "firmware"),
                      ("helper", "helper"), ("busybox", "busybox")):
        entry = files.get(key)
        if entry is None:
            continue
        original = {"kernel": record.kernel.image.path, "initramfs": record.env.initramfs,
                    "firmware": record.profile.bios, "helper": record.env.helper,
                    "busybox": record.env.busybox}[key]
        substitutions[str(original)] = f"${{{name}}}"
        substitutions[str(Path(str(original)).resolve())] = f"${{{name}}}"
    # QEMU writes the ports relative to its working directory, which the script makes OUT_DIR.
    for path, name in ((record.files.results, "results.ktap"), (record.files.dmesg, "dmesg.log")):
        substitutions[qemu._option_value(path)] = name
        substitutions[str(path)] = name
    script_argv = record.script_argv or record.argv
    words = [_shell_word(arg, substitutions) for arg in script_argv]
    if record.backend == "qemu":
        words[0] = '"${QEMU}"'
    # One line per option and its value.
    argv_lines: list[str] = []
    for word, arg in zip(words, script_argv, strict=True):
        if argv_lines and not arg.startswith("-") and argv_lines[-1].lstrip("'").startswith("-") \
                and " " not in argv_lines[-1]:
            argv_lines[-1] += " " + word
        else:
            argv_lines.append(word)
    used = {name for text in words for name in ("kernel", "initramfs", "firmware", "helper", "busybox")
            if f"${{{name}}}" in text}
    original = spec["original"]
    patterns = list(dict.fromkeys(grep_pattern(Finding(**f)) for f in original["findings"]))[:3]
    lines = [
        "#!/bin/sh",
        f"# Reproducer of {record.stem}, by hvo-harness {spec['harness_version']}, {spec['written']}.",
        f"# The harness judged it {original['verdict'].upper()}: {_one_line(original['verdict_reason'])}",
        "#",
        "# Boots it again with plain QEMU; no harness needed. Usage: ./repro.sh [OUT_DIR]",
        "# OUT_DIR (default: a new temporary directory) gets console.log, results.ktap (the guest's",
        "# results port) and dmesg.log (its /dev/kmsg stream). QEMU=... picks another QEMU binary.",
        f"# The guest powers itself off when done; after {spec['timeout']:g} s it is ended as hung.",
        "# `hvo-harness repro DIR` reruns this bundle through the harness and judges it.",
        "set -eu",
        'here=$(cd "$(dirname "$0")" && pwd)',
        f'QEMU=${{QEMU:-{Path(record.argv[0]).name if record.backend == "qemu" else "qemu"}}}',
        f'out=${{1:-$(mktemp -d "${{TMPDIR:-/tmp}}/hvo-repro-{record.stem}.XXXXXX")}}',
        'mkdir -p "$out"',
        'out=$(cd "$out" && pwd)',
    ]
    for key, name in (("kernel", "kernel"), ("initramfs", "initramfs"), ("firmware", "firmware"),
                      ("helper", "helper"), ("busybox", "busybox")):
        entry = files.get(key)
        if entry is None or name not in used:
            continue
        if entry["file"]:
            lines.append(f'{name}="$here/{entry["file"]}"')
        else:
            lines += [f"# Not in the bundle ({entry['size']} bytes): {_one_line(entry['hint'])}",
                      f"{name}={shlex.quote(entry['path'])}"]
        missing = _sh_text(entry["hint"] or "the bundle is incomplete")
        lines += [
            f'[ -f "${name}" ] || {{ echo "repro.sh: ${name} is missing: {missing}" >&2; exit 2; }}',
            f'echo "{entry["sha256"]}  ${name}" | sha256sum -c --quiet - >/dev/null 2>&1 || '
            f'{{ echo "repro.sh: ${name} is not the file the boot used (sha256 {entry["sha256"][:16]}...)" '
            ">&2; "
            "exit 2; }",
        ]
    lines += [
        'cd "$out"',
        'rm -f results.ktap dmesg.log qemu.status',
        'echo "repro.sh: booting; the console goes to $out/console.log (and here)" >&2',
        "status=0",
        f'{{ timeout -k 5 {int(spec["timeout"]) + 1} \\',
        "  " + " \\\n  ".join(argv_lines) + " \\",
        '  </dev/null 2>&1 || echo "$?" > qemu.status; } | tee console.log',
        '[ -f qemu.status ] && status=$(cat qemu.status)',
        'echo "repro.sh: QEMU ended with status $status (124: ended as hung by timeout)" >&2',
        'echo "repro.sh: console: $out/console.log, results: $out/results.ktap," \\',
        '  "kernel log: $out/dmesg.log" >&2',
    ]
    for pattern in patterns:
        quoted = shlex.quote(pattern)
        lines.append(f"echo \"repro.sh: {_sh_text(pattern)}: $(cat console.log dmesg.log 2>/dev/null | "
                     f"grep -c -F -- {quoted} || true) lines (the original boot: "
                     f"{_original_count(record, pattern)})\" >&2")
    lines.append('exit "$status"')
    return "\n".join(lines) + "\n"


def _original_count(record: BootRecord, pattern: str) -> int:
    count = 0
    for path in (record.console_log, record.files.dmesg):
        with contextlib.suppress(OSError):
            count += path.read_bytes().decode(errors="replace").count(pattern)
    return count


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def _sh_text(text: str) -> str:
    """Text inside a double-quoted shell string: nothing in it expands."""
    return re.sub(r'(["$`\\])', r"\\\1", _one_line(text))


def _shell_word(arg: str, substitutions: dict[str, str]) -> str:
    """ARG as one shell word, each substitution's original replaced by its shell text."""
    keys = sorted((k for k in substitutions if k and k in arg), key=len, reverse=True)
    if not keys:
        return shlex.quote(arg)
    pattern = re.compile("|".join(re.escape(k) for k in keys))
    parts: list[str] = []
    pos = 0
    for match in pattern.finditer(arg):
        if match.start() > pos:
            parts.append(shlex.quote(arg[pos:match.start()]))
        replacement = substitutions[match.group()]
        parts.append(f'"{replacement}"' if replacement.startswith("$") else shlex.quote(replacement))
        pos = match.end()
    if pos < len(arg):
        parts.append(shlex.quote(arg[pos:]))
    return "".join(parts)


# --- reading a bundle ------------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    """A bundle as read back: its spec and the files to boot (in it, or where recorded)."""

    path: Path
    spec: dict[str, Any]
    kernel: Path
    initramfs: Path
    config: Path | None
    firmware: Path | None

    @property
    def stem(self) -> str:
        return str(self.spec["stem"])

    def profile(self) -> ArchProfile:
        return profile_from_record(self.spec["profile"], str(self.firmware) if self.firmware else None)

    def original_findings(self) -> list[Finding]:
        return [Finding(**f) for f in self.spec["original"]["findings"]]


def _bad(path: Path, why: str) -> HarnessError:
    return HarnessError(f"{path} is not a usable reproducer bundle: {why}")


def _resolve(bundle: Path, entry: dict[str, Any] | None, what: str, check: bool = True) -> Path | None:
    """The file of an entry: the bundle's copy, else the recorded path; its sha256 checked."""
    if entry is None:
        return None
    path = bundle / entry["file"] if entry.get("file") else Path(entry["path"])
    if not path.is_file():
        hint = entry.get("hint") or "the bundle is incomplete"
        raise _bad(bundle, f"its {what} {path} is missing ({hint})")
    if check and sha256_file(path) != entry["sha256"]:
        raise _bad(bundle, f"its {what} {path} is not the file the boot used (sha256 differs)")
    return path


def load(path: Path) -> Bundle:
    """A bundle directory (or its repro.json); one HarnessError line when it is not usable."""
    directory = path.parent if path.name == SPEC_NAME else path
    spec_path = directory / SPEC_NAME
    if not spec_path.is_file():
        raise _bad(directory, f"no {SPEC_NAME} in it: give a directory <out>/{REPRO_DIR}/<boot>/ "
                              "that `hvo-harness run` wrote for a failing boot")
    try:
        spec = json.loads(spec_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _bad(directory, f"{SPEC_NAME} cannot be read ({error.__class__.__name__})") from None
    if not isinstance(spec, dict) or spec.get("format") != BUNDLE_FORMAT:
        raise _bad(directory, f"{SPEC_NAME} is not a {BUNDLE_FORMAT} spec")
    try:
        files = spec["files"]
        kernel = _resolve(directory, files["kernel"], "kernel")
        initramfs = _resolve(directory, files["initramfs"], "initramfs")
        firmware = _resolve(directory, files.get("firmware"), "firmware")
        config = directory / spec["kernel"]["config"] if spec["kernel"].get("config") else None
        get_profile(spec["arch"])
        for key in ("stem", "hvo", "append", "timeout", "backend", "original", "profile", "accel"):
            spec[key]  # a KeyError names what is missing
    except KeyError as missing:
        raise _bad(directory, f"{SPEC_NAME} has no {missing}") from None
    assert kernel is not None and initramfs is not None
    if config is not None and not config.is_file():
        raise _bad(directory, f"its config {config} is missing")
    return Bundle(directory, spec, kernel, initramfs, config, firmware)
