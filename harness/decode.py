"""Call traces decoded to file:line per frame, inlined frames included, with the kernel's own
scripts/decode_stacktrace.sh against a vmlinux with debug info.

The vmlinux must be the very kernel that printed the log: its linux_banner (the build's
version, builder and time stamp) is compared with the console's "Linux version" line before
anything is decoded. A trace decoded against another build would name lines of other code:
such a trace is "not decoded", with the reason.

decode_stacktrace.sh gives each frame's inline chain as file:line, innermost first; the name
of an inlined function is read from the kernel's source at that line
(source_lines.enclosing_function). scripts/faddr2line would name them itself, but with
llvm-addr2line-19 it never returns: its end-of-answer check expects GNU's "?? ??:0" where LLVM
prints "?? at ??:0".

Where the vmlinux comes from: a tree build's O= directory (every tree build has DWARF,
kconfigs/debuginfo.config), or Debian's linux-image-<release>-dbg at the image's version
(artefacts.ensure_debug_vmlinux, about 1 GB fetched on demand, once, only when a finding has a
trace). The scripts are the kernel's own, from its tree (the build's tree or the matching
linux-source). The binutils are LLVM 19's (llvm-addr2line-19, llvm-readelf-19 from llvm-19),
which read every arch's ELF: the scripts take LLVM=-19 for that."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.results import Finding

Progress = Callable[[str], None]

LLVM_SUFFIX = "-19"
SCRIPT = "scripts/decode_stacktrace.sh"
_LLVM_TOOLS = ("llvm-addr2line", "llvm-readelf", "llvm-nm")
# One decode_stacktrace.sh call decodes every address of a log (it caches nm's and
# addr2line's answers within the call); a 1 GB Debian vmlinux takes about a second an address.
DECODE_TIMEOUT = 1800


@dataclass(frozen=True)
class DebugKernel:
    """A vmlinux with debug info and the tree whose scripts/ decode against it."""

    vmlinux: Path
    tree: Path
    origin: str  # "tree build <dir>", "linux-image-7.2.13+deb14-amd64-dbg 7.2.13-1"


@dataclass(frozen=True)
class NoDebugInfo:
    why: str  # which package or file would give it


Debug = DebugKernel | NoDebugInfo


# What was read from a vmlinux (its banner, its symbols' sizes, decoded addresses), kept for
# the process: llvm-nm on a 400 MB Debian vmlinux takes about a second and each address the
# script decodes about another, and every failing boot of one kernel (hvo on and off, the
# findings tests' boots, a matrix) asks the same of the same file. Keyed by the file's
# identity, so a rebuilt vmlinux at the same path is read again.
_memo: dict[tuple[object, ...], Any] = {}


def _file_key(path: Path) -> tuple[object, ...]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)


# --------------------------------------------------------------------------------------------
# Where the vmlinux is


def for_tree_build(kernel_source: dict[str, Any]) -> Debug:
    """A tree build's vmlinux (in its O= directory beside the image) and its tree's scripts."""
    metadata_path = Path(str(kernel_source.get("build_metadata") or ""))
    if not metadata_path.is_file():
        return NoDebugInfo(f"the build's metadata {metadata_path} is gone: rebuild with "
                           "`hvo-harness build --tree ...`")
    metadata = json.loads(metadata_path.read_text())
    vmlinux = Path(str(metadata.get("image", ""))).parent
    # The image is <O>/arch/<arch>/boot/<Image>; vmlinux is <O>/vmlinux.
    while vmlinux != vmlinux.parent and not (vmlinux / "vmlinux").is_file():
        vmlinux = vmlinux.parent
    vmlinux = vmlinux / "vmlinux"
    tree = Path(str(kernel_source.get("tree") or ""))
    if not vmlinux.is_file():
        return NoDebugInfo(f"no vmlinux in the build directory of {metadata.get('image')}: "
                           "rebuild it (`hvo-harness build --tree ...`)")
    if not (tree / SCRIPT).is_file():
        return NoDebugInfo(f"the tree {tree} that was built has no {SCRIPT}")
    return DebugKernel(vmlinux, tree, f"tree build {vmlinux.parent}")


def for_debian(arch: str, release: str, version: str, tree: Path | None,
               progress: Progress | None = None) -> Debug:
    """Debian's vmlinux of RELEASE at VERSION (linux-image-RELEASE-dbg), fetched on demand;
    TREE is the matching linux-source (its scripts/)."""
    from harness import artefacts
    from harness.errors import DebugInfoUnavailable
    from harness.profiles import ARCH_NAMES, get_profile

    profile = next((get_profile(name) for name in ARCH_NAMES
                    if get_profile(name).debian_arch == arch or name == arch), None)
    package = artefacts.debug_package_name(release)
    if profile is None:
        return NoDebugInfo(f"{package} {version}: the harness has no profile for Debian arch {arch}")
    if tree is None or not (tree / SCRIPT).is_file():
        return NoDebugInfo(f"no linux-source of {release} {version} at hand for its "
                           f"{SCRIPT} (and {package} {version} for its vmlinux)")
    try:
        vmlinux = artefacts.ensure_debug_vmlinux(profile, release, version, progress=progress)
    except DebugInfoUnavailable as error:
        return NoDebugInfo(error.reason)
    return DebugKernel(vmlinux, tree, f"{package} {version}")


def for_file(vmlinux: Path, tree: Path | None) -> DebugKernel:
    """`hvo-harness parse --vmlinux FILE`: the user's vmlinux, decoded with TREE's scripts."""
    if not vmlinux.is_file():
        raise HarnessError(f"--vmlinux {vmlinux} is not a file: give the vmlinux (with debug "
                           "info) of the kernel that printed the log")
    if tree is None or not (tree / SCRIPT).is_file():
        raise HarnessError(f"--vmlinux {vmlinux} needs the kernel's source for its "
                           f"{SCRIPT}: give --source TREE")
    return DebugKernel(vmlinux, tree, str(vmlinux))


# --------------------------------------------------------------------------------------------
# Is it the kernel that printed the log?


def _tool(name: str) -> str | None:
    return shutil.which(f"{name}{LLVM_SUFFIX}")


def _missing_tools() -> list[str]:
    return [f"{name}{LLVM_SUFFIX}" for name in _LLVM_TOOLS if _tool(name) is None]


def _nm_lines(vmlinux: Path) -> list[str]:
    """`llvm-nm -n -S --defined-only VMLINUX`, run once per file and process: the banner's
    address and size and the symbols' sizes both come from it (a second of llvm-nm each)."""
    key = ("nm", *_file_key(vmlinux))
    if key not in _memo:
        nm = _tool("llvm-nm")
        assert nm is not None
        done = subprocess.run([nm, "-n", "-S", "--defined-only", str(vmlinux)], capture_output=True,
                              text=True)
        _memo[key] = done.stdout.splitlines()
    return _memo[key]  # type: ignore[no-any-return]


