"""The statement that fired and the named checks (harness/source_lines.py, harness/checks.py):
a finding's file:line read from the source of the kernel that printed it, and a check named
only from what is at that line. Crafted console logs stand for a real fault where none was
recorded (the kernel's own 7.2 formats); the recorded ones are real boots (data/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import checks, dmesg, source_lines
from harness.cache import cache_dir
from tests.conftest import DATA

LINUX_SOURCE_72 = cache_dir("src") / "linux-source-7.2_7.2.13-1_all"
needs_source = pytest.mark.skipif(not (LINUX_SOURCE_72 / "mm/sparse.c").is_file(),
                                  reason=f"no {LINUX_SOURCE_72} (hvo-harness fetch)")

DEBIAN_BANNER = ("Linux version 7.2.13+deb14-amd64 (debian-kernel@lists.debian.org) "
                 "(x86_64-linux-gnu-gcc-16 (Debian 16.2.0-4) 16.2.0, GNU ld (GNU Binutils for Debian) "
                 "2.47.50.20261021) #1 SMP PREEMPT_DYNAMIC Debian 7.2.13-1 (2026-10-28)")
TREE_BANNER = ("Linux version 7.2.13+ (hvo-harness@hvo-harness) (riscv64-linux-gnu-gcc (Debian 12.2.0-13) "
               "12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT Sun Nov 22 00:43:09 UTC 2026")


def sparse_warn(banner: str, line: int) -> str:
    """A 7.2 WARN in sparse_init() at mm/sparse.c:LINE (kernel/panic.c __warn() formats)."""
    lines = [
        banner,
        "------------[ cut here ]------------",
        f"WARNING: mm/sparse.c:{line} at sparse_init+0x6c/0x2d0, CPU#0: swapper/0",
        "Modules linked in:",
        "CPU: 0 UID: 0 PID: 0 Comm: swapper Not tainted 7.2.13+deb14-amd64 #1 PREEMPT(lazy)",
        "RIP: 0010:sparse_init+0x6c/0x2d0",
        "Call Trace:",
        " <TASK>",
        " setup_arch+0x8c5/0xd50",
        " start_kernel+0x66/0x700",
        " </TASK>",
        "---[ end trace 0000000000000000 ]---",
    ]
    return "".join(f"[    0.{index:06d}] {text}\n" for index, text in enumerate(lines))


def test_banner_of_a_debian_kernel_names_its_source_package() -> None:
    banner = source_lines.kernel_banner(sparse_warn(DEBIAN_BANNER, 142))
    assert banner is not None
    assert (banner.release, banner.debian_version, banner.debian_series, banner.debian_arch) == (
        "7.2.13+deb14-amd64", "7.2.13-1", "7.2", "amd64")
    tree = source_lines.kernel_banner(TREE_BANNER)
    assert tree is not None and tree.release == "7.2.13+" and tree.debian_version is None


def test_the_parser_assigns_no_check() -> None:
    """dmesg is text to data: which statement fired is the source's to say."""
    [finding] = dmesg.parse(sparse_warn(DEBIAN_BANNER, 365)).findings
    assert (finding.kind, finding.function, finding.file, finding.line) == (
        "warn", "sparse_init", "mm/sparse.c", 365)
    assert finding.check is None and finding.source is None


@needs_source
def test_warn_at_sparse_c_142_is_the_inlined_memmodel_check_not_the_alignment() -> None:
    """7.2's mminit_validate_memmodel_limits() has WARN_ON_ONCE(1) at mm/sparse.c:142 and :149
    and is inlined into sparse_init(): the kernel prints sparse_init, the source says which."""
    source = source_lines.SourceTree(LINUX_SOURCE_72, "linux-source-7.2 7.2.13-1")
    for line in (142, 149):
        [finding] = dmesg.parse(sparse_warn(DEBIAN_BANNER, line)).findings
        [finding] = checks.assign_all(source_lines.resolve_all([finding], source))
        assert finding.function == "sparse_init"  # as printed
        assert finding.source is not None and finding.source["status"] == "found"
        assert finding.source["function"] == "mminit_validate_memmodel_limits"
        assert [entry["text"].strip() for entry in finding.source["lines"]] == ["WARN_ON_ONCE(1);"]
        assert finding.check is None


