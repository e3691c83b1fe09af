"""The statement that fired: a finding's file:line read from the source of the kernel that
printed it.

Which source that is comes from what was booted, never from a guess: a tree build's own tree
(at the commit that was built, so a series applied in a throwaway worktree is read as built),
Debian's `linux-source-<M.m>` at exactly the version of a Debian kernel (its console banner
says "Linux version 7.2.13+deb14-amd64 ... Debian 7.2.13-1 (...)"), or a tree the user names
(`hvo-harness parse --source TREE`). Without one, the finding's source says "not at hand" and
why; another kernel version has other code at that line.

Line numbers are the kernel's own: __FILE__:__LINE__ of the WARN/BUG, which the compiler puts
at one line of a statement that may span several (GCC and clang differ on which), so the whole
statement holding that line is read, and the function it is in is found by the source (an
inlined helper's name, where the kernel printed its caller's)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.results import Finding

# A statement the kernel's style spreads over more lines than this is not one a WARN names.
STATEMENT_MAX_LINES = 12
# How far above the line the function's opening brace is looked for.
FUNCTION_LOOKBACK = 2000


@dataclass(frozen=True)
class SourceTree:
    """Where a kernel's source files are read from."""

    root: Path
    # What the finding's source says it came from: "linux-source-7.2 7.2.13-1", or the tree and
    # the commit that was built.
    origin: str
    # Read files at this commit (git show COMMIT:FILE) rather than the work tree: what a tree
    # build built, even after the tree moved on or the series' worktree was removed.
    commit: str | None = None

    def read(self, file: str) -> list[str] | None:
        """FILE's lines, or None when the tree has no such file."""
        if ".." in Path(file).parts or file.startswith("/"):
            return None
        if self.commit is not None:
            done = subprocess.run(["git", "-C", str(self.root), "show", f"{self.commit}:{file}"],
                                  capture_output=True, text=True, errors="replace")
            return done.stdout.splitlines() if done.returncode == 0 else None
        path = self.root / file
        if not path.is_file():
            return None
        return path.read_bytes().decode(errors="replace").splitlines()


@dataclass(frozen=True)
class NotAtHand:
    """No source of the kernel that printed the log: why, and what would give it."""

    why: str


Source = SourceTree | NotAtHand


# --------------------------------------------------------------------------------------------
# Which kernel printed the log


# init/version-timestamp.c linux_banner: "Linux version %s (%s@%s) (%s) %s\n" (UTS_RELEASE,
# the builder, the compiler, UTS_VERSION). Debian's UTS_VERSION ends in "Debian <version>
# (<date>)": "#1 SMP PREEMPT_DYNAMIC Debian 7.2.13-1 (2026-10-28)".
_BANNER_RE = re.compile(r"Linux version (?P<release>\S+) \(.*$")
_DEBIAN_RE = re.compile(r"\bDebian (?P<version>\d[\w.+~:-]*) \(\d{4}-\d{2}-\d{2}\)\s*$")
_DEBIAN_RELEASE_RE = re.compile(r"^(?P<series>\d+\.\d+)[^-]*-(?P<flavour>[\w-]+)$")


@dataclass(frozen=True)
class Banner:
    """The kernel's "Linux version" line, from the console."""

    line: str  # from "Linux version" to the end of the line
    release: str  # "7.2.13+deb14-amd64", "7.2.13+"
    # Debian's package version ("7.2.13-1") when Debian built it, else None.
    debian_version: str | None

    @property
    def debian_series(self) -> str | None:
        """"7.2" of a Debian kernel: the linux-source-<series> that holds its source."""
        m = _DEBIAN_RELEASE_RE.match(self.release)
        return m["series"] if m and self.debian_version else None

    @property
    def debian_arch(self) -> str | None:
        """"amd64" of "7.2.13+deb14-amd64" (the flavour's first word)."""
        m = _DEBIAN_RELEASE_RE.match(self.release)
        return m["flavour"].split("-")[0] if m and self.debian_version else None


def kernel_banner(text: str) -> Banner | None:
    """The first "Linux version" line of a console log or dmesg; None when it has none."""
    for raw in text.splitlines():
        at = raw.find("Linux version ")
        if at < 0:
            continue
        line = raw[at:].replace("\r", "").strip()
        m = _BANNER_RE.match(line)
        if m:
            debian = _DEBIAN_RE.search(line)
            return Banner(line, m["release"], debian["version"] if debian else None)
    return None