def vmlinux_banner(vmlinux: Path) -> str | None:
    """The linux_banner string in VMLINUX (its "Linux version ..." line), read at the symbol's
    address in the section that holds it; None when it has no such symbol."""
    key = ("banner", *_file_key(vmlinux))
    if key not in _memo:
        _memo[key] = _read_banner(vmlinux)
    return _memo[key]  # type: ignore[no-any-return]


def _read_banner(vmlinux: Path) -> str | None:
    row = next((line.split() for line in _nm_lines(vmlinux)
                if line.endswith(" linux_banner") and len(line.split()) == 4), None)
    if row is None:
        return None
    address, size = int(row[0], 16), int(row[1], 16)
    with vmlinux.open("rb") as elf:
        header = elf.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:
            return None
        endian = "<" if header[5] == 1 else ">"
        shoff, = struct.unpack_from(endian + "Q", header, 0x28)
        shentsize, shnum = struct.unpack_from(endian + "HH", header, 0x3A)
        elf.seek(shoff)
        table = elf.read(shentsize * shnum)
        for index in range(shnum):
            _name, kind, _flags, sh_addr, sh_offset, sh_size = struct.unpack_from(
                endian + "IIQQQQ", table, index * shentsize)
            if kind != 8 and sh_addr <= address < sh_addr + sh_size:  # 8: SHT_NOBITS
                elf.seek(sh_offset + address - sh_addr)
                return elf.read(size).split(b"\0")[0].decode(errors="replace").strip()
    return None