@needs_source
@pytest.mark.parametrize("line", [365, 366])
def test_warn_at_the_alignment_statement_is_the_named_check(line: int) -> None:
    """The statement spans mm/sparse.c:365-366; the compiler may put either line in the bug
    table."""
    source = source_lines.SourceTree(LINUX_SOURCE_72, "linux-source-7.2 7.2.13-1")
    [finding] = checks.assign_all(source_lines.resolve_all(
        dmesg.parse(sparse_warn(TREE_BANNER, line)).findings, source))
    assert finding.check == checks.SPARSE_INIT_CHECK
    assert finding.source is not None and finding.source["function"] == "sparse_init"
    assert [entry["line"] for entry in finding.source["lines"]] == [365, 366]
    assert "IS_ALIGNED((unsigned long) pfn_to_page(0)," in finding.source["lines"][0]["text"]


@needs_source
def test_a_line_past_the_end_of_the_file_is_another_version() -> None:
    """mm/sparse.c:606 was sparse_init's line in an older tree; 7.2's file is shorter."""
    source = source_lines.SourceTree(LINUX_SOURCE_72, "linux-source-7.2 7.2.13-1")
    [finding] = checks.assign_all(source_lines.resolve_all(
        dmesg.parse(sparse_warn(TREE_BANNER, 606)).findings, source))
    assert finding.source is not None and finding.source["status"] == "line not in file"
    assert "another version" in finding.source["why"] and finding.check is None


def test_no_source_at_hand_is_no_label() -> None:
    [finding] = checks.assign_all(source_lines.resolve_all(
        dmesg.parse(sparse_warn(TREE_BANNER, 365)).findings,
        source_lines.NotAtHand("the kernel image came with no source")))
    assert finding.source == {"status": "not at hand", "why": "the kernel image came with no source"}
    assert finding.check is None


@needs_source
def test_recorded_riscv_warn_reads_vm_warn_on_once_page_tail() -> None:
    """docs/findings.md #3 against the tree it was built from (linux-source-7.2 7.2.13-1)."""
    source = source_lines.SourceTree(LINUX_SOURCE_72, "linux-source-7.2 7.2.13-1")
    text = (DATA / "riscv64-7.2.13-debug-hvo-on.console.log").read_text(errors="replace")
    found = checks.assign_all(source_lines.resolve_all(dmesg.parse(text).findings, source))
    assert len(found) == 2
    for finding in found:
        assert finding.source is not None and finding.source["function"] == "vmemmap_remap_pte"
        [entry] = finding.source["lines"]
        assert entry == {"line": 223, "text": "\t\tVM_WARN_ON_ONCE(!PageTail((const struct page *)addr));"}
        assert finding.check is None


def parse_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", "parse", *args],
                          capture_output=True, text=True)


@needs_source
def test_parse_command_shows_the_inlined_function_and_no_check(tmp_path: Path) -> None:
    log = tmp_path / "sparse-142.console.log"
    log.write_text(sparse_warn(TREE_BANNER, 142))
    done = parse_cli(str(log), "--source", str(LINUX_SOURCE_72), "--json", str(tmp_path / "f.json"))
    assert done.returncode == 1, done.stderr
    assert "mminit_validate_memmodel_limits" in done.stdout
    assert "WARN_ON_ONCE(1);" in done.stdout
    assert checks.SPARSE_INIT_CHECK not in done.stdout
    [finding] = json.loads((tmp_path / "f.json").read_text())["findings"]
    assert finding["check"] is None and finding["source"]["function"] == "mminit_validate_memmodel_limits"


@needs_source
def test_parse_command_finds_a_debian_kernels_source_by_its_banner(tmp_path: Path) -> None:
    """No --source: Debian's banner names linux-source-7.2 7.2.13-1, which is in the cache."""
    log = tmp_path / "sparse-365.console.log"
    log.write_text(sparse_warn(DEBIAN_BANNER, 365))
    done = parse_cli(str(log), "--json", str(tmp_path / "f.json"))
    assert done.returncode == 1, done.stderr
    [finding] = json.loads((tmp_path / "f.json").read_text())["findings"]
    assert finding["check"] == checks.SPARSE_INIT_CHECK
    assert finding["source"]["origin"] == "linux-source-7.2 7.2.13-1"
    assert checks.SPARSE_INIT_CHECK in done.stdout and "MAX_FOLIO_VMEMMAP_ALIGN" in done.stdout


