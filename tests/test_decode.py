"""Call traces decoded with the kernel's own scripts/decode_stacktrace.sh (harness/decode.py):
the frames of an excerpt, and a decode only against the vmlinux of the very kernel that printed
the log. Recorded logs (data/README.md) with the vmlinux at hand: Debian's -dbg package for
docs/findings.md #1, the build cache's tree builds; a crafted log carries a tree build's own
banner where no recorded log of that build exists."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import annotate, decode, dmesg, source_lines
from harness.cache import cache_dir
from tests.conftest import DATA

LINUX_SOURCE_72 = cache_dir("src") / "linux-source-7.2_7.2.13-1_all"
X86_LOG = DATA / "x86_64-7.2.13-hvo-on-4G-nodes.console.log"
RISCV_LOG = DATA / "riscv64-7.2.13-debug-hvo-on.console.log"


def built_vmlinux(arch: str) -> Path:
    """A tree build's vmlinux from the build cache (`hvo-harness build --arch ARCH --variant
    debug` makes one)."""
    found = sorted((cache_dir("builds") / arch).glob("debug+4k-*/build/vmlinux"))
    if not found or not (LINUX_SOURCE_72 / decode.SCRIPT).is_file():
        pytest.skip(f"no {arch} debug build in the cache: hvo-harness build --arch {arch} --variant debug")
    return found[0]


def test_frames_of_an_x86_trace_leave_out_the_unwinders_guesses() -> None:
    first = dmesg.parse(X86_LOG.read_text(errors="replace")).findings[0]
    frames = decode.frames_of(first.excerpt)
    assert [f.symbol for f in frames][:3] == ["dump_stack_lvl+0x5d/0x80", "bad_page.cold+0x95/0xb0",
                                              "__free_pages_ok+0x599/0x720"]
    assert not any(f.name.startswith("__pfx_") or f.name == "do_sys_openat2" for f in frames)
    assert frames[-1].name == "entry_SYSCALL_64_after_hwframe" and not any(f.pc for f in frames)


def test_frames_of_a_riscv_trace_start_at_the_pc() -> None:
    excerpt = "\n".join([
        "WARNING: mm/hugetlb_vmemmap.c:223 at vmemmap_remap_pte+0x112/0x11e, CPU#0: swapper/0/1",
        "epc : vmemmap_remap_pte+0x112/0x11e", " ra : vmemmap_pte_entry+0xe/0x1e",
        "Call Trace:", "[<ffffffff800b34b4>] vmemmap_remap_pte+0x112/0x11e",
        "[<ffffffff800b2fe6>] vmemmap_pte_entry+0xe/0x1e",
    ])
    frames = decode.frames_of(excerpt)
    assert [(f.symbol, f.pc) for f in frames] == [("vmemmap_remap_pte+0x112/0x11e", True),
                                                   ("vmemmap_pte_entry+0xe/0x1e", False)]


def test_a_recorded_log_is_not_decoded_against_another_build() -> None:
    """The riscv64 log of 2026-11-22 against today's riscv64 build of the same tree: the build
    differs (its banner's time stamp), so its lines would be a guess."""
    vmlinux = built_vmlinux("riscv64")
    text = RISCV_LOG.read_text(errors="replace")
    debug = decode.DebugKernel(vmlinux, LINUX_SOURCE_72, "tree build")
    findings = decode.decode_findings(dmesg.parse(text).findings, debug, text)
    traced = [f.trace for f in findings if f.trace and "no call trace" not in f.trace["why"]]
    assert traced and all(t["status"] == "not decoded" for t in traced)
    assert "another build" in traced[0]["why"] and "Sun Nov 22 00:43:09 UTC 2026" in traced[0]["why"]


def test_a_tree_builds_trace_decodes_with_inlined_frames() -> None:
    """A WARN in sparse_init() under the x86_64 debug build's own banner: each frame has
    file:line, and an inlined helper is named from the source at its line."""
    vmlinux = built_vmlinux("x86_64")
    banner = decode.vmlinux_banner(vmlinux)
    assert banner is not None and banner.startswith("Linux version 7.2.13")
    sizes = decode.symbol_sizes(vmlinux)
    sparse, dump = (f"{name}+{offset:#x}/{min(sizes[name]):#x}"
                    for name, offset in (("sparse_init", 0x6c), ("dump_stack_lvl", 0x5d)))
    lines = [banner, "------------[ cut here ]------------",
             f"WARNING: mm/sparse.c:365 at {sparse}, CPU#0: swapper/0",
             f"RIP: 0010:{sparse}", "Call Trace:", " <TASK>", f" {dump}",
             " ? vfs_write+0x1/0x10", " </TASK>", "---[ end trace 0000000000000000 ]---"]
    text = "".join(f"[    0.{i:06d}] {line}\n" for i, line in enumerate(lines))
    source = source_lines.SourceTree(LINUX_SOURCE_72, "linux-source-7.2 7.2.13-1")
    build = decode.DebugKernel(vmlinux, LINUX_SOURCE_72, "tree build")
    [finding] = annotate.findings_of_log(dmesg.parse(text).findings, text, source, lambda: build)
    assert finding.trace is not None and finding.trace["status"] == "decoded", finding.trace
    frames = finding.trace["frames"]
    assert all(frame["file"] and frame["line"] for frame in frames)
    assert [f["function"] for f in frames if not f["inlined"]] == ["sparse_init", "dump_stack_lvl"]
    inlined = {"function": "memblocks_present", "file": "mm/sparse.c", "inlined": True}
    assert inlined.items() <= frames[0].items()


def test_debian_x86_finding_1_decodes_with_its_dbg_package(tmp_path: Path) -> None:
    """docs/findings.md #1 through `hvo-harness parse`: Debian's banner names linux-source-7.2
    7.2.13-1 and linux-image-7.2.13+deb14-amd64-dbg 7.2.13-1 (fetched once, about 1 GB)."""
    done = subprocess.run([sys.executable, "-m", "harness.cli", "parse", str(X86_LOG), "--json",
                           str(tmp_path / "f.json")], capture_output=True, text=True, timeout=3600)
    assert done.returncode == 1, done.stderr
    findings = json.loads((tmp_path / "f.json").read_text())["findings"]
    assert len(findings) == 60
    trace = findings[0]["trace"]
    assert trace["status"] == "decoded" and trace["origin"] == "linux-image-7.2.13+deb14-amd64-dbg 7.2.13-1"
    frames = trace["frames"]
    assert all(frame["file"] and frame["line"] for frame in frames)
    where = [(f["function"], f["file"], f["inlined"]) for f in frames]
    assert ("__free_pages_ok", "mm/page_alloc.c", False) in where
    assert ("update_and_free_pages_bulk", "mm/hugetlb.c", False) in where
    assert ("update_and_free_hugetlb_folio", "mm/hugetlb.c", True) in where
    assert "update_and_free_hugetlb_folio at mm/hugetlb.c:" in done.stdout


def test_a_frame_of_another_size_is_not_decoded() -> None:
    """The banner matches but the sizes the kernel printed are not this vmlinux's: another
    build (or a made-up log); its lines would be a guess."""
    vmlinux = built_vmlinux("x86_64")
    banner = decode.vmlinux_banner(vmlinux)
    text = "".join(f"[    0.{i:06d}] {line}\n" for i, line in enumerate([
        str(banner), "------------[ cut here ]------------",
        "WARNING: mm/sparse.c:365 at sparse_init+0x6c/0x2d1, CPU#0: swapper/0",
        "RIP: 0010:sparse_init+0x6c/0x2d1", "---[ end trace 0000000000000000 ]---"]))
    build = decode.DebugKernel(vmlinux, LINUX_SOURCE_72, "tree build")
    [finding] = decode.decode_findings(dmesg.parse(text).findings, build, text)
    assert finding.trace is not None and finding.trace["status"] == "not decoded"
    assert "another build" in finding.trace["why"] and "0x2d1" in finding.trace["why"]