def _console_banner(text: str) -> str | None:
    for raw in text.splitlines():
        at = raw.find("Linux version ")
        if at >= 0:
            return raw[at:].replace("\r", "").strip()
    return None


def same_kernel(debug: DebugKernel, text: str) -> str | None:
    """None when DEBUG's vmlinux is the kernel that printed TEXT, else why not."""
    printed = _console_banner(text)
    if printed is None:
        return "the log has no \"Linux version\" banner to match a vmlinux with"
    banner = vmlinux_banner(debug.vmlinux)
    if banner is None:
        return f"{debug.vmlinux} has no linux_banner symbol: not a vmlinux"
    if " ".join(banner.split()) != " ".join(printed.split()):
        return (f"{debug.vmlinux} is another build than the kernel that printed the log "
                f"(its banner: {banner!r}; the log's: {printed!r})")
    return None


# --------------------------------------------------------------------------------------------
# Frames


# %pS/%pB: "func+0x5c/0x2d0", maybe with " [module]"; x86 marks unreliable frames with "? ".
_SYMBOL_RE = re.compile(r"(?<![\w.$])(?P<sym>[A-Za-z_.$][\w.$]*)\+(?P<off>0x[0-9a-f]+)/(?P<size>0x[0-9a-f]+)"
                        r"(?P<module>\s+\[[^\]]+\])?")
# The faulting PC: x86 "RIP: 0010:", riscv "epc :", LoongArch "ERA:", arm64 "pc :".
_PC_LINE_RE = re.compile(r"(?:\b[RE]?IP:\s*(?:[0-9a-fA-F]{4}:)?|(?<!\w)(?:epc|ERA|era|pc)\s*:\s*"
                         r"(?:[0-9a-fA-F]{8,}\s+)?)(?=[A-Za-z_.$][\w.$]*\+0x)")
_CALL_TRACE_RE = re.compile(r"\b(?:Call Trace|Call trace|Backtrace):?")
# A register line that names a symbol is not a frame: riscv " ra : func+..", arm64 "lr : ",
# LoongArch " ra: ...".
_REGISTER_RE = re.compile(r"(?<!\w)(?:ra|lr|RA)\s*:\s*(?:[0-9a-fA-F]{8,}\s+)?[A-Za-z_.$][\w.$]*\+0x")
_ADDRESS_FRAME_RE = re.compile(r"^\s*\[<[0-9a-fA-F]+>\]\s")
_STAMP_RE = re.compile(r"^\s*(?:<\d+>)?\[\s*\d+\.\d+\](?:\s?\[\s*[CT]\d+\])?\s?")


@dataclass(frozen=True)
class _Frame:
    symbol: str  # as printed: "vmemmap_remap_pte+0x112/0x11e"
    name: str
    offset: int
    size: int
    pc: bool  # the faulting PC (decoded at its address), not a return address
    module: str | None