def test_parse_command_without_source_says_not_at_hand(tmp_path: Path) -> None:
    log = tmp_path / "tree.console.log"
    log.write_text(sparse_warn(TREE_BANNER, 365))
    done = parse_cli(str(log), "--json", str(tmp_path / "f.json"))
    assert done.returncode == 1, done.stderr
    [finding] = json.loads((tmp_path / "f.json").read_text())["findings"]
    assert finding["check"] is None and finding["source"]["status"] == "not at hand"
    assert "not at hand" in done.stdout and "--source" in done.stdout


@needs_source
def test_parse_command_refuses_a_source_of_another_version(tmp_path: Path) -> None:
    log = tmp_path / "old.console.log"
    log.write_text(sparse_warn(TREE_BANNER.replace("7.2.13+", "6.12.57+"), 365))
    done = parse_cli(str(log), "--source", str(LINUX_SOURCE_72))
    assert done.returncode == 2
    assert "Linux 7.2.13" in done.stderr and "6.12.57+" in done.stderr


@needs_source
def test_a_report_after_megabytes_of_garbage_is_still_the_check() -> None:
    """Moved from tests/test_dmesg.py: the parser finds the record, the source names it."""
    garbage = "x" * (4 << 20)
    text = garbage + sparse_warn(TREE_BANNER, 365)
    source = source_lines.SourceTree(LINUX_SOURCE_72, "linux-source-7.2 7.2.13-1")
    [finding] = checks.assign_all(source_lines.resolve_all(dmesg.parse(text).findings, source))
    assert (finding.kind, finding.function) == ("warn", "sparse_init")
    assert finding.check == checks.SPARSE_INIT_CHECK


def test_a_debian_version_no_suite_has_is_not_at_hand(tmp_path: Path) -> None:
    """A Debian kernel whose linux-source is not at that very version anywhere: never read the
    line in another version's source. (Asks Debian's lists through the harness's apt state.)"""
    log = tmp_path / "7.2.12.console.log"
    log.write_text(sparse_warn(DEBIAN_BANNER.replace("7.2.13", "7.2.12"), 365))
    done = parse_cli(str(log), "--json", str(tmp_path / "f.json"))
    assert done.returncode == 1, done.stderr
    [finding] = json.loads((tmp_path / "f.json").read_text())["findings"]
    assert finding["source"]["status"] == "not at hand" and finding["check"] is None
    assert "linux-source-7.2 7.2.12-1" in finding["source"]["why"]
    assert finding["trace"]["status"] == "not decoded"


def test_a_removed_worktrees_commit_is_read_from_its_repository(tmp_path: Path) -> None:
    """Bisect builds each commit in a worktree it removes at the end; a reproducer of its bad
    commit reads that commit's source from the repository the worktree shared (the named check
    of the original must be the rerun's, or `repro` calls the same finding a different one)."""
    repo, worktree = tmp_path / "linux", tmp_path / "bisect-worktree"
    (repo / "mm").mkdir(parents=True)
    (repo / "mm" / "sparse.c").write_text("".join(f"/* line {n} */\n" for n in range(1, 362)) + (
        "void __init sparse_init(void)\n{\n"
        "\tif (compound_info_has_mask()) {\n"
        "\t\tVM_WARN_ON_ONCE(!IS_ALIGNED((unsigned long) pfn_to_page(0),\n"
        "\t\t\t\t    MAX_FOLIO_VMEMMAP_ALIGN));\n\t}\n}\n"))
    (repo / "Makefile").write_text("VERSION = 7\nPATCHLEVEL = 2\nSUBLEVEL = 13\nEXTRAVERSION =\n")
    for marker in ("Kconfig", "scripts/kconfig/merge_config.sh", "mm/hugetlb.c"):
        (repo / marker).parent.mkdir(parents=True, exist_ok=True)
        (repo / marker).write_text("")
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c0"],
                 ["worktree", "add", "-q", "--detach", str(worktree), "HEAD"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)
    from harness import trees
    built = {"type": "tree", **trees.state(worktree).as_source()}
    subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(worktree)], check=True)
    assert not worktree.exists()
    source = source_lines.build_source(built)
    assert isinstance(source, source_lines.SourceTree), source
    [finding] = checks.assign_all(source_lines.resolve_all(
        dmesg.parse(sparse_warn(TREE_BANNER, 365)).findings, source))
    assert finding.check == checks.SPARSE_INIT_CHECK, finding.source