def debian_source(banner: Banner) -> Source:
    """The linux-source of a Debian kernel at exactly its version, from the cache or fetched
    through the harness's apt state (artefacts.ensure_linux_source_at); NotAtHand naming the
    package when there is none."""
    from harness import artefacts  # here: artefacts is the network side, this module is not

    series, version = banner.debian_series, banner.debian_version
    if series is None or version is None:
        return NotAtHand(f"{banner.release} is not a Debian kernel release")
    try:
        tree = artefacts.ensure_linux_source_at(series, version)
    except HarnessError as error:
        return NotAtHand(str(error))
    return SourceTree(tree, f"linux-source-{series} {version}")


def tree_source(tree: Path, banner: Banner | None) -> SourceTree:
    """A tree the user names for a log (`parse --source TREE`): its files as they are. A tree of
    another kernel version than the log's banner is refused: its lines are other code."""
    from harness import trees

    if not (tree / "Makefile").is_file() or not (tree / "mm").is_dir():
        raise HarnessError(f"--source {tree} is not a Linux kernel tree (no Makefile and mm/): "
                           "give the top directory of the source the kernel was built from")
    version = trees.kernel_version(tree)
    if banner is not None and not _same_version(banner.release, version):
        raise HarnessError(f"--source {tree} is Linux {version}, but the log's kernel is "
                           f"{banner.release}: give the source of the kernel that printed the log")
    return SourceTree(tree.resolve(), f"{tree.resolve()} (Linux {version})")


def _same_version(release: str, version: str) -> bool:
    """A release ("7.2.13+deb14-amd64", "7.2.13+", "7.3-amd64", "7.3.0-rc5") built from a tree
    of VERSION ("7.2.13", "7.3.0-rc5", "7.3.0")."""
    base = re.sub(r"\.0(?=$|-)", "", version)
    for candidate in (version, base):
        if release == candidate or re.match(re.escape(candidate) + r"(?![\d])", release):
            return True
    return False


def build_source(kernel_source: dict[str, Any]) -> Source:
    """The source a tree build (runs[].kernel.source, type "tree") was built from: its tree at
    the commit that was built (a series' commit made by git am), or, for a tree built with
    uncommitted edits or a plain tree, its files if the tree is still in the state built."""
    from harness import trees

    tree = Path(str(kernel_source.get("tree") or ""))
    commit = kernel_source.get("commit")
    describe = kernel_source.get("describe") or commit
    repository = kernel_source.get("repository")
    if not tree.is_dir() and commit and repository and Path(repository).is_dir():
        # A worktree that is gone (bisect's, a series'): its commit is in the repository it shared.
        tree = Path(repository)
    if not tree.is_dir():
        return NotAtHand(f"the tree {tree} that was built is gone")
    if commit and (not kernel_source.get("dirty") or kernel_source.get("patches")):
        done = subprocess.run(["git", "-C", str(tree), "cat-file", "-e", f"{commit}^{{commit}}"],
                              capture_output=True)
        if done.returncode != 0:
            return NotAtHand(f"commit {commit} that was built is not in {tree} any more")
        return SourceTree(tree, f"{tree} at {describe}", commit)
    try:
        now = trees.state(tree)
    except HarnessError as error:
        return NotAtHand(f"the tree {tree} cannot be read: {error}")
    if now.digest != kernel_source.get("tree_state"):
        return NotAtHand(f"{tree} has changed since the build: rebuild, or give the source as built")
    return SourceTree(tree, f"{tree} ({'with uncommitted edits' if commit else 'plain tree'})")


def source_for_kernel(kernel_source: dict[str, Any], release: str | None, text: str) -> Source:
    """The source of a booted kernel (runs[].kernel.source): a tree build's tree, a Debian
    kernel's linux-source at its version; an image from elsewhere has none at hand."""
    kind = kernel_source.get("type")
    if kind == "tree":
        return build_source(kernel_source)
    banner = kernel_banner(text)
    if kind == "debian" or (banner is not None and banner.debian_version):
        if banner is None:
            version = kernel_source.get("version")
            return NotAtHand(f"the console has no \"Linux version\" banner of {release} {version}")
        return debian_source(banner)
    return NotAtHand("the kernel image came with no source: give its tree "
                     "(`hvo-harness parse LOG --source TREE`)")


# --------------------------------------------------------------------------------------------
# Reading the line