def frames_of(excerpt: str) -> list[_Frame]:
    """The frames of a finding's excerpt: the faulting PC (when printed), then the call trace
    in the order printed. Unreliable frames (x86 "? func") are the unwinder's guesses: not
    frames. A frame in a module is kept (decoding says it is not in vmlinux)."""
    frames: list[_Frame] = []
    pc: tuple[str, int] | None = None
    in_trace = False
    for raw in excerpt.splitlines():
        line = _STAMP_RE.sub("", raw)
        if _CALL_TRACE_RE.search(line):
            in_trace = True
            continue
        if _REGISTER_RE.search(line):
            continue
        pc_line = _PC_LINE_RE.search(line)
        if pc_line:
            m = _SYMBOL_RE.match(line, pc_line.end())
            if m and pc is None:
                pc = (m["sym"], int(m["off"], 16))
                frames.append(_frame(m, pc=True))
            continue
        # riscv (7.x) prints its frames with no "Call Trace:" line: "[<ffffffff800b34b4>] func+..".
        if not in_trace and not _ADDRESS_FRAME_RE.match(line):
            continue
        m = _SYMBOL_RE.search(line)
        if m is None:
            continue
        if line[: m.start()].strip().endswith("?"):
            continue
        same_as_pc = pc is not None and (m["sym"], int(m["off"], 16)) == pc
        if same_as_pc and frames and frames[-1].pc and len(frames) == 1:
            # riscv and LoongArch start the trace at the PC the register dump printed.
            continue
        frames.append(_frame(m, pc=same_as_pc))
    return frames


def _frame(m: re.Match[str], pc: bool) -> _Frame:
    module = m["module"].strip()[1:-1].split()[0] if m["module"] else None
    return _Frame(f"{m['sym']}+{m['off']}/{m['size']}", m["sym"], int(m["off"], 16),
                  int(m["size"], 16), pc, module)


def _query(frame: _Frame) -> str:
    return f"{frame.name}+{frame.offset:#x}/{frame.size:#x}"


# decode_stacktrace.sh's output for a symbol: "func (file:line file:line)", the inline chain
# innermost first; a location may carry " (discriminator N)".
_DECODED_RE = re.compile(r"^Q(?P<index>\d+) (?P<name>\S+) \((?P<where>.*)\)$")
_LOCATION_RE = re.compile(r"(?P<file>[^\s()]+?):(?P<line>\d+|\?)(?: \(discriminator \d+\))?")


Chain = list[tuple[str | None, int | None]]  # (file, line) per inline level, innermost first


def decode_stacktrace(debug: DebugKernel, queries: list[str], return_addresses: bool) -> dict[str, Chain]:
    """scripts/decode_stacktrace.sh's answer per query ("func+0x5c/0x2d0"): the inline chain,
    innermost first, as (file, line). RETURN_ADDRESSES: the queries are return addresses (the
    script then decodes the byte before, the call); else PCs, decoded where they are (-R)."""
    if not queries:
        return {}
    # Answers (or their absence: None) from earlier calls on the same vmlinux and scripts.
    base = ("decoded", *_file_key(debug.vmlinux), str(debug.tree), return_addresses)
    missing = [query for query in queries if (*base, query) not in _memo]
    if missing:
        found = _run_decode_stacktrace(debug, missing, return_addresses)
        for query in missing:
            _memo[(*base, query)] = found.get(query)
    return {query: chain for query in queries if (chain := _memo[(*base, query)]) is not None}


def _run_decode_stacktrace(debug: DebugKernel, queries: list[str],
                           return_addresses: bool) -> dict[str, Chain]:
    env = dict(os.environ, LLVM=LLVM_SUFFIX, LANG="C", LC_ALL="C")
    env.pop("CROSS_COMPILE", None)
    argv = ["bash", str(debug.tree / "scripts/decode_stacktrace.sh")]
    if not return_addresses:
        argv.append("-R")
    argv.append(str(debug.vmlinux))
    # One line per query, tagged: the script passes every word but the symbol through.
    stdin = "".join(f"Q{index} {query}\n" for index, query in enumerate(queries))
    with tempfile.TemporaryDirectory(prefix="hvo-decode-") as tools:
        if _nm_from_table(Path(tools), debug.vmlinux):
            env["PATH"] = tools + os.pathsep + env.get("PATH", "")
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env,
                              timeout=DECODE_TIMEOUT, errors="replace")
    answers: dict[str, Chain] = {}
    for line in done.stdout.splitlines():
        m = _DECODED_RE.match(line.strip())
        if not m or int(m["index"]) >= len(queries):
            continue
        chain = [(None if loc["file"].startswith("??") else loc["file"].removeprefix("./"),
                  int(loc["line"]) if loc["line"].isdigit() and loc["line"] != "0" else None)
                 for loc in _LOCATION_RE.finditer(m["where"])]
        if chain:
            answers[queries[int(m["index"])]] = chain
    return answers


def _nm_from_table(tools: Path, vmlinux: Path) -> bool:
    """An llvm-nm in TOOLS that answers `llvm-nm VMLINUX` from a table made once (and runs the
    real one for anything else). decode_stacktrace.sh runs `nm VMLINUX` for every symbol it
    looks up, about half a second each on a Debian vmlinux; the script and its other tools
    stay the kernel's own. False (the real nm is used) when the table cannot be made."""
    real = _tool("llvm-nm")
    if real is None:
        return False
    table = tools / "vmlinux.nm"
    with table.open("wb") as out:
        made = subprocess.run([real, str(vmlinux)], stdout=out, stderr=subprocess.DEVNULL, check=False)
    if made.returncode != 0:
        return False
    wrapper = tools / f"llvm-nm{LLVM_SUFFIX}"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ "$#" -eq 1 ] && [ "$1" = {shlex.quote(str(vmlinux))} ]; then '
        f"exec cat {shlex.quote(str(table))}; fi\n"
        f'exec {shlex.quote(real)} "$@"\n')
    wrapper.chmod(0o755)
    return True


def decode_findings(findings: list[Finding], debug: Debug | Callable[[], Debug], text: str) -> list[Finding]:
    """FINDINGS with their call traces decoded (Finding.trace), or why not. TEXT is the whole
    log (its banner says which kernel printed it). DEBUG may be a function that finds (or
    fetches) the vmlinux: it is called only when some finding has a call trace."""
    with_frames = [(finding, frames_of(finding.excerpt)) for finding in findings]
    none = {"status": "not decoded", "why": "no call trace in the excerpt"}
    if not any(frames for _, frames in with_frames):
        return [replace(f, trace=dict(none)) for f in findings]
    if callable(debug):
        debug = debug()
    why: str | None = None
    if isinstance(debug, NoDebugInfo):
        why = debug.why
    elif missing := _missing_tools():
        why = f"{', '.join(missing)} not found: install llvm-19 (bookworm-backports)"
    else:
        why = same_kernel(debug, text)
    if why is not None:
        return [replace(f, trace={"status": "not decoded", "why": why} if frames else dict(none))
                for f, frames in with_frames]
    assert isinstance(debug, DebugKernel)
    sizes = symbol_sizes(debug.vmlinux)
    wanted = {(_query(frame), frame.pc) for _, frames in with_frames for frame in frames
              if frame.module is None and frame.size in sizes.get(frame.name, ())}
    answers = {
        True: decode_stacktrace(debug, sorted(q for q, pc in wanted if pc), return_addresses=False),
        False: decode_stacktrace(debug, sorted(q for q, pc in wanted if not pc), return_addresses=True),
    }
    names = _InlineNames(debug.tree)
    return [replace(finding, trace=_trace(frames, answers, names, debug, sizes) if frames else dict(none))
            for finding, frames in with_frames]


# Symbols kallsyms leaves out (scripts/kallsyms.c is_ignored_symbol(): mapping symbols).
_MAPPING_SYMBOL_RE = re.compile(r"^(?:\.L|L0|\$)")


def symbol_sizes(vmlinux: Path) -> dict[str, set[int]]:
    """Each code symbol's size as kallsyms prints it after the "/" ("func+0x5c/0x2d0"): the
    distance to the next symbol's address, not the ELF size. A frame whose printed size is not
    one of its symbol's here is from another build: it is not decoded."""
    key = ("sizes", *_file_key(vmlinux))
    if key not in _memo:
        _memo[key] = _read_symbol_sizes(vmlinux)
    return _memo[key]  # type: ignore[no-any-return]