_LINE_COMMENT_RE = re.compile(r"//.*$")
_BLOCK_COMMENT_RE = re.compile(r"/\*.*?\*/")


def _code(text: str) -> str:
    """A line without its comments (a block comment across lines is left as it is)."""
    return _LINE_COMMENT_RE.sub("", _BLOCK_COMMENT_RE.sub("", text)).strip()


def _ends_statement(text: str) -> bool:
    code = _code(text)
    return (not code or code.endswith((";", "{", "}", "*/", ":")) or code.startswith("#")
            or code.startswith("*"))


def statement_span(lines: list[str], line: int) -> tuple[int, int]:
    """First and last line (1-based) of the statement that holds LINE: back to the line after
    the one that ended the statement before, on to the line whose parentheses close it."""
    start = line
    while start > 1 and line - start < STATEMENT_MAX_LINES and not _ends_statement(lines[start - 2]):
        start -= 1
    depth = 0
    end = start
    for number in range(start, min(len(lines), start + STATEMENT_MAX_LINES) + 1):
        code = _code(lines[number - 1])
        depth += code.count("(") - code.count(")")
        end = number
        if number >= line and depth <= 0 and (code.endswith((";", "{", "}")) or not code):
            break
    return start, max(end, line)


_DEFINITION_RE = re.compile(r"(?P<name>[A-Za-z_]\w*)\s*\(")
_NOT_A_NAME = frozenset({"if", "for", "while", "switch", "return", "sizeof", "__attribute__",
                         "__section", "__aligned", "__printf", "__must_hold", "__releases",
                         "__acquires"})


def enclosing_function(lines: list[str], line: int) -> str | None:
    """The function LINE is in, by the kernel's coding style: its body opens with "{" alone at
    column 0 and closes with "}" at column 0, its declaration starts at column 0 above the
    brace. None when LINE is outside any function (or in one a macro makes). LINE may be the
    declaration's own (debug info gives an inlined function's call chain that line)."""
    if lines[line - 1][:1] not in ("", " ", "\t", "{", "}", "#", "/", "*"):
        for number in range(line, min(len(lines), line + STATEMENT_MAX_LINES)):
            if lines[number].rstrip() == "{":
                return _declared_name(lines[line - 1 : number])
            if ";" in _code(lines[number]) or ";" in _code(lines[line - 1]):
                break
    for number in range(line, max(0, line - FUNCTION_LOOKBACK), -1):
        text = lines[number - 1]
        # LINE itself may be the function's closing brace (where a return address often is).
        if text.startswith("}") and number != line:
            return None
        if text.rstrip() != "{":
            continue
        declaration: list[str] = []
        for above in range(number - 1, max(0, number - STATEMENT_MAX_LINES), -1):
            declaration.insert(0, lines[above - 1])
            if lines[above - 1][:1] not in ("", " ", "\t"):
                break
        return _declared_name(declaration)
    return None


def _declared_name(declaration: list[str]) -> str | None:
    names = [m["name"] for m in _DEFINITION_RE.finditer(" ".join(declaration))
             if m["name"] not in _NOT_A_NAME]
    return names[0] if names else None


def resolve(finding: Finding, source: Source) -> Finding:
    """FINDING with its source: the statement at its file:line and the function that is in."""
    if finding.file is None or finding.line is None:
        return replace(finding, source={"status": "no file:line",
                                        "why": "the kernel printed no file:line for this report"})
    if isinstance(source, NotAtHand):
        return replace(finding, source={"status": "not at hand", "why": source.why})
    lines = source.read(finding.file)
    where = f"{finding.file}:{finding.line}"
    if lines is None:
        return replace(finding, source={"status": "line not in file",
                                        "why": f"{source.origin} has no {finding.file}"})
    if not 1 <= finding.line <= len(lines):
        return replace(finding, source={
            "status": "line not in file",
            "why": f"{finding.file} of {source.origin} has {len(lines)} lines, not {finding.line}: "
                   "the log is from another version of the source"})
    start, end = statement_span(lines, finding.line)
    return replace(finding, source={
        "status": "found", "file": finding.file, "line": finding.line,
        "function": enclosing_function(lines, finding.line), "origin": source.origin,
        "lines": [{"line": n, "text": lines[n - 1]} for n in range(start, end + 1)],
        "why": f"{where} of {source.origin}",
    })


def resolve_all(findings: list[Finding], source: Source) -> list[Finding]:
    return [resolve(finding, source) for finding in findings]