def _read_symbol_sizes(vmlinux: Path) -> dict[str, set[int]]:
    rows: list[tuple[int, str]] = []
    for line in _nm_lines(vmlinux):
        fields = line.split()
        if len(fields) == 4:  # "address size type name"; a symbol of no size has no size field
            del fields[1]
        if len(fields) == 3 and fields[1] in ("t", "T", "w", "W") and not _MAPPING_SYMBOL_RE.match(fields[2]):
            rows.append((int(fields[0], 16), fields[2]))
    sizes: dict[str, set[int]] = {}
    following = 0
    for index, (address, name) in enumerate(rows):
        following = max(following, index + 1)
        while following < len(rows) and rows[following][0] <= address:
            following += 1
        if following < len(rows):
            sizes.setdefault(name, set()).add(rows[following][0] - address)
    return sizes


class _InlineNames:
    """The function at FILE:LINE of the kernel's source: the name of an inlined frame."""

    def __init__(self, tree: Path) -> None:
        from harness.source_lines import SourceTree

        self.source = SourceTree(tree, str(tree))
        self.files: dict[str, list[str] | None] = {}

    def at(self, file: str | None, line: int | None) -> str | None:
        from harness.source_lines import enclosing_function

        if file is None or line is None:
            return None
        if file not in self.files:
            self.files[file] = self.source.read(file)
        lines = self.files[file]
        return enclosing_function(lines, line) if lines and line <= len(lines) else None


def _trace(frames: list[_Frame], answers: dict[bool, dict[str, Chain]],
           names: _InlineNames, debug: DebugKernel, sizes: dict[str, set[int]]) -> dict[str, Any]:
    decoded: list[dict[str, Any]] = []
    lines: list[str] = []
    undecoded: list[str] = []
    for frame in frames:
        chain = answers[frame.pc].get(_query(frame), []) if frame.module is None else []
        if not chain:
            undecoded.append(frame.symbol + (f" [{frame.module}]" if frame.module else ""))
            decoded.append({"function": frame.name, "file": None, "line": None, "inlined": False,
                            "symbol": frame.symbol})
            if frame.module:
                lines.append(f"{frame.symbol} [{frame.module}] (in a module: not decoded)")
            elif frame.size not in sizes.get(frame.name, ()):
                known = ", ".join(sorted(f"{size:#x}" for size in sizes.get(frame.name, ()))) or "none"
                lines.append(f"{frame.symbol} (not decoded: {debug.vmlinux.name}'s {frame.name} has "
                             f"size {known}: another build)")
            else:
                lines.append(f"{frame.symbol} (not found in {debug.vmlinux.name})")
            continue
        # Innermost first; the last location is in the printed function itself.
        for depth, (file, line) in enumerate(chain):
            inlined = depth < len(chain) - 1
            function = (names.at(file, line) or "?") if inlined else frame.name
            decoded.append({"function": function, "file": file, "line": line, "inlined": inlined,
                            "symbol": frame.symbol})
        where = " ".join(f"{file}:{line}" for file, line in chain)
        lines.append(f"{'PC ' if frame.pc else ''}{frame.symbol} ({where})")
    if len(undecoded) == len(frames):
        return {"status": "not decoded", "vmlinux": str(debug.vmlinux), "origin": debug.origin,
                "text": "\n".join(lines), "why": f"no frame found in {debug.vmlinux}: {lines[0]}"}
    trace: dict[str, Any] = {"status": "decoded", "vmlinux": str(debug.vmlinux), "origin": debug.origin,
                             "text": "\n".join(lines), "frames": decoded}
    if undecoded:
        trace["why"] = f"not decoded: {', '.join(undecoded)}"
    return trace
